"""Compute definitions (TensorIR, through TE) of the CUDA mpGEMM kernels.

``Y[M, N] = X[M, K] @ dequant(W)[N, K]^T (+ bias)`` with float16 or bfloat16 activations and outputs,
float32 accumulation; weights in the layout of :mod:`lowbit.compiler.cuda_layout`. The weights are decoded
in a stage of their own (``WD``: one word -> ``vpw`` values) that the schedules keep in registers or
shared memory; no full float weight matrix exists.

- affine formats: ``WD = 1024 + code`` (binary16, the magic-number decode of
  :mod:`lowbit.compiler.intrinsics.cuda_decode`) and ``w = S * (WD - Z)`` with ``Z = 1024 + zero``: exact.
- codebooks: ``WD = code`` (uint32) and ``w = S * LV[code]``.

Params, in order: ``X, W, S, Z | LV, [B], Y``; ``B`` is float32 (N,).
"""
from lowbit.compiler.intrinsics.cuda_decode import code_of, magic_half
from lowbit.compiler.tvm_api import te, tirx

F32 = "float32"
ACTIVATION_DTYPES = ("float16", "bfloat16")


def _placeholders(layout, M, dtype, has_bias):
    X = te.placeholder((M, layout.K), dtype, name="X")
    Np = layout.padded_n
    W = te.placeholder((Np, layout.row_words), "uint32", name="W")
    S = te.placeholder((Np, layout.n_groups), F32, name="S")
    if layout.decode == "affine":
        third = te.placeholder((Np, layout.n_groups), F32, name="Z")
    else:
        third = te.placeholder((1 << layout.bits,), F32, name="LV")
    B = te.placeholder((layout.N,), F32, name="B") if has_bias else None
    return X, W, S, third, B


def decoded_words(layout, W):
    """The decode stage ``WD[n, word, slot]`` (binary16 ``1024 + code``, or the uint32 code)."""
    if layout.decode == "affine":
        return te.compute((layout.padded_n, layout.row_words, layout.codes_per_word),
                          lambda n, j, i: magic_half(W[n, j], i, layout.bits), name="WD")
    return te.compute((layout.padded_n, layout.row_words, layout.codes_per_word),
                      lambda n, j, i: code_of(W[n, j], i, layout.bits), name="WD")


def weight_value(layout, WD, S, third, n, j, i):
    """The float32 weight of slot ``i`` of word ``j`` of row ``n`` (group ``j // words_per_group``)."""
    g = tirx.min(j // layout.words_per_group, layout.n_groups - 1)
    if layout.decode == "affine":
        return S[n, g] * (WD[n, j, i].astype(F32) - third[n, g])
    # The floormod is a no-op on codes (< 2**bits; lowered to an AND); it bounds the index for TVM's
    # region analysis, which must know what part of the codebook a block reads to stage it in shared memory.
    code = tirx.floormod(WD[n, j, i].astype("int32"), 1 << layout.bits)
    return S[n, g] * third[code]


def activation(layout, X, m, j, i, dtype=F32):
    """X[m, k] of slot ``i`` of word ``j`` as ``dtype``, zero for the padding slots of a group.

    Without padding (groups of whole words, row words a multiple of 4) this is a plain load, which the
    GEMM's shared-memory staging turns into ``cp.async``.
    """
    wpg, vpw, G = layout.words_per_group, layout.codes_per_word, layout.group_size
    within = (j % wpg) * vpw + i
    k = (j // wpg) * G + within
    value = X[m, tirx.min(k, layout.K - 1)]
    value = value if value.dtype == dtype else value.astype(dtype)
    if layout.padded_group == G and layout.row_words * vpw == layout.K:
        return value
    valid = tirx.all(within < G, j < layout.n_groups * wpg)
    return tirx.if_then_else(valid, value, tirx.const(0, dtype))


def _output(Y1, B, layout, M, dtype):
    if B is None:
        return te.compute((M, layout.N), lambda m, n: Y1[m, n].astype(dtype), name="Y")
    return te.compute((M, layout.N), lambda m, n: (Y1[m, n] + B[n]).astype(dtype), name="Y")


def gemv_compute(layout, M, rows, has_bias=False):
    """Small-M template: every row of X (padded to ``rows``) against each decoded word.

    Parameters
    ----------
    layout : CudaLayout
    M : int or tirx.Var
        Rows of X (a Var for a bucket of sizes, at most ``rows``).
    rows : int
        Rows computed per weight word (the bucket's upper bound); rows past M re-read row M-1 and are
        never stored, so the hot loop has no per-row predicate.
    has_bias : bool
    """
    dtype = layout.dtype
    X, W, S, third, B = _placeholders(layout, M, dtype, has_bias)
    WD = decoded_words(layout, W)
    j = te.reduce_axis((0, layout.row_words), name="j")
    i = te.reduce_axis((0, layout.codes_per_word), name="i")

    def row(m):
        return m if rows == 1 else tirx.min(m, M - 1)

    Y1 = te.compute((rows, layout.padded_n), lambda m, n: te.sum(
        activation(layout, X, row(m), j, i) * weight_value(layout, WD, S, third, n, j, i), axis=[j, i]), name="Y1")
    Y = _output(Y1, B, layout, M, dtype)
    return _prim_func(layout, [X, W, S, third] + ([B] if B is not None else []) + [Y])


def _prim_func(layout, args):
    """The PrimFunc of ``args``, with the layout facts its schedule rule needs as attributes."""
    func = te.create_prim_func(args)
    return func.with_attr("lowbit.bits", layout.bits)


def gemm_compute(layout, M, m_tile, has_bias=False):
    """Large-M template for tensor cores: decode a tile of weights to ``dtype`` once, then an MMA GEMM.

    ``XP`` is X over the padded K axis (zero in the padding slots of a group, rows past M re-read row M-1),
    ``WF`` the dequantized weights in ``dtype`` (a shared-memory tile once scheduled; decoded with the same
    bit placement as the GEMV), ``Y1`` the float32 GEMM over ``Mp`` rows (M rounded up to ``m_tile``).
    """
    dtype = layout.dtype
    X, W, S, third, B = _placeholders(layout, M, dtype, has_bias)
    vpw = layout.codes_per_word
    Kp = layout.row_words * vpw
    Mp = tirx.floordiv(M + (m_tile - 1), m_tile) * m_tile if not isinstance(M, int) else -(-M // m_tile) * m_tile
    XP = te.compute((Mp, Kp), lambda m, kp: activation(layout, X, tirx.min(m, M - 1), kp // vpw, kp % vpw, dtype),
                    name="XP")

    def dequant(n, kp):
        j, i = kp // vpw, kp % vpw
        g = tirx.min(j // layout.words_per_group, layout.n_groups - 1)
        if layout.decode == "affine":
            value = S[n, g] * (magic_half(W[n, j], i, layout.bits).astype(F32) - third[n, g])
        else:
            value = S[n, g] * third[tirx.floormod(code_of(W[n, j], i, layout.bits).astype("int32"), 1 << layout.bits)]
        return value.astype(dtype)

    WF = te.compute((layout.padded_n, Kp), dequant, name="WF")
    k = te.reduce_axis((0, Kp), name="k")
    Y1 = te.compute((Mp, layout.padded_n), lambda m, n: te.sum(XP[m, k].astype(F32) * WF[n, k].astype(F32), axis=k),
                    name="Y1")
    Y = _output(Y1, B, layout, M, dtype)
    return _prim_func(layout, [X, W, S, third] + ([B] if B is not None else []) + [Y])
