"""Low-bit weight formats and their NumPy reference: quantize, pack, unpack, dequantize.

The NumPy code here is the truth every kernel is tested against. A format is a frozen, validated
dataclass whose ``name`` is canonical and parses back with :func:`parse_format`:

=================  ===========================================================================
``w4g128``         uniform 4-bit, groups of 128 along K, with integer zero points
``w4g128s``        the same, symmetric (zero point ``2**(bits-1)``, no stored zeros)
``w8`` / ``w8s``   per output channel (one group spanning K)
``ternary``        {-1, 0, +1} with a per-channel absmean scale (BitNet b1.58), stored in 2 bits
``ternaryg128``    ternary with one scale per group of 128
``nf4g64``         NF4 codebook (QLoRA levels), groups of 64
``fp4g32``         FP4 e2m1 codebook (code = sign<<3 | exponent<<1 | mantissa), groups of 32
``cb3g64[l0,..]``  user codebook of ``2**bits`` float levels (e.g. an MSE-optimal grid)
``cb4g64v2[..]``   user 2-D codebook: pairs of weights share one 4-bit code, 16 points ``x0,y0,x1,y1,..``
``higgs4g64``      HIGGS: Hadamard-rotated groups of 64 on the 4-bit MSE-optimal Gaussian grid
``higgs2g64v2``    HIGGS with a 2-D grid: pairs of rotated weights share one 4-bit code
=================  ===========================================================================

Dequantization: uniform ``w = s * (q - z)``; ternary ``w = s * (q - 1)`` with ``q`` in {0, 1, 2};
codebook ``w = s * levels[q]`` (2-D: ``(w_2i, w_2i+1) = s * points[q_i]``); HIGGS ``w = T^-1(s * grid[q])`` per
group (see :mod:`.higgs`). Scales are per (row, group).
"""
import dataclasses
import re
from typing import ClassVar, Optional

import numpy as np

from lowbit.compiler.higgs import HiggsFormat, dequantize_rotated, hadamard_rotate, quantize_higgs
from lowbit.errors import FormatError, WeightError

# QLoRA's NF4 levels (normal-float quantiles), in code order.
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)
# FP4 e2m1 (OCP microscaling spec): code = sign<<3 | exponent<<1 | mantissa, bias 1; e=0 is subnormal.
FP4_LEVELS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SCALE_BITS = 16  # size accounting counts scales as fp16, as llama.cpp / BitBLAS report bits per weight
MAX_GROUP = 1 << 16


def _check_group(group_size, name):
    if group_size is None:
        return
    if not isinstance(group_size, (int, np.integer)) or isinstance(group_size, bool) or \
            not 2 <= group_size <= MAX_GROUP:
        raise FormatError(f"{name}: group_size {group_size!r} is out of range: use an integer in "
                          f"[2, {MAX_GROUP}] (typically 32, 64, 128 or 256), or None for per-channel")


def _group_suffix(group_size):
    return "" if group_size is None else f"g{group_size}"


@dataclasses.dataclass(frozen=True)
class UniformFormat:
    """Uniform integer format: ``bits`` in 1..8, per channel (``group_size=None``) or grouped along K.

    ``symmetric=False`` stores an integer zero point per group; ``symmetric=True`` fixes it at
    ``2**(bits-1)`` (codes are offset two's-complement values).
    """

    bits: int
    group_size: Optional[int] = None
    symmetric: bool = False
    kind: ClassVar[str] = "uniform"

    def __post_init__(self):
        if not isinstance(self.bits, (int, np.integer)) or not 1 <= self.bits <= 8:
            raise FormatError(f"uniform format: bits={self.bits!r} is out of range: use 1..8")
        if self.symmetric and self.bits == 1:
            raise FormatError("uniform format: 1-bit symmetric has no level besides -1 and 0: use w1g.. with "
                              "zero points, or 'ternary'")
        _check_group(self.group_size, f"w{self.bits}")

    @property
    def name(self):
        return f"w{self.bits}{_group_suffix(self.group_size)}{'s' if self.symmetric else ''}"

    @property
    def has_zeros(self):
        """Whether zero points are stored per group."""
        return not self.symmetric

    def bits_per_weight(self, K):
        """Storage bits per weight for rows of length ``K``: codes + fp16 scale + zero point per group."""
        group = self.group_size or K
        return self.bits + (SCALE_BITS + (self.bits if self.has_zeros else 0)) / group


