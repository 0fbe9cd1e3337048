"""HIGGS formats: the grids are MSE-optimal, the rotation is exact, codes are the nearest grid points."""
import numpy as np
import pytest

from lowbit.compiler import higgs
from lowbit.compiler.formats import parse_format, quantize
from lowbit.errors import FormatError, WeightError

NAMES = ["higgs2g64", "higgs3g64", "higgs4g64", "higgs4g128", "higgs2g64v2", "higgs3g64v2", "higgs4g64v2"]


def _heavy_tailed(N, K, seed=0):
    """Student-t(3) rows of different scales: what trained weights look like to a grid (outliers)."""
    rng = np.random.default_rng(seed)
    return rng.standard_t(3, (N, K)) * rng.uniform(0.01, 0.1, (N, 1))


def _gaussian_mse(levels):
    z = np.linspace(-8, 8, 400001)
    density = np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
    nearest = np.asarray(levels)[np.argmin(np.abs(z[:, None] - np.asarray(levels)[None, :]), axis=1)]
    return float(((z - nearest) ** 2 * density).sum() * (z[1] - z[0]))


@pytest.mark.parametrize("bits, mse", [(2, 0.1175), (3, 0.03454), (4, 0.009497)])
def test_lloyd_max_grid_reaches_the_known_gaussian_distortion(bits, mse):
    levels = higgs.lloyd_max_gaussian(bits)
    assert list(levels) == sorted(levels) and np.allclose(levels, -np.asarray(levels[::-1]), atol=1e-6)
    assert _gaussian_mse(levels) == pytest.approx(mse, rel=2e-3)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nearest_level_lookup_is_the_binary_search_exactly(bits):
    """The binned lookup against ``searchsorted`` over the cell edges, on values at and next to every edge
    (ties go to the lower level) and far outside the grid."""
    levels = higgs.lloyd_max_gaussian(bits)
    edges = (np.asarray(levels[1:]) + np.asarray(levels[:-1])) / 2
    values = np.concatenate([np.random.default_rng(bits).standard_normal(20000) * 2, edges,
                             np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf), [-1e9, 0.0, 1e9]])
    np.testing.assert_array_equal(higgs._nearest_levels(values, levels), np.searchsorted(edges, values))


def test_shipped_2d_grid_is_what_the_generator_computes():
    np.testing.assert_array_equal(higgs.gaussian_grid_2d(2), higgs.compute_gaussian_grid_2d(2))
    for bits in higgs.HIGGS_BITS:
        assert higgs.gaussian_grid_2d(bits).shape == (4 ** bits, 2)


@pytest.mark.parametrize("grid", ["2", "3", "4", "random"])
def test_cell_table_finds_the_nearest_point_as_the_full_search_does(grid):
    """The cell-table search of many 2-D values (Gaussian, far outliers outside its box, values on cell edges,
    midpoints of two points) gives the same indices as comparing every value with every point, except between
    points at equal distance, where the two searches' different rounding may pick either: there the distance
    must be the least one."""
    rng = np.random.default_rng(11)
    points = rng.standard_normal((40, 2)) if grid == "random" else higgs.gaussian_grid_2d(int(grid)).astype(np.float64)
    table = higgs._cell_table(points.tobytes(), len(points))
    edges = table.low + rng.integers(0, higgs.CELLS + 1, (5000, 2)) / table.inverse_step  # exactly on cell edges
    ties = (points[rng.integers(0, len(points), 5000)] + points[rng.integers(0, len(points), 5000)]) / 2  # midpoints
    values = np.concatenate([rng.standard_normal((1 << 15, 2)) * 1.2, rng.standard_normal((3000, 2)) * 9, edges,
                             ties])
    assert len(values) >= higgs.CELL_TABLE_MIN_VALUES
    fast = higgs.nearest_points(values, points)
    full = higgs._nearest_of_all(values, points, 1 << 12)
    distance = ((values[:, None, :] - points[None]) ** 2).sum(axis=-1)
    nearest_two = np.sort(distance, axis=1)[:, :2]
    clear = nearest_two[:, 1] - nearest_two[:, 0] > 1e-9
    assert clear[:-5000].mean() > 0.999  # only the midpoints tie
    np.testing.assert_array_equal(fast[clear], full[clear])
    np.testing.assert_allclose(distance[np.arange(len(values)), fast], nearest_two[:, 0], rtol=0, atol=1e-12)


