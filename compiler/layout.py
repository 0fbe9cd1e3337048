"""The CPU kernels' weight layout: codes re-laid offline so the decode loop reads memory contiguously.

Rows are interleaved by ``lanes`` (the float32 lanes of one vector register), so one vector load
brings one 32-bit word of each of ``lanes`` consecutive output rows, and the decoded lanes feed one
vector FMA against a broadcast activation. Each 32-bit word holds ``32 // bits`` codes of one row along
K; each K-group is padded to whole words (3-, 5-, 6- and 7-bit codes leave a few bits of a word
unused, and a group of 128 3-bit codes is padded to 130: 13 words).

Arrays (``NT = ceil(N / lanes)``, ``Gn`` groups along K, ``wpg`` words per group):

- ``W``  int32 ``(NT, Gn, wpg, lanes)``: word ``j`` of group ``g`` of row ``nt*lanes + lane`` holds the codes
  of ``k = g*G + j*vpw + i`` in bits ``[i*bits, (i+1)*bits)``.
- ``S``  float32 ``(NT, Gn, lanes)``: group scales (0 for the padding rows past N).
- ``SZ`` float32 ``(NT, Gn, lanes)``: scale times zero point (affine formats only).
- ``LV`` float32 ``(2**bits * dim,)``: codebook levels (codebook formats only); a 2-D codebook (``dim`` 2:
  one ``bits``-bit code per pair of weights, a group of ``G`` weights has ``G / 2`` codes) keeps its points
  flattened, ``LV[2q], LV[2q + 1]``.
"""
import dataclasses

import numpy as np

from lowbit.errors import KernelError
from lowbit.compiler.formats import implicit_zero