@dataclasses.dataclass(frozen=True)
class TernaryFormat:
    """Ternary {-1, 0, +1} times an absmean scale per channel or group (BitNet b1.58); 2-bit codes."""

    group_size: Optional[int] = None
    kind: ClassVar[str] = "ternary"
    bits: ClassVar[int] = 2
    has_zeros: ClassVar[bool] = False

    def __post_init__(self):
        _check_group(self.group_size, "ternary")

    @property
    def name(self):
        return f"ternary{_group_suffix(self.group_size)}"

    def bits_per_weight(self, K):
        """Storage bits per weight: 2-bit codes + fp16 scale per group (log2(3) = 1.58 is the entropy)."""
        return self.bits + SCALE_BITS / (self.group_size or K)


@dataclasses.dataclass(frozen=True)
class CodebookFormat:
    """Non-uniform codebook: ``2**bits`` float levels indexed by the codes, times a group scale.

    ``family`` is ``"nf4"``, ``"fp4"`` (fixed levels) or ``"cb"`` (user levels, spelled in the name).
    ``dim=2`` makes it a 2-D codebook: each pair of adjacent weights along K shares one ``bits``-bit code
    indexing ``2**bits`` points of the plane; ``levels`` then holds the points flattened (``x0, y0, x1, y1,
    ...``). A 2-D-grid HIGGS weight is such a codebook in its rotated space (``bits`` = 2 x HIGGS bits).
    """

    bits: int
    group_size: Optional[int]
    levels: tuple
    family: str = "cb"
    dim: int = 1
    kind: ClassVar[str] = "codebook"
    has_zeros: ClassVar[bool] = False

    def __post_init__(self):
        if not isinstance(self.bits, (int, np.integer)) or not 1 <= self.bits <= 8:
            raise FormatError(f"codebook format: bits={self.bits!r} is out of range: use 1..8")
        if self.dim not in (1, 2):
            raise FormatError(f"codebook format: dimension {self.dim!r}: use 1 (a level per weight) or 2 (a point "
                              "per pair of weights)")
        _check_group(self.group_size, f"{self.family}")
        if self.dim == 2 and self.group_size and self.group_size % 2:
            raise FormatError(f"2-D codebook: group size {self.group_size} must be even (codes cover pairs)")
        levels = np.asarray(self.levels, dtype=np.float64)
        if levels.shape != (2 ** self.bits * self.dim,):
            what = "levels" if self.dim == 1 else "point coordinates (x0, y0, x1, y1, ...)"
            raise FormatError(f"codebook format: {levels.size} {what} given for {self.bits} bits: "
                              f"give exactly {2 ** self.bits * self.dim}")
        if not np.isfinite(levels).all() or not np.abs(levels).max() > 0:
            raise FormatError("codebook format: levels must be finite and not all zero")
        if len(np.unique(levels.reshape(-1, self.dim), axis=0)) < 2:
            raise FormatError(f"codebook format: all {2 ** self.bits} levels are equal ({levels[:self.dim]}): a "
                              "codebook needs at least two distinct levels; use a uniform format (w{bits}) instead")
        # Kernels hold levels in float32: keep exactly the float32 values so the reference agrees.
        object.__setattr__(self, "levels", tuple(float(v) for v in levels.astype(np.float32)))

    @property
    def name(self):
        suffix = _group_suffix(self.group_size) + ("v2" if self.dim == 2 else "")
        if self.family in ("nf4", "fp4"):
            return f"{self.family}{suffix}"
        return f"cb{self.bits}{suffix}[{','.join(str(np.float32(v)) for v in self.levels)}]"

    @property
    def code_bits(self):
        """Bits of one stored code (a code covers ``dim`` weights)."""
        return self.bits

    @property
    def points(self):
        """The codebook as float64 (2**bits, dim): entry ``q`` decodes to the ``dim`` weights ``s * points[q]``."""
        return np.asarray(self.levels, np.float64).reshape(-1, self.dim)

    def bits_per_weight(self, K):
        """Storage bits per weight: codes + fp16 scale per group (the shared levels are negligible)."""
        return self.bits / self.dim + SCALE_BITS / (self.group_size or K)


def nf4(group_size=64):
    """The NF4 codebook format (QLoRA levels)."""
    return CodebookFormat(4, group_size, NF4_LEVELS, "nf4")


