"""Tensor-core tile intrinsics for lowbit's GEMM: ldmatrix, mma.sync m16n8k16 (x2), fill and store.

One 16x16 tile per warp, for float16 **and bfloat16** operands with float32 accumulators (TVM 0.27 ships
float16 / int8 / fp8 MMA intrinsics, none for bfloat16). Declared here, rather than taken from
``tvm.s_tir.tensor_intrin.cuda``, also because importing that module registers ~80 intrinsics and takes tens
of seconds; lowbit needs five per dtype.

Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16"): element (row, col) of a 16x16 tile lives in
thread ``4 * (row % 8) + (col % 8) // 2`` at register slot ``4 * (col // 8) + 2 * (row // 8) + col % 2``.
The activation tile A is (M, K) row-major; the weight tile B is stored (N, K), i.e. column-major for the
``row.col`` MMA, so ``ldmatrix`` loads it without ``.trans``.
"""
import functools

from lowbit.compiler.tvm_api import T, s_tir

TILE = 16
WARP = 32
SLOTS = TILE * TILE // WARP  # registers (16-bit elements or float32 accumulators) per thread per tile
ABBREVIATION = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def fragment_layout(row, col):
    """(thread, slot) holding element (row, col) of a 16x16 MMA fragment."""
    return 4 * (row % 8) + (col % 8) // 2, 4 * (col // 8) + 2 * (row // 8) + col % 2


def _tile_row(thread, slot):
    """Inverse of :func:`fragment_layout`: (row, col) of a thread's slot."""
    return 8 * (slot % 4 // 2) + thread // 4, 8 * (slot // 4) + 2 * (thread % 4) + slot % 2


def _ldmatrix(dtype, operand, scope):
    """ldmatrix.x4 of a 16x16 tile of A (M, K) or B (N, K) from shared memory into the fragment layout.

    Lanes 0-15 give the row addresses of the left 8 columns, lanes 16-31 those of the right 8 for A; for B,
    whose ``n`` index plays the row, the four 8x8 matrices are ordered (n 0-7, k 0-7), (n 0-7, k 8-15),
    (n 8-15, k 0-7), (n 8-15, k 8-15) to match the two m16n8k16 halves.
    """
    if operand == "A":
        def row_offset(lane, stride):
            return stride * (lane % 16) + 8 * (lane // 16)
    else:
        def row_offset(lane, stride):
            return stride * 8 * (lane // 16) + stride * (lane % 8) + 8 * ((lane % 16) // 8)

    @T.prim_func(s_tir=True)
    def desc(warp_handle: T.handle, shared_handle: T.handle) -> None:
        shared = T.match_buffer(shared_handle, (TILE, TILE), dtype, align=64, offset_factor=TILE, scope=scope)
        warp = T.match_buffer(warp_handle, (WARP, SLOTS), dtype, align=64, offset_factor=TILE, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:TILE, 0:TILE])
            T.writes(warp[0:WARP, 0:SLOTS])
            for r, c in T.grid(TILE, TILE):
                with T.sblock("load"):
                    vr, vc = T.axis.remap("SS", [r, c])
                    T.reads(shared[vr, vc])
                    thread, slot = T.meta_var(fragment_layout(vr, vc))
                    T.writes(warp[thread, slot])
                    warp[thread, slot] = shared[vr, vc]

    @T.prim_func(s_tir=True)
    def impl(warp_handle: T.handle, shared_handle: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        shared = T.match_buffer(shared_handle, (TILE, TILE), dtype, align=64, offset_factor=TILE, scope=scope,
                                strides=[s0, s1])
        warp = T.match_buffer(warp_handle, (WARP, SLOTS), dtype, align=64, offset_factor=TILE, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:TILE, 0:TILE])
            T.writes(warp[0:WARP, 0:SLOTS])
            for lane in T.thread_binding(0, WARP, "threadIdx.x"):
                T.evaluate(T.ptx_legacy.ldmatrix(False, 4, ".b16", warp.data, warp.elem_offset + SLOTS * lane,
                                                 shared.access_ptr("r"), row_offset(lane, s0), dtype=dtype))

    return desc, impl


def _mma(dtype):
    """C (16x16 float32) += A (16x16) @ B^T (B stored as its 16x16 (N, K) tile): two mma.sync.m16n8k16."""
    abbr = ABBREVIATION[dtype]

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, SLOTS), dtype, align=64, offset_factor=TILE, scope="warp")
        B = T.match_buffer(b, (WARP, SLOTS), dtype, align=64, offset_factor=TILE, scope="warp")
        C = T.match_buffer(c, (WARP, SLOTS), "float32", align=64, offset_factor=TILE, scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:SLOTS], A[0:WARP, 0:SLOTS], B[0:WARP, 0:SLOTS])
            T.writes(C[0:WARP, 0:SLOTS])
            for i, j, k in T.grid(TILE, TILE, TILE):
                with T.sblock("C"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    tc, sc = T.meta_var(fragment_layout(vi, vj))
                    ta, sa = T.meta_var(fragment_layout(vi, vk))
                    tb, sb = T.meta_var(fragment_layout(vj, vk))
                    T.reads(C[tc, sc], A[ta, sa], B[tb, sb])
                    T.writes(C[tc, sc])
                    C[tc, sc] += T.Cast("float32", A[ta, sa]) * T.Cast("float32", B[tb, sb])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, SLOTS), dtype, align=64, offset_factor=TILE, scope="warp")
        B = T.match_buffer(b, (WARP, SLOTS), dtype, align=64, offset_factor=TILE, scope="warp")
        C = T.match_buffer(c, (WARP, SLOTS), "float32", align=64, offset_factor=TILE, scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:SLOTS], A[0:WARP, 0:SLOTS], B[0:WARP, 0:SLOTS])
            T.writes(C[0:WARP, 0:SLOTS])
            for lane in T.thread_binding(0, WARP, "threadIdx.x"):
                for half in T.unroll(2):  # n 0-7, then n 8-15
                    T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", abbr, abbr, "fp32",
                                                A.data, A.elem_offset + lane * SLOTS,
                                                B.data, B.elem_offset + lane * SLOTS + half * (SLOTS // 2),
                                                C.data, C.elem_offset + lane * SLOTS + half * (SLOTS // 2),
                                                False, dtype="float32"))

    return desc, impl


