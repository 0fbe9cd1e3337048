"""CUDA schedule rule for the decode GEMV (M = 1..8; template ``kernels_cuda.gemv_compute``).

One thread block computes ``rows_per_block`` output rows (``threadIdx.y``); the 32 threads of a warp
(``threadIdx.x``) split each row's words, 4 consecutive words per thread per step: one 128-bit load
(``ld.global.v4.u32``), coalesced across the warp. Each word is decoded in registers by the magic-number
intrinsic (affine formats) or by shift-and-mask plus a lookup in a shared-memory codebook; partial sums
stay in registers per thread and are combined by a warp shuffle reduction (``__shfl_down_sync``).
"""
import dataclasses

from lowbit.compiler import kernels_cuda
from lowbit.compiler.cuda_layout import VECTOR_WORDS
from lowbit.compiler.intrinsics import cuda_decode
from lowbit.compiler.tvm_api import Schedule


def block_names(func):
    """Names of the blocks of a PrimFunc (a rule's way to recognise its own template)."""
    sch = Schedule(func)
    return {sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))}


def param_names(func):
    """Names of a PrimFunc's buffer params (``Z``: affine decode; ``LV``: codebook)."""
    return {param.name for param in func.params}


def _read_index(sch, block, name):
    """Position of buffer ``name`` among ``block``'s reads (cache_read takes a position)."""
    names = [region.source.name for region in sch.get(block).reads]
    return names.index(name)


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    """Knobs of :class:`DecodeGemv`.

    rows : rows of X per kernel (the bucket's upper bound; M is padded to it).
    rows_per_block : output rows (weight rows) per thread block, one warp each.
    threads : threads splitting K per output row (a warp: the reduction is a shuffle).
    """

    rows: int = 1
    rows_per_block: int = 4
    threads: int = 32


class DecodeGemv:
    """Decode GEMV: 128-bit weight loads, register decode, warp-shuffle reduction over K."""

    name = "cuda_decode_gemv"

    def template(self, layout, M, has_bias, config):
        return kernels_cuda.gemv_compute(layout, M, config.rows, has_bias)

    def apply(self, func, target, config):
        if target.kind != "cuda" or not {"WD", "Y1", "Y"} <= block_names(func):
            return None
        bits, affine = int(func.attrs["lowbit.bits"]), "Z" in param_names(func)
        sch = Schedule(func)
        wd, y1, y = sch.get_sblock("WD"), sch.get_sblock("Y1"), sch.get_sblock("Y")
        m, n, j, i = sch.get_loops(y1)
        bx, ty = sch.split(n, [None, config.rows_per_block])
        jo, tx, v = sch.split(j, [None, config.threads, VECTOR_WORDS])
        sch.reorder(bx, ty, jo, tx, v, i, m)
        rf = sch.rfactor(tx, factor_axis=0)  # per-thread partial sums Y1_rf[tx, m, n]
        bx, ty, jo, tx, v, i, m = sch.get_loops(rf)
        sch.reorder(tx, jo)
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.set_scope(rf, 0, "local")
        sch.unroll(v)
        sch.unroll(i)
        sch.unroll(m)
        # the 4 words of a step: one 128-bit load into registers, decoded there word by word
        words = sch.cache_read(wd, 0, "local")
        sch.compute_at(wd, v)
        sch.set_scope(wd, 0, "local")
        sch.compute_at(words, jo)
        sch.vectorize(sch.get_loops(words)[-1])
        sch.decompose_reduction(rf, jo)
        if affine:
            sch.tensorize(sch.get_loops(wd)[-1], cuda_decode.register(bits))
            sch.annotate(words, "pragma_import_c", cuda_decode.header_source())
        else:
            sch.unroll(sch.get_loops(wd)[-1])  # decoded codes stay in registers: constant indices only
            # the codebook (2**bits levels) in shared memory: a register array indexed by a run-time code
            # would live in local memory
            levels = sch.cache_read(rf, _read_index(sch, rf, "LV"), "shared")
            sch.compute_at(levels, bx)
            _, lanes = sch.split(sch.fuse(*sch.get_loops(levels)[1:]), [None, config.threads])
            sch.bind(lanes, "threadIdx.x")
        # cross-thread reduction of the partial sums: lowered to warp shuffles
        sch.reverse_compute_at(y1, ty)
        loops = sch.get_loops(y1)
        if len(loops) > 3:  # one shuffle reduction per row of X: the reduced loop must be the deepest
            sch.reorder(loops[3], loops[2])
        sch.bind(loops[2], "threadIdx.x")
        sch.set_scope(y1, 0, "local")
        sch.reverse_compute_at(y, ty)
        return sch
