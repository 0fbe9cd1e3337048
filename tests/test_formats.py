"""Weight formats: names, the NumPy reference (quantize / dequantize), pack / unpack, bad input."""
import numpy as np
import pytest

from lowbit.compiler.formats import (CodebookFormat, QuantizedWeight, TernaryFormat, UniformFormat, pack_bits,
                                     parse_format, quantize, unpack_bits)
from lowbit.errors import FormatError, WeightError

NAMES = ["w8", "w8s", "w4g128", "w4g128s", "w2g64", "w3g128", "w1g32", "w5g64", "w6g256", "w7g32s",
         "ternary", "ternaryg128", "nf4g64", "fp4g32", "nf4", "fp4", "cb3g64[-1.0,-0.5,-0.25,-0.1,0.1,0.25,0.5,1.0]",
         "cb2[-1.5,-0.3,0.3,1.5]"]
SHAPES = [(7, 256), (33, 512), (1, 768)]


def _weights(shape, seed):
    rng = np.random.default_rng(seed)
    # rows of different magnitude and sign bias, plus heavy tails: non-trivial scales and zero points
    w = rng.standard_normal(shape) * rng.uniform(0.05, 4.0, (shape[0], 1)) + rng.uniform(-1, 1, (shape[0], 1))
    return w + 0.1 * rng.standard_cauchy(shape).clip(-50, 50)


@pytest.mark.parametrize("name", NAMES, ids=lambda n: n.split("[")[0])
def test_name_parses_back_to_the_same_format(name):
    fmt = parse_format(name)
    assert fmt.name == name
    assert parse_format(fmt.name) == fmt
    assert parse_format(name.upper()) == fmt


def test_format_objects_spell_the_documented_names():
    assert UniformFormat(4, 128).name == "w4g128"
    assert UniformFormat(4, 128, symmetric=True).name == "w4g128s"
    assert UniformFormat(8).name == "w8"
    assert TernaryFormat().name == "ternary" and TernaryFormat(128).name == "ternaryg128"
    assert parse_format("nf4g64").kind == "codebook" and parse_format("ternary").bits == 2


@pytest.mark.parametrize("spec, message", [
    ("w9", r"bits=9 is out of range: use 1\.\.8"),
    ("w0g64", r"bits=0 is out of range"),
    ("w1s", r"1-bit symmetric"),
    ("w4g1", r"group_size 1 is out of range"),
    ("int4", r"unknown weight format 'int4'"),
    ("cb2[1,2,3]", r"3 levels given for 2 bits: give exactly 4"),
    ("cb1[0,0]", r"not all zero"),
    ("cb1[a,b]", r"not a comma-separated list"),
])
def test_bad_format_names_say_what_is_wrong(spec, message):
    with pytest.raises(FormatError, match=message):
        parse_format(spec)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("K", [37, 64, 250])
