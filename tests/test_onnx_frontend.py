"""ONNX frontend: quantized ONNX models compiled by lowbit against onnxruntime on the same inputs.

Every model is built here with ``onnx.helper`` from seeded random integers, scales and zero points.
onnxruntime runs it with graph optimizations off (each node as written), lowbit compiles it for this CPU.

Tolerance (derived, not tuned): both sides compute ``y[m, n] = sum_k x[m, k] * w[n, k]`` in float32, in
different orders. For one linear layer every partial sum is bounded by ``T[m] = sum_k |x[m, k]| * Wmax``, with
``Wmax = max|s| * (2**(bits+1) + max z)`` covering lowbit's decode arithmetic (codes and ``scale * zero``
folded into the accumulation, as in tests/test_kernels.py), and each of the at most ``K + 2 * groups *
codes_per_word + 4`` additions adds at most ``eps * T``; onnxruntime's own error is below the same bound.
So ``|lowbit - ort| <= 2 * eps * chain * T + eps * |y|``. Through a following layer the error of its
input adds ``err_in @ |W|^T`` (ReLU is 1-Lipschitz). A decoding mistake (a nibble order, a zero point off
by one) moves outputs by about ``scale * sum|x|``, hundreds of times more than this bound.

These exactness tests use ``kernel="decode"`` (float32 activations). The default, ``auto``, picks the
int8-activation ``a8`` kernel where the host has integer dot products; its distance to onnxruntime is the
activation rounding, checked against the issue's bar (max |diff| / max |y| <= 1e-2) separately.
"""
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.compiler.formats import QuantizedWeight, UniformFormat, pack_bits
from lowbit.errors import ModelError
from lowbit.frontends.onnx import import_onnx

EPS32 = float(np.finfo(np.float32).eps)
# onnx.checker (run by TVM's importer) complains about outputs declared without a shape; they are valid for both
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")
K, N, N2 = 64, 40, 24  # N, N2 not multiples of the vector lanes


def make_model(nodes, inputs, outputs, initializers, opset=21, microsoft=False):
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if microsoft else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10  # onnxruntime reads IR <= 10 (onnx 1.23 writes newer by default)
    return model


