"""CUDA schedule rule for the tensor-core GEMM (larger M; template ``kernels_cuda.gemm_compute``).

Per thread block: an ``BM x BN`` output tile, ``warps_m x warps_n`` warps, each ``tiles_m x tiles_n``
16x16 MMA tiles. Per K step (``16 * k_tiles`` codes): the packed weight words of the tile are copied to
shared memory with ``cp.async`` (16-byte copies, double-buffered by TVM's software pipeline), decoded there
to float16/bfloat16 (the same bit placement as the GEMV), the activations staged in shared memory, then
``ldmatrix`` loads fragments and ``mma.sync.m16n8k16`` accumulates in float32 registers (lowbit's tile
intrinsics, ``compiler/intrinsics/cuda_mma.py``: float16 and bfloat16). The accumulators go through shared
memory to the epilogue (bias, cast, rows past M dropped).
"""
import dataclasses

from lowbit.compiler import kernels_cuda
from lowbit.compiler.intrinsics import cuda_mma
from lowbit.compiler.tvm_api import Schedule
from lowbit.schedules.cuda.gemv import _read_index, block_names

MMA = 16  # m16n16k16 tiles (two mma.sync m16n8k16 each)


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Knobs of :class:`DecodeGemmTensorCore` (tile sizes in 16x16 MMA tiles)."""

    warps_m: int = 2
    warps_n: int = 2
    tiles_m: int = 1
    tiles_n: int = 2
    k_tiles: int = 2
    pipeline: bool = True

    @property
    def block_m(self):
        return MMA * self.warps_m * self.tiles_m

    @property
    def block_n(self):
        return MMA * self.warps_n * self.tiles_n


def _intrinsics(dtype):
    """lowbit's own tile intrinsics (compiler/intrinsics/cuda_mma.py): float16 and bfloat16."""
    return cuda_mma.register(dtype) + (cuda_mma.fragment_layout,)


def _loops_under(sch, block, loop):
    """The loops of ``block`` nested under ``loop`` (compute_at drops unit loops: count, don't assume)."""
    loops = sch.get_loops(block)
    target = sch.get(loop)
    position = next(i for i, candidate in enumerate(loops) if sch.get(candidate).same_as(target))
    return loops[position + 1:]


