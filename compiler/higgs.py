"""HIGGS weight formats: random-sign Hadamard rotation of each K-group, then an MSE-optimal Gaussian grid.

HIGGS ("Pushing the Limits of LLM Quantization via the Linearity Theorem", Malinovskii et al. 2024):
rotating a group of ``g`` weights by an orthogonal random-sign Hadamard transform makes its entries close
to Gaussian whatever the original distribution, so a grid that is MSE-optimal for N(0, 1) (scaled by the
group's RMS) is close to optimal for every group, data-free.

The rotation of a group is ``T(v) = H (signs * v) / sqrt(g)`` with ``H`` the g x g Walsh-Hadamard matrix
(entries +-1, symmetric, ``H H = g I``) and ``signs`` a fixed pseudo-random +-1 vector of length ``g`` (seeded
by ``g``, so the format alone fixes it). ``T`` is orthogonal, so ``<x, w> = <T(x), T(w)>`` group by group:
the kernel keeps the *rotated* weight as a codebook weight and rotates the activations at run time with a fast
Walsh-Hadamard transform (O(K log g) per row), never materialising the float weight.

Formats (names parse back through :func:`lowbit.compiler.formats.parse_format`):

``higgs{bits}g{group}``    1-D grid of ``2**bits`` levels, bits 2..4 (``higgs4g64``: 4.25 bits per weight)
``higgs{bits}g{group}v2``  2-D grid: each pair of adjacent rotated weights shares one code of ``2*bits``
                           bits indexing ``2**(2*bits)`` points of the plane (same bits per weight)

Grids: the 1-D grid is the Lloyd-Max quantizer of N(0, 1) (computed exactly from the normal density); the
2-D grid is k-means of the standard 2-D normal (Lloyd's algorithm on a fixed quasi-random sample),
shipped precomputed in :mod:`.higgs_grids` (``python -m lowbit.compiler.higgs`` writes that file again).
"""
import dataclasses
import functools
import math
from typing import ClassVar

import numpy as np

from lowbit.errors import FormatError

HIGGS_BITS = (2, 3, 4)
SIGN_SEED = 0x48494747  # "HIGG": the signs depend only on the group size
SCALE_BITS = 16


@dataclasses.dataclass(frozen=True)
class HiggsFormat:
    """A HIGGS format: rotated groups of ``group_size`` along K, codes into a ``dim``-D Gaussian grid."""

    bits: int
    group_size: int
    dim: int = 1
    kind: ClassVar[str] = "higgs"
    has_zeros: ClassVar[bool] = False

    def __post_init__(self):
        if self.bits not in HIGGS_BITS:
            raise FormatError(f"higgs format: bits={self.bits!r} is out of range: use one of {HIGGS_BITS}")
        if self.dim not in (1, 2):
            raise FormatError(f"higgs format: grid dimension {self.dim!r}: use 1 (higgs{self.bits}g64) or 2 "
                              f"(higgs{self.bits}g64v2)")
        group = self.group_size
        if not isinstance(group, (int, np.integer)) or group < 2 or group & (group - 1) or group > 4096:
            raise FormatError(f"higgs format: group size {group!r} must be a power of two in 2..4096 (the "
                              "Hadamard transform's size), e.g. 64 or 128")

    @property
    def name(self):
        return f"higgs{self.bits}g{self.group_size}" + ("v2" if self.dim == 2 else "")

    @property
    def levels(self):
        """The 1-D grid (``dim == 1``) as float32 values in code order."""
        if self.dim != 1:
            raise FormatError(f"{self.name} has a 2-D grid: use .points")
        return lloyd_max_gaussian(self.bits)

    @property
    def points(self):
        """The grid as a float32 array (2**(bits*dim), dim)."""
        if self.dim == 1:
            return np.asarray(self.levels, np.float32)[:, None]
        return gaussian_grid_2d(self.bits)

    @property
    def code_bits(self):
        """Bits of one stored code: ``bits`` per weight, a code covers ``dim`` weights."""
        return self.bits * self.dim

    def bits_per_weight(self, K):
        """Storage bits per weight: codes + one fp16 scale per group (the grid is shared and negligible)."""
        return self.bits + SCALE_BITS / self.group_size


