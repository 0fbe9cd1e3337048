"""Compute definition (TensorIR, through TE) of the table-lookup mpGEMM kernel (``lut``, after T-MAC).

Per row of X and table group ``t`` (``TG`` consecutive k, see :class:`lowbit.compiler.layout.LutLayout`):

1. Activations are quantized to int8 as the ``a8`` kernels do (``xs = max|x| / 127``).
2. Bit-serial (uniform, ternary): for every chunk of ``g`` activations, the table of the ``2**g`` signed
   sums ``sum_j (+-1) xq_j`` that one bit plane can select. The table is symmetric (flipping every bit
   negates the sum), so only the half with the last sign ``+`` is computed (``H``); the rest is recovered by
   negation when the full 16-entry table is laid out for the shuffle. With a bit ``q_b = (1 + sigma_b) / 2``::

       sum_k q[n,k] x_k = 1/2 sum_b 2^b sum_c T_c[index_b(n, c)] + (2^bits - 1)/2 * sum_k x_k

   Codebook: a 4-bit index ``e`` stands for ``p = per_chunk`` weights ``P[e]`` (one 4-bit code, two 2-bit
   codes, or a 2-D codebook's point pair; :func:`lowbit.compiler.layout.lut_points`), and the table of a
   chunk is ``sum_j P[e, j] * xq_j`` over its ``p`` activations for the 16 indices ``e``.
3. ``table_bits=8``: the tables are quantized to int8 with one scale per (row, table group)
   (``127 / max|entry|``); ``table_bits=16``: the entries are kept exactly (a codebook's to 1/256 of a
   level x activation unit) and looked up as a low and a high byte table, ``entry = 256 * high + low``.
4. For every ``lanes`` output rows: one lookup per (chunk, bit plane, table byte) into int16 sums
   (``ACC``), then per table group: planes combined with shifts, bytes with 256, one float scale per group::

       y[m, n] += S[n, G] * (ts[m, t] / 2 * sum_{byte, b} 256^byte * 2^b * ACC
                             + ((2^bits - 1) / 2 - Z[n, G]) * xs[m, t] * sum_k xq)

   (a codebook has no activation-sum term, and no halving: ``y += S * ts * sum ACC``).

The tables are computed once per row and table group, before the loop over N, and shared by every row tile.
The lookup is :func:`lowbit.compiler.intrinsics.x86_lut.lookup_term` (one-hot select over 16 entries), which
the schedule tensorizes with ``vpshufb``; ``lookup="gather"`` indexes the table directly (portable kernel).
:func:`reference` is the NumPy truth of the whole kernel.

Params, in order: ``X, W, S, [Z | LV], [B], Y`` (layout: :func:`lowbit.compiler.layout.relayout_lut`).
"""
import types

import numpy as np

from lowbit.compiler.intrinsics.x86_lut import ENTRIES, lookup_term, nibble, paired_lookup_term, table_index
from lowbit.compiler.kernels import F32
from lowbit.compiler.kernels_a8 import INT8_MAX, quantize_activations, quantize_activations_reference
from lowbit.compiler.layout import lut_indices, lut_points, relayout_lut
from lowbit.compiler.tvm_api import te, tirx

BYTE_SPLIT = 128  # entry = 256 * ((entry + 128) >> 8) + low, with low in [-128, 127]


def _half_tables(xq, layout, M):
    """``H[m, t, c, h]``: signed sums of chunk ``c`` with the sign of activation ``j`` from bit ``j`` of
    ``h`` (1: +, 0: -) for ``j < g - 1`` and + for the last one: the half of the table the rest mirrors."""
    g = layout.per_chunk

    def signed_sum(m, t, c, h):
        total = xq[m, t, c * g + g - 1].astype("int32")
        for j in range(g - 1):
            x = xq[m, t, c * g + j].astype("int32")
            total = total + tirx.Select(((h >> j) & 1) == 1, x, -x)
        return total

    return te.compute((M, layout.n_table_groups, layout.chunks, 1 << (g - 1)), signed_sum, name="H")


