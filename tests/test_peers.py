"""Benchmark peers: onnxruntime MatMulNBits gets lowbit's weights exactly; NumPy and rotation are right."""
import numpy as np
import pytest

from lowbit import peers
from lowbit.compiler.formats import parse_format, quantize


def _weights(shape, seed):
    rng = np.random.default_rng(seed)
    # rows of different magnitude and sign bias: non-trivial scales and zero points in every group
    return rng.standard_normal(shape) * rng.uniform(0.05, 4.0, (shape[0], 1)) + rng.uniform(-1, 1, (shape[0], 1))


def _activations(M, K, seed):
    return np.random.default_rng(seed).standard_normal((M, K)).astype(np.float32)


# K = 640 for the per-channel formats: MatMulNBits then needs a 1024 block with padding past K.
CASES = [("w4g128", 512), ("w4g128s", 512), ("w2g64", 512), ("w8", 640), ("w8s", 640), ("w4g32", 256)]


@pytest.mark.parametrize("M", [1, 3, 17])
@pytest.mark.parametrize("name, K", CASES, ids=[name for name, _ in CASES])
def test_ort_matmulnbits_fp32_matches_dequantized_reference(name, K, M):
    qw = quantize(_weights((40, K), seed=K), name)
    x = _activations(M, K, seed=M)
    run = peers.ort_peer(x, qw, copies=2, accuracy_level=0)
    assert run is not None, peers.ort_unsupported_reason(qw.format, K)
    for _ in range(2):  # both weight copies
        peers.check_result(f"ort {name}", run(), x, qw)


@pytest.mark.parametrize("name, K", [("w4g128", 512), ("w8", 640)], ids=["w4g128", "w8"])
def test_ort_matmulnbits_int8_activations_stay_within_the_rounding_of_a(name, K):
    """accuracy_level 4 rounds A to int8 per block (scale absmax/127): each |dA| <= absmax / 254."""
    qw = quantize(_weights((40, K), seed=1), name)
    x = _activations(5, K, seed=2)
    y = peers.ort_peer(x, qw, copies=1, accuracy_level=4)()
    block = peers.ort_block_size(qw.format, K)
    absmax = np.repeat(np.abs(x).reshape(5, -1, min(block, K)).max(axis=2), min(block, K), axis=1)
    bound = (absmax / 254) @ np.abs(qw.dequantize()).T.astype(np.float64) + peers.error_bound(x, qw)
    reference = x.astype(np.float64) @ qw.dequantize().T.astype(np.float64)
    assert (np.abs(y - reference) <= bound).all()


def test_check_result_catches_a_zero_point_off_by_one():
    """The tolerance is tight enough to see one wrong zero point in one group of one row."""
    qw = quantize(_weights((16, 512), seed=3), "w4g128")
    x = _activations(2, 512, seed=4)
    zeros = qw.zeros.copy()
    zeros[5, 2] = (int(zeros[5, 2]) + 1) % 16
    wrong = type(qw)(qw.format, qw.codes, qw.scales, zeros)
    y = x.astype(np.float64) @ wrong.dequantize().T.astype(np.float64)
    with pytest.raises(AssertionError, match=r"at \[\d, 5\]"):
        peers.check_result("wrong", y, x, qw)


def test_ort_symmetric_model_leaves_out_zero_points():
    """Symmetric formats rely on MatMulNBits' default zero point 2**(bits-1), lowbit's symmetric offset."""
    qw = quantize(_weights((8, 256), seed=5), "w4g128s")
    model = peers.matmulnbits_model(qw, accuracy_level=0)
    assert [i.name for i in model.graph.initializer] == ["B", "scales"]
    assert list(model.graph.node[0].input) == ["A", "B", "scales"]
    assert len(model.graph.input) == 1  # the weights are initializers, not graph inputs


def test_ort_initializers_have_matmulnbits_shapes():
    qw = quantize(_weights((8, 384), seed=6), "w2g64")
    block, packed, scales, zeros = peers.matmulnbits_inputs(qw)
    assert block == 64 and packed.shape == (8, 6, 64 * 2 // 8) and packed.dtype == np.uint8
    assert scales.shape == (8 * 6,) and zeros.shape == (8, 2)  # ceil(6 blocks * 2 bits / 8)
    assert peers.matmulnbits_bytes(qw) == packed.nbytes + scales.nbytes + zeros.nbytes


@pytest.mark.parametrize("name, K, reason", [
    ("ternary", 256, "uniform integer formats only"),
    ("nf4g64", 256, "uniform integer formats only"),
    ("w3g128", 256, "refuses MatMulNBits"),
    ("w2", 512, "refuses MatMulNBits"),  # 2-bit blocks are limited to 256 in onnxruntime 1.32
], ids=["ternary", "nf4g64", "w3g128", "w2-per-channel"])
def test_ort_peer_is_none_for_formats_matmulnbits_lacks(name, K, reason):
    assert reason in peers.ort_unsupported_reason(parse_format(name), K)
    qw = quantize(_weights((8, K), seed=7), name)
    assert peers.ort_peer(_activations(1, K, seed=8), qw, copies=1) is None


def test_numpy_peer_matches_float_matmul_on_every_copy():
    w = _weights((24, 320), seed=9).astype(np.float32)
    x = _activations(3, 320, seed=10)
    run = peers.numpy_peer(x, w, copies=3)
    reference = x.astype(np.float64) @ w.T.astype(np.float64)
    bound = (320 + 1) * 2.0 ** -24 * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64))
    for _ in range(4):
        assert (np.abs(run() - reference) <= bound).all()


def test_numpy_peer_of_a_quantized_weight_uses_its_dequantized_value():
    qw = quantize(_weights((24, 256), seed=11), "w4g128")
    x = _activations(2, 256, seed=12)
    peers.check_result("numpy", peers.numpy_peer(x, qw, copies=1)(), x, qw)


def test_rotation_visits_every_copy_in_turn():
    seen = []
    run = peers.rotate([lambda i=i: seen.append(i) for i in range(3)])
    for _ in range(7):
        run()
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_torch_peer_is_none_exactly_when_torch_is_missing():
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    x, w = _activations(1, 64, seed=13), _weights((8, 64), seed=14).astype(np.float32)
    run = peers.torch_peer(x, w, copies=2)
    assert (run is None) == (not have_torch)
    if have_torch:
        np.testing.assert_allclose(run(), x @ w.T, rtol=1e-5, atol=1e-5)
