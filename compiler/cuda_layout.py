"""The CUDA kernels' weight layout: rows of packed words, each word's codes halfword-interleaved.

Each output row ``n`` is one contiguous run of ``row_words`` 32-bit words along K (a multiple of 4, so a
thread reads 4 words = 16 bytes with one 128-bit ``ld.global.v4``). Each K-group is padded to whole words.
Inside a word the codes are *halfword-interleaved* (the FasterTransformer / Marlin order): slot ``i``
(``k = group start + word*vpw + i``) sits at bit ``16*(i % 2) + bits*(i // 2)``, so that

    ((word >> bits*p) & (mask * 0x00010001)) | 0x64006400

is two IEEE binary16 numbers ``1024 + code[2p]`` and ``1024 + code[2p+1]`` at once (0x6400 is 1024.0: a
code of up to 10 bits OR-ed into the mantissa is exact), one ``lop3.b32`` per two codes, no int->float
conversion. ``vpw = 2 * (16 // bits)`` codes per word (3-bit: 10, wasting 2 bits).

Arrays:

- ``W``  uint32 ``(N, row_words)``.
- ``S``  float32 ``(N, Gn)``: group scales.
- ``Z``  float32 ``(N, Gn)``: ``1024 + zero point`` (affine formats): ``w = S * (decoded - Z)``, exact.
- ``LV`` float32 ``(2**bits,)``: codebook levels (codebook formats): ``w = S * LV[code]``.
"""
import dataclasses

import numpy as np

MAGIC = 1024  # binary16 0x6400
VECTOR_WORDS = 4  # 128-bit loads


@dataclasses.dataclass(frozen=True)
class CudaLayout:
    """Sizes of one layer's CUDA layout; everything a CUDA kernel template needs besides M and dtypes."""

    N: int
    K: int
    bits: int
    group_size: int
    decode: str  # "affine" (uniform, ternary) or "codebook"

    @property
    def codes_per_word(self):
        return 2 * (16 // self.bits)

    @property
    def words_per_group(self):
        return -(-self.group_size // self.codes_per_word)

    @property
    def padded_group(self):
        return self.words_per_group * self.codes_per_word

    @property
    def n_groups(self):
        return self.K // self.group_size

    @property
    def row_words(self):
        """Words per row: all groups' words, padded to a multiple of 4 (one 128-bit load)."""
        words = self.n_groups * self.words_per_group
        return -(-words // VECTOR_WORDS) * VECTOR_WORDS

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
        return self.N * (self.row_words * 4 + self.n_groups * per_group)


def cuda_layout_for(qw):
    """The :class:`CudaLayout` of a QuantizedWeight."""
    fmt = qw.format
    N, K = qw.codes.shape
    decode = "codebook" if fmt.kind == "codebook" else "affine"
    return CudaLayout(N=N, K=K, bits=fmt.bits, group_size=fmt.group_size or K, decode=decode)


def pack_cuda_words(codes, layout):
    """Pack (N, K) codes into the uint32 array ``W`` of shape (N, row_words)."""
    N = codes.shape[0]
    G, Gp, vpw = layout.group_size, layout.padded_group, layout.codes_per_word
    grouped = codes.reshape(N, layout.n_groups, G).astype(np.uint32)
    if Gp != G:
        grouped = np.concatenate([grouped, np.zeros((N, layout.n_groups, Gp - G), np.uint32)], axis=2)
    per_word = grouped.reshape(N, layout.n_groups * layout.words_per_group, vpw)
    words = np.zeros((N, layout.row_words), np.uint32)
    used = per_word.shape[1]
    for slot in range(vpw):
        words[:, :used] |= per_word[..., slot] << np.uint32(layout.slot_shift(slot))
    return words


def unpack_cuda_words(words, layout):
    """Inverse of :func:`pack_cuda_words`: (N, K) uint8 codes (for tests and inspection)."""
    N, vpw = words.shape[0], layout.codes_per_word
    used = layout.n_groups * layout.words_per_group
    mask = np.uint32((1 << layout.bits) - 1)
    slots = [(words[:, :used] >> np.uint32(layout.slot_shift(s))) & mask for s in range(vpw)]
    codes = np.stack(slots, axis=-1).reshape(N, layout.n_groups, layout.padded_group)
    return codes[:, :, :layout.group_size].reshape(N, layout.K).astype(np.uint8)


def relayout_cuda(qw):
    """Re-lay a QuantizedWeight into the CUDA kernel arrays: returns (CudaLayout, {name: array})."""
    layout = cuda_layout_for(qw)
    scales = np.ascontiguousarray(qw.scales, dtype=np.float32)
    arrays = {"W": pack_cuda_words(qw.codes, layout), "S": scales}
    if layout.decode == "affine":
        arrays["Z"] = (qw.affine_zeros().astype(np.float32) + np.float32(MAGIC))
    else:
        arrays["LV"] = np.asarray(qw.format.levels, np.float32)
    return layout, arrays