def test_2d_grid_beats_the_product_of_1d_grids_on_gaussian_pairs():
    pairs = np.random.default_rng(5).standard_normal((200000, 2))
    for bits in (2, 3):
        one_d = np.asarray(higgs.lloyd_max_gaussian(bits))
        product = np.stack(np.meshgrid(one_d, one_d, indexing="ij"), -1).reshape(-1, 2)
        grid = higgs.gaussian_grid_2d(bits).astype(np.float64)
        err = [((pairs - g[higgs.nearest_points(pairs, g)]) ** 2).mean() for g in (product, grid)]
        assert err[1] < 0.97 * err[0], (bits, err)


def test_fwht_is_the_hadamard_matrix_and_the_rotation_is_orthogonal():
    H = np.array([[1.0]])
    while H.shape[0] < 64:
        H = np.block([[H, H], [H, -H]])
    v = np.random.default_rng(1).standard_normal((3, 64))
    np.testing.assert_allclose(higgs.fwht(v), v @ H, atol=1e-12)
    x = np.random.default_rng(2).standard_normal((4, 256))
    w = np.random.default_rng(3).standard_normal((5, 256))
    rx, rw = higgs.hadamard_rotate(x, 64), higgs.hadamard_rotate(w, 64)
    np.testing.assert_allclose(rx @ rw.T, x @ w.T, atol=1e-10)  # <x, w> = <T x, T w> group by group
    np.testing.assert_allclose(higgs.hadamard_rotate(rx, 64, inverse=True), x, atol=1e-12)
    assert not np.allclose(rx, x)