def fp4(group_size=32):
    """The FP4 e2m1 codebook format."""
    return CodebookFormat(4, group_size, FP4_LEVELS, "fp4")


_PATTERNS = (
    (re.compile(r"w(\d+)(?:g(\d+))?(s?)", re.ASCII),
     lambda m: UniformFormat(_number(m[1]), _int_or_none(m[2]), m[3] == "s")),
    (re.compile(r"ternary(?:g(\d+))?", re.ASCII), lambda m: TernaryFormat(_int_or_none(m[1]))),
    (re.compile(r"(nf4|fp4)(?:g(\d+))?", re.ASCII),
     lambda m: CodebookFormat(4, _int_or_none(m[2]), NF4_LEVELS if m[1] == "nf4" else FP4_LEVELS, m[1])),
    (re.compile(r"higgs(\d+)g(\d+)(v2)?", re.ASCII),
     lambda m: HiggsFormat(_number(m[1]), _number(m[2]), 2 if m[3] else 1)),
    (re.compile(r"cb(\d+)(?:g(\d+))?(v2)?\[([^\]]*)\]", re.ASCII),
     lambda m: CodebookFormat(_number(m[1]), _int_or_none(m[2]), _parse_levels(m[4]), "cb", 2 if m[3] else 1)),
)


def implicit_zero(fmt):
    """The zero point of a uniform or ternary format that stores none: 1 for ternary (codes 0, 1, 2), the
    middle code ``2**(bits-1)`` for symmetric ``wNs`` formats."""
    return 1 if fmt.kind == "ternary" else 2 ** (fmt.bits - 1)


MAX_NUMBER_DIGITS = 6  # bits and group sizes: no valid one is longer (MAX_GROUP has 5 digits)
MAX_LEVELS_TEXT = 1 << 14  # characters in a cb[...] level list (2**8 levels x 2 coordinates, with room)


def _number(text):
    """An ASCII decimal from a format name; FormatError for one longer than any valid bits or group size."""
    if len(text) > MAX_NUMBER_DIGITS:
        raise FormatError(f"number {text[:12]}{'...' if len(text) > 12 else ''} in a format name has {len(text)} "
                          f"digits: bits are 1..8 and group sizes at most {MAX_GROUP}")
    return int(text)


def _int_or_none(text):
    return None if text is None else _number(text)


def _parse_levels(text):
    if len(text) > MAX_LEVELS_TEXT:
        raise FormatError(f"codebook level list of {len(text)} characters: at most {MAX_LEVELS_TEXT} "
                          "(2**bits comma-separated numbers)")
    try:
        return tuple(float(item) for item in text.split(","))
    except ValueError:
        raise FormatError(f"codebook levels {text!r} are not a comma-separated list of numbers") from None


