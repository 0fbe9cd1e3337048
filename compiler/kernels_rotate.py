"""Compute definition (TensorIR, through TE) of the run-time activation rotation of HIGGS layers.

``XR[m, g*G + i] = T(X[m, g*G : (g+1)*G])[i]`` with ``T(v) = H (signs * v) / sqrt(G)`` (see
:mod:`lowbit.compiler.higgs`): the fast Walsh-Hadamard transform, one TE stage per butterfly level
(log2(G) stages, O(K log G) work per row). Each stage is laid out as (M, groups, G) and reads its two inputs
at in-group offsets that bound inference can prove stay inside the group, so a schedule can compute every
stage per (row, group) in a G-element scratch (cache-resident) instead of whole (M, K) intermediates.

Params, in order: ``X (M, K), R (G,) signs, XR (M, K)``.
"""
import math

import numpy as np

from lowbit.compiler.tvm_api import te, tirx

F32 = "float32"


def rotate_compute(K, group_size, M):
    """The PrimFunc ``XR = rotate(X)`` for rows of length ``K`` in groups of ``group_size`` (a power of two)."""
    G = group_size
    groups = K // G
    X = te.placeholder((M, K), F32, name="X")
    R = te.placeholder((G,), F32, name="R")
    stage = te.compute((M, groups, G), lambda m, g, i: X[m, g * G + i] * R[i], name="stage0")
    half, level = 1, 0
    while half < G:
        level += 1
        stage = _butterfly(stage, M, groups, G, half, f"stage{level}")
        half *= 2
    norm = tirx.const(1.0 / math.sqrt(G), F32)
    last = stage
    XR = te.compute((M, K), lambda m, k: last[m, k // G, k % G] * norm, name="XR")
    return te.create_prim_func([X, R, XR])


def _butterfly(prev, M, groups, G, half, name):
    """One level: pairs (i, i + half) inside blocks of 2*half become (a + b, a - b)."""

    def body(m, g, i):
        base = i // (2 * half) * (2 * half) + i % half
        a, b = prev[m, g, base], prev[m, g, base + half]
        return tirx.Select((i // half) % 2 == 0, a + b, a - b)

    return te.compute((M, groups, G), body, name=name)


def reference(x, group_size):
    """NumPy twin of :func:`rotate_compute` in float32, the same operations in the same order (signs, then the
    butterflies ``a + b`` / ``a - b`` level by level, then the float32 ``1 / sqrt(G)``): bit-identical to the
    kernel, so a lut reference built on it sees the very activations the kernel quantizes to int8."""
    from lowbit.compiler.higgs import rotation_signs

    x = np.asarray(x, np.float32)
    M, K = x.shape
    G = group_size
    v = x.reshape(M, K // G, G) * rotation_signs(G)
    half = 1
    while half < G:
        shaped = v.reshape(M, K // G, G // (2 * half), 2, half)
        a, b = shaped[..., 0, :].copy(), shaped[..., 1, :].copy()
        shaped[..., 0, :], shaped[..., 1, :] = a + b, a - b
        half *= 2
    return (v * np.float32(1.0 / math.sqrt(G))).reshape(M, K)
