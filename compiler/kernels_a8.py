"""Compute definition (TensorIR, through TE) of the int8-activation mpGEMM kernel (``a8``).

Activations are quantized on the fly, per row and K-group, to int8 with a symmetric scale
``xs = max|x| / 127``; weights are decoded to unsigned bytes in registers; the integer dot products
accumulate in int32 per group; the group's float scales and zero point are applied once per group::

    y[m, n] = sum_g xs[m, g] * s[n, g] * (sum_k q[n, k] * xq[m, k]  -  z[n, g] * sum_k xq[m, k])

The zero-point term uses the per-group sum of the quantized activations (computed once per call), never a
per-element subtraction. The dot product is the reference expression of
:func:`lowbit.compiler.intrinsics.x86_dot.dot_term`, which the schedule tensorizes with the host's
instruction. :func:`reference` is the NumPy truth of the whole kernel.

With the model's own activation codes (onnxruntime's dynamic and static quantization: uint8 / int8 with one
scale ``xs`` and zero point ``xz`` per tensor) the kernel takes those codes as they are: the product is the
model's own integer product, exact, with the zero point's part a per-column term (``c``: see relayout_a8)::

    y[m, n] = xs * sum_g s[n, g] * (sum_k q[n, k] * a[m, k]  -  z[n, g] * sum_k a[m, k]  +  (shift - xz) * c[n, g])

where ``a = code - shift`` is int8 (``shift`` 128 for uint8 codes, 0 for int8).

Params, in order: ``X, [XS, XZ], W, S, Z, [C], [B], Y`` (layout: :func:`lowbit.compiler.layout.relayout_a8`).
"""
import numpy as np

from lowbit.compiler.intrinsics.x86_dot import dot_term
from lowbit.compiler.kernels import F32, _output, _padded_activations, _row, padded_rows
from lowbit.compiler.layout import activation_group
from lowbit.compiler.tvm_api import te, tirx

INT8_MAX = 127.0
TINY = 1e-30  # guards the all-zero group: its codes are 0 whatever the scale


def _nan_max():
    """A max reducer that keeps NaN: ``a`` when ``a >= b`` or ``a`` is NaN, else ``b`` (``isnan``, not ``a != a``,
    which TVM's simplifier folds to false).

    ``te.max`` lowers to ``a > b ? a : b``, which drops a NaN met after the first element; then ``round(NaN)``
    to int8 is undefined and a NaN activation gave finite garbage. With AMAX NaN, the group's scale is NaN
    and so is every output of the row, as in float arithmetic. The identity is 0: it reduces ``|x| >= 0``.
    """
    return te.comm_reducer(lambda a, b: tirx.Select(tirx.Or(a >= b, tirx.isnan(a)), a, b),
                           lambda dtype: tirx.const(0, dtype), name="nan_max")


def quantize_activations(Xp, M, layout):
    """Blocks AMAX (per row and group, NaN if the group holds one), XQ (int8) and XSUM (int32 sum of XQ)."""
    r = te.reduce_axis((0, layout.padded_group), name="r")
    nan_max = _nan_max()
    amax = te.compute((M, layout.n_groups), lambda m, g: nan_max(tirx.abs(Xp[m, g, r]), axis=r), name="AMAX")

    def quantized(m, g, kk):
        inverse = tirx.const(INT8_MAX, F32) / tirx.max(amax[m, g], tirx.const(TINY, F32))
        return tirx.round(Xp[m, g, kk] * inverse).astype("int8")

    xq = te.compute((M, layout.n_groups, layout.padded_group), quantized, name="XQ")
    r2 = te.reduce_axis((0, layout.padded_group), name="r2")
    xsum = te.compute((M, layout.n_groups), lambda m, g: te.sum(xq[m, g, r2].astype("int32"), axis=r2), name="XSUM")
    return amax, xq, xsum