def tensor_in(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def run_ort(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def layer_bound(x, qw):
    """Bound on |lowbit - ort| for ``x @ dequant(qw)^T`` (module docstring), shape (..., 1)."""
    fmt = qw.format
    w_max = np.abs(qw.scales).max() * (2 ** (fmt.bits + 1) + np.abs(qw.affine_zeros()).max())
    groups = qw.codes.shape[1] // (fmt.group_size or qw.codes.shape[1])
    chain = qw.codes.shape[1] + 2 * groups * (32 // fmt.bits) + 4
    return 2 * EPS32 * chain * w_max * np.abs(x).sum(axis=-1, keepdims=True)


def assert_close(out, ref, bound):
    err = np.abs(out.astype(np.float64) - ref)
    limit = bound + EPS32 * np.abs(ref)
    assert out.shape == ref.shape
    assert (err <= limit).all(), f"max err {err.max():.3e}, bound there {limit.flat[np.argmax(err - limit)]:.3e}"


def only_layer(imported):
    (spec,) = imported.quantized.values()
    return spec.weight


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


# --- QDQ ------------------------------------------------------------------------------------------------

def qdq_uint8_per_axis(rng, input_shape):
    codes = rng.integers(0, 256, (K, N), dtype=np.uint8)
    scale = rng.uniform(0.002, 0.02, N).astype(np.float32)
    zero = rng.integers(100, 156, N).astype(np.uint8)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(zero, "w_zero")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=1, name="dq"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    return make_model(nodes, [tensor_in("x", input_shape)], [tensor_in("y", None)], inits, opset=19)


def test_qdq_uint8_per_axis_matmul_matches_onnxruntime(rng):
    model = qdq_uint8_per_axis(rng, ["M", K])
    qw = only_layer(import_onnx(model))
    assert qw.format.name == "w8" and qw.shape == (N, K)
    compiled = lowbit.compile(model, kernel="decode")
    for rows in (1, 5, 40):
        x = rng.standard_normal((rows, K)).astype(np.float32)
        assert_close(compiled(x), run_ort(model, {"x": x})[0], layer_bound(x, qw))
    assert compiled.manifest["inputs"] == [{"name": "x", "shape": ["M", K], "dtype": "float32"}]
    assert compiled.manifest["layers"][0]["name"] == "fc"


def test_symbolic_batch_and_sequence_dims_stay_symbolic(rng):
    model = qdq_uint8_per_axis(rng, ["batch", "seq", K])
    compiled = lowbit.compile(model, kernel="decode")
    qw = only_layer(import_onnx(model))
    for shape in ((1, 1), (2, 3), (3, 17)):
        x = rng.standard_normal(shape + (K,)).astype(np.float32)
        assert_close(compiled(x), run_ort(model, {"x": x})[0], layer_bound(x, qw))
    assert compiled.manifest["inputs"][0]["shape"] == ["batch", "seq", K]
    assert compiled.manifest["outputs"][0]["shape"] == ["batch", "seq", N]


def int4_blocked_model(rng, block_size=32, scale_shape=None):
    codes = rng.integers(-8, 8, (K, N)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, scale_shape or (K // block_size, N)).astype(np.float32)
    zero = rng.integers(-3, 4, scale.shape).astype(np.int8)
    import ml_dtypes

    inits = [numpy_helper.from_array(codes.astype(ml_dtypes.int4), "w_q"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(zero.astype(ml_dtypes.int4), "w_zero")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0,
                              block_size=block_size, name="dq4"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc4")]
    return make_model(nodes, [tensor_in("x", ["batch", "seq", K])], [tensor_in("y", None)], inits), codes, zero


def test_qdq_int4_blocked_with_zero_points_is_decoded_exactly(rng):
    model, codes, zero = int4_blocked_model(rng)
    qw = only_layer(import_onnx(model))
    assert qw.format.name == "w4g32"
    np.testing.assert_array_equal(qw.codes, (codes.T.astype(np.int16) + 8))  # signed -> unsigned, (N, K)
    np.testing.assert_array_equal(qw.zeros, zero.T.astype(np.int16) + 8)
    x = rng.standard_normal((2, 7, K)).astype(np.float32)
    assert_close(lowbit.compile(model, kernel="decode")(x), run_ort(model, {"x": x})[0], layer_bound(x, qw))


def test_qdq_int8_symmetric_gemm_trans_b_with_bias(rng):
    codes = rng.integers(-127, 128, (N, K)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, N).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(np.zeros(N, np.int8), "w_zero"), numpy_helper.from_array(bias, "bias")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0, name="dq"),
             helper.make_node("Gemm", ["x", "w", "bias"], ["y"], transB=1, alpha=0.5, beta=2.0, name="gemm")]
    model = make_model(nodes, [tensor_in("x", ["M", K])], [tensor_in("y", ["M", N])], inits)
    imported = import_onnx(model)
    qw = only_layer(imported)
    assert qw.format.name == "w8s" and qw.zeros is None
    x = rng.standard_normal((9, K)).astype(np.float32)
    assert_close(lowbit.compile(model, kernel="decode")(x), run_ort(model, {"x": x})[0], layer_bound(x, qw))


# --- MatMulNBits ------------------------------------------------------------------------------------------

def matmul_nbits_model(rng, with_zeros, with_bias, block_size=32, bits=4, g_idx=None):
    """Pack B, scales and zero points as onnxruntime's contrib op docs describe (LSB first)."""
    n_blocks = K // block_size
    codes = rng.integers(0, 2 ** bits, (N, K)).astype(np.uint8)
    packed = pack_bits(codes, bits).reshape(N, n_blocks, block_size * bits // 8)
    scales = rng.uniform(0.01, 0.1, (N, n_blocks)).astype(np.float32)
    zeros = rng.integers(0, 2 ** bits, (N, n_blocks)).astype(np.uint8)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1), "scales")]
    inputs = ["x", "B", "scales"]
    if with_zeros:
        inits.append(numpy_helper.from_array(pack_bits(zeros, bits).reshape(-1), "zero_points"))
    inputs.append("zero_points" if with_zeros else "")
    if g_idx is not None:
        inits.append(numpy_helper.from_array(g_idx.astype(np.int32), "g_idx"))
    inputs.append("g_idx" if g_idx is not None else "")
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bias"))
    inputs.append("bias" if with_bias else "")
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=K, N=N, bits=bits,
                            block_size=block_size, name="nbits")
    model = make_model([node], [tensor_in("x", ["M", K])], [tensor_in("y", None)], inits, microsoft=True)
    reference = QuantizedWeight(UniformFormat(bits, block_size), codes, scales,
                                zeros if with_zeros else np.full_like(zeros, 2 ** (bits - 1)))
    return model, reference


@pytest.mark.parametrize("with_zeros, with_bias", [(True, False), (False, True), (True, True)],
                         ids=["zero-points", "no-zero-points-bias", "zero-points-bias"])
def test_matmul_nbits_4bit_matches_onnxruntime(rng, with_zeros, with_bias):
    model, reference = matmul_nbits_model(rng, with_zeros, with_bias)
    qw = only_layer(import_onnx(model))
    assert qw.format.name == ("w4g32" if with_zeros else "w4g32s")
    np.testing.assert_array_equal(qw.dequantize(), reference.dequantize())
    x = rng.standard_normal((6, K)).astype(np.float32)
    assert_close(lowbit.compile(model, kernel="decode")(x), run_ort(model, {"x": x})[0], layer_bound(x, qw))


def test_matmul_nbits_identity_g_idx_is_accepted_and_reordering_is_an_error(rng):
    model, _ = matmul_nbits_model(rng, True, False, g_idx=np.arange(K) // 32)
    assert only_layer(import_onnx(model)).format.name == "w4g32"
    model, _ = matmul_nbits_model(rng, True, False, g_idx=np.arange(K)[::-1] // 32)
    with pytest.raises(ModelError, match=r"node 'nbits' \(MatMulNBits\): g_idx 'g_idx' reorders K"):
        import_onnx(model)


def test_matmul_nbits_packed_by_onnxruntime_decodes_to_within_half_a_step(rng):
    """onnxruntime's own 4-bit packer (3 blocks per row: zero points padded per row) against lowbit's decoder."""
    pybind = pytest.importorskip("onnxruntime.capi._pybind_state")
    if not hasattr(pybind, "quantize_matmul_4bits"):
        pytest.skip("this onnxruntime has no quantize_matmul_4bits")
    k, block_size = 96, 32
    w = rng.standard_normal((k, N)).astype(np.float32)
    packed = np.zeros((N, k // block_size, block_size // 2), np.uint8)
    zeros = np.zeros((N, 2), np.uint8)  # ceil(3 blocks * 4 bits / 8) bytes per row
    scales = np.zeros((N, k // block_size), np.float32)
    pybind.quantize_matmul_4bits(packed, w, scales, zeros, block_size, N, k, False)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales"),
             numpy_helper.from_array(zeros.reshape(-1), "zero_points")]
    node = helper.make_node("MatMulNBits", ["x", "B", "scales", "zero_points"], ["y"], domain="com.microsoft",
                            K=k, N=N, bits=4, block_size=block_size, name="nbits")
    model = make_model([node], [tensor_in("x", ["M", k])], [tensor_in("y", None)], inits, microsoft=True)
    qw = only_layer(import_onnx(model))
    step = np.repeat(qw.scales, block_size, axis=1)
    assert (np.abs(qw.dequantize() - w.T) <= step / 2 * (1 + 1e-5)).all()
    x = rng.standard_normal((3, k)).astype(np.float32)
    assert_close(lowbit.compile(model, kernel="decode")(x), run_ort(model, {"x": x})[0], layer_bound(x, qw))


def test_qdq_blocks_that_do_not_divide_k_decode_exactly(rng):
    """Blocks of 48 along K=64 (a partial last block) become groups of gcd(48, 64) = 16, scales repeated."""
    model, codes, zero = int4_blocked_model(rng, block_size=48, scale_shape=(2, N))
    qw = only_layer(import_onnx(model))
    assert qw.format.name == "w4g16"
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    assert_close(lowbit.compile(model, kernel="decode")(x), run_ort(model, {"x": x})[0], layer_bound(x, qw))


@pytest.mark.parametrize("k, block_size, group", [(64, 128, "w4"), (96, 64, "w4g32")], ids=["k-below-block",
                                                                                           "partial-block"])
def test_matmul_nbits_blocks_padded_by_onnxruntime_match_it(rng, k, block_size, group):
    """onnxruntime pads K to whole blocks (K = 64 with blocks of 128, or 96 with 64); lowbit reads the same weights."""
    pybind = pytest.importorskip("onnxruntime.capi._pybind_state")
    if not hasattr(pybind, "quantize_matmul_4bits"):
        pytest.skip("this onnxruntime has no quantize_matmul_4bits")
    n_blocks = -(-k // block_size)
    w = rng.standard_normal((k, N)).astype(np.float32)
    packed = np.zeros((N, n_blocks, block_size // 2), np.uint8)
    zeros = np.zeros((N, -(-n_blocks // 2)), np.uint8)
    scales = np.zeros((N, n_blocks), np.float32)
    pybind.quantize_matmul_4bits(packed, w, scales, zeros, block_size, N, k, False)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales"),
             numpy_helper.from_array(zeros.reshape(-1), "zero_points")]
    node = helper.make_node("MatMulNBits", ["x", "B", "scales", "zero_points"], ["y"], domain="com.microsoft",
                            K=k, N=N, bits=4, block_size=block_size, name="nbits")
    model = make_model([node], [tensor_in("x", ["M", k])], [tensor_in("y", None)], inits, microsoft=True)
    qw = only_layer(import_onnx(model))
    assert qw.format.name == group
    x = rng.standard_normal((3, k)).astype(np.float32)
    assert_close(lowbit.compile(model, kernel="decode")(x), run_ort(model, {"x": x})[0], layer_bound(x, qw))


# --- dynamic quantization: DynamicQuantizeLinear + MatMulInteger, and QLinearMatMul ----------------------

def test_dynamic_quantize_matmul_integer_matches_onnxruntime(rng):
    codes = rng.integers(-128, 128, (K, N)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, N).astype(np.float32)
    w_zero = rng.integers(-5, 6, N).astype(np.int8)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(w_zero, "w_zero")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zero"], name="dql"),
             helper.make_node("MatMulInteger", ["x_q", "w_q", "x_zero", "w_zero"], ["acc"], name="mmi"),
             helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["x_scale", "w_scale"], ["s"], name="scale_mul"),
             helper.make_node("Mul", ["acc_f", "s"], ["y"], name="out_mul")]
    model = make_model(nodes, [tensor_in("x", ["M", K])], [tensor_in("y", None)], inits)
    imported = import_onnx(model)
    qw = only_layer(imported)
    assert qw.format.name == "w8" and list(imported.quantized.values())[0].pattern == "matmulinteger"
    x = rng.standard_normal((5, K)).astype(np.float32)
    out, ref = lowbit.compile(model, kernel="decode")(x), run_ort(model, {"x": x})[0]
    # the activation's quantization (scale, zero point, rounding) is ONNX's, computed by the same float ops:
    # the dequantized activation is within one step of x
    x_step = (max(x.max(), 0) - min(x.min(), 0)) / 255
    bound = layer_bound(np.abs(x) + x_step, qw)
    assert_close(out, ref, bound)
    unquantized = x.astype(np.float64) @ qw.dequantize().T.astype(np.float64)
    assert (np.abs(out - unquantized) > bound).any(), "the activation was not quantized"


def test_model_from_onnxruntime_quantize_dynamic(rng, tmp_path):
    """onnxruntime's own dynamic quantizer (per-channel int8) gives the MatMulInteger pattern of every layer."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(float_mlp(rng), tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "int8.onnx", weight_type=QuantType.QInt8, per_channel=True)
    model = onnx.load(tmp_path / "int8.onnx")
    imported = import_onnx(model)
    assert [(s.pattern, s.weight.format.name) for s in imported.quantized.values()] == [("matmulinteger", "w8s")] * 2
    x = rng.standard_normal((4, K)).astype(np.float32)
    out, ref = lowbit.compile(model, kernel="decode")(x), run_ort(model, {"x": x})[0]
    # two dynamically quantized layers: bound loosely by the first layer's bound scaled through the second
    qw1, qw2 = (spec.weight for spec in imported.quantized.values())
    step = (np.abs(x).max() * 2) / 255
    err1 = layer_bound(np.abs(x) + step, qw1)
    h = np.abs(x @ qw1.dequantize().T.astype(np.float64)) + err1
    h_step = 2 * h.max() / 255
    bound = layer_bound(h + h_step, qw2) + (err1 + h_step) * np.abs(qw2.dequantize().astype(np.float64)).sum(axis=1)
    assert_close(out, ref, bound)


def test_qlinear_matmul_matches_onnxruntime_within_one_output_step(rng):
    codes = rng.integers(0, 256, (K, N)).astype(np.uint8)
    inits = [numpy_helper.from_array(np.float32(0.02), "a_scale"), numpy_helper.from_array(np.uint8(128), "a_zero"),
             numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(np.float32(0.004), "w_scale"),
             numpy_helper.from_array(np.uint8(120), "w_zero"), numpy_helper.from_array(np.float32(0.5), "y_scale"),
             numpy_helper.from_array(np.uint8(128), "y_zero")]
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zero", "w_q", "w_scale", "w_zero", "y_scale",
                                              "y_zero"], ["y"], name="qlm")
    model = make_model([node], [tensor_in("a", ["M", K], TensorProto.UINT8)],
                       [tensor_in("y", None, TensorProto.UINT8)], inits)
    a = rng.integers(0, 256, (7, K)).astype(np.uint8)
    out, ref = lowbit.compile(model, kernel="decode")(a), run_ort(model, {"a": a})[0]
    # onnxruntime rounds the exact int32 sum times one float multiplier; lowbit rounds a float32 sum: a value
    # within rounding error of a .5 boundary may land one step apart
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - ref).max() <= 1
    assert (out == ref).mean() > 0.95


# --- whole models -----------------------------------------------------------------------------------------

def test_two_layer_mlp_with_float_ops_between(rng):
    """uint4 blocked QDQ + bias -> Relu -> uint8 per-axis QDQ + bias: the float ops run as Relax ops."""
    import ml_dtypes

    codes1 = rng.integers(0, 16, (K, N)).astype(np.uint8)
    scale1 = rng.uniform(0.02, 0.08, (K // 16, N)).astype(np.float32)
    zero1 = rng.integers(6, 10, scale1.shape).astype(np.uint8)
    codes2 = rng.integers(0, 256, (N, N2)).astype(np.uint8)
    inits = [numpy_helper.from_array(codes1.astype(ml_dtypes.uint4), "w1_q"), numpy_helper.from_array(scale1, "w1_s"),
             numpy_helper.from_array(zero1.astype(ml_dtypes.uint4), "w1_z"),
             numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b1"),
             numpy_helper.from_array(codes2, "w2_q"),
             numpy_helper.from_array(rng.uniform(0.002, 0.01, N2).astype(np.float32), "w2_s"),
             numpy_helper.from_array(np.full(N2, 128, np.uint8), "w2_z"),
             numpy_helper.from_array(rng.standard_normal(N2).astype(np.float32), "b2")]
    nodes = [helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1"], axis=0, block_size=16),
             helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "b1"], ["h2"], name="bias1"),
             helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
             helper.make_node("DequantizeLinear", ["w2_q", "w2_s", "w2_z"], ["w2"], axis=1),
             helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
             helper.make_node("Add", ["h4", "b2"], ["y"], name="bias2")]
    model = make_model(nodes, [tensor_in("x", ["batch", "seq", K])], [tensor_in("y", None)], inits)
    imported = import_onnx(model)
    assert [spec.name for spec in imported.quantized.values()] == ["fc1", "fc2"]
    qw1, qw2 = (spec.weight for spec in imported.quantized.values())
    assert [qw1.format.name, qw2.format.name] == ["w4g16", "w8s"]
    compiled = lowbit.compile(model, kernel="decode")
    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    # error of fc1's output, carried through bias and ReLU (1-Lipschitz) and fc2's weights; plus fc2's own
    err1 = layer_bound(x, qw1) + EPS32 * np.abs(x @ qw1.dequantize().T.astype(np.float64)).max()
    h3 = np.maximum(x @ qw1.dequantize().T.astype(np.float64) + numpy_helper.to_array(inits[3]), 0) + err1
    bound = layer_bound(h3, qw2) + err1 * np.abs(qw2.dequantize().astype(np.float64)).sum(axis=1)
    assert_close(compiled(x), run_ort(model, {"x": x})[0], bound)
    assert [layer["pattern"] for layer in compiled.manifest["layers"]] == ["qdq", "qdq"]


# --- float models quantized by lowbit, the CLI, the artifact ----------------------------------------------

def float_mlp(rng):
    w1 = (rng.standard_normal((K, N)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((N, N2)) / 6).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(rng.standard_normal(N2).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    return make_model(nodes, [tensor_in("x", ["M", K])], [tensor_in("y", ["M", N2])], inits)


def test_format_quantizes_float_matmul_and_gemm_weights(rng):
    model = float_mlp(rng)
    with pytest.raises(ModelError, match=r"no quantized MatMul / Gemm .* pass format=\.\.\."):
        lowbit.compile(model, kernel="decode")
    imported = import_onnx(model, format="w4g8")
    assert [(s.name, s.pattern, s.weight.format.name) for s in imported.quantized.values()] == \
        [("fc1", "float", "w4g8"), ("fc2", "float", "w4g8")]
    # the reference: the same graph with lowbit's dequantized weights in place of the float ones
    ref_model = onnx.ModelProto()
    ref_model.CopyFrom(model)
    for tensor, spec in zip(ref_model.graph.initializer, imported.quantized.values()):
        tensor.CopyFrom(numpy_helper.from_array(spec.weight.dequantize().T.copy(), tensor.name))
    qw1, qw2 = (spec.weight for spec in imported.quantized.values())
    x = rng.standard_normal((4, K)).astype(np.float32)
    err1 = layer_bound(x, qw1) + EPS32 * np.abs(x @ qw1.dequantize().T.astype(np.float64)).max()
    h = np.maximum(x @ qw1.dequantize().T.astype(np.float64), 0) + err1
    bound = layer_bound(h, qw2) + err1 * np.abs(qw2.dequantize().astype(np.float64)).sum(axis=1)
    assert_close(lowbit.compile(model, format="w4g8", kernel="decode")(x), run_ort(ref_model, {"x": x})[0], bound)


def test_cli_compile_writes_an_artifact_the_runtime_runs(rng, tmp_path):
    model, _ = matmul_nbits_model(rng, True, True)
    onnx.save(model, tmp_path / "m.onnx")
    out = tmp_path / "m.lowbit"
    proc = subprocess.run([sys.executable, "-m", "lowbit", "compile", str(tmp_path / "m.onnx"), "-o", str(out),
                           "--kernel", "decode", "--dump-ir", str(tmp_path / "ir")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "nbits" in proc.stdout and "w4g32" in proc.stdout
    assert sorted(os.listdir(tmp_path / "ir")) == ["0-import.txt", "1-lower-tir", "1-lower.txt", "2-float-ops-tir",
                                                   "2-float-ops.txt", "3-build.txt"]
    import lowbit.runtime

    loaded = lowbit.runtime.load(out)
    x = rng.standard_normal((3, K)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x=x), lowbit.compile(model, kernel="decode")(x))
    assert loaded.manifest["layers"][0]["pattern"] == "matmulnbits"


def test_cli_compile_failure_writes_nothing(tmp_path):
    model = make_model([helper.make_node("Det", ["x"], ["y"], name="det")], [tensor_in("x", [3, 3])],
                       [tensor_in("y", [])], [])
    onnx.save(model, tmp_path / "bad.onnx")
    proc = subprocess.run([sys.executable, "-m", "lowbit", "compile", str(tmp_path / "bad.onnx"), "-o",
                           str(tmp_path / "bad.lowbit")], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "lowbit compile: error:" in proc.stderr and "Det" in proc.stderr
    assert os.listdir(tmp_path) == ["bad.onnx"]


# --- errors -------------------------------------------------------------------------------------------------

def test_unsupported_operators_are_all_listed_with_node_names(rng):
    model = qdq_uint8_per_axis(rng, ["M", K])
    model.graph.node.extend([helper.make_node("Det", ["y"], ["d1"], name="det_a"),
                             helper.make_node("Det", ["y"], ["d2"], name="det_b"),
                             helper.make_node("FancyOp", ["y"], ["f"], domain="vendor.ops", name="fancy")])
    model.graph.output.extend([tensor_in("d1", None), tensor_in("d2", None), tensor_in("f", None)])
    with pytest.raises(ModelError, match=r"2 operator type\(s\) lowbit cannot compile yet: "
                                         r"Det \(nodes: 'det_a', 'det_b'\); FancyOp \(nodes: 'fancy'\)"):
        import_onnx(model)


def test_missing_initializer_names_node_and_tensor(rng):
    model = qdq_uint8_per_axis(rng, ["M", K])
    del model.graph.initializer[1]  # w_scale
    with pytest.raises(ModelError, match=r"node 'dq' \(DequantizeLinear\) reads 'w_scale'"):
        import_onnx(model)


@pytest.mark.parametrize("build, message", [
    (lambda rng: int4_blocked_model(rng, scale_shape=(3, N))[0],
     r"node 'dq4' \(DequantizeLinear\) \(weight 'w_q'\): scale has shape \(3, 40\); blocks of 32 along K=64 "
     r"need shape \(2, 40\)"),
], ids=["scale-shape"])
def test_inconsistent_quantization_parameters_are_clear_errors(rng, build, message):
    with pytest.raises(ModelError, match=message):
        import_onnx(build(rng))


def test_per_axis_scale_of_wrong_length_is_an_error(rng):
    model = qdq_uint8_per_axis(rng, ["M", K])
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones(N + 1, np.float32), "w_scale"))
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.zeros(N + 1, np.uint8), "w_zero"))
    with pytest.raises(ModelError, match=r"node 'dq' .*scale has shape \(41,\); per-axis quantization along axis 1 "
                                         r"needs shape \(40,\)"):
        import_onnx(model)


def test_truncated_file_is_a_model_error(rng, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(qdq_uint8_per_axis(rng, ["M", K]), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        import_onnx(str(path))
    with pytest.raises(ModelError, match="does not exist"):
        import_onnx(str(tmp_path / "absent.onnx"))


# --- structure: the graph the frontend imports and the IR after LowerQuantizedMatmul ----------------------

def test_lowering_replaces_placeholders_by_kernel_params_and_keeps_dims_symbolic(rng):
    from lowbit.compiler.passes.lower_quantized_matmul import LowerQuantizedMatmul
    from lowbit.compiler.target import host_target

    imported = import_onnx(qdq_uint8_per_axis(rng, ["batch", "seq", K]))
    assert [p.name for p in imported.mod["main"].params] == ["x", "lowbit_w0"]
    lower = LowerQuantizedMatmul(imported.quantized, host_target(), kernel="decode")
    main = lower(imported.mod)["main"]
    assert [p.name for p in main.params] == ["x", "layer0_W", "layer0_S", "layer0_SZ"]
    assert [name for name, _ in lower.params] == ["fc.W", "fc.S", "fc.SZ"]
    assert int(main.attrs["num_input"]) == 1
    text = main.script()
    assert "R.call_tir(layer0_mpgemm" in text and "R.shape([batch * seq, 64])" in text
    assert "R.matmul" not in text


def test_initializers_listed_as_graph_inputs_do_not_become_inputs(rng):
    """Old exporters (IR < 4) list every initializer among the graph inputs too."""
    model = qdq_uint8_per_axis(rng, ["M", K])
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    imported = import_onnx(model)
    assert [spec["name"] for spec in imported.inputs] == ["x"]
    assert [p.name for p in imported.mod["main"].params] == ["x", "lowbit_w0"]


def test_default_kernel_is_within_the_bar_of_onnxruntime(rng):
    """auto (a8 where the host has integer dot products) stays within 1e-2 of ORT, relative to max |y|."""
    model, _ = matmul_nbits_model(rng, True, True)
    x = rng.standard_normal((5, K)).astype(np.float32)
    compiled = lowbit.compile(model)
    out, ref = compiled(x), run_ort(model, {"x": x})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-2
    assert compiled.manifest["layers"][0]["kernel"] in ("a8", "decode")


def dynamic_quantized_model(rng, weight_dtype=np.int8, weight_zero=None):
    """onnxruntime's dynamic quantization of one MatMul: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul."""
    low, high = (-128, 128) if weight_dtype == np.int8 else (0, 256)
    inits = [numpy_helper.from_array(rng.integers(low, high, (K, N)).astype(weight_dtype), "w_q"),
             numpy_helper.from_array(rng.uniform(0.001, 0.01, N).astype(np.float32), "w_scale")]
    inputs = ["x_q", "w_q", "x_zero"]
    if weight_zero is not None:
        inits.append(numpy_helper.from_array(np.asarray(weight_zero, weight_dtype), "w_zero"))
        inputs.append("w_zero")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zero"], name="dql"),
             helper.make_node("MatMulInteger", inputs, ["acc"], name="mmi"),
             helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["x_scale", "w_scale"], ["s"], name="scale_mul"),
             helper.make_node("Mul", ["acc_f", "s"], ["y"], name="out_mul")]
    return make_model(nodes, [tensor_in("x", ["M", K])], [tensor_in("y", None)], inits)


def _model_codes_kernel_here(model):
    from lowbit.compiler.linear import model_codes_kernel
    from lowbit.compiler.target import resolve_target

    weight = list(import_onnx(model).quantized.values())[0].weight
    return model_codes_kernel(weight, resolve_target(None), "auto")


@pytest.mark.parametrize("weight", ["int8", "uint8-zero"])
def test_auto_runs_the_models_own_activation_codes_exactly(rng, weight):
    """DynamicQuantizeLinear + MatMulInteger fixes the activation's rounding: ``auto`` runs the a8 kernel on the
    model's own uint8 codes, scale and zero point (its exact integer product: within float rounding of
    onnxruntime), where the host's a8 runs the weight; else the float-activation kernel (never a second rounding
    per group). ``--kernel decode`` keeps the float activation."""
    model = dynamic_quantized_model(rng, *((np.int8, None) if weight == "int8" else (np.uint8, 131)))
    assert list(import_onnx(model).quantized.values())[0].activation_quantized
    compiled = lowbit.compile(model)
    layer = compiled.manifest["layers"][0]
    if _model_codes_kernel_here(model):
        assert (layer["kernel"], layer["activation"]) == ("a8", "uint8")
    else:
        assert (layer["kernel"], layer["activation"]) == ("decode", "float32")
    decode = lowbit.compile(model, kernel="decode")
    assert (decode.manifest["layers"][0]["kernel"], decode.manifest["layers"][0]["activation"]) == \
        ("decode", "float32")
    for M in (1, 5, 40):
        x = rng.standard_normal((M, K)).astype(np.float32) * np.linspace(0.1, 3, K, dtype=np.float32)
        ref = run_ort(model, {"x": x})[0]
        for artifact in (compiled, decode):
            assert np.abs(artifact(x) - ref).max() / np.abs(ref).max() < 1e-5
    weight_only, _ = matmul_nbits_model(rng, True, True)
    assert not list(import_onnx(weight_only).quantized.values())[0].activation_quantized


def test_static_qdq_activation_codes_reach_the_kernel(rng):
    """Static QDQ (QuantizeLinear -> DequantizeLinear of the activation with constant int8 scale and zero point,
    per-channel int8 weights): the a8 kernel takes the int8 codes; matches onnxruntime within float rounding."""
    weight = rng.integers(-127, 128, (K, N)).astype(np.int8)
    inits = [numpy_helper.from_array(np.asarray(0.02, np.float32), "a_scale"),
             numpy_helper.from_array(np.asarray(-3, np.int8), "a_zero"),
             numpy_helper.from_array(weight, "w_q"),
             numpy_helper.from_array(rng.uniform(0.001, 0.01, N).astype(np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(N, np.int8), "w_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["x_q"], name="q"),
             helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zero"], ["x_dq"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=1, name="w_dq"),
             helper.make_node("MatMul", ["x_dq", "w"], ["y"], name="mm")]
    model = make_model(nodes, [tensor_in("x", ["M", K])], [tensor_in("y", None)], inits)
    compiled = lowbit.compile(model)
    layer = compiled.manifest["layers"][0]
    assert layer["activation"] == ("int8" if _model_codes_kernel_here(model) else "float32")
    x = rng.standard_normal((7, K)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    assert np.abs(compiled(x) - ref).max() / np.abs(ref).max() < 1e-5


def embedding_model(rng, vocab=10, width=K):
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    W = rng.standard_normal((width, N)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64, name="cast"),
             helper.make_node("Gather", ["table", "ids64"], ["h"], axis=0, name="embed"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="proj")]
    model = make_model(nodes, [tensor_in("ids", ["batch", "seq"], TensorProto.INT32)], [tensor_in("y", None)],
                       [numpy_helper.from_array(table, "table"), numpy_helper.from_array(W, "W")])
    return model, table, W


def test_gather_indices_past_the_table_are_refused_not_read(rng, tmp_path):
    """A token id past the vocabulary (or below -vocab) is an InputError before the call; TVM's Gather would read
    out of bounds (its ``fast`` take), so lowbit's take returns NaN rows for an index it did not check."""
    from lowbit.errors import InputError
    from lowbit.runtime import load

    model, table, W = embedding_model(rng)
    imported = import_onnx(model, format="w8g32")
    assert imported.inputs[0]["index_bound"] == 10
    assert 'mode="fast"' not in imported.mod.script() and 'mode="nan"' in imported.mod.script()
    compiled = lowbit.compile(model, format="w8g32")
    compiled.save(tmp_path / "m.lowbit")
    module = load(tmp_path / "m.lowbit")
    ids = np.array([[0, 9, -1, -10]], np.int32)
    ref = table[ids] @ W
    assert np.abs(module(ids=ids) - ref).max() <= 1e-2 * np.abs(ref).max()
    for bad in (10, -11, 2**31 - 1):
        with pytest.raises(InputError, match=r"indexes a table of 10 rows.*\[-10, 9\]"):
            module(ids=np.array([[1, bad]], np.int32))
