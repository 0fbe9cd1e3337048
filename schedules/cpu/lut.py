"""CPU schedule rule for the table-lookup mpGEMM kernel (template: compiler/kernels_lut.py).

Before the parallel loop over row tiles, once per call: activation quantization and the tables of every
row and table group (a few KiB per row, shared by all N). Then per parallel tile of ``lanes`` output rows
(and per row of X): table groups -> chunks -> (table byte, bit plane) unrolled -> one tensorized lookup per
weight vector (``vpshufb``: both nibbles of ``lanes/2`` bytes), summed in int16 registers; per table group
the planes are combined with shifts and one float scale is applied.

Tunable (:class:`LutConfig`): ``tiles`` row tiles per parallel iteration, their lookups interleaved in one
chunk loop (independent shuffle chains and weight streams; more int16 registers), and ``chunk_unroll``, the
unroll factor of the chunk loop.
"""
import dataclasses

from lowbit.compiler import kernels_lut
from lowbit.compiler.intrinsics import x86_lut
from lowbit.compiler.tvm_api import Schedule

LOOKUPS = ("shuffle", "select", "gather")
TILES = (1, 2, 4)
CHUNK_UNROLLS = (1, 2, 4, 8)
MIN_PARALLEL = 8  # iterations of the parallel loop a tile count must leave (cores busy, load balanced)


def default_config(layout):
    """The :class:`LutConfig` a layer gets without a tuning record: the host's byte shuffle where the layout's
    vectors are one (``gather`` for the portable kernel), :func:`default_tiles` row tiles per iteration."""
    portable = layout.vector_bytes == x86_lut.PORTABLE_BYTES
    return LutConfig(lookup="gather" if portable else "shuffle", tiles=default_tiles(layout))


def default_tiles(layout):
    """The default tile count: the most of :func:`tile_counts` whose int16 accumulators fill at most half the
    vector registers (32 with AVX-512, else 16). A tile keeps ``4 * plane groups * table bytes`` registers of
    sums (``lanes`` rows of int16 are two vectors, per nibble), e.g. 4 for 2-bit, ternary and nf4 with int8
    tables: 4 tiles on AVX-512, 2 on AVX2; 12 for 3-bit: one tile."""
    groups = layout.planes // 2 if layout.paired else layout.planes
    per_tile = 2 * layout.rows_per_byte * groups * layout.table_bytes
    budget = (32 if layout.vector_bytes >= 64 else 16) // 2
    return max(t for t in tile_counts(layout) if t == 1 or t * per_tile <= budget)


