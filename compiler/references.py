"""What each kernel family computes, in NumPy, and how far an fp32 evaluation of it may be off.

The benchmark, the peers' checks and the tuner all verify a kernel's output against these: the activations the
family multiplies (:func:`kernel_activations`), its float64 result (:func:`kernel_reference`) and the
elementwise bound fp32 arithmetic can explain (:func:`error_bound`; a wrong kernel errs by whole terms).
"""
import math

import numpy as np

from lowbit.compiler import kernels_rotate
from lowbit.compiler.higgs import dequantize_rotated, hadamard_rotate
from lowbit.compiler.kernels_a8 import activation_group, quantize_activations_reference
from lowbit.compiler.kernels_lut import reference as lut_reference
from lowbit.compiler.layout import LutParams


def kernel_activations(kernel, x, qw):
    """The activations a kernel family multiplies: ``x`` itself (fp32 kernels), or for ``a8`` its int8
    rounding per row and K-group (the compiler's NumPy twin of that kernel's activation quantization)."""
    if kernel != "a8":
        return x
    return quantize_activations_reference(x, activation_group(qw.group_size))[0]


def kernel_reference(kernel, x_used, qw, dequantized):
    """What a kernel family computes, float64: ``x' @ dequant(W)^T``, or for ``lut`` the NumPy twin of its
    int8 tables (:func:`lowbit.compiler.kernels_lut.reference`, default table group and precision)."""
    if kernel == "lut":
        if qw.format.kind == "higgs":  # the kernel looks up rotated activations in its rotated codebook's tables
            return lut_reference(qw.rotated_codebook(), kernels_rotate.reference(x_used, qw.format.group_size),
                                 LutParams())
        return lut_reference(qw, x_used, LutParams())
    return x_used.astype(np.float64) @ dequantized.T.astype(np.float64)


def error_bound(x, qw):
    """Elementwise bound on ``|y - x @ qw.dequantize().T|`` for any fp32 evaluation order, (M, N) float64.

    Higham's bound for a K-term fp32 dot product is ``K * u * sum|x_k * w_k|`` (``u = 2**-24``); decoding a
    weight as ``s*q - s*z`` (or ``s * level``) in fp32 adds a few ``u`` times ``|s| * (q + z)`` per term.
    A wrong kernel (a misread group, a wrong zero point) errs by whole terms, far above this bound.
    """
    if qw.format.kind == "higgs":
        return _rotated_error_bound(x, qw)
    K = qw.shape[1]
    group = qw.group_size
    scale = np.repeat(np.abs(qw.scales), group, axis=1)
    if qw.format.kind == "codebook":
        magnitude = scale * np.abs(qw.format.points.astype(np.float32))[qw.codes].reshape(qw.shape)
    else:
        magnitude = scale * (qw.codes + np.repeat(qw.affine_zeros(), group, axis=1))
    u = 2.0 ** -24
    # The bound's own fp32 rounding (relative 1e-6 of itself) does not matter: it has no cancellation.
    total = np.abs(np.asarray(x, np.float32)) @ magnitude.astype(np.float32).T
    return (K + 4) * u * total.astype(np.float64)


def _rotated_error_bound(x, qw):
    """:func:`error_bound` for HIGGS weights, which the kernel multiplies as ``T(x) . w_rot`` (T per group).

    Three parts: the rotated dot product itself (Higham, as above); the fp32 rotation, whose ``log2(G)``
    butterfly stages each err by at most ``u`` times the group's ``||x_g||_1 / sqrt(G)``; and the float32
    rounding of the reference's dequantized weight (``u`` per term).
    """
    fmt, (N, K) = qw.format, qw.shape
    G, u = fmt.group_size, 2.0 ** -24
    levels = math.log2(G)
    x = np.asarray(x, np.float64)
    w_rot = np.abs(dequantize_rotated(qw.codes, qw.scales, fmt))
    dot = np.abs(hadamard_rotate(x, G)) @ w_rot.T
    x_groups = np.abs(x).reshape(len(x), K // G, G).sum(axis=2) / math.sqrt(G)
    rotation = x_groups @ w_rot.reshape(N, K // G, G).sum(axis=2).T
    reference = np.abs(x) @ np.abs(qw.dequantize().astype(np.float64)).T
    return (K + 4) * u * dot + (levels + 1) * u * rotation + u * reference