def _word_vector(func, codes_per_step):
    """Words per cp.async copy: a K step covers ``codes_per_step / vpw`` words of a row, aligned to that
    count when it is whole (16-byte copies at most); else (3- and 5-bit codes) steps straddle words: 1."""
    bits = int(func.attrs["lowbit.bits"])
    per_step = codes_per_step / (2 * (16 // bits))
    return min(4, int(per_step)) if per_step.is_integer() else 1


class DecodeGemmTensorCore:
    """Decode-to-shared + ldmatrix + mma.sync GEMM for M above the GEMV buckets."""

    name = "cuda_decode_gemm_mma"

    def template(self, layout, M, has_bias, config):
        return kernels_cuda.gemm_compute(layout, M, config.block_m, has_bias)

    def apply(self, func, target, config):
        if target.kind != "cuda" or not {"XP", "WF", "Y1", "Y"} <= block_names(func):
            return None
        dtype = func.params[0].dtype
        ld_a, ld_b, mma, fill, store, to_ldmatrix = _intrinsics(dtype)
        sch = Schedule(func)
        xp, wf, y1, y = (sch.get_sblock(name) for name in ("XP", "WF", "Y1", "Y"))
        m, n, k = sch.get_loops(y1)
        m, m_tc = sch.split(m, [None, MMA])
        n, n_tc = sch.split(n, [None, MMA])
        k, k_tc = sch.split(k, [None, MMA])
        sch.reorder(m, n, k, m_tc, n_tc, k_tc)
        outer, y1_inner = sch.blockize(m_tc), y1
        m0, m1, m2 = sch.split(m, [None, config.warps_m, config.tiles_m])
        n0, n1, n2 = sch.split(n, [None, config.warps_n, config.tiles_n])
        k0, k1 = sch.split(k, [None, config.k_tiles])
        sch.reorder(n0, m0, m1, n1, k0, k1, m2, n2)
        sch.bind(n0, "blockIdx.x")
        sch.bind(m0, "blockIdx.y")
        warp = sch.fuse(m1, n1)
        sch.bind(warp, "threadIdx.y")
        threads = config.warps_m * config.warps_n

        # activations: staged in shared memory, 8 halves (16 bytes) per thread per step
        sch.set_scope(xp, 0, "shared.dyn")
        sch.compute_at(xp, k0)
        _, ty, tx, vec = sch.split(sch.fuse(*sch.get_loops(xp)[-2:]), [None, threads, 32, 8])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)
        # weights: packed words -> shared (cp.async), decoded there into WF (shared)
        sch.set_scope(wf, 0, "shared.dyn")
        sch.compute_at(wf, k0)
        words = sch.cache_read(wf, _read_index(sch, wf, "W"), "shared.dyn")
        sch.compute_at(words, k0)
        _, ty2, tx2, vec2 = sch.split(sch.fuse(*_loops_under(sch, words, k0)),
                                      [None, threads, 32, _word_vector(func, MMA * config.k_tiles)])
        sch.bind(ty2, "threadIdx.y")
        sch.bind(tx2, "threadIdx.x")
        sch.vectorize(vec2)
        wn, wk = sch.get_loops(wf)[-2:]
        _, ty3, tx3 = sch.split(sch.fuse(wn, wk), [None, threads, 32])
        sch.bind(ty3, "threadIdx.y")
        sch.bind(tx3, "threadIdx.x")

        a_warp = sch.cache_read(outer, 0, "warp")
        b_warp = sch.cache_read(outer, 1, "warp")
        sch.compute_at(a_warp, k1)
        sch.compute_at(b_warp, k1)
        sch.set_scope(y1, 0, "shared")  # the block's accumulator tile, read by the epilogue
        acc = sch.cache_write(outer, 0, "warp")
        sch.reverse_compute_at(acc, warp)
        rows, cols = sch.get_loops(acc)[-2:]
        ro, ri = sch.split(rows, [None, MMA])
        co, ci = sch.split(cols, [None, MMA])
        sch.reorder(ro, co, ri, ci)
        sch.reverse_compute_at(y, m0)
        _, ty4, tx4 = sch.split(sch.fuse(*sch.get_loops(y)[-2:]), [None, threads, 32])
        sch.bind(ty4, "threadIdx.y")
        sch.bind(tx4, "threadIdx.x")
        sch.decompose_reduction(outer, k0)
        init = sch.get_sblock("Y1_init")

        def fragment(block, height, width):
            i, j = sch.get_loops(block)[-2:]
            i0, i1 = sch.split(i, [None, height])
            j0, j1 = sch.split(j, [None, width])
            sch.reorder(i0, j0, i1, j1)
            return i1

        loop_a = fragment(a_warp, MMA, MMA)
        loop_b = fragment(b_warp, MMA, MMA)

        def index_map(i, j):
            return (i // MMA, j // MMA, *to_ldmatrix(i % MMA, j % MMA))

        sch.transform_layout(a_warp, ("write", 0), index_map)
        sch.transform_layout(b_warp, ("write", 0), index_map)
        sch.transform_layout(acc, ("read", 0), index_map)
        sch.tensorize(loop_a, ld_a)
        sch.tensorize(loop_b, ld_b)
        sch.tensorize(sch.get_loops(y1_inner)[-3], mma)
        sch.tensorize(sch.get_loops(init)[-2], fill)
        sch.tensorize(sch.get_loops(acc)[-2], store)
        if config.pipeline:
            # k0's body: [XP copy, W copy, WF decode, k1 (ldmatrix + mma)]; the two copies of step k+1 are
            # issued (cp.async) while step k decodes and multiplies: double-buffered shared memory.
            sch.annotate(k0, "software_pipeline_stage", [0, 0, 1, 1])
            sch.annotate(k0, "software_pipeline_order", [0, 1, 2, 3])
            sch.annotate(k0, "software_pipeline_async_stages", [0])
        return sch
