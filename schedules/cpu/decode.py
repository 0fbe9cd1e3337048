"""CPU schedule rules for the decode-in-register mpGEMM kernels (templates in compiler/kernels.py).

Each rule has one job: ``apply(func, target, config) -> Schedule | None`` (None: not mine). Its config
is a frozen dataclass; a tuned result is just a config. ``template(layout, M, has_bias, config)`` builds the
compute the rule schedules, so the compute and its schedule are chosen together.
"""
import dataclasses

from lowbit.compiler import kernels
from lowbit.compiler.tvm_api import Schedule, tirx


def _block_names(func):
    """Names of the blocks of a PrimFunc (the rule's way to recognise its own template)."""
    sch = Schedule(func)
    root = sch.get_sblock("root")
    return {sch.get(block).name_hint for block in sch.get_child_blocks(root)}


def _acc_shape(sch, acc):
    return list(sch.get(acc).writes[0].source.shape)


def _acc_extents(sch, acc, config):
    """(name, extent) of ACC's loops under the group loop, in the order compute_at creates them."""
    block = sch.get(acc)
    reduce_extents = [int(iv.dom.extent) for iv in block.iter_vars if iv.iter_type == 2]
    partials, lanes = (int(x) for x in _acc_shape(sch, acc)[3:])
    rows = config.m_tile if config.m_tile > 1 else 1
    return [("rows", rows), ("p", partials), ("lane", lanes), ("j", reduce_extents[0]), ("ii", reduce_extents[1])]


@dataclasses.dataclass(frozen=True)
class AccumulateConfig:
    """Knobs of :class:`DecodeAccumulate`.

    partials : independent accumulators per packed word (None: one per code slot, the GEMV default).
    m_tile : rows of X that share one decoded weight vector (1 for GEMV).
    """

    partials: int = 0  # 0: one accumulator per code slot
    m_tile: int = 1


class DecodeAccumulate:
    """Small M (GEMV and a few rows): decode each word once, FMA it into ``m_tile`` rows' accumulators.

    Loop nest per parallel tile of ``lanes`` output rows: groups -> words -> code slots (unrolled) ->
    rows of X (unrolled) -> lanes (vectorised). Group scales and zero points are applied once per group.
    """

    name = "decode_accumulate"

    def template(self, layout, M, has_bias, config):
        partials = config.partials or layout.codes_per_word
        return kernels.accumulate_compute(layout, M, partials, has_bias, config.m_tile)

    def apply(self, func, target, config):
        if not {"ACC", "Y1", "Y"} <= _block_names(func):
            return None
        sch = Schedule(func)
        lanes = target.vector_lanes
        y1, acc, y = sch.get_sblock("Y1"), sch.get_sblock("ACC"), sch.get_sblock("Y")
        m, n, g, p = sch.get_loops(y1)
        partials = int(_acc_shape(sch, acc)[3])
        nt, lane = sch.split(n, [None, lanes])
        if config.m_tile == 1 and isinstance(sch.get(m).extent, tirx.IntImm):
            sch.reorder(m, nt, g, p, lane)
            outer = sch.fuse(m, nt)
            rows, depth = None, 2
        elif config.m_tile == 1:
            # symbolic M: fusing int64 M with the int32 tile loop leaves casts that break decompose_reduction
            sch.reorder(nt, m, g, p, lane)
            outer, rows, depth = nt, None, 3
        else:
            mo, rows = sch.split(m, [None, config.m_tile])
            sch.reorder(nt, mo, g, p, rows, lane)
            outer, depth = nt, 3
        sch.compute_at(acc, g)
        # compute_at regenerates the loops under g in block-iter order (spatial, then reduce), dropping
        # unit extents: name them from the extents the template was built with.
        extents = _acc_extents(sch, acc, config)
        named = dict(zip([k for k, e in extents if e > 1], sch.get_loops(acc)[depth:]))
        a_rows, a_p, a_lane, a_j, a_ii = (named.get(k) for k in ("rows", "p", "lane", "j", "ii"))
        inner = [loop for loop in (a_j, a_ii, a_p, a_rows, a_lane) if loop is not None]
        sch.reorder(*inner)
        for loop in (a_ii, a_p, a_rows):
            if loop is not None:
                sch.unroll(loop)
        sch.vectorize(a_lane)
        sch.set_scope(acc, 0, "local")
        if partials > 1:
            sch.unroll(p)
        if rows is not None:
            sch.unroll(rows)
        sch.vectorize(lane)
        local = sch.cache_write(y1, 0, "local")
        sch.compute_inline(local)
        sch.reverse_compute_at(y, outer)
        sch.parallel(outer)
        sch.decompose_reduction(acc, inner[0])
        sch.decompose_reduction(y1, g)
        return sch


@dataclasses.dataclass(frozen=True)
class DequantTileConfig:
    """Knobs of :class:`DecodeDequantTile`: rows of X and vector tiles of output rows per register tile."""

    m_tile: int = 6
    n_vectors: int = 2


class DecodeDequantTile:
    """Large M: decode ``lanes`` rows x all of K to a float32 scratch tile once, then run a register-tiled
    GEMM over every row of X against it (decoding cost amortised over M)."""

    name = "decode_dequant_tile"

    def template(self, layout, M, has_bias, config):
        return kernels.dequant_tile_compute(layout, M, has_bias, config.m_tile)

    def apply(self, func, target, config):
        if not {"WF", "Y1", "Y"} <= _block_names(func):
            return None
        sch = Schedule(func)
        lanes = target.vector_lanes
        y1, wf, y = sch.get_sblock("Y1"), sch.get_sblock("WF"), sch.get_sblock("Y")
        m, n, g, kk = sch.get_loops(y1)
        nt, vec, lane = sch.split(n, [None, config.n_vectors, lanes])
        mo, rows = sch.split(m, [None, config.m_tile])
        sch.reorder(nt, mo, g, kk, rows, vec, lane)
        sch.compute_at(wf, nt)
        sch.vectorize(sch.get_loops(wf)[-1])
        sch.set_scope(wf, 0, "global")
        sch.unroll(rows)
        sch.unroll(vec)
        sch.vectorize(lane)
        local = sch.cache_write(y1, 0, "local")
        sch.reverse_compute_at(local, mo)
        sch.compute_inline(local)  # Y reads the register tile directly; only Y's stores check M
        sch.reverse_compute_at(y, mo)
        sch.parallel(nt)
        sch.decompose_reduction(y1, g)
        return sch
