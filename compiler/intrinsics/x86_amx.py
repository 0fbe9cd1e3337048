"""AMX-INT8 tile intrinsics: ``C[16, 16] += A[16, 64] (int8) x W (16 k-quads x 16 lanes of 4 unsigned byte codes)``.

The a8 layout's 8-bit words are already AMX's B-tile layout: word ``w`` of lane ``n`` holds the codes of
``k = 4w .. 4w + 3`` of row ``n``, and the 16 lanes of one word index are 64 contiguous bytes, so 16 word
indices of a 16-lane tile are one 16 x 64-byte B tile (Intel SDM vol. 1, 18.3: "TDPBSUD: the dot product of
signed bytes of tile A with unsigned bytes of tile B, accumulated into doublewords of tile C"). The int8
activations of 16 rows x 64 consecutive k are the A tile; C is 16 x 16 int32.

Two intrinsics, used in this order by one thread (the accumulator stays in tile register ``tmm0`` between them):

- ``init``: configure the tiles (``ldtilecfg``: palette 1; tmm0..2 16 rows x 64 bytes) and zero ``tmm0``.
- ``update`` (a whole K-group: ``words`` words, a multiple of 16): per 64 k, load A into ``tmm1`` and the weight
  tile into ``tmm2`` and ``tdpbsud``; then store ``tmm0`` to ``C``. ``C`` then holds the group's sums, what the
  description says (``C`` is zero, as ``tmm0``, when the update starts: nothing between them touches tiles).

A process must be granted the tile state first (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, see
:func:`lowbit.runtime.host.request_amx`), or the first tile instruction raises SIGILL.
"""
import functools

from lowbit.compiler.tvm_api import T, s_tir

ROWS, LANES, WORDS = 16, 16, 16  # a tile: 16 rows of X, 16 weight rows (lanes), 16 words (64 k) of each
DEPTH = 4 * WORDS  # k per update
FEATURES = frozenset({"amx-tile", "amx-int8"})
INIT = "lowbit_amx_init_16x16"


def usable(features):
    """Whether the target's features include AMX-INT8 (granted to the process: see the module docstring)."""
    return FEATURES <= set(features)


def _update_description(words):
    depth = 4 * words

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, w: T.handle, c: T.handle) -> None:
        sa, sw, sc = T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (ROWS, depth), "int8", strides=[sa, 1], offset_factor=1)
        W = T.match_buffer(w, (words, LANES), "int32", strides=[sw, 1], offset_factor=1)
        C = T.match_buffer(c, (ROWS, LANES), "int32", strides=[sc, 1], offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:ROWS, 0:LANES], W[0:words, 0:LANES], A[0:ROWS, 0:depth])
            T.writes(C[0:ROWS, 0:LANES])
            for i, n, q, j in T.grid(ROWS, LANES, words, 4):
                with T.sblock("update"):
                    vi, vn, vq, vj = T.axis.remap("SSRR", [i, n, q, j])
                    C[vi, vn] = C[vi, vn] + T.bitwise_and(T.shift_right(W[vq, vn], vj * 8), 255) \
                        * T.cast(A[vi, vq * 4 + vj], "int32")

    return desc


def _update_implementation(words):
    depth = 4 * words

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, w: T.handle, c: T.handle) -> None:
        sa, sw, sc = T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (ROWS, depth), "int8", strides=[sa, 1], offset_factor=1)
        W = T.match_buffer(w, (words, LANES), "int32", strides=[sw, 1], offset_factor=1)
        C = T.match_buffer(c, (ROWS, LANES), "int32", strides=[sc, 1], offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:ROWS, 0:LANES], W[0:words, 0:LANES], A[0:ROWS, 0:depth])
            T.writes(C[0:ROWS, 0:LANES])
            for step in range(words // WORDS):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(1),
                                              A.access_ptr("r", offset=step * DEPTH), T.Cast("int64", sa)))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(2),
                                              W.access_ptr("r", offset=step * WORDS * sw), T.Cast("int64", sw * 4)))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbsud", T.uint8(0), T.uint8(1), T.uint8(2)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(0), C.access_ptr("w"),
                                          T.Cast("int64", sc * 4)))

    return impl


def _init_description():
    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        sc = T.int32()
        C = T.match_buffer(c, (ROWS, LANES), "int32", strides=[sc, 1], offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:ROWS, 0:LANES])
            for i, n in T.grid(ROWS, LANES):
                with T.sblock("init"):
                    vi, vn = T.axis.remap("SS", [i, n])
                    C[vi, vn] = T.int32(0)

    return desc


def _init_implementation():
    # the 64-byte tile configuration (Intel SDM vol. 1, 18.2.2, LDTILECFG): byte 0 palette 1; bytes 16 + 2t the
    # bytes per row of tile t (u16), byte 48 + t its rows; tiles 0..2 are 16 rows x 64 bytes
    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        sc = T.int32()
        C = T.match_buffer(c, (ROWS, LANES), "int32", strides=[sc, 1], offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:ROWS, 0:LANES])
            config = T.alloc_buffer((64,), "uint8", scope="local")
            for byte in range(64):
                config[byte] = T.uint8(0)
            config[0] = T.uint8(1)
            for tile in range(3):
                config[16 + 2 * tile] = T.uint8(DEPTH)
                config[48 + tile] = T.uint8(ROWS)
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(config[0])))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.uint8(0)))

    return impl


def update_name(words):
    """The registered name of the update intrinsic over ``words`` words (``4 * words`` k) of one K-group."""
    return f"lowbit_amx_dot_16x16x{4 * words}_s8u8"


@functools.lru_cache(maxsize=None)
def register(words):
    """Register (once) the init intrinsic and the update over ``words`` (a multiple of 16) words; returns their
    names ``(init, update)``."""
    if words % WORDS:
        raise ValueError(f"the AMX update takes whole 64-k steps: {words} words is no multiple of {WORDS}")
    s_tir.TensorIntrin.register(INIT, _init_description(), _init_implementation(), override=True)
    name = update_name(words)
    s_tir.TensorIntrin.register(name, _update_description(words), _update_implementation(words), override=True)
    return INIT, name
