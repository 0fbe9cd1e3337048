"""GPTQ: quantize a linear layer's weight with second-order error feedback from calibration inputs.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers" (2022),
Algorithm 1 with lazy batch updates. The layer's output error on inputs ``X`` (rows of activations, (T, K)) is
``||X (W - Q)^T||^2``, whose Hessian in each row of ``W`` is ``H = 2 X^T X``. Columns of ``W`` (along K) are
rounded one at a time; each column's rounding error, divided by the diagonal of the Cholesky factor of
``H^-1``, is subtracted from the columns not yet rounded, so correlated inputs absorb it.

Group scales (and zero points) come from the format's own round-to-nearest rule
(:func:`lowbit.compiler.formats.quantize`) applied to the group's columns *as updated* when the group's first
column is reached, so the result is an ordinary :class:`QuantizedWeight` of that format: the kernels cannot
tell it from RTN. Columns keep their order (no act-order: it would need a K permutation in the format).

HIGGS formats (1-D grid) are quantized in the rotated space, where they are a codebook: with ``T`` the
block-diagonal group rotation, ``x W^T = (x T^T)(W T^T)^T``, so GPTQ runs on ``W T^T`` with the rotated
inputs' Hessian ``T H T^T``, each group's scale from HIGGS's own rounding-scale search on its updated columns
(:func:`lowbit.compiler.higgs.fit_rotated_groups`). Its columns round at that stored (unbiased) scale: rounding
at the search's rounding scale instead, as RTN does, gave 1-6% more output error under the feedback (the tests'
correlated inputs, 6 draws, 2-4 bits).

A 2-D codebook (``cb{b}g{G}v2``, and the HIGGS 2-D grids in the rotated space) codes pairs of adjacent columns,
so they are rounded a pair at a time, as GPTVQ does (van Baalen et al., 2024): the pair ``S`` goes to its nearest
grid point, and its error ``d`` (N, 2) updates the columns not yet rounded by ``d U_SS^-1 U_S,rest`` with ``U``
the upper Cholesky factor of ``H^-1``. That is the optimal update after fixing both columns at once
(``d [H_F^-1]_SS^-1 [H_F^-1]_S,rest`` over the unrounded columns ``F``, and ``H_F^-1 = U_FF^T U_FF``); with one
column it is GPTQ's ``d / U_ii * U_i,rest``.
"""
import dataclasses

import numpy as np

from lowbit.compiler import higgs
from lowbit.compiler.formats import QuantizedWeight, encode, kernel_format, parse_format, quantize
from lowbit.errors import WeightError

DEFAULT_DAMP = 0.01  # fraction of the mean Hessian diagonal added to it (GPTQ's default)


def hessian(inputs, K):
    """Accumulate ``X^T X`` (float64, (K, K)) over calibration batches whose last dim is K; returns (H, rows)."""
    total, rows = np.zeros((K, K), np.float64), 0
    for batch in inputs:
        x = np.asarray(batch, np.float64)
        if x.shape[-1] != K:
            raise WeightError(f"calibration input has last dimension {x.shape[-1]}; the layer takes K={K}")
        x = x.reshape(-1, K)
        total += x.T @ x
        rows += x.shape[0]
    if rows == 0:
        raise WeightError("no calibration rows reached the layer: pass at least one calibration batch")
    return total, rows