@pytest.mark.parametrize("name", NAMES)
def test_names_parse_back_and_storage_round_trips(name):
    fmt = parse_format(name)
    assert fmt.name == name and parse_format(fmt.name) == fmt
    assert fmt.bits_per_weight(256) == pytest.approx(fmt.bits + 16 / fmt.group_size)
    qw = quantize(_heavy_tailed(7, 256), fmt)
    assert qw.shape == (7, 256) and qw.codes.shape == (7, 256 // fmt.dim)
    back = qw.pack().unpack()
    np.testing.assert_array_equal(back.codes, qw.codes)
    np.testing.assert_array_equal(back.dequantize(), qw.dequantize())


@pytest.mark.parametrize("name", NAMES)
def test_codes_are_nearest_grid_points_and_the_scale_is_unbiased(name):
    fmt = parse_format(name)
    w = _heavy_tailed(6, 256, seed=4)
    qw = quantize(w, fmt)
    rotated = higgs.hadamard_rotate(w, fmt.group_size).reshape(6, -1, fmt.group_size)
    codes, rounding, scales = higgs.fit_rotated_groups(rotated, fmt)
    np.testing.assert_array_equal(qw.codes, codes.reshape(6, -1))
    np.testing.assert_array_equal(qw.scales, scales)
    normalized = (rotated / rounding[..., None]).reshape(-1, fmt.dim)
    points = fmt.points.astype(np.float64)
    distances = ((normalized[:, None, :] - points[None]) ** 2).sum(axis=2)
    chosen = distances[np.arange(len(normalized)), codes.reshape(-1)]
    np.testing.assert_allclose(chosen, distances.min(axis=1), rtol=1e-9, atol=1e-12)
    # unbiased: the reconstruction's projection on each rotated group is the group's squared norm
    decoded = higgs.dequantize_rotated(qw.codes, qw.scales, fmt).reshape(rotated.shape)
    np.testing.assert_allclose((decoded * rotated).sum(axis=2), (rotated ** 2).sum(axis=2), rtol=1e-6)


@pytest.mark.parametrize("bits, gain_db", [(2, 0.2), (3, 0.35), (4, 0.7)])
def test_rounding_scale_search_lowers_the_error_of_every_group(bits, gain_db):
    """The per-group search over rounding scales against rounding at the group's RMS alone (the search's
    ``m = 1``). Measured gains on these weights: 0.32, 0.49, 0.96 dB at 2, 3, 4 bits."""
    fmt = parse_format(f"higgs{bits}g64")
    rotated = higgs.hadamard_rotate(_heavy_tailed(128, 1024, seed=20 + bits), 64).reshape(128, 16, 64)
    errors = []
    for multiples in ((1.0,), higgs.SCALE_MULTIPLES):
        codes, _, scales = higgs.fit_rotated_groups(rotated, fmt, multiples)
        decoded = higgs.dequantize_rotated(codes.reshape(128, -1), scales, fmt).reshape(rotated.shape)
        errors.append(((rotated - decoded) ** 2).sum(axis=2))
    assert 1.0 in higgs.SCALE_MULTIPLES and (errors[1] <= errors[0] * (1 + 1e-6)).all()
    assert 10 * np.log10(errors[0].sum() / errors[1].sum()) > gain_db


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_group_decodes_to_zero(name):
    """Regression: an all-zero group (pruned weights, GPTQ's never-seen inputs) decoded to grid values of up
    to 3.6 (scale 1 times the grid points nearest 0); its scale is now 0."""
    w = _heavy_tailed(3, 256, seed=8)
    w[1, 128:] = 0.0  # whole groups of 64 or 128
    decoded = quantize(w, name).dequantize()
    np.testing.assert_array_equal(decoded[1, 128:], 0.0)
    assert np.abs(decoded[1, :128]).max() > 0


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_higgs_beats_uniform_on_heavy_tailed_weights_at_fewer_bits(bits):
    w = _heavy_tailed(64, 1024, seed=bits)

    def sqnr(name):
        return 20 * np.log10(np.linalg.norm(w) / np.linalg.norm(w - quantize(w, name).dequantize()))

    uniform, one_d, two_d = sqnr(f"w{bits}g64"), sqnr(f"higgs{bits}g64"), sqnr(f"higgs{bits}g64v2")
    assert parse_format(f"higgs{bits}g64").bits_per_weight(1024) < parse_format(f"w{bits}g64").bits_per_weight(1024)
    assert one_d > uniform + 2.0 and two_d > uniform + 2.0, (uniform, one_d, two_d)
    if bits == 4:
        assert one_d > sqnr("nf4g64") + 1.0


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_2d_grid_beats_1d_grid_on_gaussian_weights(bits):
    """Where the rotated entries are exactly Gaussian the 2-D grid's lower distortion must show (on the
    heavy-tailed weights above the two come out within a few tenths of a dB, in either order)."""
    w = np.random.default_rng(10 + bits).standard_normal((64, 1024))
    errors = [np.linalg.norm(w - quantize(w, f"higgs{bits}g64{v}").dequantize()) for v in ("", "v2")]
    assert 20 * np.log10(errors[0] / errors[1]) > 0.2, errors


@pytest.mark.parametrize("spec", ["higgs3g64", "higgs2g64v2", "higgs3g64v2"])
def test_rotated_codebook_times_rotated_activations_is_the_layer(spec):
    """The kernels' form of a HIGGS weight (a codebook of the rotated groups; 2-D for v2) times the rotated
    activations is the layer; a 2-D grid's codes keep 2 * bits bits and its points in order."""
    qw = quantize(_heavy_tailed(9, 192), spec)
    x = np.random.default_rng(6).standard_normal((3, 192))
    inner = qw.rotated_codebook()
    fmt = parse_format(spec)
    assert inner.format.kind == "codebook" and inner.format.dim == fmt.dim
    assert inner.format.bits == fmt.bits * fmt.dim and np.array_equal(inner.format.points, fmt.points)
    assert inner.format.bits_per_weight(192) == fmt.bits_per_weight(192)
    np.testing.assert_allclose(higgs.hadamard_rotate(x, 64) @ inner.dequantize().T.astype(np.float64),
                               x @ qw.dequantize().T.astype(np.float64), rtol=1e-5, atol=1e-5)
    with pytest.raises(FormatError, match="not a HIGGS format"):
        inner.rotated_codebook()


@pytest.mark.parametrize("spec, message", [("higgs5g64", "bits=5 is out of range"),
                                           ("higgs4g48", "must be a power of two"),
                                           ("higgs4g64v3", "unknown weight format")])
def test_bad_higgs_formats_say_what_is_wrong(spec, message):
    with pytest.raises(FormatError, match=message):
        parse_format(spec)


def test_k_not_a_multiple_of_the_group_is_an_error():
    with pytest.raises(WeightError, match="does not divide K=96"):
        quantize(np.ones((2, 96)), "higgs4g64")


@pytest.mark.parametrize("name, M", [("higgs4g64", 1), ("higgs3g64", 3), ("higgs2g128", 17), ("higgs4g64", 64),
                                     ("higgs2g64v2", 1), ("higgs3g64v2", 5), ("higgs4g128v2", 3),
                                     ("higgs2g64v2", 64)])
def test_kernel_rotates_activations_and_matches_the_reference(name, M):
    """The compiled layer (rotation prologue + codebook decode kernel; a 2-D grid's code decodes to a pair
    of weights, 4-, 6- and 8-bit codes) against x @ dequant(W)^T + b, at GEMV and GEMM sizes of M."""
    from lowbit import peers
    from lowbit.compiler.linear import build_linear

    w = _heavy_tailed(37, 384, seed=M)  # odd N; K = 3 groups of 128 or 6 of 64
    qw = quantize(w, name)
    bias = np.linspace(-1, 1, 37).astype(np.float32)
    layer = build_linear(qw, bias=bias, kernel="decode")
    assert layer.kernel == "decode" and "R" in layer.arrays
    x = np.random.default_rng(M).standard_normal((M, 384)).astype(np.float32)
    peers.check_result(name, layer.run(x) - bias, x, qw)


@pytest.mark.parametrize("name, M", [("higgs4g64", 1), ("higgs4g64", 20), ("higgs3g64", 1), ("higgs2g64", 20),
                                     ("higgs2g64v2", 1), ("higgs2g128v2", 20)])
def test_lut_kernel_rotates_activations(name, M):
    """After rotation a HIGGS weight is a codebook with codes of up to 4 bits (1-D grids; the 2-bit 2-D grid's
    4-bit pair codes): auto runs it through the table-lookup kernel, behind the same rotation prologue. Its
    int8 tables cost 1-2% relative error; a missing rotation costs ~100%."""
    from lowbit.compiler.intrinsics import x86_lut
    from lowbit.compiler.linear import build_linear
    from lowbit.compiler.target import resolve_target

    if x86_lut.isa_for(resolve_target("cpu").features) is None:
        pytest.skip("no byte shuffle (AVX2) on this host: the lut kernel is the portable one, tested in test_lut")
    qw = quantize(_heavy_tailed(48, 256, seed=M), name)
    layer = build_linear(qw, kernel="auto")
    assert layer.kernel == "lut" and "R" in layer.arrays
    x = np.random.default_rng(M).standard_normal((M, 256)).astype(np.float32)
    exact = x.astype(np.float64) @ qw.dequantize().T.astype(np.float64)
    unrotated = x @ qw.rotated_codebook().dequantize().T

    def rel(y):
        return np.linalg.norm(y - exact) / np.linalg.norm(exact)

    assert rel(layer.run(x)) < 0.03 and rel(unrotated) > 0.5


def test_kernel_without_the_rotation_is_caught_by_the_check():
    """The bound is tight enough that skipping the rotation (multiplying x by the rotated weight) fails."""
    from lowbit import peers

    qw = quantize(_heavy_tailed(8, 128), "higgs4g64")
    x = np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32)
    unrotated = x @ qw.rotated_codebook().dequantize().T
    with pytest.raises(AssertionError, match="differs"):
        peers.check_result("unrotated", unrotated, x, qw)