# ---- grids -------------------------------------------------------------------------------------------------

def _normal_pdf(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) if math.isfinite(x) else 0.0


def _normal_cdf(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@functools.lru_cache(maxsize=None)
def lloyd_max_gaussian(bits, iterations=500):
    """The MSE-optimal ``2**bits``-level quantizer of N(0, 1) (Lloyd-Max), ascending, as float32 values.

    Each level is the conditional mean of its cell: ``(pdf(a) - pdf(b)) / (cdf(b) - cdf(a))``; cells end at
    the midpoints between levels. Started from uniform quantiles, it converges to the known optimum (for
    4 levels: +-0.4528, +-1.5104; MSE 0.1175).
    """
    n = 2 ** bits
    levels = [math.sqrt(2) * _erfinv(2 * (i + 0.5) / n - 1) for i in range(n)]
    for _ in range(iterations):
        edges = [-math.inf] + [(a + b) / 2 for a, b in zip(levels, levels[1:])] + [math.inf]
        levels = [(_normal_pdf(a) - _normal_pdf(b)) / (_normal_cdf(b) - _normal_cdf(a))
                  for a, b in zip(edges, edges[1:])]
    return tuple(float(np.float32(v)) for v in levels)


def _erfinv(y):
    """Inverse error function by Newton's method (only the starting grid needs it)."""
    x = 0.0
    for _ in range(100):
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


def gaussian_grid_2d(bits):
    """The shipped ``2**(2*bits)``-point 2-D grid (float32 (points, 2)): :func:`compute_gaussian_grid_2d`'s
    result, stored in :mod:`.higgs_grids` because computing the 256-point grid takes seconds."""
    from lowbit.compiler.higgs_grids import GRIDS_2D

    return np.asarray(GRIDS_2D[bits], np.float32)


def compute_gaussian_grid_2d(bits, samples=1 << 16, iterations=60):
    """A ``2**(2*bits)``-point grid of the plane, MSE-optimal for the standard 2-D normal (k-means).

    Deterministic: Lloyd's algorithm on a fixed sample (a Halton sequence mapped through the normal's
    inverse CDF by Box-Muller), started from the product of the 1-D Lloyd-Max grid with itself.
    Returns float32 (2**(2*bits), 2), sorted by (x, y).
    """
    sample = _normal_sample_2d(samples)
    one_d = np.asarray(lloyd_max_gaussian(bits), np.float64)
    points = np.stack(np.meshgrid(one_d, one_d, indexing="ij"), axis=-1).reshape(-1, 2)
    for _ in range(iterations):
        nearest = nearest_points(sample, points)
        sums = np.zeros_like(points)
        np.add.at(sums, nearest, sample)
        counts = np.bincount(nearest, minlength=len(points))[:, None]
        points = np.where(counts > 0, sums / np.maximum(counts, 1), points)
    order = np.lexsort((points[:, 1], points[:, 0]))
    return points[order].astype(np.float32)


def _normal_sample_2d(count):
    """Quasi-random standard 2-D normal points: Halton (bases 2, 3) through Box-Muller."""
    index = np.arange(1, count + 1)
    u1, u2 = _halton(index, 2), _halton(index, 3)
    radius = np.sqrt(-2.0 * np.log(u1))
    return np.stack([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)], axis=1)


def _halton(index, base):
    result, fraction, index = np.zeros(len(index)), 1.0, index.copy()
    while index.any():
        fraction /= base
        result += fraction * (index % base)
        index //= base
    return result


