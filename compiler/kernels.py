"""Compute definitions (TensorIR, through TE) of the decode-in-register mpGEMM kernels.

``Y[M, N] = X[M, K] @ dequant(W)[N, K]^T (+ bias)`` with float32 activations; the weights stay in the
packed layout of :mod:`lowbit.compiler.layout` and are decoded inside the loop. Two templates:

- :func:`accumulate_compute` (small M): per output row tile and K-group, accumulate ``code x activation``
  sums and apply the group's scale and zero point once per group::

      y[m, n] = sum_g s[n, g] * (sum_k q[n, k] x[m, k] - z[n, g] * sum_k x[m, k])

  The zero-point term uses a per-group activation sum computed once per call, not per element.
  The ``partials`` knob splits each word's codes over independent accumulators (``partials`` FMA chains).
- :func:`dequant_tile_compute` (large M): decode a tile of rows to float32 once (scratch in cache), then a
  GEMM over all M reuses it. No full float weight matrix is ever materialised.

Params, in order: ``X, W, S, SZ | LV, [B], Y`` (see the layout module for W/S/SZ/LV).
"""
from lowbit.compiler.tvm_api import te, tirx

F32 = "float32"


def decode_code(layout, word, i):
    """The integer code in slot ``i`` of a packed int32 ``word`` (the reference decode, as TIR)."""
    mask = (1 << layout.bits) - 1
    return (word >> (layout.bits * i)) & mask


def unit_float(layout, code):
    """``1 + code / 2**bits`` as float32, built from bits: no int->float conversion instruction.

    Placing the code in the top mantissa bits of 1.0 (IEEE 754 binary32: 23 mantissa bits) costs one
    shift and one or-with-mask, which the x86 backend fuses into ``vpternlogd``.
    """
    return tirx.reinterpret(F32, (code << (23 - layout.bits)) | 0x3F800000)


def _padded_activations(X, layout, M):
    G, Gp = layout.group_size, layout.padded_group
    if Gp == G:
        return te.compute((M, layout.n_groups, Gp), lambda m, g, kk: X[m, g * G + kk], name="Xp")
    return te.compute(
        (M, layout.n_groups, Gp),
        lambda m, g, kk: tirx.if_then_else(kk < G, X[m, g * G + tirx.min(kk, G - 1)], tirx.const(0, F32)),
        name="Xp")


def _placeholders(layout, M, has_bias):
    L = layout.lanes
    X = te.placeholder((M, layout.K), F32, name="X")
    W = te.placeholder((layout.n_tiles, layout.n_groups, layout.words_per_group, L), "int32", name="W")
    S = te.placeholder((layout.n_tiles, layout.n_groups, L), F32, name="S")
    if layout.decode == "affine":
        third = te.placeholder((layout.n_tiles, layout.n_groups, L), F32, name="SZ")
    else:
        third = te.placeholder(((1 << layout.bits) * layout.dim,), F32, name="LV")
    B = te.placeholder((layout.N,), F32, name="B") if has_bias else None
    return X, W, S, third, B