def _full_entry(H, layout, m, t, c, e):
    """Entry ``e`` of the full table from its half: ``T[e] = H[e']`` with the last bit set, else
    ``-H[~e']`` (a table of g < 4 activations leaves entries ``2**g..15`` at 0)."""
    g = layout.per_chunk
    half = (1 << (g - 1)) - 1
    low = e & half
    mirrored = tirx.Select((e >> (g - 1)) == 1, H[m, t, c, low], -H[m, t, c, half - low])
    return mirrored if g == 4 else tirx.Select(e < (1 << g), mirrored, tirx.const(0, "int32"))


def _split_byte(value, byte):
    """Byte ``byte`` (a Var: 0 low, signed; 1 high) of an int16 table entry: ``value = 256 * high + low``."""
    high = (value + BYTE_SPLIT) >> 8
    return tirx.Select(byte == 1, high, value - high * 256)


def _bit_serial_tables(xq, amax, layout, M):
    """Bit-serial tables: ``entry(m, t, c, byte, e)`` (int8) and ``scale(m, t)`` (float32, the value of one
    table unit, halved: each bit counts as +-1 in the tables, so a bit's sum is half the table's)."""
    H = _half_tables(xq, layout, M)
    half_unit = tirx.const(0.5 / INT8_MAX, F32)
    if layout.params.table_bits == 16:
        def exact(m, t, c, byte, e):
            return _split_byte(_full_entry(H, layout, m, t, c, e), byte).astype("int8")

        return exact, lambda m, t: amax[m, t] * half_unit
    c2, h2 = te.reduce_axis((0, layout.chunks), name="c2"), te.reduce_axis((0, H.shape[3]), name="h2")
    tmax = te.compute((M, layout.n_table_groups), lambda m, t: te.max(tirx.abs(H[m, t, c2, h2]), axis=[c2, h2]),
                      name="TMAX")

    def unit(m, t):  # the largest entry (at least 1: an all-zero group keeps zero entries)
        return tirx.max(tmax[m, t], 1).astype(F32)

    def rounded(m, t, c, byte, e):
        inverse = tirx.const(INT8_MAX, F32) / unit(m, t)
        return tirx.round(_full_entry(H, layout, m, t, c, e).astype(F32) * inverse).astype("int8")

    return rounded, lambda m, t: amax[m, t] * tirx.const(1.0 / INT8_MAX, F32) * unit(m, t) * half_unit


def _codebook_tables(xq, amax, layout, LV):
    """Codebook tables ``sum_j P[e, j] * xq[c * p + j]`` (in units of 1, or 1/256 with ``table_bits=16``; ``P``
    is ``LV`` as (16, p)): ``entry`` and ``scale`` as :func:`_bit_serial_tables`."""
    multiplier = 1.0 if layout.params.table_bits == 8 else 256.0
    p = layout.per_chunk
    # One product rounds once in float32. A sum of several is formed in float64, where every float32 x int8
    # product and their sum are exact: a float32 sum would round differently wherever LLVM fuses it into an
    # FMA, and entries near a half unit would then round to different integers than the NumPy twin's.
    sum_dtype = "float32" if p == 1 else "float64"

    def entry(m, t, c, byte, e):
        total = LV[e * p].astype(sum_dtype) * xq[m, t, c * p].astype(sum_dtype)
        for j in range(1, p):
            total = total + LV[e * p + j].astype(sum_dtype) * xq[m, t, c * p + j].astype(sum_dtype)
        value = tirx.round(total * tirx.const(multiplier, sum_dtype)).astype("int32")
        return (value if layout.params.table_bits == 8 else _split_byte(value, byte)).astype("int8")

    return entry, lambda m, t: amax[m, t] * tirx.const(1.0 / INT8_MAX / multiplier, F32)