def nearest_points(values, points, chunk=1 << 12):
    """Index of the nearest grid point for each row of ``values`` (squared distance; ties go to the lower index).

    Many 2-D values go through a cell table (:func:`_cell_table`): each value is compared with the few
    points that can be nearest anywhere in its cell, not with all of them. Values outside the table's box, and
    short or other-dimensional inputs, are compared with every point, ``chunk`` rows at a time.
    """
    values = np.asarray(values, np.float64)
    points = np.asarray(points, np.float64)
    if points.shape[1] == 2 and len(values) >= CELL_TABLE_MIN_VALUES:
        return _nearest_in_cells(values, points, chunk)
    return _nearest_of_all(values, points, chunk)


def _nearest_of_all(values, points, chunk):
    out = np.empty(len(values), np.int64)
    norms = (points ** 2).sum(axis=1)
    for start in range(0, len(values), chunk):
        out[start:start + chunk] = np.argmin(norms[None, :] - 2.0 * values[start:start + chunk] @ points.T, axis=1)
    return out


# The cell table: CELLS x CELLS cells over the points' bounding box widened by CELL_MARGIN. Measured on the 2-, 3-
# and 4-bit Gaussian 2-D grids (16, 64, 256 points): at most 4 candidates in any cell, 1.1-1.7 on average under a
# unit Gaussian; most values fall in a cell with a single candidate and need no distance at all. On 1M pairs it is
# as fast as comparing with all 16 points and 2-4x faster than comparing with 64 or 256; quantize_higgs to
# higgs3g64v2 / higgs4g64v2 got 2x / 4x faster. The table takes 0.05-0.1 s to build (cached per grid), so short
# inputs compare with every point.
CELLS = 128
CELL_MARGIN = 0.5
CELL_TABLE_MIN_VALUES = 1 << 14


def _nearest_in_cells(values, points, chunk):
    """nearest_points for (n, 2) values through the cell table; values outside its box compare with all points."""
    table = _cell_table(points.tobytes(), len(points))
    cell = np.floor((values - table.low) * table.inverse_step)
    inside = ((cell >= 0) & (cell < CELLS)).all(axis=1)
    flat = np.where(inside, cell[:, 0] * CELLS + cell[:, 1], 0).astype(np.intp)
    out = table.candidates[flat, 0]  # a cell with one candidate (most of them) settles its values here
    ambiguous = np.flatnonzero(inside & table.several[flat])
    for start in range(0, len(ambiguous), 1 << 16):
        index = ambiguous[start:start + (1 << 16)]
        cells, v = flat[index], values[index]
        distance = table.norms[cells] - 2.0 * (v[:, :1] * table.x[cells] + v[:, 1:] * table.y[cells])
        out[index] = np.take_along_axis(table.candidates[cells], np.argmin(distance, axis=1)[:, None], axis=1)[:, 0]
    outside = np.flatnonzero(~inside)
    out[outside] = _nearest_of_all(values[outside], points, chunk)
    return out


@dataclasses.dataclass(frozen=True)
class CellTable:
    """A 2-D grid's cell table (:func:`_cell_table`); per cell (row ``i * CELLS + j``) its candidates, their
    coordinates and squared norms (gathered a row at a time), and whether it has more than one candidate."""

    low: np.ndarray            # (2,) the box's low corner
    inverse_step: np.ndarray   # (2,) 1 / cell size
    candidates: np.ndarray     # (CELLS * CELLS, width) int64 point indices
    x: np.ndarray              # (CELLS * CELLS, width) the candidates' coordinates ...
    y: np.ndarray
    norms: np.ndarray          # ... and squared norms
    several: np.ndarray        # (CELLS * CELLS,) bool: more than one candidate