class GroupWords:
    """Words of packed codes per K-group, for layouts that define ``group_size`` and ``codes_per_word``
    (the CPU layouts: 32-bit words; the CUDA layout: two 16-bit halves per word)."""

    @property
    def words_per_group(self):
        return -(-self.group_size // self.codes_per_word)

    @property
    def padded_group(self):
        """Codes per group after padding the group to whole words."""
        return self.words_per_group * self.codes_per_word


class _RowTiles:
    """Counts shared by the layouts: K-groups of ``group_size`` and tiles of ``lanes`` output rows."""

    @property
    def n_groups(self):
        return self.K // self.group_size

    @property
    def n_tiles(self):
        return -(-self.N // self.lanes)


@dataclasses.dataclass(frozen=True)
class KernelLayout(_RowTiles, GroupWords):
    """Sizes of one layer's kernel layout; everything a kernel template needs besides M."""

    N: int
    K: int
    bits: int
    group_size: int
    lanes: int
    decode: str  # "affine" (uniform, ternary): s*(q - z); "codebook": s*levels[q]; "a8": byte-sliced, int8 dot
    dim: int = 1  # weights per code (2: a 2-D codebook's code covers a pair of weights)
    scale_ratio: int = 1  # a8: K-groups per weight-scale group (activation groups finer than the weight's)
    activation: str = "float32"  # a8: "float32" (the kernel quantizes X) or the model's codes, "uint8" / "int8"

    @property
    def scale_groups(self):
        """Groups of scales (and zero points) along K: ``n_groups // scale_ratio``."""
        return self.n_groups // self.scale_ratio

    @property
    def codes_per_word(self):
        return 32 // self.bits

    @property
    def words_per_group(self):
        return -(-(self.group_size // self.dim) // self.codes_per_word)

    @property
    def padded_group(self):
        """Weights per group after padding the group's codes to whole words."""
        return self.words_per_group * self.codes_per_word * self.dim

    @property
    def packed_bytes(self):
        """Bytes the kernel reads for weights: words, scales (and scale*zero) per lane."""
        words = self.n_tiles * self.n_groups * self.words_per_group * self.lanes * 4
        per_group = self.n_tiles * self.scale_groups * self.lanes * 4 * (1 if self.decode == "codebook" else 2)
        return words + per_group

    def arg_names(self):
        """Names of the weight arrays, in the order the kernel takes them (after X)."""
        if self.decode == "a8" and self.activation != "float32":
            return ["W", "S", "Z", "C"]
        return {"affine": ["W", "S", "SZ"], "codebook": ["W", "S", "LV"], "a8": ["W", "S", "Z"]}[self.decode]

    def activation_args(self, M):
        """``(name, shape, dtype)`` of the kernel's activation inputs, first in its params: ``X`` (M, K), and
        for an ``a8`` layout of the model's codes their per-tensor scale ``XS`` and zero point ``XZ``."""
        if self.decode == "a8" and self.activation != "float32":
            return [("X", (M, self.K), self.activation), ("XS", (1,), "float32"), ("XZ", (1,), "int32")]
        return [("X", (M, self.K), "float32")]


def layout_for(qw, lanes):
    """Return the :class:`KernelLayout` of a QuantizedWeight for vectors of ``lanes`` float32."""
    fmt = qw.format
    N, K = qw.shape
    decode = "codebook" if fmt.kind == "codebook" else "affine"
    return KernelLayout(N=N, K=K, bits=fmt.bits, group_size=fmt.group_size or K, lanes=lanes, decode=decode,
                        dim=getattr(fmt, "dim", 1))


def _interleave_rows(a, layout):
    """(N, ...) -> (NT, ..., lanes), padding rows past N with zeros."""
    pad = layout.n_tiles * layout.lanes - layout.N
    a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
    a = a.reshape((layout.n_tiles, layout.lanes) + a.shape[1:])
    return np.moveaxis(a, 1, -1)


def pack_words(codes, layout):
    """Pack (N, K) codes into the int32 word array ``W`` of shape (NT, Gn, wpg, lanes)."""
    N, K = codes.shape
    G, Gp, vpw = layout.group_size, layout.padded_group, layout.codes_per_word
    grouped = codes.reshape(N, layout.n_groups, G).astype(np.uint32)
    if Gp != G:
        grouped = np.concatenate([grouped, np.zeros((N, layout.n_groups, Gp - G), np.uint32)], axis=2)
    per_word = grouped.reshape(N, layout.n_groups, layout.words_per_group, vpw)
    words = np.zeros(per_word.shape[:-1], np.uint32)
    for i in range(vpw):
        words |= per_word[..., i] << np.uint32(layout.bits * i)
    return np.ascontiguousarray(_interleave_rows(words.view(np.int32), layout))


def relayout(qw, lanes):
    """Re-lay a QuantizedWeight into the kernel arrays.

    Returns
    -------
    layout : KernelLayout
    arrays : dict of str -> np.ndarray
        ``W``, ``S`` and ``SZ`` (affine) or ``LV`` (codebook), as documented in this module.
    """
    layout = layout_for(qw, lanes)
    scales = qw.scales.astype(np.float32)
    arrays = {"W": pack_words(qw.codes, _code_units(layout)),
              "S": np.ascontiguousarray(_interleave_rows(scales, layout))}
    if layout.decode == "affine":
        sz = (scales.astype(np.float64) * qw.affine_zeros()).astype(np.float32)
        arrays["SZ"] = np.ascontiguousarray(_interleave_rows(sz, layout))
    else:
        arrays["LV"] = np.asarray(qw.format.levels, np.float32)
    return layout, arrays


def byte_sliced_order(bits):
    """Permutation of the codes of one word for the int8 dot-product kernels.

    Slot ``i`` of a word (bits ``[i*bits, (i+1)*bits)``) holds code ``k = (i % slots) * 4 + i // slots``
    (``slots = 8 // bits`` codes per byte): then ``(word >> slot*bits) & mask*0x01010101`` yields the codes
    ``slot*4 .. slot*4+3`` as the four bytes of the lane (see compiler/intrinsics/x86_dot.py).
    """
    slots = 8 // bits
    return np.array([(i % slots) * 4 + i // slots for i in range(32 // bits)])


ACTIVATION_GROUP = 32


def activation_group(weight_group):
    """The K-group of the ``a8`` kernel's int8 activation scale under weights grouped by ``weight_group``: 32
    when that divides the weight group (one weight scale then covers ``weight_group // 32`` activation
    groups), else the weight group itself.

    One int8 scale per 128 activations lost too much on real activations: the pretrained all-MiniLM-L6-v2 with
    onnxruntime's blocks of 128 came out at cosine 0.99891 and max |diff| / max |y| 1.96e-2 against onnxruntime
    (blocks of 32: 0.99965, 1.04e-2); llama.cpp's q8_0 activations use blocks of 32 too. The weights' scales are
    not repeated: the kernel reads the same bytes, and adds one float term per 32 activations. That term costs
    time where the kernel is compute-bound, measured on 4096 x 4096 against groups of 128 (w4g128) or one group
    per row (w8): M=1 +3-6%, M=16 +22%, M=128 +25-34%; accuracy on real models comes first, and the
    compute-bound kernels for large M are their own work (int8 tiles, a kernel per M bucket).
    """
    if weight_group > ACTIVATION_GROUP and weight_group % ACTIVATION_GROUP == 0:
        return ACTIVATION_GROUP
    return weight_group


# K per int32 group sum of int8 activations x 8-bit codes: acc and zero * xsum each stay within 2**15 * 128 * 255,
# and so does their difference, < 2**31 (the activation zero point's column term is added in float32)
MAX_CODES_GROUP = 1 << 15


def a8_layout(N, K, bits, weight_group, lanes, activation="float32"):
    """The ``a8`` :class:`KernelLayout`: K-groups of the activation's scale (:func:`activation_group`),
    ``scale_ratio`` of them per weight group; ``bits`` is the codes' storage width.

    With the model's own activation codes (``activation`` "uint8" / "int8": one scale per tensor) the K-groups
    are the weight's (up to :data:`MAX_CODES_GROUP`, which keeps the int32 sums exact): nothing finer is needed.
    """
    if activation != "float32":
        group = weight_group if weight_group <= MAX_CODES_GROUP else activation_group(weight_group)
    else:
        group = activation_group(weight_group)
    return KernelLayout(N=N, K=K, bits=bits, group_size=group, lanes=lanes, decode="a8",
                        scale_ratio=weight_group // group, activation=activation)


def relayout_a8(qw, lanes, activation="float32"):
    """Re-lay a uniform or ternary QuantizedWeight for the int8-activation (``a8``) kernels.

    Codes are stored in ``storage_bits(bits)`` (1, 2, 4 or 8) so that they never straddle a byte, in
    byte-sliced order within each word. The layout's K-groups are the activation's quantization groups
    (:func:`activation_group`: at most 32 wide), ``scale_ratio`` of them per weight
    group. Arrays: ``W`` int32 (NT, Gn, wpg, lanes), ``S`` float32 scales and ``Z`` int32 zero points
    (NT, Gn / scale_ratio, lanes): one per weight group, never repeated. For the model's activation codes
    (``activation`` "uint8" / "int8", see :func:`a8_layout`) also ``C`` int32 (NT, Gn, lanes): each group's
    sum of ``code - zero`` over its real K, the column term of the activation's zero point.
    """
    from lowbit.compiler.intrinsics.x86_dot import storage_bits

    fmt = qw.format
    N, K = qw.codes.shape
    layout = a8_layout(N, K, storage_bits(fmt.bits), fmt.group_size or K, lanes, activation)
    G, Gp, vpw = layout.group_size, layout.padded_group, layout.codes_per_word
    grouped = qw.codes.reshape(N, layout.n_groups, G)
    if Gp != G:
        grouped = np.concatenate([grouped, np.zeros((N, layout.n_groups, Gp - G), np.uint8)], axis=2)
    words = grouped.reshape(N, layout.n_groups, layout.words_per_group, vpw)[..., byte_sliced_order(layout.bits)]
    arrays = {"W": pack_words(words.reshape(N, layout.n_groups * Gp)[:, :layout.n_groups * Gp], _unpadded(layout)),
              "S": np.ascontiguousarray(_interleave_rows(qw.scales.astype(np.float32), layout)),
              "Z": np.ascontiguousarray(_interleave_rows(qw.affine_zeros().astype(np.int32), layout))}
    if activation != "float32":
        zeros = np.repeat(qw.affine_zeros().astype(np.int64), layout.scale_ratio, axis=1)  # per K-group
        column = qw.codes.reshape(N, layout.n_groups, G).astype(np.int64).sum(axis=2) - G * zeros
        arrays["C"] = np.ascontiguousarray(_interleave_rows(column.astype(np.int32), layout))
    return layout, arrays


def _code_units(layout):
    """The layout counted in codes (what :func:`pack_words` packs): a 2-D codebook's K and groups halve."""
    if layout.dim == 1:
        return layout
    return dataclasses.replace(layout, K=layout.K // layout.dim, group_size=layout.group_size // layout.dim, dim=1)


def _unpadded(layout):
    """The layout whose groups are already whole words (for packing codes padded by the caller)."""
    return dataclasses.replace(layout, K=layout.n_groups * layout.padded_group, group_size=layout.padded_group)


ENTRIES = 16  # entries of a table indexed by 4 bits (one byte shuffle's table)
MAX_CHUNKS = 128  # lookups summed in int16 per table group: 128 * 128 (an int8 entry or a low byte) < 2**15
MAX_PAIRED_CHUNKS = 64  # plane pairs add entry + 2 * entry per chunk: 64 * 3 * 128 < 2**15


@dataclasses.dataclass(frozen=True)
class LutParams:
    """Knobs of the ``lut`` kernels that shape the weight layout.

    group : activations per table (``g``): 4 (16-entry tables, the default) or 2 (4 used entries of 16).
    table_bits : 8 (tables quantized to int8 with a scale per row and table group) or 16 (entries held
        exactly in int16, looked up as a low-byte and a high-byte table).
    """

    group: int = 4
    table_bits: int = 8

    def __post_init__(self):
        if self.group not in (2, 4) or self.table_bits not in (8, 16):
            raise ValueError(f"lut group={self.group!r}, table_bits={self.table_bits!r}: use group 2 or 4 and "
                             "table_bits 8 or 16")


@dataclasses.dataclass(frozen=True)
class LutLayout(_RowTiles):
    """Sizes of one layer's ``lut`` layout.

    ``lanes`` output rows per tile (twice the vector's bytes: each weight byte carries the table index of
    row ``i`` in its low nibble and of row ``i + lanes/2`` in its high nibble; a wide codebook's byte is one
    row's whole index, so ``lanes`` = vector bytes). Uniform and ternary codes are
    bit-serial: one index per (bit plane, ``group`` consecutive k). Codebook codes index their table whole:
    a 4-bit index is one 3- or 4-bit code (a 3-bit code leaves half the table unused and reads 4 bits per
    code), two 2-bit codes or four 1-bit ones (``4 // bits`` codes), each covering ``dim`` weights (2 for a
    2-D codebook), so one lookup covers ``per_chunk = dim * (4 // bits)`` weights.
    """

    N: int
    K: int
    bits: int
    group_size: int
    lanes: int
    kind: str  # "uniform" (uniform and ternary: bit planes) or "codebook" (whole 4-bit codes)
    params: LutParams
    fixed_zero: object = None  # uniform formats without stored zero points: their zero (ternary 1, wNs 2**(b-1))
    decode: str = "lut"
    dim: int = 1  # codebook: weights per code

    @property
    def codes_per_index(self):
        """Codebook codes packed into one table index (several only below 4 bits)."""
        return _codes_per_index(self.bits) if self.kind == "codebook" else 1

    @property
    def has_zeros(self):
        """Whether the layout carries a uint8 zero point per row and group (``Z``)."""
        return self.kind == "uniform" and self.fixed_zero is None

    @property
    def wide(self):
        """Codebook codes of 5-8 bits: one whole-byte index per row (a 64- or 256-entry table, looked up with
        ``vpermb`` / ``vpermi2b``), instead of two 4-bit indices per byte."""
        return self.kind == "codebook" and _wide_codes(self.bits)

    @property
    def entries(self):
        """Entries of one table: 16 (4-bit indices), or for wide codebooks 64 (codes of 5-6 bits) or 256."""
        return _table_entries(self.bits) if self.kind == "codebook" else ENTRIES

    @property
    def rows_per_byte(self):
        return 1 if self.wide else 2

    @property
    def vector_bytes(self):
        return self.lanes // self.rows_per_byte

    @property
    def planes(self):
        return self.bits if self.kind == "uniform" else 1

    @property
    def per_chunk(self):
        """Weights (along K) that one table index covers: ``group`` bit-serial; ``dim * 4 / bits`` codebook."""
        return self.params.group if self.kind == "uniform" else self.dim * self.codes_per_index

    @property
    def table_group(self):
        """K-elements sharing one activation and table scale: the largest divisor of the weight group made
        of whole chunks with at most :data:`MAX_CHUNKS` chunks (so int16 lookup sums cannot overflow)."""
        G, c = self.group_size, self.per_chunk
        most = MAX_PAIRED_CHUNKS if self.paired else MAX_CHUNKS
        return max(d for d in range(c, G + 1, c) if G % d == 0 and d // c <= most)

    @property
    def paired(self):
        """Bit planes stored in pairs (an even number of planes): the two planes of a row sit in adjacent
        bytes, so ``vpmaddubsw`` with the bytes ``1, 2`` combines their lookups (plane weights) in int16."""
        return self.kind == "uniform" and self.planes % 2 == 0

    @property
    def weight_shape(self):
        """Shape of ``W``: ``(NT, TGn, C, planes, lanes/2)``, or paired ``(NT, TGn, C, planes/2, 2, lanes/2)``."""
        head = (self.n_tiles, self.n_table_groups, self.chunks)
        if self.paired:
            return head + (self.planes // 2, 2, self.vector_bytes)
        return head + (self.planes, self.vector_bytes)

    @property
    def row_shape(self):
        """A tile's rows as the kernel indexes them: ``(nibble, byte)`` = (2, lanes/2), or paired
        ``(vector, nibble, byte pair)`` = (2, 2, lanes/4)."""
        return (2, 2, self.vector_bytes // 2) if self.paired else (self.rows_per_byte, self.vector_bytes)

    @property
    def chunks(self):
        return self.table_group // self.per_chunk

    @property
    def n_table_groups(self):
        return self.K // self.table_group


    @property
    def table_bytes(self):
        return self.params.table_bits // 8

    @property
    def packed_bytes(self):
        """Bytes the kernel reads for weights: index bytes, float32 scales (and uint8 zero points) per group."""
        words = self.n_tiles * self.n_table_groups * self.chunks * self.planes * self.vector_bytes
        per_group = self.n_tiles * self.n_groups * self.lanes * (5 if self.has_zeros else 4)
        return words + per_group

    def arg_names(self):
        if self.kind == "codebook":
            return ["W", "S", "LV"]
        return ["W", "S", "Z"] if self.has_zeros else ["W", "S"]


def lut_unsupported(qw, params):
    """Why ``qw`` has no ``lut`` layout (a sentence), or None."""
    fmt = qw.format
    group = fmt.group_size or qw.shape[1]
    if fmt.kind == "codebook" and fmt.bits > 8:
        return f"{fmt.name} has {fmt.bits}-bit codes; lut tables have at most 256 entries (use decode)"
    per_index = fmt.dim * _codes_per_index(fmt.bits) if fmt.kind == "codebook" else 1
    if fmt.kind == "codebook" and group % per_index:
        return f"group size {group} is not a multiple of the {per_index} weights of one table index"
    if fmt.kind != "codebook" and fmt.bits > 4:
        return f"{fmt.name} has {fmt.bits} bit planes; lut supports 1..4 bits (use a8 for more)"
    if fmt.kind != "codebook" and group % params.group:
        return f"group size {group} is not a multiple of the lut table group g={params.group}"
    return None


def lut_layout(fmt, N, K, vector_bytes, params=LutParams()):
    """The :class:`LutLayout` of an (N, K) weight in ``fmt`` (uniform, ternary or codebook), from its format
    alone (the tuner sizes a layer's kernels before any weight exists)."""
    kind = "codebook" if fmt.kind == "codebook" else "uniform"
    fixed_zero = implicit_zero(fmt) if kind == "uniform" and not fmt.has_zeros else None
    rows_per_byte = 1 if wide_codebook(fmt) else 2
    return LutLayout(N=N, K=K, bits=fmt.bits, group_size=fmt.group_size or K, lanes=rows_per_byte * vector_bytes,
                     kind=kind, params=params, fixed_zero=fixed_zero, dim=getattr(fmt, "dim", 1))


def wide_codebook(fmt):
    """Whether ``fmt`` is a codebook of 5-8-bit codes: under ``lut``, whole-byte indices (:attr:`LutLayout.wide`)."""
    return fmt is not None and fmt.kind == "codebook" and _wide_codes(fmt.bits)


def _wide_codes(bits):
    return bits > 4


def _codes_per_index(bits):
    """Codebook codes in one table index: ``4 // bits`` below 4 bits (several to a nibble), else 1."""
    return max(1, 4 // bits)


def _table_entries(bits):
    """Entries of a codebook's ``lut`` table: 16, or for wide codes 64 (5-6 bits) or 256 (7-8 bits)."""
    return ENTRIES if not _wide_codes(bits) else 64 if bits <= 6 else 256


def lut_points(fmt):
    """(points, peak) of a codebook under the ``lut`` kernels: ``points`` float64 (entries, per_chunk), the
    weights that each table index stands for, divided by ``peak``, the largest ``sum_j |point_j|`` (so every
    table entry ``sum_j point_j xq_j`` of int8 activations stays within int8). A 4-bit index holds code ``i``
    in bits ``[i*bits, (i+1)*bits)`` (a 3-bit code's index never exceeds 7, entries 8-15 repeat 0-7); a wide
    index is the code itself, its table padded with zeros to 64 or 256 entries."""
    entries = np.arange(_table_entries(fmt.bits))
    if _wide_codes(fmt.bits):
        points = np.where((entries < 1 << fmt.bits)[:, None], fmt.points[entries % (1 << fmt.bits)], 0.0)
    else:
        per_index = _codes_per_index(fmt.bits)
        codes = (entries[:, None] >> (fmt.bits * np.arange(per_index))) & ((1 << fmt.bits) - 1)  # (16, per_index)
        points = fmt.points[codes].reshape(len(entries), per_index * fmt.dim)
    peak = np.abs(points).sum(axis=1).max()
    return points / peak, peak


def relayout_lut(qw, vector_bytes, params=LutParams()):
    """Re-lay a uniform, ternary or codebook QuantizedWeight for the ``lut`` kernels.

    Arrays (``NT = ceil(N / lanes)``, ``lanes = 2 * vector_bytes``, or ``vector_bytes`` for wide codebooks,
    ``TGn`` table groups, ``C`` chunks each):

    - ``W`` uint8 ``(NT, TGn, C, planes, vector_bytes)``: byte ``i`` holds the table index of row
      ``nt*lanes + i`` (low nibble) and ``nt*lanes + vector_bytes + i`` (high nibble); wide: of row
      ``nt*lanes + i``, the whole byte. Bit-serial index of plane ``b`` and chunk ``c``:
      ``sum_j bit_b(q[k = c*g + j]) << j``; a codebook index is its codes (:func:`lut_indices`).
    - ``S`` float32 ``(NT, Gn, lanes)``: uniform: the scale; codebook: ``scale * peak`` (:func:`lut_points`).
    - ``Z`` uint8 ``(NT, Gn, lanes)``: zero points (uniform formats that store them; for ternary and
      symmetric formats the zero is a constant of the layout, ``fixed_zero``);
      ``LV`` float32 ``(entries * per_chunk,)`` (codebook): the weights each index stands for, over ``peak``.
    """
    fmt = qw.format
    N, K = qw.shape
    layout = lut_layout(fmt, N, K, vector_bytes, params)
    kind = layout.kind
    reason = lut_unsupported(qw, params)
    if reason is not None:
        raise KernelError(f"kernel 'lut' cannot run {fmt.name}: {reason}")
    index = lut_indices(qw.codes, layout)
    index = _interleave_rows(index.astype(np.uint8), layout)  # (NT, TGn, C, planes, lanes)
    scales = qw.scales.astype(np.float64)
    arrays = {"W": _index_bytes(index, layout)}
    if kind == "uniform":
        arrays["S"] = _interleave_rows(scales.astype(np.float32), layout)
        if layout.has_zeros:
            arrays["Z"] = _interleave_rows(qw.zeros.astype(np.uint8), layout)
    else:
        points, peak = lut_points(fmt)
        arrays["S"] = _interleave_rows((scales * peak).astype(np.float32), layout)
        arrays["LV"] = points.reshape(-1).astype(np.float32)
    return layout, {k: np.ascontiguousarray(v) for k, v in arrays.items()}


def lut_indices(codes, layout):
    """Table indices (N, TGn, C, planes) of (N, K / dim) codes: bit-serial planes (uniform), or ``4 / bits``
    consecutive codebook codes packed into 4 bits."""
    N = codes.shape[0]
    if layout.kind == "uniform":
        chunked = codes.reshape(N, layout.n_table_groups, layout.chunks, layout.per_chunk).astype(np.uint8)
        weights = np.uint8(1) << np.arange(layout.per_chunk, dtype=np.uint8)
        return np.stack([(((chunked >> b) & 1) * weights).sum(axis=3) for b in range(layout.planes)], axis=3)
    chunked = codes.reshape(N, layout.n_table_groups, layout.chunks, layout.codes_per_index).astype(np.uint8)
    shifts = (layout.bits * np.arange(layout.codes_per_index)).astype(np.uint8)
    return (chunked << shifts).sum(axis=3, dtype=np.uint8)[..., None]


def _index_bytes(index, layout):
    """Pack (NT, TGn, C, planes, lanes) table indices two to a byte, in :attr:`LutLayout.weight_shape`.

    Unpaired: byte ``i`` holds rows ``i`` (low nibble) and ``lanes/2 + i`` (high). Paired: vector ``v`` of
    plane pair ``q``, byte ``2j + p`` holds plane ``2q + p`` of rows ``v*lanes/2 + j`` (low nibble) and
    ``v*lanes/2 + lanes/4 + j`` (high).
    """
    if layout.wide:
        return np.ascontiguousarray(index)
    if not layout.paired:
        low, high = np.split(index, 2, axis=-1)
        return np.ascontiguousarray(low | (high << 4))
    head = index.shape[:3]
    rows = index.reshape(head + (layout.planes // 2, 2, 2, 2, layout.vector_bytes // 2))  # q, p, v, s, j
    packed = rows[..., 0, :] | (rows[..., 1, :] << 4)  # q, p, v, j
    return np.ascontiguousarray(np.moveaxis(packed, 4, 6).reshape(layout.weight_shape))