def model_codes(X, layout, M, rows=None):
    """Blocks XQ (int8: the model's codes, uint8 ones shifted by -128) and XSUM (int32 sum of XQ) for X the
    model's own activation codes (``layout.activation`` uint8 / int8); padding past K is 0 (it adds nothing).

    ``rows`` (at least M) pads XQ to that many rows, repeating the last row of X, and lays it out group-major,
    ``(group, row, k)``: the AMX kernel reads whole 16-row x 64-k tiles of one group (the padding rows' results
    are never stored). Returns ``(xq(m, g, k) -> value, xsum)``."""
    G, Gp, shift = layout.group_size, layout.padded_group, code_shift(layout.activation)

    def shifted(m, g, kk):
        row = m if rows is None else tirx.min(m, M - 1)
        code = (X[row, g * G + (kk if Gp == G else tirx.min(kk, G - 1))].astype("int32") - shift).astype("int8")
        return code if Gp == G else tirx.if_then_else(kk < G, code, tirx.const(0, "int8"))

    if rows is None:
        xq = te.compute((M, layout.n_groups, Gp), shifted, name="XQ")
        at = lambda m, g, k: xq[m, g, k]  # noqa: E731
    else:
        xq = te.compute((layout.n_groups, rows, Gp), lambda g, m, kk: shifted(m, g, kk), name="XQ")
        at = lambda m, g, k: xq[g, m, k]  # noqa: E731
    r2 = te.reduce_axis((0, Gp), name="r2")
    xsum = te.compute((M if rows is None else rows, layout.n_groups),
                      lambda m, g: te.sum(at(m, g, r2).astype("int32"), axis=r2), name="XSUM")
    return at, xsum


def code_shift(activation):
    """What the kernel subtracts from the model's activation codes to make them int8: 128 for uint8, 0 for int8."""
    return 128 if activation == "uint8" else 0


def _activations(layout, M, rows=None):
    """(inputs, xq, xsum, row scale (row, g) -> float, extra weight arrays, column term (nt, g, lane) or None).

    Float activations are quantized here per row and K-group; the model's codes come with one scale and zero
    point ``XZ`` for the tensor, whose part of the product, ``(shift - XZ) * C`` with ``C`` the group's sum of
    ``code - zero``, is one float term per group (see :func:`lowbit.compiler.layout.relayout_a8`).
    """
    L = layout.lanes
    if layout.activation == "float32":
        X = te.placeholder((M, layout.K), F32, name="X")
        amax, xq, xsum = quantize_activations(_padded_activations(X, layout, M), M, layout)
        return [X], lambda m, g, k: xq[m, g, k], xsum, lambda row, g: amax[row, g] * tirx.const(1.0 / INT8_MAX, F32), \
            [], None
    X = te.placeholder((M, layout.K), layout.activation, name="X")
    XS = te.placeholder((1,), F32, name="XS")
    XZ = te.placeholder((1,), "int32", name="XZ")
    C = te.placeholder((layout.n_tiles, layout.n_groups, L), "int32", name="C")
    xq, xsum = model_codes(X, layout, M, rows)
    shift = code_shift(layout.activation)

    def column(nt, g, lane):
        return (shift - XZ[0]).astype(F32) * C[nt, g, lane].astype(F32)

    return [X, XS, XZ], xq, xsum, lambda row, g: XS[0], [C], column


