"""Table lookup through the x86 byte shuffle: ``C[s, i] += T[nibble s of W[i]]`` for one vector of weights.

One intrinsic call consumes one vector of ``lanes`` weight bytes (64 on AVX-512BW, 32 on AVX2). Each byte
holds two 4-bit table indices, one per nibble (nibble ``s`` = bits ``[4s, 4s+4)``), and both are looked up in
the same 16-entry int8 table; the results are sign-extended and added to two rows of int16 accumulators.
``vpshufb`` looks up 16 byte indices per 128-bit lane in that lane's own 16-byte table (Intel SDM, PSHUFB:
"the shuffle mask ... selects a byte within the same 128-bit lane"), so the table is broadcast to every
lane once and one instruction performs ``lanes`` lookups:

- ``avx512bw``: ``vpshufb zmm`` (``llvm.x86.avx512.pshuf.b.512``), 64 lookups per instruction.
- ``avx2``: ``vpshufb ymm`` (``llvm.x86.avx2.pshuf.b``), 32 lookups per instruction.

Wide indices (codebook codes of 5-8 bits, one index per byte, a 64- or 256-entry table):

- ``avx512vbmi``: ``vpermb`` (``llvm.x86.avx512.permvar.qi.512``) looks up 64 byte indices in a 64-byte table
  held in one register (index bits 6 and 7 ignored); a 256-entry table takes two ``vpermi2b`` (128-byte
  tables from two registers, ``llvm.x86.avx512.vpermi2var.qi.512``) and a select on index bit 7
  (``vpblendmb``).
- ``avx512bw`` without VBMI, and ``avx2``: the table in 16-entry slices, each broadcast to every 128-bit lane
  and looked up with ``vpshufb`` on the index's low 4 bits; a tree of byte selects on index bits 4, 5 (, 6,
  7) picks the slice: 4 shuffles and 3 selects for 64 entries, 16 and 15 for 256. A select tests one bit
  moved into the byte's sign (``vpblendvb`` on AVX2, a mask compare and ``vpblendmb`` on AVX-512).

The description is the reference lookup written as a one-hot select sum over the table entries
(:func:`lookup_term`, the same expression the kernel's compute uses): ``sch.tensorize`` matches it
structurally, which a direct gather ``T[index]`` would not. Its accumulator is a ``local`` (register) buffer.
"""
import functools

from lowbit.compiler.layout import ENTRIES  # table entries one byte shuffle addresses: 4-bit indices
from lowbit.compiler.tvm_api import T, s_tir, tirx

ISAS = ("avx512bw", "avx2")
VECTOR_BYTES = {"avx512vbmi": 64, "avx512bw": 64, "avx2": 32}
PORTABLE_BYTES = 16  # the portable (gather, no tensorize) kernel's vector of weight bytes
_SHUFFLE = {"avx512bw": "llvm.x86.avx512.pshuf.b.512", "avx2": "llvm.x86.avx2.pshuf.b"}
_MADD = {"avx512bw": "llvm.x86.avx512.pmaddubs.w.512", "avx2": "llvm.x86.avx2.pmadd.ub.sw"}


WIDE_ISAS = ("avx512vbmi",) + ISAS
_PERMVAR, _PERMI2VAR = "llvm.x86.avx512.permvar.qi.512", "llvm.x86.avx512.vpermi2var.qi.512"


def wide_isa_for(features):
    """The ISA of wide-index lookups among the features: ``avx512vbmi`` (byte permutes over a whole register),
    else the byte-shuffle ISA (:func:`isa_for`: sliced tables), or None (portable)."""
    if {"avx512f", "avx512bw", "avx512vbmi"} <= features:
        return "avx512vbmi"
    return isa_for(features)


def wide_intrin_name(entries, isa):
    return f"lowbit_lut_{VECTOR_BYTES[isa]}x1x{entries}_{isa}"


def isa_for(features):
    """The byte-shuffle ISA among the given LLVM features (``avx512bw``, ``avx2``), or None (portable)."""
    if {"avx512f", "avx512bw"} <= features:
        return "avx512bw"
    if "avx2" in features:
        return "avx2"
    return None


def intrin_name(isa, paired=False):
    """The registered name of the lookup intrinsic on ``isa`` (one place derives it)."""
    return f"lowbit_lut_{VECTOR_BYTES[isa]}x2x{ENTRIES}{'_paired' if paired else ''}_{isa}"


def nibble(word, which):
    """Table index in nibble ``which`` (0: low, 1: high) of a weight byte, as int32."""
    return (word.astype("int32") >> (which * 4)) & (ENTRIES - 1)