@functools.lru_cache(maxsize=16)
def _cell_table(point_bytes, count):
    """The :class:`CellTable` of a 2-D grid (``count`` float64 points as bytes).

    A point is a candidate of a cell when its least distance to the cell is at most the least, over all points,
    of their greatest distance to the cell (plus 1e-6 for the rounding of a value's cell index): no other
    point can be nearest to a value in the cell. Candidates are in ascending index order, so argmin's first
    minimum keeps nearest_points' ties; a row shorter than the widest is padded with its own last candidate.
    """
    points = np.frombuffer(point_bytes, np.float64).reshape(count, 2)
    low = points.min(axis=0) - CELL_MARGIN
    step = (points.max(axis=0) + CELL_MARGIN - low) / CELLS
    lower = low[:, None] + step[:, None] * np.arange(CELLS)  # (2, CELLS) cell edges per axis
    upper = lower + step[:, None]
    p = points.T[:, None, :]  # (2, 1, count)
    least = np.maximum(0.0, np.maximum(lower[..., None] - p, p - upper[..., None]))  # (2, CELLS, count)
    most = np.maximum(np.abs(p - lower[..., None]), np.abs(p - upper[..., None]))
    least = np.sqrt(least[0][:, None, :] ** 2 + least[1][None, :, :] ** 2).reshape(CELLS * CELLS, count)
    bound = np.sqrt((most[0][:, None, :] ** 2 + most[1][None, :, :] ** 2).min(axis=-1)).reshape(-1, 1)
    chosen = least <= bound + 1e-6
    width = int(chosen.sum(axis=1).max())
    candidates = np.empty((CELLS * CELLS, max(width, 2)), np.int64)
    for cell, row in enumerate(chosen):
        found = np.flatnonzero(row)
        candidates[cell, :len(found)], candidates[cell, len(found):] = found, found[-1]
    return CellTable(low, 1.0 / step, candidates, points[candidates, 0], points[candidates, 1],
                     (points ** 2).sum(axis=1)[candidates], candidates[:, 1] != candidates[:, 0])


# ---- rotation ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def rotation_signs(group_size):
    """The fixed +-1 float32 vector (length ``group_size``) of the rotation, seeded by the group size."""
    rng = np.random.default_rng([SIGN_SEED, group_size])
    return np.where(rng.integers(0, 2, group_size) == 1, 1.0, -1.0).astype(np.float32)