def a8_compute(layout, M, has_bias, m_tile=1, padded_codes=False):
    """The ``a8`` template for ``M`` rows (int or Var), padded inside to a multiple of ``m_tile``.

    ``padded_codes`` (the model's codes only): XQ itself has the padded rows, so the dot products read whole
    ``m_tile``-row tiles of it (the AMX kernel's A tiles) instead of clamping each row index.
    """
    if padded_codes and layout.activation == "float32":
        raise ValueError("padded_codes is for layouts of the model's activation codes")
    L, bits, vpw = layout.lanes, layout.bits, layout.codes_per_word
    W = te.placeholder((layout.n_tiles, layout.n_groups, layout.words_per_group, L), "int32", name="W")
    S = te.placeholder((layout.n_tiles, layout.scale_groups, L), F32, name="S")
    Z = te.placeholder((layout.n_tiles, layout.scale_groups, L), "int32", name="Z")
    B = te.placeholder((layout.N,), F32, name="B") if has_bias else None
    ratio = layout.scale_ratio
    Mp = padded_rows(M, m_tile)
    inputs, xq, xsum, row_scale, extra, column = _activations(layout, M, Mp if padded_codes else None)
    row_of = (lambda m: m) if padded_codes else (lambda m: _row(m, M, m_tile))
    w = te.reduce_axis((0, layout.words_per_group), name="w")
    j = te.reduce_axis((0, 4), name="j")
    # 8-bit codes have one slot per byte: no slot axis (a unit loop would not match the intrinsic)
    p = te.reduce_axis((0, 8 // bits), name="p") if bits < 8 else tirx.const(0, "int32")
    axes = [w, p, j] if bits < 8 else [w, j]
    def dot(m, nt, g, lane):
        return te.sum(dot_term(W[nt, g, w, lane], xq(row_of(m), g, w * vpw + p * 4 + j), p, j, bits), axis=axes)

    if padded_codes:  # the AMX tiles: rows and lanes the trailing axes
        acc = te.compute((layout.n_tiles, layout.n_groups, Mp, L), lambda nt, g, m, lane: dot(m, nt, g, lane),
                         name="ACC")
        acc_at = lambda m, nt, g, lane: acc[nt, g, m, lane]  # noqa: E731
    else:
        acc = te.compute((Mp, layout.n_tiles, layout.n_groups, L), dot, name="ACC")
        acc_at = lambda m, nt, g, lane: acc[m, nt, g, lane]  # noqa: E731
    g2 = te.reduce_axis((0, layout.n_groups), name="g2")

    def group_term(m, n):
        nt, lane, row = n // L, n % L, row_of(m)
        sg = g2 // ratio if ratio > 1 else g2
        total = (acc_at(m, nt, g2, lane) - Z[nt, sg, lane] * xsum[row, g2]).astype(F32)
        if column is not None:
            total = total + column(nt, g2, lane)
        return row_scale(row, g2) * S[nt, sg, lane] * total

    Y1 = te.compute((Mp, layout.n_tiles * L), lambda m, n: te.sum(group_term(m, n), axis=g2), name="Y1")
    Y = _output(Y1, B, layout, M)
    func = te.create_prim_func(inputs + [W, S, Z] + extra + ([B] if B is not None else []) + [Y])
    return func.with_attr("lowbit.code_bits", bits)


def quantize_activations_reference(x, group_size):
    """NumPy twin of :func:`quantize_activations`: (dequantized activations float64, xq int8, xs float32)."""
    M, K = x.shape
    groups = x.astype(np.float32).reshape(M, K // group_size, group_size)
    amax = np.abs(groups).max(axis=2, keepdims=True)
    inverse = np.float32(INT8_MAX) / np.maximum(amax, np.float32(TINY))
    xq = np.round(groups * inverse).astype(np.int8)  # |x * inverse| <= 127 (float32, as the kernel)
    xs = amax * np.float32(1.0 / INT8_MAX)
    return (xq.astype(np.float64) * xs.astype(np.float64)).reshape(M, K), xq.reshape(M, K), xs[..., 0]


def reference(qw, x):
    """What the ``a8`` kernel computes, in float64: int8-quantized activations times the dequantized weight."""
    x_deq, _, _ = quantize_activations_reference(x, activation_group(qw.group_size))
    return x_deq @ qw.dequantize().astype(np.float64).T


def codes_reference(qw, codes, scale, zero):
    """What the ``a8`` kernel computes from the model's activation codes (``codes`` (M, K) uint8 / int8, one
    ``scale`` and ``zero`` point), in float64: the model's dequantized activation times the dequantized weight."""
    x = (codes.astype(np.float64) - float(zero)) * float(np.float32(scale))
    return x @ qw.dequantize().astype(np.float64).T
