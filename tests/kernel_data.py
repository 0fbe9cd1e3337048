"""Seeded test data the CPU kernel tests share: weights whose rows differ in scale and offset (so group scales
and zero points vary), activations whose rows differ in scale (so per-row activation quantization varies)."""
import numpy as np


def row_scaled_weight(seed, N, K):
    """(N, K) float64: Gaussian rows, each scaled by U(0.2, 3) and offset by U(-0.5, 0.5)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, K)) * rng.uniform(0.2, 3.0, (N, 1)) + rng.uniform(-0.5, 0.5, (N, 1))


def row_scaled_activations(M, seed, K):
    """(M, K) float32: Gaussian rows, each scaled by U(0.1, 10)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)) * rng.uniform(0.1, 10, (M, 1))).astype(np.float32)