def hadamard_rotate(values, group_size, inverse=False):
    """Apply ``T`` (or ``T^-1``) to each group of ``group_size`` along the last axis, in float64.

    ``T(v) = H (signs * v) / sqrt(g)``; ``T^-1(u) = signs * (H u) / sqrt(g)``. The groups are multiplied by
    the g x g Hadamard matrix (:func:`hadamard_matrix`) in one BLAS call: on a 4096 x 4096 weight 0.17 s, where
    the butterflies of :func:`fwht` (what the kernel's activation rotation does, O(g log g) per group) took
    2-3 s in NumPy; the two agree to float64 rounding (1e-16 of the values here).
    """
    values = np.asarray(values, np.float64)
    K = values.shape[-1]
    if K % group_size:
        raise FormatError(f"the rotation needs K ({K}) to be a multiple of the group size {group_size}")
    signs = np.tile(rotation_signs(group_size).astype(np.float64), K // group_size)
    out = values if inverse else values * signs
    out = (out.reshape(-1, group_size) @ hadamard_matrix(group_size)).reshape(values.shape)
    out = out / math.sqrt(group_size)
    return out * signs if inverse else out


@functools.lru_cache(maxsize=None)
def hadamard_matrix(size):
    """The unnormalised (symmetric, +-1) Sylvester Hadamard matrix of a power-of-two ``size``: ``fwht(v) = v @ H``."""
    matrix = fwht(np.eye(size))
    matrix.setflags(write=False)
    return matrix


def fwht(values):
    """Unnormalised Walsh-Hadamard transform along the last axis (length a power of two): ``v @ H``."""
    out = np.array(values, np.float64, copy=True)
    size = out.shape[-1]
    half = 1
    while half < size:
        shaped = out.reshape(*out.shape[:-1], size // (2 * half), 2, half)
        a, b = shaped[..., 0, :].copy(), shaped[..., 1, :].copy()
        shaped[..., 0, :], shaped[..., 1, :] = a + b, a - b
        half *= 2
    return out


# ---- quantization ------------------------------------------------------------------------------------------

def quantize_higgs(w, fmt):
    """(codes, scales) of an (N, K) float64 weight in a HIGGS format (K a multiple of the group size).

    Each group is rotated and rounded to the nearest grid point at a rounding scale; the stored scale is then
    the *unbiased* one, ``s = |v|^2 / <v, q>``, which makes the reconstruction's projection on the weight
    exact (``<v, s q> = |v|^2``). The MSE-optimal (least-squares) scale shrinks every group by about the
    relative error (``<v, e> = |e|^2 > 0`` for a Lloyd-Max grid): a 2-bit layer's outputs then all shrink by
    ~10% together, an error that does not average out across layers. Measured on a trained MLP language
    model: the unbiased scale loses 0.5 dB of weight SQNR but gains 9 dB end to end at 2 bits (20.1 vs
    10.2 dB) and 7 dB at 3 bits. The rounding scale is searched per group (:func:`fit_rotated_groups`).
    ``codes`` are uint8 (N, K / dim): one per weight (1-D grid) or per pair of adjacent weights (2-D).
    """
    N, K = w.shape
    rotated = hadamard_rotate(w, fmt.group_size).reshape(N, K // fmt.group_size, fmt.group_size)
    codes, _, scales = fit_rotated_groups(rotated, fmt)
    return codes.reshape(N, K // fmt.dim).astype(np.uint8), scales


# Rounding scales tried per group, as multiples of the group's RMS: 0.7, 0.8, ..., 1.3. Measured on Gaussian and
# Student-t(3) weights, these 7 get 90-100% of the gain of a 0.05 step over 0.5..1.5.
SCALE_MULTIPLES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
# The 2-D grid's nearest-point search costs ~30x the 1-D one: three starts there, 60-80% of the gain.
SCALE_MULTIPLES_2D = (0.85, 1.0, 1.15)
CHUNK_VALUES = 1 << 18  # rotated values fitted at a time (2 MiB of float64: the temporaries stay in cache)


def fit_rotated_groups(rotated, fmt, multiples=None, rounds=2):
    """(codes, rounding scales, stored float32 scales) of rotated groups (N, groups, G); see quantize_higgs.

    From each starting scale ``m * rms`` (``rms`` the group's root mean square, ``m`` in ``multiples``, by
    default SCALE_MULTIPLES, or SCALE_MULTIPLES_2D for a 2-D grid):
    ``rounds`` times, round to the nearest grid points at the current scale and refit the unbiased scale for
    those codes; each group keeps the start whose reconstruction has the least squared error (``m = 1`` alone
    is plain rounding at the RMS). A finite group of 64 rotated weights is only roughly Gaussian and its own
    best scale departs from the RMS by up to +-30%: the search lowers the weight error by 0.15-0.3 dB at 2 bits,
    0.35-0.5 at 3 and 0.9-1 at 4 (Gaussian and Student-t weights; ``tests/test_higgs.py``). The codes are the
    nearest grid points at the returned rounding scale. An all-zero group gets scale 0 (it decodes to 0).
    """
    rotated = np.asarray(rotated, np.float64)
    if multiples is None:
        multiples = SCALE_MULTIPLES if fmt.dim == 1 else SCALE_MULTIPLES_2D
    rows = max(1, CHUNK_VALUES // max(1, rotated.shape[1] * rotated.shape[2]))
    parts = [_fit_chunk(rotated[start:start + rows], fmt, multiples, rounds)
             for start in range(0, rotated.shape[0], rows)]
    codes, rounding, scales = (np.concatenate(part) for part in zip(*parts))
    return codes, rounding, scales.astype(np.float32)


def _fit_chunk(rotated, fmt, multiples, rounds):
    """fit_rotated_groups on a few rows (float64 scales)."""
    points = fmt.points.astype(np.float64)
    norm2 = np.einsum("ngk,ngk->ng", rotated, rotated)
    rms = np.sqrt(norm2 / rotated.shape[2])
    rms = np.where(rms > 0, rms, 1.0)
    best_error, best = np.full(norm2.shape, np.inf), None
    for multiple in multiples:
        scales = multiple * rms
        for _ in range(rounds):
            rounding = np.where(scales > 0, scales, rms)
            codes = _round_to_grid(rotated / rounding[..., None], points, fmt.dim)
            decoded = points[codes].reshape(rotated.shape)
            projection = np.einsum("ngk,ngk->ng", rotated, decoded)
            # all-zero groups (and the measure-zero case of a zero projection) get scale 0
            scales = np.where(projection > 0, norm2 / np.where(projection > 0, projection, 1.0), 0.0)
        error = norm2 - 2 * scales * projection + scales ** 2 * np.einsum("ngk,ngk->ng", decoded, decoded)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        found = (codes, rounding, scales)
        best = found if best is None else tuple(np.where(better[..., None] if new.ndim == 3 else better, new, old)
                                                for new, old in zip(found, best))
    return best


def _round_to_grid(normalized, points, dim):
    """Nearest grid point per ``dim`` consecutive values: int codes with shape (..., G / dim)."""
    shape = normalized.shape
    if dim == 1:
        return _nearest_levels(normalized, tuple(points[:, 0]))
    codes = nearest_points(normalized.reshape(-1, dim), points)
    return codes.reshape(*shape[:-1], shape[-1] // dim)


def _nearest_levels(values, levels):
    """Index of the nearest of the ascending ``levels`` for each value (ties go down): exactly
    ``searchsorted(cell edges, values)``, in a third of its time. The values' bin on a fine uniform grid
    (at most one cell edge per bin) gives the count of edges in the bins below; one comparison settles the
    edge in the value's own bin. Bins are computed the same way for values and edges, and that map is
    monotone, so an edge in a lower bin is below the value and one in a higher bin above it."""
    offset, inverse_step, below, own_edge = _level_bins(levels)
    bins = np.clip((values - offset) * inverse_step, 0, len(below) - 1).astype(np.intp)
    return below[bins] + (values > own_edge[bins])


@functools.lru_cache(maxsize=None)
def _level_bins(levels):
    edges = (np.asarray(levels[1:]) + np.asarray(levels[:-1])) / 2
    offset = float(edges[0]) - 1.0
    inverse_step = 2.0 / float(np.diff(edges).min())  # bins half as wide as the closest edges: one edge per bin
    count = int((float(edges[-1]) + 1.0 - offset) * inverse_step) + 1
    edge_bins = np.clip((edges - offset) * inverse_step, 0, count - 1).astype(np.intp)
    below = np.searchsorted(edge_bins, np.arange(count))  # edges in lower bins
    own_edge = np.full(count, np.inf)
    own_edge[edge_bins] = edges
    return offset, inverse_step, below, own_edge


def dequantize_rotated(codes, scales, fmt):
    """The rotated-space float64 weight (N, K): ``scale * grid[code]`` per group."""
    N = codes.shape[0]
    values = fmt.points.astype(np.float64)[codes].reshape(N, -1)
    return values * np.repeat(scales.astype(np.float64), fmt.group_size, axis=1)


def write_grids_module(path):
    """Write :mod:`.higgs_grids` (the 2-D grids for every HIGGS bit width) to ``path``."""
    lines = ['"""The 2-D HIGGS grids, written by ``python -m lowbit.compiler.higgs`` (compute_gaussian_grid_2d)."""',
             "GRIDS_2D = {"]
    for bits in HIGGS_BITS:
        points = compute_gaussian_grid_2d(bits)
        body = ", ".join(f"({float(x)!r}, {float(y)!r})" for x, y in points)
        lines.append(f"    {bits}: ({body}),")
    lines.append("}")
    with open(path, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    import os

    write_grids_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "higgs_grids.py"))
