"""The CUDA kernels' default schedule per M bucket (the crossover GEMV -> tensor cores is at M = 8).

GEMV rules read every weight byte once per call and stay memory-bound up to a few rows of X; from M = 9
the tensor-core GEMM, which decodes each weight tile once into shared memory for a block of rows, takes
over. The bucket bound is where lowbit's default puts the crossover; a GPU session measures it
(lowbit/gpu_scripts/gpu_bench.py) and a tuning record may move it.
"""
from lowbit.schedules.cuda.gemm import DecodeGemmTensorCore, GemmConfig
from lowbit.schedules.cuda.gemv import DecodeGemv, GemvConfig

GEMV_MAX_ROWS = 8


def _tiles_n(layout, warps_n, largest):
    """Most 16-row MMA tiles per warp (<= ``largest``) whose block width divides the padded rows."""
    for tiles in (4, 2, 1):
        if tiles <= largest and layout.padded_n % (16 * warps_n * tiles) == 0:
            return tiles
    return None


def gemm_config(layout, large):
    """Tile sizes for the GEMM: 32 x 64 blocks for M <= 32, 64 x 128 beyond (when N allows)."""
    warps_n = 2 if layout.padded_n % 32 == 0 else 1
    tiles_n = _tiles_n(layout, warps_n, 4 if large else 2)
    return GemmConfig(warps_m=2, warps_n=warps_n, tiles_m=2 if large else 1, tiles_n=tiles_n, k_tiles=2)


def cuda_plan(layout, bucket):
    """The (rule, config) for one M bucket of a CUDA layer."""
    if bucket.hi is not None and bucket.hi <= GEMV_MAX_ROWS:
        return DecodeGemv(), GemvConfig(rows=bucket.hi, rows_per_block=4, threads=32)
    return DecodeGemmTensorCore(), gemm_config(layout, large=bucket.hi is None or bucket.hi > 32)
