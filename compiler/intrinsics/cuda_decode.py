"""Packed-code decode to binary16 on CUDA: one 32-bit word -> ``vpw`` halves ``1024 + code``.

The description is the reference bit placement (:func:`magic_half`, the expression the CUDA kernels'
compute uses), one block per code slot; the implementation calls ``lowbit_decode_u{bits}_magic`` from
``cuda_decode.cuh`` (one ``lop3.b32`` per two codes), whose source the schedule attaches to the kernel
with the ``pragma_import_c`` annotation (TVM's C-family code generators paste it into the module).
"""
import functools
import os

from lowbit.compiler.tvm_api import T, s_tir, tirx

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_decode.cuh")
MAGIC_BITS = 0x6400  # binary16 1024.0


@functools.lru_cache(maxsize=None)
def header_source():
    """The CUDA source of the decode functions (pasted into every kernel that uses them)."""
    with open(HEADER, encoding="utf-8") as f:
        return f.read()


def slot_shift(slot, bits):
    """Bit position of code ``slot`` in its word, halfword-interleaved (``CudaLayout.slot_shift``), as TIR."""
    return ((slot % 2) * 16 + (slot // 2) * bits).astype("uint32")


def code_of(word, slot, bits):
    """The integer code in ``slot`` of a uint32 ``word`` (the reference extraction, as TIR)."""
    return (word >> slot_shift(slot, bits)) & tirx.const((1 << bits) - 1, "uint32")


def magic_half(word, slot, bits):
    """``1024 + code`` as binary16, built by OR-ing the code into the mantissa of 1024.0."""
    return tirx.reinterpret("float16", (code_of(word, slot, bits) | tirx.const(MAGIC_BITS, "uint32"))
                            .astype("uint16"))


def intrin_name(bits):
    """The registered name of the decode intrinsic for ``bits``-bit codes (one place derives it)."""
    return f"lowbit_cuda_decode_u{bits}_magic"


def codes_per_word(bits):
    """Codes per 32-bit word in the halfword-interleaved layout (``CudaLayout.codes_per_word``)."""
    return 2 * (16 // bits)


def _description(bits):
    vpw = codes_per_word(bits)

    @T.prim_func(s_tir=True)
    def desc(W: T.Buffer((1,), "uint32", offset_factor=1, scope="local"),
             D: T.Buffer((vpw,), "float16", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(W[0:1])
            T.writes(D[0:vpw])
            for i in T.serial(vpw):
                with T.sblock("decode"):
                    vi = T.axis.remap("S", [i])
                    D[vi] = magic_half(W[0], vi, bits)

    return desc


def _implementation(bits):
    vpw = codes_per_word(bits)
    name = f"lowbit_decode_u{bits}_magic"

    @T.prim_func(s_tir=True)
    def impl(W: T.Buffer((1,), "uint32", offset_factor=1, scope="local"),
             D: T.Buffer((vpw,), "float16", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(W[0:1])
            T.writes(D[0:vpw])
            T.evaluate(T.call_extern("int32", name, W[0], D.access_ptr("w")))

    return impl


@functools.lru_cache(maxsize=None)
def register(bits):
    """Register (once) the decode intrinsic for ``bits``-bit codes; returns its name."""
    if not 1 <= bits <= 8:
        raise ValueError(f"no CUDA decode intrinsic for bits={bits} (1..8)")
    name = intrin_name(bits)
    s_tir.TensorIntrin.register(name, _description(bits), _implementation(bits), override=True)
    return name