def test_pack_bits_round_trips_every_code(bits, K):
    rng = np.random.default_rng(bits * K)
    codes = rng.integers(0, 2 ** bits, (5, K)).astype(np.uint8)
    codes[0, :] = 2 ** bits - 1  # all ones: every bit of the stream set
    data = pack_bits(codes, bits)
    assert data.shape == (5, -(-K * bits // 8))
    np.testing.assert_array_equal(unpack_bits(data, bits, K), codes)


def test_pack_is_lsb_first():
    codes = np.array([[1, 2, 3, 0]], np.uint8)  # 2-bit codes 01, 10, 11, 00 -> byte 0b00111001
    assert pack_bits(codes, 2).tolist() == [[0b00111001]]


@pytest.mark.parametrize("name", NAMES, ids=lambda n: n.split("[")[0])
def test_quantized_weight_pack_unpack_round_trips_exactly(name):
    qw = quantize(_weights((9, 256), 1), name)
    back = qw.pack().unpack()
    np.testing.assert_array_equal(back.codes, qw.codes)
    np.testing.assert_array_equal(back.scales, qw.scales)
    if qw.zeros is None:
        assert back.zeros is None
    else:
        np.testing.assert_array_equal(back.zeros, qw.zeros)
    np.testing.assert_array_equal(back.dequantize(), qw.dequantize())
    assert qw.pack().data.nbytes == 9 * -(-256 * qw.format.bits // 8)


def _half_step(qw, w):
    """Per-element bound |w - deq| and a mask of the elements inside the format's clipping range."""
    fmt, group = qw.format, qw.group_size
    scales = np.repeat(qw.scales.astype(np.float64), group, axis=1)
    if fmt.kind == "codebook":
        levels = np.sort(np.asarray(fmt.levels))
        half = np.diff(levels).max() / 2
        inside = (w >= levels[0] * scales) & (w <= levels[-1] * scales)
    elif fmt.kind == "ternary":
        half = 0.5
        inside = np.abs(w) <= 1.5 * scales
    else:
        half = 0.5
        inside = np.ones(w.shape, bool)  # RTN ranges cover every weight of the group
    rounding = 8 * np.finfo(np.float32).eps * np.abs(w)  # float32 scale and float32 result
    return half * scales + rounding, inside


@pytest.mark.parametrize("name", NAMES, ids=lambda n: n.split("[")[0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_error_is_within_half_a_step_inside_the_clipping_range(name, shape):
    for seed in range(3):
        w = _weights(shape, seed)
        qw = quantize(w, name)
        err = np.abs(qw.dequantize().astype(np.float64) - w)
        bound, inside = _half_step(qw, w)
        assert inside.mean() > 0.5, "the clipping range should hold most weights"
        assert (err[inside] <= bound[inside]).all(), f"max excess {(err - bound)[inside].max():.3e}"


def test_zero_is_exactly_representable_with_zero_points():
    w = _weights((4, 128), 5)
    w[:, ::7] = 0.0
    deq = quantize(w, "w3g32").dequantize()
    assert (deq[:, ::7] == 0).all()


def test_zero_points_clamp_for_one_signed_groups():
    w = np.concatenate([np.linspace(0.5, 2.0, 64), np.linspace(-3.0, -1.0, 64)])[None, :]
    qw = quantize(w, "w4g64")
    assert qw.zeros.tolist() == [[0, 15]]  # all-positive group: zero 0; all-negative: zero at the top
    assert np.abs(qw.dequantize() - w).max() <= qw.scales.max() / 2 + 1e-6


def test_all_zero_rows_dequantize_to_zero():
    w = np.zeros((3, 64))
    for name in ("w4g32", "w4g32s", "ternary", "nf4g32"):
        qw = quantize(w, name)
        assert np.isfinite(qw.scales).all()
        assert (qw.dequantize() == 0).all()


def test_dequantize_formulas_on_hand_made_values():
    uniform = QuantizedWeight("w2", np.array([[0, 1, 2, 3]]), np.array([[0.5]]), np.array([[1]]))
    assert uniform.dequantize().tolist() == [[-0.5, 0.0, 0.5, 1.0]]
    symmetric = QuantizedWeight("w2s", np.array([[0, 1, 2, 3]]), np.array([[2.0]]))
    assert symmetric.dequantize().tolist() == [[-4.0, -2.0, 0.0, 2.0]]
    ternary = QuantizedWeight("ternary", np.array([[0, 1, 2, 2]]), np.array([[0.25]]))
    assert ternary.dequantize().tolist() == [[-0.25, 0.0, 0.25, 0.25]]
    fp4 = QuantizedWeight("fp4", np.array([[0b0111, 0b1010, 0b0001, 0b0000]]), np.array([[2.0]]))
    assert fp4.dequantize().tolist() == [[12.0, -2.0, 1.0, 0.0]]


def test_ternary_codes_are_minus_one_zero_one_times_absmean():
    w = _weights((6, 256), 9)
    qw = quantize(w, "ternaryg128")
    assert set(np.unique(qw.codes)) <= {0, 1, 2}
    absmean = np.abs(w.reshape(6, 2, 128)).mean(axis=2)
    np.testing.assert_allclose(qw.scales, absmean, rtol=1e-6)


def test_bits_per_weight_counts_scales_and_zero_points():
    assert parse_format("w4g64").bits_per_weight(4096) == pytest.approx(4.3125)
    assert parse_format("nf4g64").bits_per_weight(4096) == pytest.approx(4.25)
    assert parse_format("w8").bits_per_weight(4096) == pytest.approx(8 + 24 / 4096)


@pytest.mark.parametrize("weight, message", [
    (np.array([[1.0, np.nan] + [0.5] * 62]), r"1 NaN/Inf values \(first at \[0, 1\]"),
    (np.array([[np.inf] * 64]), r"64 NaN/Inf values"),
    (np.zeros((0, 64)), r"weight is empty"),
    (np.zeros(64), r"must be 2-D"),
    (np.zeros((4, 100)), r"group size 64 does not divide K=100: .* pad K to a multiple of 64"),
])
def test_bad_weights_are_rejected_with_the_fix(weight, message):
    with pytest.raises(WeightError, match=message):
        quantize(weight, "w4g64")


def test_quantized_weight_validates_its_parts():
    codes = np.zeros((2, 64), np.uint8)
    with pytest.raises(WeightError, match=r"scales have shape \(2, 1\), expected .* \(2, 2\)"):
        QuantizedWeight("w4g32s", codes, np.ones((2, 1)))
    with pytest.raises(WeightError, match=r"codes must be integers in \[0, 16\)"):
        QuantizedWeight("w4g32s", codes + 16, np.ones((2, 2)))
    with pytest.raises(WeightError, match=r"stores no zero points"):
        QuantizedWeight("w4g32s", codes, np.ones((2, 2)), np.zeros((2, 2)))
    with pytest.raises(WeightError, match=r"needs zero points"):
        QuantizedWeight("w4g32", codes, np.ones((2, 2)))
    with pytest.raises(WeightError, match=r"codes must be integers in \[0, 3\)"):
        QuantizedWeight("ternary", codes + 3, np.ones((2, 1)))
    with pytest.raises(WeightError, match=r"scales contain NaN"):
        QuantizedWeight("w4g32s", codes, np.full((2, 2), np.nan))


def test_codebook_levels_are_kept_in_float32():
    fmt = CodebookFormat(1, None, (-0.1, 0.3))
    assert fmt.levels == (float(np.float32(-0.1)), float(np.float32(0.3)))
    assert fmt.name == "cb1[-0.1,0.3]" and parse_format(fmt.name) == fmt


CB2D = "cb3g64v2[-1,-1,-1,1,1,-1,1,1,-0.3,0,0.3,0,0,-0.3,0,0.3]"  # 8 points of the plane, 3-bit codes per pair


def test_2d_codebook_codes_pairs_and_round_trips():
    """A 2-D codebook: one code per pair of weights (K / 2 codes), each pair to its nearest point (times the
    group scale); the name parses back, bits per weight halve the code bits, pack/unpack is exact."""
    fmt = parse_format(CB2D)
    assert fmt.dim == 2 and fmt.bits == 3 and parse_format(fmt.name) == fmt
    assert fmt.bits_per_weight(128) == 1.5 + 16 / 64
    w = np.random.default_rng(4).standard_normal((5, 128))
    qw = quantize(w, fmt)
    assert qw.codes.shape == (5, 64) and qw.shape == (5, 128)
    pairs = (w.reshape(5, 2, 32, 2) / qw.scales.astype(np.float64)[:, :, None, None]).reshape(-1, 2)
    distances = ((pairs[:, None, :] - fmt.points[None]) ** 2).sum(axis=2)
    assert np.array_equal(qw.codes.reshape(-1), distances.argmin(axis=1))
    scales = np.repeat(qw.scales.astype(np.float64), 64, axis=1)
    np.testing.assert_array_equal(qw.dequantize(), (scales * fmt.points[qw.codes].reshape(5, 128)).astype(np.float32))
    again = qw.pack().unpack()
    assert np.array_equal(again.codes, qw.codes) and again.format == fmt


@pytest.mark.parametrize("make, message", [
    (lambda: CodebookFormat(2, 64, (0.0, 1.0, 2.0, 3.0), "cb", 2), "give exactly 8"),
    (lambda: CodebookFormat(2, 7, tuple(range(8)), "cb", 2), "must be even"),
    (lambda: CodebookFormat(2, 64, tuple(range(8)), "cb", 3), "dimension 3"),
])
def test_bad_2d_codebooks_say_what_is_wrong(make, message):
    with pytest.raises(FormatError, match=message):
        make()


def test_gptq_of_a_2d_codebook_codes_pairs_of_columns():
    """GPTQ rounds a 2-D codebook a pair at a time (tests/test_gptq.py measures its error): one code per pair,
    each weight pair a codebook point times its group's scale."""
    from lowbit.compiler.gptq import gptq_quantize

    fmt = parse_format(CB2D)
    weight = np.random.default_rng(8).standard_normal((3, 64))
    qw = gptq_quantize(weight, np.eye(64) + 0.5, CB2D)
    assert qw.format == fmt and qw.codes.shape == (3, 32) and int(qw.codes.max()) < len(fmt.points)
    pairs = qw.dequantize().reshape(3, -1, 2)
    scales = np.repeat(qw.scales.astype(np.float64), fmt.group_size // 2, axis=1)
    np.testing.assert_allclose(pairs, scales[..., None] * fmt.points[qw.codes], rtol=1e-6)
