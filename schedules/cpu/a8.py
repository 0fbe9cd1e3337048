"""CPU schedule rule for the int8-activation mpGEMM kernel (template: compiler/kernels_a8.py).

Loop nest per parallel tile of ``n_tile x lanes`` output rows (and ``m_tile`` rows of X): groups -> words
(unrolled or not) -> column tiles x rows (both unrolled; which one outside is a knob) -> one tensorized
packed-decode dot product per word (``vpdpbusd`` or ``vpmaddubsw``+``vpmaddwd``, chosen from the target's
features). The int32 group sums live in registers;
the group's scales and zero point are applied once per group. Activation quantization runs once per call,
before the parallel loop.
"""
import dataclasses

from lowbit.compiler import kernels_a8
from lowbit.compiler.intrinsics import x86_amx, x86_dot
from lowbit.compiler.tvm_api import Schedule, tirx


@dataclasses.dataclass(frozen=True)
class A8Config:
    """Knobs of :class:`DecodeA8`.

    m_tile : rows of X that share each decoded weight word.
    n_tile : vector tiles of output rows (``lanes`` rows each) per register block: each activation quad
        word broadcast is reused by ``n_tile`` weight vectors (``m_tile * n_tile`` int32 accumulators).
    rows_outer : inside a word, loop over X's rows outside the column tiles (each decoded weight vector is
        then live across ``n_tile`` rows' broadcasts) rather than inside them (each broadcast reused by
        ``n_tile`` weight vectors).
    unroll_words : unroll the loop over a group's words (longer straight-line code, no loop overhead).
    intrinsic : tensorize the dot product with the host's instruction (False leaves LLVM the reference
        expression: slow, used to check the intrinsic against its description).
    """

    m_tile: int = 1
    n_tile: int = 1
    rows_outer: bool = False
    unroll_words: bool = False
    intrinsic: bool = True


class DecodeA8:
    """Int8-activation kernel with the packed-decode dot-product intrinsic."""

    name = "decode_a8"

    def template(self, layout, M, has_bias, config):
        return kernels_a8.a8_compute(layout, M, has_bias, config.m_tile)

    def apply(self, func, target, config):
        sch = Schedule(func)
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        if not {"ACC", "XQ", "Y1", "Y"} <= names:
            return None
        isa = x86_dot.isa_for(target.features)
        if isa is None or x86_dot.LANES[isa] != target.vector_lanes:
            return None
        self._schedule_quantize(sch, names)
        # storage bits (1, 2, 4, 8); whether the codes' values fit the ISA's int16 pair sums depends on the
        # format's bits, which the kernel choice (compiler/linear.py, a8_unsupported) checks
        bits = int(func.attrs["lowbit.code_bits"])
        if not self._schedule_gemm(sch, target.vector_lanes, config, x86_dot.register(bits, isa)):
            return None
        return sch

    @staticmethod
    def _schedule_quantize(sch, names):
        """AMAX (float activations only), XSUM and XQ: parallel over rows and groups; Xp inlined."""
        for name in ("AMAX", "XSUM"):
            if name in names:
                loops = sch.get_loops(sch.get_sblock(name))
                sch.parallel(sch.fuse(*loops[:2]))
        xq = sch.get_sblock("XQ")
        m, g, kk = sch.get_loops(xq)
        sch.parallel(sch.fuse(m, g))
        sch.vectorize(kk)
        if "Xp" in names:
            sch.compute_inline(sch.get_sblock("Xp"))

    @staticmethod
    def _schedule_gemm(sch, lanes, config, intrin):
        """Schedule the GEMM blocks; False (the config does not fit the layer) when ``n_tile`` does not
        divide the column tiles: a partial register block needs a predicate the intrinsic cannot take."""
        y1, acc, y = sch.get_sblock("Y1"), sch.get_sblock("ACC"), sch.get_sblock("Y")
        m, n, g = sch.get_loops(y1)
        nt, lane = sch.split(n, [None, lanes])
        if int(sch.get(nt).extent) % config.n_tile:
            return False
        nto, nti = sch.split(nt, [None, config.n_tile]) if config.n_tile > 1 else (nt, None)
        block_n = [nti] if nti is not None else []
        if config.m_tile == 1 and isinstance(sch.get(m).extent, tirx.IntImm):
            sch.reorder(m, nto, g, *block_n, lane)
            outer = sch.fuse(m, nto)  # static M: rows and column tiles share out as one parallel loop
        elif config.m_tile == 1:
            # symbolic M: fusing int64 M with the int32 tile loop leaves casts that break decompose_reduction
            sch.reorder(nto, m, g, *block_n, lane)
            outer = nto
        else:
            mo, rows = sch.split(m, [None, config.m_tile])
            sch.reorder(nto, mo, g, *block_n, rows, lane)
            outer = nto
            sch.unroll(rows)
        if nti is not None:
            sch.unroll(nti)
        sch.vectorize(lane)
        sch.parallel(outer)
        sch.compute_at(acc, g)
        # compute_at regenerates ACC's loops under g as (rows, nti, lane, w, p, j), dropping unit extents
        # (rows when m_tile == 1, nti when n_tile == 1, p for 8-bit codes, w for a one-word group)
        reduce = [int(iv.dom.extent) for iv in sch.get(acc).iter_vars[4:]]  # (w, p, j) or (w, j)
        extents = {"rows": config.m_tile, "nti": config.n_tile, "lane": lanes, "w": reduce[0],
                   "p": reduce[1] if len(reduce) == 3 else 1, "j": 4}
        kept = [name for name, extent in extents.items() if extent > 1]
        named = dict(zip(kept, sch.get_loops(acc)[-len(kept):]))
        block = ("rows", "nti") if config.rows_outer else ("nti", "rows")
        order = [named[k] for k in ("w", *block, "lane", "p", "j") if k in named]
        sch.reorder(*order)
        for name in ("nti", "rows") + (("w",) if config.unroll_words else ()):
            if name in named:
                sch.unroll(named[name])
        a_lane, first = named["lane"], order[0]
        sch.set_scope(acc, 0, "local")
        local = sch.cache_write(y1, 0, "local")
        sch.compute_inline(local)
        sch.reverse_compute_at(y, outer)
        init = sch.decompose_reduction(acc, first)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.decompose_reduction(y1, g)
        if config.intrinsic:
            sch.tensorize(a_lane, intrin)
        return True


