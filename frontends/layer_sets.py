"""A model's quantizable layers as the quality tools see them: float weights, calibration Hessians, ``run``.

Built by ``frontends/onnx_quantize.onnx_layer_set`` (a float ONNX model's ``MatMul`` / ``Gemm`` layers with
constant 2-D weights) and ``frontends/torch_quantize.torch_layer_set`` (a torch module's ``nn.Linear`` layers),
with optional calibration batches: a :class:`LayerSet`: names, (N, K) float weights, per-layer ``X^T X`` over the
calibration rows, and
``run(weights) -> output`` (the model on its first calibration batch with the given float weights substituted),
which :mod:`lowbit.compiler.quality` needs for output errors, measured sensitivities and end-to-end SQNR.

Output errors need only ``X^T X``: for any ``D``, ``||X D^T||^2 = ||R D^T||^2`` where ``R^T R = X^T X``
(:func:`hessian_rows`), so the (K, K) factor ``R`` stands in for the calibration rows and nothing of the
activations is kept.
"""
import dataclasses
import functools

import numpy as np

from lowbit.errors import ModelError


@dataclasses.dataclass
class LayerSet:
    """The quantizable layers of one model (see the module docstring)."""

    names: list
    weights: list            # (N, K) float32 arrays
    hessians: object = None  # list of (K, K) float64 X^T X, or None without calibration
    run: object = None       # run(list of (N, K) float weights) -> np.ndarray, or None without calibration

    @functools.cached_property
    def inputs(self):
        """Per layer, rows ``R`` with ``R^T R = X^T X`` (the stand-in for the calibration inputs), or None;
        computed once (an eigendecomposition per layer)."""
        return None if self.hessians is None else [hessian_rows(H) for H in self.hessians]


def hessian_rows(H):
    """A (K, K) ``R`` with ``R^T R = H`` for a symmetric positive semi-definite ``H`` (``diag(sqrt(l)) V^T``)."""
    values, vectors = np.linalg.eigh(np.asarray(H, np.float64))
    return np.sqrt(np.clip(values, 0.0, None))[:, None] * vectors.T


def flat_outputs(outputs):
    """Every floating output, flattened and concatenated (the end-to-end SQNR compares them all at once)."""
    parts = [np.asarray(out, np.float64).ravel() for out in outputs
             if np.issubdtype(np.asarray(out).dtype, np.floating)]
    if not parts:
        raise ModelError("the model has no floating-point output to measure end-to-end errors on")
    return np.concatenate(parts)