def tile_counts(layout):
    """Tile counts per parallel iteration a layout can take: dividing its row tiles and leaving at least
    :data:`MIN_PARALLEL` parallel iterations (1 always), smallest first."""
    return [t for t in TILES if layout.n_tiles % t == 0 and (t == 1 or layout.n_tiles // t >= MIN_PARALLEL)]


@dataclasses.dataclass(frozen=True)
class LutConfig:
    """Knobs of :class:`LutLookup`.

    lookup : "shuffle" (the one-hot lookup tensorized with the host's byte shuffle), "select" (the same
        compute left to LLVM: the intrinsic's description, to test it against the implementation) or
        "gather" (a direct table index: the portable kernel for hosts without AVX2).
    tiles : row tiles (of ``lanes`` rows) per iteration of the parallel loop, looked up together per chunk
        (1, 2 or 4; must divide the layer's tiles).
    chunk_unroll : unroll factor of the loop over a table group's chunks (1 = not unrolled; must divide the
        chunks per table group).
    """

    lookup: str = "shuffle"
    tiles: int = 1
    chunk_unroll: int = 1

    def __post_init__(self):
        if self.lookup not in LOOKUPS:
            raise ValueError(f"lookup={self.lookup!r}: choose one of {', '.join(LOOKUPS)}")
        if self.tiles not in TILES or self.chunk_unroll not in CHUNK_UNROLLS:
            raise ValueError(f"tiles={self.tiles!r}, chunk_unroll={self.chunk_unroll!r}: tiles is one of {TILES}, "
                             f"chunk_unroll one of {CHUNK_UNROLLS}")

    def fits(self, layout):
        """Whether this config can schedule ``layout`` (its tile count and chunks divide evenly)."""
        return self._divides(layout.n_tiles, layout.chunks)

    def _divides(self, n_tiles, chunks):
        return n_tiles % self.tiles == 0 and chunks % self.chunk_unroll == 0


PRECOMPUTE = ("AMAX", "XQ", "XSUM", "H", "TMAX", "TQ", "TS", "XO")


class LutLookup:
    """Table-lookup kernel: bit planes (or whole codebook codes) looked up in per-chunk activation tables."""

    name = "lut_lookup"

    def template(self, layout, M, has_bias, config):
        return kernels_lut.lut_compute(layout, M, has_bias, "gather" if config.lookup == "gather" else "select")

    def apply(self, func, target, config):
        sch = Schedule(func)
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        if not {"ACC", "TQ", "Y1", "Y"} <= names:
            return None
        if (config.lookup == "gather") != (func.attrs["lowbit.lut_lookup"] == "gather"):
            return None  # a one-hot template needs a shuffle or select config, a gather one the gather config
        if not config._divides(int(func.attrs["lowbit.lut_tiles"]), int(func.attrs["lowbit.lut_chunks"])):
            return None  # the template's layout, as LutConfig.fits reads it
        intrin = None
        if config.lookup == "shuffle":
            entries = int(func.attrs["lowbit.lut_entries"])
            isa = x86_lut.isa_for(target.features) if entries == x86_lut.ENTRIES else x86_lut.wide_isa_for(
                target.features)
            vector_bytes = int(func.attrs["lowbit.lut_vector_bytes"])
            if isa is None or x86_lut.VECTOR_BYTES.get(isa, 64) != vector_bytes:
                return None
            if entries == x86_lut.ENTRIES:
                intrin = x86_lut.register(isa, paired=len(sch.get_loops(sch.get_sblock("Y1"))) == 6)
            else:
                intrin = x86_lut.register_wide(entries, isa)
        sch.compute_inline(sch.get_sblock("Xp"))
        for name in PRECOMPUTE:
            if name in names:
                self._schedule_precompute(sch, name)
        self._schedule_lookups(sch, intrin, config)
        return sch

    @staticmethod
    def _schedule_precompute(sch, name):
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        spatial = [iv for iv in sch.get(block).iter_vars if iv.iter_type == 0]
        sch.parallel(sch.fuse(*loops[:2]))
        last = spatial[-1].dom.extent
        if len(spatial) > 2 and len(loops) == len(spatial) and int(last) >= 4:
            sch.vectorize(loops[-1])

    @staticmethod
    def _schedule_lookups(sch, intrin, config):
        gather = config.lookup == "gather"
        y1, acc, y = sch.get_sblock("Y1"), sch.get_sblock("ACC"), sch.get_sblock("Y")
        m, nt, *rows, t = sch.get_loops(y1)
        outer, inner = sch.split(nt, [None, config.tiles])
        sch.reorder(outer, m, t, inner, *rows)
        for loop in [inner] + rows[:-1]:
            sch.unroll(loop)
        sch.vectorize(rows[-1])
        sch.parallel(outer)
        sch.compute_at(acc, t)
        # compute_at regenerates ACC's loops under t in block-iter order (spatial, then reduce), dropping
        # unit extents: the tiles of the iteration, then (byte, b), the row loops (paired: v, s, j and a plane
        # loop p; unpaired: s, i), the chunks c and the one-hot entries e
        paired = len(rows) == 3
        row_names = ["v", "s", "j"] if paired else ["s", "i"]
        names = ["tile", "byte", "b"] + row_names + ["c"] + (["p"] if paired else []) + ([] if gather else ["e"])
        extents = [config.tiles] + [int(iv.dom.extent) for iv in sch.get(acc).iter_vars[3:]]
        kept = [name for name, extent in zip(names, extents) if extent > 1]
        named = dict(zip(kept, sch.get_loops(acc)[-len(kept):]))
        order = [named[k] for k in ("c", "tile", "byte", "b", "v", "s", "i", "j", "p", "e") if k in named]
        sch.reorder(*order)
        for k in ("tile", "byte", "b", "v"):
            if k in named:
                sch.unroll(named[k])
        sch.set_scope(acc, 0, "local")
        local = sch.cache_write(y1, 0, "local")
        sch.compute_inline(local)
        sch.reverse_compute_at(y, outer)
        init = sch.decompose_reduction(acc, order[0])
        sch.vectorize(sch.get_loops(init)[-1])
        sch.decompose_reduction(y1, t)
        if config.chunk_unroll > 1 and "c" in named:
            sch.unroll(sch.split(named["c"], [None, config.chunk_unroll])[1])
        if intrin is not None:  # wide (one index per byte): no nibble loop, the intrinsic covers the bytes
            sch.tensorize(named["s"] if "s" in named else named["i"], intrin)
        elif "s" in named:
            sch.unroll(named["s"])
