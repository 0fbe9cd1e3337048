"""Packed-decode integer dot product: ``C[i] += sum_k code(W[i], k) * A[k]`` for ``lanes`` output rows.

One intrinsic covers one 32-bit word per lane: ``32 / bits`` codes of one weight row, stored
byte-sliced (the code of ``k = slot*4 + byte`` sits at bit ``slot*bits + 8*byte``), so that
``(word >> slot*bits) & (mask * 0x01010101)`` puts four consecutive codes into the four bytes of each lane
without any shuffle. Those bytes are the unsigned operand of the x86 byte dot products; the int8
activations (four per slot, broadcast to every lane) are the signed operand:

- ``vnni``: ``vpdpbusd`` (AVX-512 VNNI) accumulates u8 x s8 products straight into int32, any bits <= 8.
- ``avx512bw`` / ``avx2``: ``vpmaddubsw`` (u8 x s8 pairs summed into int16, saturating) then ``vpmaddwd``
  with ones. A pair sum is at most 2 * (2^bits - 1) * 128: exact for bits <= 7, so 8-bit weights are refused
  on these paths (Intel SDM, PMADDUBSW: "saturate to signed word").

The description is the reference decode (the same expression the kernel's compute uses), so
``sch.tensorize`` matches it structurally; its accumulator is a ``local`` (register) buffer.
"""
import functools

from lowbit.compiler.tvm_api import T, s_tir

ISAS = ("vnni", "avx512bw", "avx2")
LANES = {"vnni": 16, "avx512bw": 16, "avx2": 8}


def storage_bits(bits):
    """Bits per code in the byte-sliced layout: codes must not straddle bytes, so 3 -> 4 and 5..7 -> 8."""
    for width in (1, 2, 4, 8):
        if bits <= width:
            return width
    raise ValueError(f"bits={bits} is more than 8")


def isa_for(features):
    """The best integer dot-product ISA among the given LLVM features, or None."""
    if {"avx512f", "avx512bw", "avx512vnni"} <= features:
        return "vnni"
    if {"avx512f", "avx512bw"} <= features:
        return "avx512bw"
    if "avx2" in features:
        return "avx2"
    return None


def max_bits(isa):
    """Widest weight code the ISA's dot product sums exactly (vpmaddubsw saturates 8-bit pairs)."""
    return 8 if isa == "vnni" else 7


def intrin_name(bits, isa):
    """The registered name of the intrinsic for storage ``bits`` on ``isa`` (one place derives it)."""
    lanes = LANES[isa]
    return f"lowbit_dot_{lanes}x{32 // bits}_u{bits}_{isa}"


def dot_term(word, activation, slot, byte, bits):
    """The reference: code at (slot, byte) of ``word`` times one int8 activation, as int32."""
    return ((word >> (slot * bits + byte * 8)) & ((1 << bits) - 1)) * activation.astype("int32")


def _description(bits, lanes):
    slots, words, mask = 8 // bits, 32 // bits, (1 << bits) - 1

    @T.prim_func(s_tir=True)
    def desc(W: T.Buffer((lanes,), "int32", offset_factor=1), A: T.Buffer((words,), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], W[0:lanes], A[0:words])
            T.writes(C[0:lanes])
            for i, p, j in T.grid(lanes, slots, 4):
                with T.sblock("update"):
                    vi, vp, vj = T.axis.remap("SRR", [i, p, j])
                    C[vi] = C[vi] + T.bitwise_and(T.shift_right(W[vi], vp * bits + vj * 8), mask) \
                        * T.cast(A[vp * 4 + vj], "int32")

    # 8-bit codes: one slot per byte; the kernel's loop nest has no unit-extent slot loop, so neither may this
    @T.prim_func(s_tir=True)
    def desc_one_slot(W: T.Buffer((lanes,), "int32", offset_factor=1), A: T.Buffer((4,), "int8", offset_factor=1),
                      C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], W[0:lanes], A[0:4])
            T.writes(C[0:lanes])
            for i, j in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    C[vi] = C[vi] + T.bitwise_and(T.shift_right(W[vi], vj * 8), mask) * T.cast(A[vj], "int32")

    return desc if slots > 1 else desc_one_slot


def _implementation(bits, isa):
    lanes, slots, words = LANES[isa], 8 // bits, 32 // bits
    mask = ((1 << bits) - 1) * 0x01010101
    mask = mask - (1 << 32) if mask >= 1 << 31 else mask  # as an int32 bit pattern (8 bits: -1)
    i32, i8, i16 = f"int32x{lanes}", f"int8x{lanes * 4}", f"int16x{lanes * 2}"
    if isa == "vnni":
        dot_id, madd_id = "llvm.x86.avx512.vpdpbusd.512", None
    elif isa == "avx512bw":
        dot_id, madd_id = "llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"
    else:
        dot_id, madd_id = "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"

    @T.prim_func(s_tir=True)
    def impl(W: T.Buffer((lanes,), "int32", offset_factor=1), A: T.Buffer((words,), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], W[0:lanes], A[0:words])
            T.writes(C[0:lanes])
            for p in T.unroll(slots):
                shift = T.broadcast(T.Cast("int32", p * bits), lanes)
                codes = T.reinterpret(T.bitwise_and(T.shift_right(W.vload([0], dtype=i32), shift),
                                                    T.broadcast(mask, lanes)), dtype=i8)
                quad = T.reinterpret(A.vload([T.Cast("int32", p * 4)], "int8x4"), dtype="int32")
                acts = T.reinterpret(T.broadcast(quad, lanes),
                                     dtype=i8)
                if madd_id is None:
                    C[T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(dot_id), C.vload([0], dtype=i32), codes, acts, dtype=i32)
                else:
                    C[T.ramp(0, 1, lanes)] = C.vload([0], dtype=i32) + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(madd_id),
                        T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(dot_id), codes, acts, dtype=i16),
                        T.broadcast(T.int16(1), lanes * 2), dtype=i32)

    return impl


@functools.lru_cache(maxsize=None)
def register(bits, isa):
    """Register (once) the intrinsic for storage ``bits`` on ``isa``; returns its name."""
    if bits not in (1, 2, 4, 8) or isa not in ISAS:
        raise ValueError(f"no dot intrinsic for bits={bits} on {isa!r}")
    name = intrin_name(bits, isa)
    s_tir.TensorIntrin.register(name, _description(bits, LANES[isa]), _implementation(bits, isa), override=True)
    return name