def test_2d_grid_kernel_pairs_each_code_with_its_two_activations():
    """Swapping the two coordinates of every 2-D point (a decode that reads the pair in the wrong order) must
    fail the check: the test above would not notice a kernel that ignores the point's second coordinate."""
    import dataclasses

    from lowbit import peers
    from lowbit.compiler.formats import QuantizedWeight
    from lowbit.compiler.linear import build_linear

    qw = quantize(_heavy_tailed(16, 128), "higgs2g64v2")
    inner = qw.rotated_codebook()
    swapped_points = inner.format.points[:, ::-1]
    swapped = QuantizedWeight(dataclasses.replace(inner.format, levels=tuple(swapped_points.reshape(-1))),
                              inner.codes, inner.scales)
    x = np.random.default_rng(3).standard_normal((2, 128)).astype(np.float32)
    rotated_x = higgs.hadamard_rotate(x, 64).astype(np.float32)
    peers.check_result("2-D codebook", build_linear(inner, kernel="decode").run(rotated_x), rotated_x, inner)
    with pytest.raises(AssertionError, match="differs"):
        peers.check_result("swapped", build_linear(swapped, kernel="decode").run(rotated_x), rotated_x, inner)


def test_mixed_precision_model_compiles_saves_loads_and_matches_its_reference(tmp_path):
    """One artifact, one format per layer (HIGGS 1-D and 2-D grids, uniform 2-bit, ternary), against float64
    NumPy."""
    import lowbit
    from lowbit.compiler.graph import Activation, QuantizedLinear, Sequential

    rng = np.random.default_rng(11)
    widths, formats = [128, 192, 128, 128, 64], ["higgs3g64", "w2g64", "higgs2g64v2", "ternaryg64"]
    layers = []
    for index, (K, N, fmt) in enumerate(zip(widths, widths[1:], formats)):
        qw = quantize(rng.standard_t(4, (N, K)) / np.sqrt(K), fmt)
        layers += [QuantizedLinear(qw, rng.standard_normal(N).astype(np.float32), f"fc{index}"), Activation("relu")]
    model = Sequential(layers[:-1])
    compiled = lowbit.compile(model, target="cpu", kernel="decode")  # fp32 activations: a float64 reference
    path = str(tmp_path / "mixed.lowbit")
    compiled.save(path)
    x = rng.standard_normal((5, 128)).astype(np.float32)
    h = x.astype(np.float64)
    for layer in model.linear_layers():
        h = h @ layer.weight.dequantize().T.astype(np.float64) + layer.bias
        h = np.maximum(h, 0) if layer is not model.linear_layers()[-1] else h
    loaded = lowbit.runtime.load(path)
    # fp32 dot products of at most 192 terms of O(1) values: relative error a few 1e-6 per layer
    np.testing.assert_allclose(loaded(x), h, rtol=1e-4, atol=1e-4 * np.abs(h).max())
    np.testing.assert_array_equal(loaded(x), compiled(x))


