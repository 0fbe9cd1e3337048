"""The CUDA kernels' weight layout: rows of packed words, each word's codes halfword-interleaved.

Each output row ``n`` is one contiguous run of ``row_words`` 32-bit words along K (a multiple of 4, so a
thread reads 4 words = 16 bytes with one 128-bit ``ld.global.v4``, and of whatever makes the padded K a
multiple of 32, the tensor-core GEMM's K step). Each K-group is padded to whole words. Rows are padded to a
multiple of 16 (one MMA tile) with zero scales.
Inside a word the codes are *halfword-interleaved* (the FasterTransformer / Marlin order): slot ``i``
(``k = group start + word*vpw + i``) sits at bit ``16*(i % 2) + bits*(i // 2)``, so that

    ((word >> bits*p) & (mask * 0x00010001)) | 0x64006400

is two IEEE binary16 numbers ``1024 + code[2p]`` and ``1024 + code[2p+1]`` at once (0x6400 is 1024.0: a
code of up to 10 bits OR-ed into the mantissa is exact), one ``lop3.b32`` per two codes, no int->float
conversion. ``vpw = 2 * (16 // bits)`` codes per word (3-bit: 10, wasting 2 bits).

Arrays:

- ``W``  uint32 ``(Np, row_words)``, ``Np = padded_n``.
- ``S``  float32 ``(Np, Gn)``: group scales (0 in the padding rows).
- ``Z``  float32 ``(Np, Gn)``: ``1024 + zero point`` (affine formats): ``w = S * (decoded - Z)``, exact.
- ``LV`` float32 ``(2**bits,)``: codebook levels (codebook formats): ``w = S * LV[code]``.
"""
import dataclasses
import math

import numpy as np

from lowbit.compiler.layout import GroupWords
from lowbit.errors import KernelError

MAGIC = 1024  # binary16 0x6400
VECTOR_WORDS = 4  # 128-bit loads
MMA_K_STEP = 32  # codes per K step of the tensor-core GEMM (two m16n8k16 K slices)
ROW_TILE = 16  # rows per MMA tile


@dataclasses.dataclass(frozen=True)
class CudaLayout(GroupWords):
    """Sizes of one layer's CUDA layout; everything a CUDA kernel template needs besides M and dtypes."""

    N: int
    K: int
    bits: int
    group_size: int
    decode: str  # "affine" (uniform, ternary) or "codebook"
    dtype: str = "float16"  # activations and outputs: "float16" or "bfloat16"

    @property
    def codes_per_word(self):
        return 2 * (16 // self.bits)

    @property
    def n_groups(self):
        return self.K // self.group_size

    @property
    def row_words(self):
        """Words per row: all groups' words, padded to a multiple of 4 (one 128-bit load) whose codes fill
        whole GEMM K steps."""
        words = self.n_groups * self.words_per_group
        step = math.lcm(VECTOR_WORDS, MMA_K_STEP // math.gcd(MMA_K_STEP, self.codes_per_word))
        return -(-words // step) * step

    @property
    def padded_n(self):
        """Rows of the weight arrays: N rounded up to a multiple of 16."""
        return -(-self.N // ROW_TILE) * ROW_TILE

    def slot_shift(self, slot):
        """Bit position of code ``slot`` in its word (halfword-interleaved)."""
        return 16 * (slot % 2) + self.bits * (slot // 2)

    def arg_names(self):
        """Names of the weight arrays in the order the kernels take them (after X)."""
        return ["W", "S", "Z"] if self.decode == "affine" else ["W", "S", "LV"]

    @property
    def packed_bytes(self):
        """Bytes a kernel reads for the weights (words, scales and zero points)."""
        per_group = 4 if self.decode == "codebook" else 8
        return self.padded_n * (self.row_words * 4 + self.n_groups * per_group)


def cuda_layout_for(qw, dtype="float16"):
    """The :class:`CudaLayout` of a QuantizedWeight for ``dtype`` activations."""
    fmt = qw.format
    N, K = qw.codes.shape
    if getattr(fmt, "dim", 1) != 1:
        raise KernelError(f"{fmt.name}: the CUDA kernels decode one code per weight; no CUDA kernel decodes 2-D "
                          "codebooks yet")
    decode = "codebook" if fmt.kind == "codebook" else "affine"
    return CudaLayout(N=N, K=K, bits=fmt.bits, group_size=fmt.group_size or K, decode=decode, dtype=dtype)


def pack_cuda_words(codes, layout):
    """Pack (N, K) codes into the uint32 array ``W`` of shape (N, row_words)."""
    N = codes.shape[0]
    G, Gp, vpw = layout.group_size, layout.padded_group, layout.codes_per_word
    grouped = codes.reshape(N, layout.n_groups, G).astype(np.uint32)
    if Gp != G:
        grouped = np.concatenate([grouped, np.zeros((N, layout.n_groups, Gp - G), np.uint32)], axis=2)
    per_word = grouped.reshape(N, layout.n_groups * layout.words_per_group, vpw)
    words = np.zeros((layout.padded_n, layout.row_words), np.uint32)
    used = per_word.shape[1]
    for slot in range(vpw):
        words[:N, :used] |= per_word[..., slot] << np.uint32(layout.slot_shift(slot))
    return words


def unpack_cuda_words(words, layout):
    """Inverse of :func:`pack_cuda_words`: (N, K) uint8 codes (for tests and inspection)."""
    N, vpw = layout.N, layout.codes_per_word
    words = words[:N]
    used = layout.n_groups * layout.words_per_group
    mask = np.uint32((1 << layout.bits) - 1)
    slots = [(words[:, :used] >> np.uint32(layout.slot_shift(s))) & mask for s in range(vpw)]
    codes = np.stack(slots, axis=-1).reshape(N, layout.n_groups, layout.padded_group)
    return codes[:, :, :layout.group_size].reshape(N, layout.K).astype(np.uint8)


def _pad_rows(array, layout):
    """(N, ...) -> (padded_n, ...) with zero rows appended."""
    out = np.zeros((layout.padded_n,) + array.shape[1:], array.dtype)
    out[:layout.N] = array
    return out


def relayout_cuda(qw, dtype="float16"):
    """Re-lay a QuantizedWeight into the CUDA kernel arrays: returns (CudaLayout, {name: array})."""
    layout = cuda_layout_for(qw, dtype)
    arrays = {"W": pack_cuda_words(qw.codes, layout), "S": _pad_rows(qw.scales.astype(np.float32), layout)}
    if layout.decode == "affine":
        arrays["Z"] = _pad_rows(qw.affine_zeros().astype(np.float32) + np.float32(MAGIC), layout)
    else:
        arrays["LV"] = np.asarray(qw.format.levels, np.float32)
    return layout, arrays