def _tables(xq, amax, layout, M, LV):
    """(TQ int8 (M, TGn, C, bytes, 16), TS float32 (M, TGn)): the tables and the value of one table unit."""
    if layout.kind == "uniform":
        entry, scale = _bit_serial_tables(xq, amax, layout, M)
    else:
        entry, scale = _codebook_tables(xq, amax, layout, LV)
    TQ = te.compute((M, layout.n_table_groups, layout.chunks, layout.table_bytes, layout.entries), entry, name="TQ")
    TS = te.compute((M, layout.n_table_groups), scale, name="TS")
    return TQ, TS


def _lookups(W, TQ, layout, M, lookup):
    """``ACC[m, nt, t, byte, b, *rows]``: int16 sums over the chunks of table group ``t`` of the entries the
    indices of a tile's rows select (``rows``: :attr:`LutLayout.row_shape`; ``b`` a plane, or a plane pair
    whose lookups are weighted 1 and 2). ``lookup``: "select" (the one-hot sum the intrinsic matches) or
    "gather" (a direct index, the portable kernel)."""
    groups = layout.planes // 2 if layout.paired else layout.planes
    shape = (M, layout.n_tiles, layout.n_table_groups, layout.table_bytes, groups) + layout.row_shape
    c = te.reduce_axis((0, layout.chunks), name="c")
    e = te.reduce_axis((0, layout.entries), name="e")
    if not layout.paired:
        if lookup == "gather":
            return te.compute(shape, lambda m, nt, t, byte, b, s, i: te.sum(
                TQ[m, t, c, byte, table_index(W[nt, t, c, b, i], s, layout.wide)].astype("int16"), axis=c),
                name="ACC")
        return te.compute(shape, lambda m, nt, t, byte, b, s, i: te.sum(
            lookup_term(W[nt, t, c, b, i], s, e, TQ[m, t, c, byte, e], layout.wide), axis=[c, e]), name="ACC")
    p = te.reduce_axis((0, 2), name="p")
    if lookup == "gather":
        return te.compute(shape, lambda m, nt, t, byte, q, v, s, j: te.sum(
            TQ[m, t, c, byte, nibble(W[nt, t, c, q, v, j * 2 + p], s)].astype("int16") * (p + 1).astype("int16"),
            axis=[c, p]), name="ACC")
    return te.compute(shape, lambda m, nt, t, byte, q, v, s, j: te.sum(
        paired_lookup_term(W[nt, t, c, q, v, j * 2 + p], s, e, TQ[m, t, c, byte, e], p), axis=[c, p, e]),
        name="ACC")