def table_index(word, which, wide=False):
    """The table index a weight byte holds for row slot ``which``: its nibble, or (``wide``) the whole byte."""
    return word.astype("int32") if wide else nibble(word, which)


def lookup_term(word, which, entry, value, wide=False):
    """The reference lookup as one term of a one-hot sum: ``value`` (table entry ``entry``) as int16 when
    the index :func:`table_index` reads selects ``entry``, else 0. Summed over the entries it is ``T[index]``."""
    return tirx.Select(table_index(word, which, wide) == entry, value.astype("int16"), tirx.const(0, "int16"))


def paired_lookup_term(word, which, entry, value, plane):
    """:func:`lookup_term` for plane ``plane`` (0 or 1) of a plane pair, weighted ``2**plane``: summed over
    the entries and both planes it is ``T[index_0] + 2 T[index_1]``, what ``vpmaddubsw`` with the bytes
    ``1, 2`` makes of two adjacent looked-up bytes."""
    weight = (plane + 1).astype("int16")
    return tirx.Select(nibble(word, which) == entry, value.astype("int16") * weight, tirx.const(0, "int16"))


def _description(lanes, paired):
    rows = lanes // 2 if paired else lanes

    @T.prim_func(s_tir=True)
    def desc(W: T.Buffer((lanes,), "uint8", offset_factor=1), Tb: T.Buffer((ENTRIES,), "int8", offset_factor=1),
             C: T.Buffer((2, lanes), "int16", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:lanes], W[0:lanes], Tb[0:ENTRIES])
            T.writes(C[0:2, 0:lanes])
            for s, i, e in T.grid(2, lanes, ENTRIES):
                with T.sblock("update"):
                    vs, vi, ve = T.axis.remap("SSR", [s, i, e])
                    C[vs, vi] = C[vs, vi] + lookup_term(W[vi], vs, ve, Tb[ve])

    @T.prim_func(s_tir=True)
    def desc_paired(W: T.Buffer((lanes,), "uint8", offset_factor=1),
                    Tb: T.Buffer((ENTRIES,), "int8", offset_factor=1),
                    C: T.Buffer((2, rows), "int16", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:rows], W[0:lanes], Tb[0:ENTRIES])
            T.writes(C[0:2, 0:rows])
            for s, j, p, e in T.grid(2, rows, 2, ENTRIES):
                with T.sblock("update"):
                    vs, vj, vp, ve = T.axis.remap("SSRR", [s, j, p, e])
                    C[vs, vj] = C[vs, vj] + paired_lookup_term(W[vj * 2 + vp], vs, ve, Tb[ve], vp)

    return desc_paired if paired else desc


def _lane_table(Tb, start, lanes):
    """The 16 table entries from ``start`` in every 128-bit lane of a ``lanes``-byte vector (a vbroadcasti32x4 /
    vbroadcasti128): what ``vpshufb`` looks up in, lane by lane."""
    return T.Shuffle([Tb.vload([start], f"int8x{ENTRIES}")] * (lanes // ENTRIES), list(range(lanes)))


def _implementation(isa, paired):
    lanes = VECTOR_BYTES[isa]
    rows = lanes // 2 if paired else lanes
    u8, i8, i16 = f"uint8x{lanes}", f"int8x{lanes}", f"int16x{rows}"
    shuffle, madd = _SHUFFLE[isa], _MADD[isa]

    @T.prim_func(s_tir=True)
    def impl(W: T.Buffer((lanes,), "uint8", offset_factor=1), Tb: T.Buffer((ENTRIES,), "int8", offset_factor=1),
             C: T.Buffer((2, rows), "int16", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:rows], W[0:lanes], Tb[0:ENTRIES])
            T.writes(C[0:2, 0:rows])
            table = _lane_table(Tb, 0, lanes)
            word = W.vload([0], u8)
            for s in T.unroll(2):
                index = T.reinterpret(T.bitwise_and(T.shift_right(word, T.broadcast(T.Cast("uint8", s * 4), lanes)),
                                                    T.broadcast(T.uint8(ENTRIES - 1), lanes)), dtype=i8)
                found = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(shuffle), table, index, dtype=i8)
                if paired:  # plane weights 1, 2 as the unsigned operand: adjacent bytes summed into int16
                    weights = T.reinterpret(T.broadcast(T.int16(0x0201), rows), dtype=i8)
                    C[s, T.ramp(0, 1, rows)] = C.vload([s, 0], dtype=i16) + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(madd), weights, found, dtype=i16)
                else:
                    C[s, T.ramp(0, 1, rows)] = C.vload([s, 0], dtype=i16) + T.Cast(i16, found)

    return impl