def test_flipping_column_signs_is_rotating_with_other_signs():
    """benchmarks/quality_attribution.py measures other rotation draws by flipping the weight's columns with
    ``s * s'`` (``s`` the format's signs): ``T_s(s s' v) = H (s' v) / sqrt(g)``, and the flips undo exactly."""
    group = 64
    other = np.where(np.random.default_rng(11).integers(0, 2, group) == 1, 1.0, -1.0)
    flips = np.tile(other * higgs.rotation_signs(group), 2)
    w = _heavy_tailed(5, 2 * group, seed=12)
    expected = higgs.fwht((w * np.tile(other, 2)).reshape(5, 2, group)).reshape(5, -1) / np.sqrt(group)
    np.testing.assert_allclose(higgs.hadamard_rotate(w * flips, group), expected, atol=1e-12)
    shipped, drawn = quantize(w, "higgs2g64"), quantize(w * flips, "higgs2g64")

    def sqnr(approx):
        return 20 * np.log10(np.linalg.norm(w) / np.linalg.norm(w - approx))

    # undone flips give an error of the shipped draw's size (left in place they would give about -3 dB)
    assert abs(sqnr(drawn.dequantize() * flips) - sqnr(shipped.dequantize())) < 1.0
    assert not np.array_equal(shipped.codes, drawn.codes)  # another draw rounds differently


@pytest.mark.parametrize("name", ["higgs3g64", "higgs2g64v2"])
def test_lut_layer_matches_its_numpy_twin_through_the_rotation(name):
    """``lowbit bench`` checks a HIGGS lut layer against the lut twin on the NumPy twin of the rotation, which
    is bit-identical to the compiled rotation (float32, the same operations in the same order): the int8
    activations the twin builds its tables from are the kernel's."""
    from lowbit import bench, peers
    from lowbit.compiler import kernels_rotate
    from lowbit.compiler.intrinsics import x86_lut
    from lowbit.compiler.linear import build_linear
    from lowbit.compiler.target import resolve_target

    qw = quantize(_heavy_tailed(40, 256, seed=2), name)
    x = np.random.default_rng(5).standard_normal((3, 256)).astype(np.float32)
    layer = build_linear(qw, kernel="lut")
    reference = bench.kernel_reference("lut", x, qw, qw.dequantize())
    peers.check_result(name, layer.run(x), x, qw, reference)
    from lowbit.compiler.tvm_api import tensor, tvm

    rotated = tensor(np.zeros_like(x))
    tvm.compile(kernels_rotate.rotate_compute(256, 64, 3), target="llvm")["main"](
        tensor(x), tensor(higgs.rotation_signs(64)), rotated)
    np.testing.assert_array_equal(kernels_rotate.reference(x, 64), rotated.numpy())
    exact = higgs.hadamard_rotate(x, 64)
    assert np.abs(kernels_rotate.reference(x, 64) - exact).max() < 1e-5 * np.abs(exact).max()
    if x86_lut.isa_for(resolve_target("cpu").features) is not None:
        assert layer.kernel == "lut"