def _row_in_tile(layout, rows):
    """Row of a tile (``0..lanes-1``) at the kernel's row coordinates ``rows``."""
    if layout.paired:
        v, s, j = rows
        return v * layout.vector_bytes + s * (layout.vector_bytes // 2) + j
    s, i = rows
    return s * layout.vector_bytes + i


def _rows_of(layout, n):
    """The kernel's row coordinates of output row ``n`` (inverse of :func:`_row_in_tile`)."""
    r, VB = n % layout.lanes, layout.vector_bytes
    if layout.paired:
        return [r // VB, (r % VB) // (VB // 2), r % (VB // 2)]
    return [r // VB, r % VB]


def lut_compute(layout, M, has_bias, lookup="select"):
    """The ``lut`` template for ``M`` rows (int or Var)."""
    R, TG = layout.lanes, layout.table_group
    X = te.placeholder((M, layout.K), F32, name="X")
    W = te.placeholder(layout.weight_shape, "uint8", name="W")
    S = te.placeholder((layout.n_tiles, layout.n_groups, R), F32, name="S")
    third = None
    if layout.has_zeros:
        third = te.placeholder((layout.n_tiles, layout.n_groups, R), "uint8", name="Z")
    elif layout.kind == "codebook":
        third = te.placeholder((layout.entries * layout.per_chunk,), F32, name="LV")
    B = te.placeholder((layout.N,), F32, name="B") if has_bias else None
    Xp = te.compute((M, layout.n_table_groups, TG), lambda m, t, k: X[m, t * TG + k], name="Xp")
    amax, xq, xsum = quantize_activations(Xp, M, types.SimpleNamespace(n_groups=layout.n_table_groups,
                                                                        padded_group=TG))
    TQ, TS = _tables(xq, amax, layout, M, third)
    acc = _lookups(W, TQ, layout, M, lookup)
    t = te.reduce_axis((0, layout.n_table_groups), name="t")
    per_scale = layout.group_size // TG
    step = 2 if layout.paired else 1  # plane bits per accumulator

    def combined(m, nt, rows):
        total = None
        for byte in range(layout.table_bytes):
            for b in range(layout.planes // step):
                term = acc[(m, nt, t, byte, b) + tuple(rows)].astype("int32") * (1 << (b * step + 8 * byte))
                total = term if total is None else total + term
        return total.astype(F32)

    if layout.kind == "uniform":
        XO = te.compute((M, layout.n_table_groups), lambda m, g: amax[m, g] * tirx.const(1.0 / INT8_MAX, F32)
                        * xsum[m, g].astype(F32), name="XO")

        center = (2 ** layout.bits - 1) / 2

        def offset(nt, lane):
            if third is None:
                return tirx.const(center - layout.fixed_zero, F32)
            return tirx.const(center, F32) - third[nt, t // per_scale, lane].astype(F32)

        def group_term(m, nt, *rows):
            lane = _row_in_tile(layout, rows)
            return S[nt, t // per_scale, lane] * (TS[m, t] * combined(m, nt, rows) + offset(nt, lane) * XO[m, t])
    else:
        def group_term(m, nt, *rows):
            return S[nt, t // per_scale, _row_in_tile(layout, rows)] * TS[m, t] * combined(m, nt, rows)

    Y1 = te.compute((M, layout.n_tiles) + layout.row_shape,
                    lambda m, nt, *rows: te.sum(group_term(m, nt, *rows), axis=t), name="Y1")

    def output(m, n):
        value = Y1[tuple([m, n // R] + _rows_of(layout, n))]
        return value + B[n] if B is not None else value

    Y = te.compute((M, layout.N), output, name="Y")
    func = te.create_prim_func([X, W, S] + [a for a in (third, B) if a is not None] + [Y])
    return func.with_attrs({"lowbit.lut_lookup": lookup, "lowbit.lut_vector_bytes": layout.vector_bytes,
                            "lowbit.lut_entries": layout.entries,
                            "lowbit.lut_tiles": layout.n_tiles, "lowbit.lut_chunks": layout.chunks})


# ---- NumPy reference -----------------------------------------------------------------------------------

def tables_reference(x, layout, levels=None):
    """NumPy twin of the kernel's activation quantization and tables.

    Returns (TQ int64 (M, TGn, C, bytes, 16), ts float64 (M, TGn), xo float64 (M, TGn)): table entries, the
    value of one table unit, and ``xs * sum(xq)`` per row and table group.
    """
    M = x.shape[0]
    _, xq, xs = quantize_activations_reference(x, layout.table_group)
    xq = xq.reshape(M, layout.n_table_groups, layout.chunks, layout.per_chunk).astype(np.int64)
    xs = xs.astype(np.float32)
    xo = xs.astype(np.float64) * xq.sum(axis=(2, 3))
    f32 = np.float32
    if layout.kind == "uniform":
        g = layout.per_chunk
        entries = np.arange(ENTRIES)
        signs = np.where((entries[:, None] >> np.arange(g)) & 1, 1, -1)  # (16, g)
        full = np.einsum("mtcj,ej->mtce", xq, signs)
        full[..., entries >= 1 << g] = 0
        if layout.params.table_bits == 8:
            unit = np.maximum(np.abs(full).max(axis=(2, 3)), 1)
            inverse = f32(INT8_MAX) / unit.astype(f32)
            tq = np.round(full.astype(f32) * inverse[..., None, None])[..., None, :]
            ts = xs.astype(np.float64) * unit * np.float64(f32(1.0 / INT8_MAX))
        else:
            tq = _split_reference(full)
            ts = xs.astype(np.float64)
    else:
        multiplier = f32(1.0 if layout.params.table_bits == 8 else 256.0)
        points = np.asarray(levels, f32).reshape(layout.entries, layout.per_chunk)
        sum_dtype = f32 if layout.per_chunk == 1 else np.float64  # as the kernel: a sum of products exact in float64
        total = sum(points[:, j].astype(sum_dtype) * xq[..., j, None].astype(sum_dtype)
                    for j in range(layout.per_chunk))
        product = np.round(total * sum_dtype(multiplier)).astype(np.int64)
        tq = product[..., None, :] if layout.params.table_bits == 8 else _split_reference(product)
        ts = xs.astype(np.float64) / np.float64(multiplier)
    return tq.astype(np.int64), ts, xo


def _split_reference(value):
    high = (value + BYTE_SPLIT) >> 8
    return np.stack([value - high * 256, high], axis=-2)


def reference(qw, x, params, magnitude=False):
    """What the ``lut`` kernel computes, in float64 from the same int8 tables (NumPy, no packing).

    With ``magnitude=True`` also returns ``sum_t |term_t|`` (M, N): the size of what the kernel's float
    epilogue adds up, which bounds its fp32 rounding.
    """
    layout, arrays = relayout_lut(qw, 8, params)
    tq, ts, xo = tables_reference(x, layout, arrays.get("LV"))
    scales, offsets = _group_factors(qw, layout)
    total = _lookup_sums(tq, _indices(qw, layout), layout)
    terms = [scales[None] * ts[:, None] * total]
    if offsets is not None:
        terms.append(offsets[None] * xo[:, None])
    y = sum(terms).sum(axis=2)
    return (y, sum(np.abs(term) for term in terms).sum(axis=2)) if magnitude else y


def _lookup_sums(tq, indices, layout):
    """``sum_{byte, b} 256^byte 2^b sum_c TQ[m, t, c, byte, index_b[n, t, c]]`` (M, N, TGn), as one matmul per
    (plane, table group, byte) against the one-hot of the indices: memory stays O(N * C * 16) whatever M.
    The sums are integers below 2**24, exact in float32."""
    M, C, E = tq.shape[0], layout.chunks, layout.entries
    total = np.zeros((M, layout.N, layout.n_table_groups))
    for b, index in enumerate(indices):
        for t in range(layout.n_table_groups):
            one_hot = (index[:, t, :, None] == np.arange(E)).astype(np.float32).reshape(layout.N, C * E)
            for byte in range(layout.table_bytes):
                table = tq[:, t, :, byte, :].reshape(M, C * E).astype(np.float32)
                total[:, :, t] += 2.0 ** b * 256.0 ** byte * (table @ one_hot.T)
    return total


def table_rounding_bound(qw, x, params):
    """Largest ``|y(int8 tables) - y(exact tables)|`` (M, N): every entry is rounded by at most half a
    table unit ``ts``, and one output adds ``chunks`` lookups per plane, plane ``b`` weighted ``2**b``."""
    layout, arrays = relayout_lut(qw, 8, params)
    if layout.params.table_bits != 8:
        return np.zeros((x.shape[0], layout.N))
    _, ts, _ = tables_reference(x, layout, arrays.get("LV"))
    scales, _ = _group_factors(qw, layout)
    lookups = layout.chunks * (2 ** layout.planes - 1)  # sum_b 2^b over the planes, times the chunks
    return 0.5 * lookups * ts @ np.abs(scales).T


def _group_factors(qw, layout):
    """Per (row, table group) float factors of the epilogue: (S (N, TGn), SO (N, TGn) or None)."""
    per_scale = layout.group_size // layout.table_group
    scales = np.repeat(qw.scales.astype(np.float64), per_scale, axis=1)
    if layout.kind == "codebook":
        return scales * lut_points(qw.format)[1], None
    offset = (2 ** qw.format.bits - 1) / 2 - np.repeat(qw.affine_zeros(), per_scale, axis=1)
    return scales / 2, scales * offset


def _indices(qw, layout):
    """The table index of every (row, table group, chunk), one (N, TGn, C) array per bit plane."""
    index = lut_indices(qw.codes, layout).astype(np.int64)
    return [index[..., b] for b in range(layout.planes)]