def _fill():
    @T.prim_func(s_tir=True)
    def desc(a: T.handle) -> None:
        C = T.match_buffer(a, (WARP, SLOTS), "float32", scope="warp")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:SLOTS])
            for i, j in T.grid(TILE, TILE):
                with T.sblock("fill"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    thread, slot = T.meta_var(fragment_layout(vi, vj))
                    T.reads()
                    T.writes(C[thread, slot])
                    C[thread, slot] = T.float32(0)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle) -> None:
        C = T.match_buffer(a, (WARP, SLOTS), "float32", scope="warp", offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:SLOTS])
            for lane in T.thread_binding(0, WARP, "threadIdx.x"):
                T.evaluate(T.cuda.mma_fill_legacy(SLOTS, C.data, C.elem_offset, dtype="float32"))

    return desc, impl


def _store(scope):
    """Accumulator fragment -> a 16x16 float32 tile in ``scope`` (each thread stores its own slots)."""
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        C_warp = T.match_buffer(a, (WARP, SLOTS), "float32", scope="warp")
        C = T.match_buffer(c, (TILE, TILE), "float32", scope=scope)
        with T.sblock("root"):
            T.reads(C_warp[0:WARP, 0:SLOTS])
            T.writes(C[0:TILE, 0:TILE])
            for i, j in T.grid(TILE, TILE):
                with T.sblock("store"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    thread, slot = T.meta_var(fragment_layout(vi, vj))
                    T.reads(C_warp[thread, slot])
                    T.writes(C[vi, vj])
                    C[vi, vj] = C_warp[thread, slot]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        C_warp = T.match_buffer(a, (WARP, SLOTS), "float32", scope="warp", offset_factor=1)
        C = T.match_buffer(c, (TILE, TILE), "float32", scope=scope, offset_factor=1, strides=[s0, s1])
        with T.sblock("root"):
            T.reads(C_warp[0:WARP, 0:SLOTS])
            T.writes(C[0:TILE, 0:TILE])
            for lane in T.thread_binding(0, WARP, "threadIdx.x"):
                for slot in T.unroll(SLOTS):
                    row, col = T.meta_var(_tile_row(lane, slot))
                    C[row, col] = C_warp[lane, slot]

    return desc, impl


def intrin_names(dtype):
    """Registered names (ldmatrix A, ldmatrix B, mma, fill, store) for ``dtype`` operands: one place."""
    short = ABBREVIATION[dtype]
    return (f"lowbit_ldmatrix_a_{short}", f"lowbit_ldmatrix_b_{short}", f"lowbit_mma_m16n16k16_{short}_f32",
            "lowbit_mma_fill_f32", "lowbit_mma_store_f32_shared")


@functools.lru_cache(maxsize=None)
def register(dtype, shared_scope="shared.dyn"):
    """Register (once) the tile intrinsics for ``dtype`` (float16 / bfloat16); returns their names."""
    if dtype not in ("float16", "bfloat16"):
        raise ValueError(f"no MMA intrinsics for {dtype!r}: float16 or bfloat16")
    ld_a, ld_b, mma, fill, store = intrin_names(dtype)
    s_tir.TensorIntrin.register(ld_a, *_ldmatrix(dtype, "A", shared_scope), override=True)
    s_tir.TensorIntrin.register(ld_b, *_ldmatrix(dtype, "B", shared_scope), override=True)
    s_tir.TensorIntrin.register(mma, *_mma(dtype), override=True)
    s_tir.TensorIntrin.register(fill, *_fill(), override=True)
    s_tir.TensorIntrin.register(store, *_store("shared"), override=True)
    return ld_a, ld_b, mma, fill, store