@dataclasses.dataclass(frozen=True)
class AmxConfig:
    """Knobs of :class:`DecodeA8Amx`: none yet (one 16-row x 16-lane accumulator tile per parallel iteration)."""


class DecodeA8Amx:
    """The a8 kernel on AMX-INT8 tiles (intrinsics: compiler/intrinsics/x86_amx.py), for 8-bit codes of the model's
    own activation codes (one scale per tensor: the K-groups are the weight's, 64 or more k each).

    Loop nest: column tiles of 16 weight rows in parallel -> tiles of 16 rows of X -> K-groups -> words in steps of
    16 (64 k): one tile dot product each, the accumulator in ``tmm0`` across them -> the group's scales applied to
    the 16 x 16 sums, vectorized over lanes. X's codes are shifted to int8 and summed once per call, 16-row padded.
    """

    name = "decode_a8_amx"

    def template(self, layout, M, has_bias, config):
        return kernels_a8.a8_compute(layout, M, has_bias, m_tile=x86_amx.ROWS, padded_codes=True)

    @staticmethod
    def applies(layout, target):
        """Whether this rule builds ``layout`` on ``target``: AMX granted, 8-bit codes of the model's activation
        codes, whole 64-k steps per group, 16 lanes."""
        return (x86_amx.usable(target.features) and layout.decode == "a8" and layout.activation != "float32"
                and layout.bits == 8 and layout.lanes == x86_amx.LANES
                and layout.padded_group == layout.group_size and layout.words_per_group % x86_amx.WORDS == 0)

    def apply(self, func, target, config):
        sch = Schedule(func)
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        if not {"ACC", "XQ", "Y1", "Y"} <= names or not x86_amx.usable(target.features) or \
                int(func.attrs["lowbit.code_bits"]) != 8:
            return None
        words = int(sch.get(sch.get_sblock("ACC")).iter_vars[4].dom.extent)
        if words % x86_amx.WORDS:
            return None
        DecodeA8._schedule_quantize(sch, names)
        init, update = x86_amx.register(words)
        y1, acc, y = sch.get_sblock("Y1"), sch.get_sblock("ACC"), sch.get_sblock("Y")
        m, n, g = sch.get_loops(y1)
        nt, lane = sch.split(n, [None, x86_amx.LANES])
        mo, rows = sch.split(m, [None, x86_amx.ROWS])
        sch.reorder(nt, mo, g, rows, lane)
        sch.parallel(nt)
        sch.vectorize(lane)
        sch.compute_at(acc, g)
        acc_rows = sch.get_loops(acc)[-4]  # (rows, lane, word, byte): one update intrinsic for the whole group
        sch.set_scope(acc, 0, "local")
        sch.reverse_compute_at(y, mo)
        acc_init = sch.decompose_reduction(acc, acc_rows)
        sch.decompose_reduction(y1, g)
        sch.tensorize(acc_rows, update)
        sch.tensorize(sch.get_loops(acc_init)[-2], init)
        return sch