def _wide_description(entries, lanes):
    @T.prim_func(s_tir=True)
    def desc(W: T.Buffer((lanes,), "uint8", offset_factor=1), Tb: T.Buffer((entries,), "int8", offset_factor=1),
             C: T.Buffer((1, lanes), "int16", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:1, 0:lanes], W[0:lanes], Tb[0:entries])
            T.writes(C[0:1, 0:lanes])
            for i, e in T.grid(lanes, entries):
                with T.sblock("update"):
                    vi, ve = T.axis.remap("SR", [i, e])
                    C[0, vi] = C[0, vi] + lookup_term(W[vi], 0, ve, Tb[ve], True)

    return desc


def _permuted(Tb, index, entries, lanes):
    """The looked-up bytes through VBMI's byte permutes (one register: 64 entries; two and a select: 256)."""
    i8 = f"int8x{lanes}"
    if entries == 64:
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_PERMVAR), Tb.vload([0], i8), index, dtype=i8)
    # entries 0-127 from tables 0, 1 and 128-255 from tables 2, 3: index bit 7 picks (its sign)
    low = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_PERMI2VAR), Tb.vload([0], i8), index,
                                  Tb.vload([64], i8), dtype=i8)
    high = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_PERMI2VAR), Tb.vload([128], i8), index,
                                   Tb.vload([192], i8), dtype=i8)
    return T.Select(index < T.broadcast(T.int8(0), lanes), high, low)


def _shuffled(Tb, word, entries, isa):
    """The looked-up bytes through ``vpshufb``: every 16-entry slice of the table looked up with the index's
    low 4 bits, then a select tree on bits 4.. (slice pairs, then pairs of pairs) keeps the index's slice."""
    lanes = VECTOR_BYTES[isa]
    i8 = f"int8x{lanes}"
    low = T.reinterpret(T.bitwise_and(word, T.broadcast(T.uint8(ENTRIES - 1), lanes)), dtype=i8)
    found = [T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_SHUFFLE[isa]), _lane_table(Tb, ENTRIES * j, lanes),
                                     low, dtype=i8) for j in range(entries // ENTRIES)]
    bit = 4
    while len(found) > 1:  # index bit ``bit`` moved into the sign: set -> the odd slice of each pair
        sign = T.reinterpret(T.shift_left(word, T.broadcast(T.uint8(7 - bit), lanes)), dtype=i8)
        chosen = sign < T.broadcast(T.int8(0), lanes)
        found = [T.Select(chosen, odd, even) for even, odd in zip(found[0::2], found[1::2])]
        bit += 1
    return found[0]


def _wide_implementation(entries, isa):
    lanes = VECTOR_BYTES[isa]
    i8, i16 = f"int8x{lanes}", f"int16x{lanes}"

    @T.prim_func(s_tir=True)
    def impl(W: T.Buffer((lanes,), "uint8", offset_factor=1), Tb: T.Buffer((entries,), "int8", offset_factor=1),
             C: T.Buffer((1, lanes), "int16", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:1, 0:lanes], W[0:lanes], Tb[0:entries])
            T.writes(C[0:1, 0:lanes])
            word = W.vload([0], f"uint8x{lanes}")
            if isa == "avx512vbmi":
                found = _permuted(Tb, T.reinterpret(word, dtype=i8), entries, lanes)
            else:
                found = _shuffled(Tb, word, entries, isa)
            C[0, T.ramp(0, 1, lanes)] = C.vload([0, 0], dtype=i16) + T.Cast(i16, found)

    return impl


@functools.lru_cache(maxsize=None)
def register_wide(entries, isa):
    """Register (once) the wide-index lookup intrinsic (64 or 256 entries) for ``isa`` (one of
    :data:`WIDE_ISAS`); returns its name."""
    if entries not in (64, 256) or isa not in WIDE_ISAS:
        raise ValueError(f"no wide lookup intrinsic for {entries} entries on {isa!r}: 64 or 256 entries, on one "
                         f"of {', '.join(WIDE_ISAS)}")
    name = wide_intrin_name(entries, isa)
    s_tir.TensorIntrin.register(name, _wide_description(entries, VECTOR_BYTES[isa]),
                                _wide_implementation(entries, isa), override=True)
    return name


@functools.lru_cache(maxsize=None)
def register(isa, paired=False):
    """Register (once) the lookup intrinsic for ``isa`` (``paired``: plane pairs through ``vpmaddubsw``);
    returns its name."""
    if isa not in ISAS:
        raise ValueError(f"no lookup intrinsic for {isa!r}: choose one of {', '.join(ISAS)}")
    name = intrin_name(isa, paired)
    s_tir.TensorIntrin.register(name, _description(VECTOR_BYTES[isa], paired), _implementation(isa, paired),
                                override=True)
    return name