def _inverse_cholesky(H, damp):
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (GPTQ's ``Hinv``)."""
    K = H.shape[0]
    H = H + np.eye(K) * damp * max(float(np.mean(np.diag(H))), np.finfo(np.float64).tiny)
    try:
        lower = np.linalg.cholesky(np.linalg.inv(H))
    except np.linalg.LinAlgError as err:
        raise WeightError(f"GPTQ: the damped calibration Hessian is not positive definite ({err}); raise damp "
                          f"above {damp} or give more calibration rows") from err
    return lower.T


def _group_params(block, fmt):
    """(N,) scales and zeros of one group from its current (error-updated) columns, by the format's RTN rule."""
    per_group = quantize(block, dataclasses.replace(fmt, group_size=None))
    zeros = None if per_group.zeros is None else per_group.zeros[:, 0]
    return per_group.scales[:, 0], zeros


def _higgs_group_params(higgs_format):
    """The group rule of a HIGGS format's rotated codebook: the (unbiased) scale of the searched rounding."""
    def group_params(block, _fmt):
        return higgs.fit_rotated_groups(block.astype(np.float64)[:, None, :], higgs_format)[2][:, 0], None
    return group_params


def gptq_quantize(weight, H, fmt, damp=DEFAULT_DAMP):
    """GPTQ-quantize ``weight`` (N, K) to ``fmt`` given the calibration Hessian ``H`` = X^T X (K, K).

    Returns a :class:`QuantizedWeight` of ``fmt`` (group scales from the updated weights, see module docstring).
    """
    fmt = parse_format(fmt)
    W = np.array(weight, np.float64)
    N, K = W.shape
    if H.shape != (K, K):
        raise WeightError(f"GPTQ: Hessian has shape {H.shape}; the weight (N, K) = {W.shape} needs ({K}, {K})")
    if fmt.group_size and K % fmt.group_size:
        raise WeightError(f"{fmt.name}: group size {fmt.group_size} does not divide K={K}: pick a group size "
                          "that divides K")
    if fmt.kind != "higgs":
        return QuantizedWeight(fmt, *_gptq_columns(W, np.array(H, np.float64), fmt, damp, _group_params))
    rotated_H = higgs.hadamard_rotate(higgs.hadamard_rotate(H, fmt.group_size).T, fmt.group_size)
    codes, scales, _ = _gptq_columns(higgs.hadamard_rotate(W, fmt.group_size), rotated_H, kernel_format(fmt), damp,
                                     _higgs_group_params(fmt))
    return QuantizedWeight(fmt, codes, scales)


def _gptq_columns(W, H, fmt, damp, group_params):
    """(codes, scales, zeros) of GPTQ on float64 ``W`` (changed in place) with Hessian ``H`` (float64 copy)."""
    N, K = W.shape
    dead = np.diag(H) == 0  # inputs never seen: any weight there is free, set it to 0 (as GPTQ does)
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    Hinv = _inverse_cholesky(H, damp)
    group = fmt.group_size or K
    codes = np.zeros((N, K // _dim(fmt)), np.uint8)
    scales = np.zeros((N, K // group), np.float32)
    zeros = np.zeros((N, K // group), np.uint8) if fmt.has_zeros else None
    block = group if fmt.group_size else min(K, 128)
    for start in range(0, K, block):
        stop = min(start + block, K)
        if start % group == 0:
            index = start // group
            scales[:, index], group_zeros = group_params(W[:, start:start + group].astype(np.float32), fmt)
            if zeros is not None:
                zeros[:, index] = group_zeros
        index = start // group
        errors = _quantize_block(W, Hinv, start, stop, fmt, codes, scales[:, index],
                                 None if zeros is None else zeros[:, index])
        W[:, stop:] -= errors @ Hinv[start:stop, stop:]
    return codes, scales, zeros


def _dim(fmt):
    """Columns one code covers: 2 for a 2-D codebook, else 1."""
    return getattr(fmt, "dim", 1)


def _quantize_block(W, Hinv, start, stop, fmt, codes, scale, zero):
    """Round columns [start, stop) one by one (a 2-D codebook: pair by pair) with error feedback inside the
    block; returns the scaled errors (``d U_SS^-1`` per step, see the module docstring)."""
    block = W[:, start:stop]
    errors = np.zeros_like(block)
    zero_column = None if zero is None else zero[:, None]
    rounding = np.where(scale > 0, scale, 1.0)[:, None]  # HIGGS gives an all-zero group scale 0: codes are moot
    dim = _dim(fmt)
    for i in range(0, stop - start, dim):
        columns = block[:, i:i + dim]
        q = encode(columns[:, None, :], fmt, rounding, zero_column)[:, 0, 0]
        codes[:, (start + i) // dim] = q
        difference = columns - _dequantize_codes(q, fmt, scale, zero)
        pivot = Hinv[start + i:start + i + dim, start + i:start + i + dim]  # upper triangular
        err = difference / pivot[0, 0] if dim == 1 else np.linalg.solve(pivot.T, difference.T).T
        block[:, i:] -= err @ Hinv[start + i:start + i + dim, start + i:stop]
        errors[:, i:i + dim] = err
    return errors


def _dequantize_codes(q, fmt, scale, zero):
    """(N, dim) float64 values of one step's codes ``q`` (N,)."""
    scale = scale.astype(np.float64)[:, None]
    if fmt.kind == "codebook":
        return scale * fmt.points.astype(np.float64)[q]
    if zero is not None:
        return scale * (q.astype(np.float64) - zero)[:, None]
    offset = 1.0 if fmt.kind == "ternary" else float(2 ** (fmt.bits - 1))
    return scale * (q.astype(np.float64) - offset)[:, None]