def padded_rows(M, m_tile):
    """M rounded up to a multiple of ``m_tile``: register tiles then need no per-row predicate (the
    padding rows read a real row of X and are never stored)."""
    if m_tile == 1:
        return M
    if isinstance(M, int):
        return -(-M // m_tile) * m_tile
    return tirx.floordiv(M + (m_tile - 1), m_tile) * m_tile


def _row(m, M, m_tile):
    return m if m_tile == 1 else tirx.min(m, M - 1)


def _output(Y1, B, layout, M):
    if B is None:
        return te.compute((M, layout.N), lambda m, n: Y1[m, n], name="Y")
    return te.compute((M, layout.N), lambda m, n: Y1[m, n] + B[n], name="Y")


def _args(X, W, S, third, B, Y):
    return [X, W, S, third] + ([B] if B is not None else []) + [Y]


def accumulate_compute(layout, M, partials, has_bias, m_tile=1):
    """Small-M template: per-group code x activation sums, scale and zero point applied per group.

    Parameters
    ----------
    layout : KernelLayout
    M : int or tirx.Var
        Rows of X (a Var for a bucket of sizes).
    partials : int
        Independent accumulators per word (divides ``codes_per_word``).
    has_bias : bool
    m_tile : int
        Rows of X per register tile (M is padded to a multiple of it inside the kernel).
    """
    L, vpw, bits = layout.lanes, layout.codes_per_word, layout.bits
    assert vpw % partials == 0, (vpw, partials)
    X, W, S, third, B = _placeholders(layout, M, has_bias)
    Xp = _padded_activations(X, layout, M)
    j = te.reduce_axis((0, layout.words_per_group), name="j")
    ii = te.reduce_axis((0, vpw // partials), name="ii")
    affine = layout.decode == "affine"

    dim = layout.dim

    def term(m, nt, g, p, lane):
        slot = ii * partials + p
        code = decode_code(layout, W[nt, g, j, lane], slot)
        row, k = _row(m, M, m_tile), (j * vpw + slot) * dim
        if affine:
            return unit_float(layout, code) * Xp[row, g, k]
        total = third[code * dim] * Xp[row, g, k]
        for d in range(1, dim):  # a 2-D codebook's point: one code, two weights
            total = total + third[code * dim + d] * Xp[row, g, k + d]
        return total

    Mp = padded_rows(M, m_tile)
    acc = te.compute((Mp, layout.n_tiles, layout.n_groups, partials, L),
                     lambda m, nt, g, p, lane: te.sum(term(m, nt, g, p, lane), axis=[j, ii]), name="ACC")
    g2 = te.reduce_axis((0, layout.n_groups), name="g2")
    p2 = te.reduce_axis((0, partials), name="p2")
    if affine:
        # acc sums (1 + q/2^b) x: y = s*2^b*acc - (s*2^b + s*z) * sum(x)  ==  s * (sum q x - z sum x)
        r = te.reduce_axis((0, layout.padded_group), name="r")
        Xs = te.compute((M, layout.n_groups), lambda m, g: te.sum(Xp[m, g, r], axis=r), name="Xs")
        unit = float(1 << bits)

        def group_term(m, n):
            nt, lane = n // L, n % L
            s = S[nt, g2, lane] * unit
            zero_term = tirx.Select(p2 == 0, (s + third[nt, g2, lane]) * Xs[_row(m, M, m_tile), g2],
                                    tirx.const(0, F32))
            return s * acc[m, nt, g2, p2, lane] - zero_term
    else:
        def group_term(m, n):
            return S[n // L, g2, n % L] * acc[m, n // L, g2, p2, n % L]

    Y1 = te.compute((Mp, layout.n_tiles * L), lambda m, n: te.sum(group_term(m, n), axis=[g2, p2]), name="Y1")
    Y = _output(Y1, B, layout, M)
    return te.create_prim_func(_args(X, W, S, third, B, Y))


def dequant_tile_compute(layout, M, has_bias, m_tile=1):
    """Large-M template: rows decoded to float32 (``WF``, a scratch tile once scheduled), then a GEMM."""
    L, vpw, dim = layout.lanes, layout.codes_per_word, layout.dim
    X, W, S, third, B = _placeholders(layout, M, has_bias)
    Xp = _padded_activations(X, layout, M)

    def dequant(nt, g, kk, lane):
        slot = kk // dim  # the code covering weight kk (itself, or its pair's for a 2-D codebook)
        code = decode_code(layout, W[nt, g, slot // vpw, lane], slot % vpw)
        if layout.decode == "affine":
            return S[nt, g, lane] * code.astype(F32) - third[nt, g, lane]
        return S[nt, g, lane] * third[code * dim + kk % dim if dim > 1 else code]

    WF = te.compute((layout.n_tiles, layout.n_groups, layout.padded_group, L), dequant, name="WF")
    g = te.reduce_axis((0, layout.n_groups), name="g")
    kk = te.reduce_axis((0, layout.padded_group), name="kk")
    Y1 = te.compute((padded_rows(M, m_tile), layout.n_tiles * L),
                    lambda m, n: te.sum(Xp[_row(m, M, m_tile), g, kk] * WF[n // L, g, kk, n % L], axis=[g, kk]),
                    name="Y1")
    Y = _output(Y1, B, layout, M)
    return te.create_prim_func(_args(X, W, S, third, B, Y))