def parse_format(spec):
    """Return the format object for a name (``w4g128``, ``ternary``, ``nf4g64``, ...) or pass one through."""
    if isinstance(spec, (UniformFormat, TernaryFormat, CodebookFormat, HiggsFormat)):
        return spec
    if not isinstance(spec, str):
        raise FormatError(f"a format is a name such as 'w4g128' or a format object, got {type(spec).__name__}")
    text = spec.strip().lower().replace(" ", "")
    if not text.isascii():
        raise FormatError(f"weight format {spec!r} has non-ASCII characters: format names are ASCII (w4g128, "
                          "nf4g64); retype the digits")
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            return build(match)
    raise FormatError(f"unknown weight format {spec!r}: use w{{bits}}[g{{group}}][s] (w4g128, w4g128s, w8, "
                      "w2g64), ternary[g{group}], nf4[g{group}], fp4[g{group}], higgs{bits}g{group}[v2] or "
                      "cb{bits}[g{group}][l0,l1,...]")


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized (N, K) weight: codes, per-(row, group) scales and, for zero-point formats, zeros.

    Attributes
    ----------
    format : UniformFormat, TernaryFormat, CodebookFormat or HiggsFormat
    codes : np.ndarray, uint8 (N, K)
        Values in ``[0, 2**bits)`` (ternary: {0, 1, 2}). A 2-D-grid HIGGS format has one code per pair of
        weights: (N, K / 2) codes in ``[0, 2**(2 * bits))``.
    scales : np.ndarray, float32 (N, G)
        ``G = K // group_size`` (1 per channel).
    zeros : np.ndarray, uint8 (N, G) or None
        Integer zero points; only for uniform formats with ``symmetric=False``.
    """

    format: object
    codes: np.ndarray
    scales: np.ndarray
    zeros: Optional[np.ndarray] = None

    def __post_init__(self):
        fmt = parse_format(self.format)
        codes, scales = np.asarray(self.codes), np.asarray(self.scales)
        if codes.ndim != 2 or codes.size == 0:
            raise WeightError(f"codes must be a non-empty (N, K) array, got shape {codes.shape}")
        N, K = codes.shape[0], codes.shape[1] * _code_dim(fmt)
        groups = _n_groups(fmt, K)
        limit = 3 if fmt.kind == "ternary" else 2 ** _code_bits(fmt)
        if not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= limit:
            raise WeightError(f"{fmt.name}: codes must be integers in [0, {limit}), got {codes.dtype} in "
                              f"[{codes.min()}, {codes.max()}]")
        if scales.shape != (N, groups):
            raise WeightError(f"{fmt.name}: scales have shape {scales.shape}, expected (N, K // group) = "
                              f"{(N, groups)}")
        if not np.isfinite(scales).all():
            raise WeightError(f"{fmt.name}: scales contain NaN or Inf")
        zeros = self._checked_zeros(fmt, (N, groups))
        object.__setattr__(self, "format", fmt)
        object.__setattr__(self, "codes", np.ascontiguousarray(codes, dtype=np.uint8))
        object.__setattr__(self, "scales", np.ascontiguousarray(scales, dtype=np.float32))
        object.__setattr__(self, "zeros", zeros)

    def _checked_zeros(self, fmt, shape):
        if not fmt.has_zeros:
            if self.zeros is not None:
                raise WeightError(f"{fmt.name} stores no zero points, but zeros were given: drop them, or use "
                                  f"the format with zero points ({fmt.name.rstrip('s')})")
            return None
        if self.zeros is None:
            raise WeightError(f"{fmt.name} needs zero points (N, K // group); for symmetric weights use "
                              f"{fmt.name}s")
        zeros = np.asarray(self.zeros)
        if zeros.shape != shape:
            raise WeightError(f"{fmt.name}: zeros have shape {zeros.shape}, expected {shape}")
        if not np.issubdtype(zeros.dtype, np.integer) or zeros.min() < 0 or zeros.max() >= 2 ** fmt.bits:
            raise WeightError(f"{fmt.name}: zero points must be integers in [0, {2 ** fmt.bits})")
        return np.ascontiguousarray(zeros, dtype=np.uint8)

    @property
    def shape(self):
        """(N, K) of the weight (a 2-D-grid HIGGS weight has half as many codes as weights)."""
        return self.codes.shape[0], self.codes.shape[1] * _code_dim(self.format)

    @property
    def group_size(self):
        """Codes per group along K (K itself when per-channel)."""
        return self.format.group_size or self.shape[1]

    def affine_zeros(self):
        """Zero points as float32 (N, G) for uniform and ternary formats: ``w = s * (q - zero)``."""
        fmt = self.format
        if fmt.kind in ("codebook", "higgs"):
            raise FormatError(f"{fmt.name} is a {fmt.kind} format: it has levels, not zero points")
        if self.zeros is not None:
            return self.zeros.astype(np.float32)
        return np.full(self.scales.shape, implicit_zero(fmt), np.float32)

    def dequantize(self):
        """The float32 weight (N, K) this quantized weight stands for (computed in float64)."""
        group = self.group_size
        if self.format.kind == "higgs":
            rotated = dequantize_rotated(self.codes, self.scales, self.format)
            return hadamard_rotate(rotated, group, inverse=True).astype(np.float32)
        scales = np.repeat(self.scales.astype(np.float64), group, axis=1)
        if self.format.kind == "codebook":
            values = self.format.points[self.codes].reshape(self.shape)
        else:
            values = self.codes.astype(np.float64) - np.repeat(self.affine_zeros().astype(np.float64), group, axis=1)
        return (scales * values).astype(np.float32)

    def pack(self):
        """Return the :class:`PackedWeight` storage form (each row an LSB-first bit stream)."""
        return PackedWeight(self.format, self.shape, pack_bits(self.codes, _code_bits(self.format)),
                            self.scales, self.zeros)

    def rotated_codebook(self):
        """A HIGGS weight as the plain codebook weight of its rotated groups (what the kernels multiply with
        rotated activations): same codes and scales, the grid as levels (a 2-D grid as a 2-D codebook whose
        codes have ``2 * bits`` bits)."""
        fmt = self.format
        if fmt.kind != "higgs":
            raise FormatError(f"{fmt.name} is not a HIGGS format: only HIGGS weights have a rotated codebook form")
        return QuantizedWeight(kernel_format(fmt), self.codes, self.scales)

    @property
    def nbytes(self):
        """Bytes of the packed storage form: codes, fp32 scales and uint8 zeros as stored here."""
        return self.pack().nbytes


@dataclasses.dataclass(frozen=True, eq=False)
class PackedWeight:
    """Storage form of a QuantizedWeight: ``data`` uint8 (N, ceil(K*bits/8)), LSB-first codes per row."""

    format: object
    shape: tuple
    data: np.ndarray
    scales: np.ndarray
    zeros: Optional[np.ndarray] = None

    def unpack(self):
        """Return the QuantizedWeight these bytes hold (exact inverse of ``QuantizedWeight.pack``)."""
        N, K = self.shape
        dim = _code_dim(self.format)
        return QuantizedWeight(self.format, unpack_bits(self.data, _code_bits(self.format), K // dim), self.scales,
                               self.zeros)

    @property
    def nbytes(self):
        return self.data.nbytes + self.scales.nbytes + (0 if self.zeros is None else self.zeros.nbytes)


def pack_bits(codes, bits):
    """Pack (N, K) codes of ``bits`` bits each into (N, ceil(K*bits/8)) bytes, LSB first along K."""
    N, K = codes.shape
    planes = (codes[:, :, None].astype(np.uint8) >> np.arange(bits, dtype=np.uint8)) & 1  # (N, K, bits)
    stream = planes.reshape(N, K * bits)
    return np.packbits(stream, axis=1, bitorder="little")


def unpack_bits(data, bits, K):
    """Inverse of :func:`pack_bits`: (N, bytes) uint8 -> (N, K) uint8 codes."""
    N = data.shape[0]
    stream = np.unpackbits(np.asarray(data, np.uint8), axis=1, count=K * bits, bitorder="little")
    planes = stream.reshape(N, K, bits).astype(np.uint8)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


def kernel_format(fmt):
    """The format the CPU kernels multiply: a HIGGS format's rotated codebook (its grid as levels, 2-D with
    ``2 * bits``-bit codes for v2; the kernel rotates the activations), any other format itself."""
    fmt = parse_format(fmt)
    if fmt.kind != "higgs":
        return fmt
    return CodebookFormat(fmt.code_bits, fmt.group_size, tuple(fmt.points.reshape(-1)), "cb", fmt.dim)


def _code_dim(fmt):
    """Weights per code: 2 for 2-D-grid HIGGS and 2-D codebook formats, else 1."""
    return getattr(fmt, "dim", 1)


def _code_bits(fmt):
    """Bits of one stored code (covering ``_code_dim`` weights)."""
    return getattr(fmt, "code_bits", fmt.bits)


def _n_groups(fmt, K):
    group = fmt.group_size or K
    if K % group:
        divisors = [g for g in (32, 64, 128, 256) if K % g == 0]
        hint = f"group sizes that divide K: {divisors}" if divisors else "per-channel (no group)"
        raise WeightError(f"{fmt.name}: group size {group} does not divide K={K}: use {hint}, or pad K to a "
                          f"multiple of {group} with zero columns (np.pad) before quantizing")
    return K // group


def _checked_weight(w):
    try:
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise WeightError(f"weight is not a numeric array: {err}") from None
    if w.ndim != 2:
        raise WeightError(f"weight must be 2-D (N, K) = (out_features, in_features), got shape {w.shape}")
    if w.size == 0:
        raise WeightError(f"weight is empty (shape {w.shape}): N and K must be at least 1")
    bad = ~np.isfinite(w)
    if bad.any():
        n, k = np.argwhere(bad)[0]
        raise WeightError(f"weight has {int(bad.sum())} NaN/Inf values (first at [{n}, {k}] = {w[n, k]}): "
                          "fix the model's weights before quantizing")
    return w


def _safe_scale(scale):
    """float32 scales with all-zero groups given scale 1 (their codes decode to exactly 0)."""
    scale = scale.astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0))


def quantize(w, fmt):
    """Round-to-nearest quantization of a float weight (N, K) to ``fmt`` (a format or its name).

    Uniform with zero points: the range ``[min(w, 0), max(w, 0)]`` of each group maps to ``[0, 2**bits-1]``
    (zero exactly representable; the zero point rounded, then clamped). Symmetric: ``s = absmax /
    (2**(bits-1) - 1)``. Ternary: ``s = mean|w|`` (absmean, clips by design). Codebook: ``s = absmax /
    max|level|``, each weight to its nearest level. HIGGS: see :func:`lowbit.compiler.higgs.quantize_higgs`.
    """
    fmt = parse_format(fmt)
    w = _checked_weight(w)
    N, K = w.shape
    groups = _n_groups(fmt, K)
    grouped = w.reshape(N, groups, K // groups)
    if fmt.kind == "higgs":
        return QuantizedWeight(fmt, *quantize_higgs(w, fmt))
    quantizer = {"uniform": _quantize_uniform, "ternary": _quantize_ternary, "codebook": _quantize_codebook}
    codes, scales, zeros = quantizer[fmt.kind](grouped, fmt)
    return QuantizedWeight(fmt, codes.reshape(N, K // _code_dim(fmt)), scales, zeros)


def _quantize_uniform(grouped, fmt):
    qmax = 2 ** fmt.bits - 1
    if fmt.symmetric:
        half = 2 ** (fmt.bits - 1)
        scales = _safe_scale(np.abs(grouped).max(axis=2) / (half - 1))
        return encode(grouped, fmt, scales), scales, None
    rmin = np.minimum(grouped.min(axis=2), 0.0)
    rmax = np.maximum(grouped.max(axis=2), 0.0)
    scales = _safe_scale((rmax - rmin) / qmax)
    zeros = np.clip(np.rint(-rmin / scales.astype(np.float64)), 0, qmax).astype(np.uint8)
    return encode(grouped, fmt, scales, zeros), scales, zeros


def _quantize_ternary(grouped, fmt):
    scales = _safe_scale(np.abs(grouped).mean(axis=2))
    return encode(grouped, fmt, scales), scales, None


def _quantize_codebook(grouped, fmt):
    scales = _safe_scale(np.abs(grouped).max(axis=2) / np.abs(fmt.points).max())
    return encode(grouped, fmt, scales), scales, None


def encode(grouped, fmt, scales, zeros=None):
    """Codes of float weights for given group scales (and zero points): round to the nearest representable value.

    ``grouped`` is (N, G, c) (``c`` weights of each of the G groups), ``scales`` and ``zeros`` are (N, G).
    This is the rounding step of :func:`quantize`; GPTQ calls it column by column with the scales it fixed.
    """
    grouped = np.asarray(grouped, np.float64)
    normalized = grouped / np.asarray(scales, np.float32)[..., None].astype(np.float64)
    if fmt.kind == "ternary":
        return (np.clip(np.rint(normalized), -1, 1) + 1).astype(np.uint8)
    if fmt.kind == "uniform":
        qmax = 2 ** fmt.bits - 1
        if fmt.symmetric:
            half = 2 ** (fmt.bits - 1)
            return (np.clip(np.rint(normalized), -half, half - 1) + half).astype(np.uint8)
        return np.clip(np.rint(normalized) + np.asarray(zeros, np.float64)[..., None], 0, qmax).astype(np.uint8)
    if fmt.dim == 2:
        if normalized.shape[-1] % 2:
            raise FormatError(f"{fmt.name}: a 2-D codebook codes pairs of weights; got {normalized.shape[-1]} "
                              "weights per group")
        from lowbit.compiler.higgs import nearest_points

        pairs = normalized.reshape(-1, 2)
        return nearest_points(pairs, fmt.points).reshape(*normalized.shape[:-1], -1).astype(np.uint8)
    levels = np.asarray(fmt.levels, np.float64)
    # nearest level by binary search over the sorted levels (no (N, K, 2**bits) temporary)
    order = np.argsort(levels, kind="stable")
    sorted_levels = levels[order]
    right = np.clip(np.searchsorted(sorted_levels, normalized), 1, len(levels) - 1)
    left = right - 1
    pick_left = (normalized - sorted_levels[left]) <= (sorted_levels[right] - normalized)
    return order[np.where(pick_left, left, right)].astype(np.uint8)
