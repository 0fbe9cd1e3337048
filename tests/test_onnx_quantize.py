"""Float ONNX models quantized by lowbit (``quantize_model``, ``lowbit quantize``, ``compile --format``), run by
onnxruntime and compiled back by lowbit.

Models are built here with ``onnx.helper`` from seeded random weights. onnxruntime runs with graph
optimizations off. Reference: the same graph in NumPy (float64) with lowbit's dequantized weights
(``QuantizedWeight.dequantize()``, the truth every kernel is tested against).

Tolerance (derived): onnxruntime computes each output as a float32 sum of K products of float32 values, so
its error against float64 is at most ``gamma_K * sum_k |x_k| |w_k|`` with ``gamma_K = K * eps32 / (1 - K *
eps32)`` (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), plus one rounding of the product
(``eps32 |y|``). Through the second layer, the first layer's error is carried by ``|W2|`` (ReLU is
1-Lipschitz). A wrong integer (a code off by one) moves an output by ``scale * |x|``, far above this.
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
from lowbit.errors import ModelError
from lowbit.frontends.onnx import import_onnx
from lowbit.frontends.onnx_quantize import quantize_onnx, quantize_onnx_layers

EPS32 = float(np.finfo(np.float32).eps)
K, H, N = 64, 96, 40
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


def float_mlp(rng, opset=17):
    """x (M, K) -> MatMul fc1 (K, H) -> Relu -> Gemm fc2 (transB, bias) -> y (M, N)."""
    w1 = rng.standard_normal((K, H)).astype(np.float32)
    w2 = (rng.standard_normal((N, H)) / np.sqrt(H)).astype(np.float32)
    b2 = rng.standard_normal(N).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # onnxruntime reads IR <= 10
    return model, b2


def run_ort(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def gamma(K):
    return K * EPS32 / (1 - K * EPS32)


def reference_and_bound(x, w1, w2, b2):
    """(float64 reference, error bound of a float32 evaluation): module docstring."""
    x = x.astype(np.float64)
    h = x @ w1.T
    err_h = gamma(K) * np.abs(x) @ np.abs(w1).T + EPS32 * np.abs(h)
    r = np.maximum(h, 0)
    y = r @ w2.T + b2
    err_y = err_h @ np.abs(w2).T + gamma(H + 1) * (np.abs(r) @ np.abs(w2).T + np.abs(b2)) + EPS32 * np.abs(y)
    return y, err_y


@pytest.fixture()
def rng():
    return np.random.default_rng(2026)


@pytest.mark.parametrize("fmt, style", [("w4g32", "qdq"), ("w8", "qdq"), ("w4g16s", "qdq"), ("ternaryg32", "qdq"),
                                        ("w4g32", "matmulnbits"), ("w8g16s", "matmulnbits")])
def test_quantized_model_runs_in_onnxruntime_as_lowbit_dequantized(rng, fmt, style):
    model, b2 = float_mlp(rng)
    _, _, weights, _ = quantize_onnx_layers(model, lowbit.parse_format(fmt))
    quantized = quantize_onnx(model, lowbit.parse_format(fmt), style=style)
    ops = {node.op_type for node in quantized.graph.node}
    assert ("MatMulNBits" if style == "matmulnbits" else "DequantizeLinear") in ops
    x = rng.standard_normal((5, K)).astype(np.float32)
    reference, bound = reference_and_bound(x, weights["fc1"].dequantize(), weights["fc2"].dequantize(), b2)
    err = np.abs(run_ort(quantized, {"x": x}) - reference)
    assert (err <= bound).all(), f"max err {err.max():.3e}"
    # compiled back by lowbit: the very same integers, scales and zero points
    for spec, name in zip(import_onnx(quantized).quantized.values(), ["fc1", "fc2"]):
        for field in ("codes", "scales"):
            np.testing.assert_array_equal(getattr(spec.weight, field), getattr(weights[name], field))
        np.testing.assert_array_equal(spec.weight.affine_zeros(), weights[name].affine_zeros())
        if fmt in ("w4g32", "w8", "w4g16s", "w8g16s"):  # a format ONNX stores at its own width
            assert spec.weight.format == weights[name].format


def test_quantize_model_on_a_path_returns_qdq_that_lowbit_compiles(rng, tmp_path):
    model, _ = float_mlp(rng)
    path = tmp_path / "float.onnx"
    onnx.save(model, path)
    quantized = lowbit.quantize_model(str(path), formats="w4g32")
    assert isinstance(quantized, onnx.ModelProto)
    assert not {"w1", "w2"} & {tensor.name for tensor in quantized.graph.initializer}  # float weights gone
    x = rng.standard_normal((3, K)).astype(np.float32)
    ours, theirs = lowbit.compile(quantized, kernel="decode")(x), run_ort(quantized, {"x": x})
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_codebook_formats_cannot_be_written_as_onnx(rng):
    model, _ = float_mlp(rng)
    with pytest.raises(ModelError, match="nf4g32 is a codebook format"):
        lowbit.quantize_model(model, formats="nf4g32")


def test_matmulnbits_needs_power_of_two_blocks(rng):
    model, _ = float_mlp(rng)
    with pytest.raises(ModelError, match="power-of-two block size"):
        quantize_onnx(model, lowbit.parse_format("w4"), style="matmulnbits")


def correlated_inputs(rng):
    """Sampler of correlated (non-white) model inputs: white noise through a fixed random mixing matrix."""
    mixing = rng.standard_normal((K, K)) * np.exp(rng.uniform(-2, 1, K))[:, None] / np.sqrt(K)
    return lambda rows: (rng.standard_normal((rows, K)) @ mixing).astype(np.float32)


def test_gptq_with_onnxruntime_calibration_beats_rtn(rng):
    model, _ = float_mlp(rng)
    sample = correlated_inputs(rng)
    calibration = [{"x": sample(128)} for _ in range(3)]
    held_out = {"x": sample(512)}
    exact = run_ort(model, held_out)
    errors = {}
    for method in ("rtn", "gptq"):
        quantized = lowbit.quantize_model(model, formats="w3g32", method=method,
                                          calibration=calibration if method == "gptq" else None)
        errors[method] = np.linalg.norm(run_ort(quantized, held_out) - exact)
    assert errors["gptq"] < 0.8 * errors["rtn"], errors  # see tests/test_gptq.py for the margin


def test_calibration_batches_must_name_the_inputs(rng):
    model, _ = float_mlp(rng)
    with pytest.raises(ModelError, match=r"lacks model inputs \['x'\]"):
        lowbit.quantize_model(model, formats="w4g32", method="gptq", calibration={"z": np.zeros((1, K))})


def lowbit_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lowbit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def gptq_cli(rng, tmp_path, command, *options):
    """Save a float MLP and correlated calibration inputs, run ``lowbit COMMAND`` on them with GPTQ w4g32."""
    model, b2 = float_mlp(rng)
    onnx.save(model, tmp_path / "float.onnx")
    calibration = correlated_inputs(rng)(256)
    np.savez(tmp_path / "calib.npz", x=calibration)
    done = lowbit_cli(command, "float.onnx", "--format", "w4g32", "--method", "gptq", "--calibration", "calib.npz",
                      *options, cwd=tmp_path)
    return model, b2, calibration, done


def test_cli_quantize_gptq_writes_what_the_python_api_computes(rng, tmp_path):
    model, _, calibration, done = gptq_cli(rng, tmp_path, "quantize", "--style", "matmulnbits", "-o", "q.onnx")
    assert done.returncode == 0, done.stderr
    assert "2 layers quantized to w4g32 (gptq, matmulnbits)" in done.stdout
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "q.onnx").graph.initializer}
    expected = quantize_onnx(model, lowbit.parse_format("w4g32"), "gptq", {"x": calibration}, style="matmulnbits")
    assert sorted(written) == sorted(t.name for t in expected.graph.initializer)
    for tensor in expected.graph.initializer:
        np.testing.assert_array_equal(written[tensor.name], numpy_helper.to_array(tensor))
    x = rng.standard_normal((4, K)).astype(np.float32)
    assert run_ort(onnx.load(tmp_path / "q.onnx"), {"x": x}).shape == (4, N)


def test_cli_compile_float_model_with_gptq_and_dump_ir(rng, tmp_path):
    model, b2, calibration, done = gptq_cli(rng, tmp_path, "compile", "--kernel", "decode", "--dump-ir", "ir",
                                            "-o", "m.lowbit")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "ir")) == ["0-import.txt", "1-lower-tir", "1-lower.txt", "2-float-ops-tir",
                                                   "2-float-ops.txt", "3-build.txt"]
    kernels = set(os.listdir(tmp_path / "ir" / "1-lower-tir"))  # per layer: dispatcher + one per M bucket
    assert {f"layer{i}_mpgemm{suffix}.txt" for i in (0, 1) for suffix in ("", "_m1", "_m2_8")} <= kernels
    assert "T.prim_func" in (tmp_path / "ir" / "1-lower-tir" / "layer0_mpgemm_m1.txt").read_text()
    assert "lowbit_w0" in (tmp_path / "ir" / "0-import.txt").read_text()
    assert "lowbit_w0" not in (tmp_path / "ir" / "1-lower.txt").read_text()
    # the artifact holds GPTQ's integers: same output as compiling the GPTQ-quantized model in process
    _, _, weights, _ = quantize_onnx_layers(model, lowbit.parse_format("w4g32"), "gptq", {"x": calibration})
    x = rng.standard_normal((3, K)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = lowbit_cli("run", "m.lowbit", "--input", "x=x.npy", "--output", "out.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    reference, bound = reference_and_bound(x, weights["fc1"].dequantize(), weights["fc2"].dequantize(), b2)
    err = np.abs(np.load(tmp_path / "out.npz")["y"] - reference)
    assert (err <= 2 * bound).all(), f"max err {err.max():.3e}"  # lowbit's sums in another order: twice ORT's bound


def test_cli_method_without_format_is_an_error(rng, tmp_path):
    model, _ = float_mlp(rng)
    onnx.save(model, tmp_path / "float.onnx")
    done = lowbit_cli("compile", "float.onnx", "--method", "gptq", "-o", "m.lowbit", cwd=tmp_path)
    assert done.returncode == 1 and "add --format NAME" in done.stderr
    assert not (tmp_path / "m.lowbit").exists()


def test_cli_quantize_failure_writes_nothing(rng, tmp_path):
    model, _ = float_mlp(rng)
    onnx.save(model, tmp_path / "float.onnx")
    done = lowbit_cli("quantize", "float.onnx", "--format", "nf4g32", "-o", "q.onnx", cwd=tmp_path)
    assert done.returncode == 1 and "nf4g32 is a codebook format" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["float.onnx"]


def test_gptq_reads_the_rows_of_a_gemm_with_trans_a(rng):
    """Gemm transA=1: the layer's input rows are the columns of the graph tensor (Hessian from A^T)."""
    weight = rng.standard_normal((K, N)).astype(np.float32)
    node = helper.make_node("Gemm", ["a", "w"], ["y"], transA=1, name="gemm")
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [K, "M"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    rows = correlated_inputs(rng)(300)
    _, _, weights, _ = quantize_onnx_layers(model, lowbit.parse_format("w4g32"), "gptq", {"a": rows.T})
    from lowbit.compiler.gptq import gptq_quantize, hessian

    expected = gptq_quantize(weight.T, hessian([rows], K)[0], "w4g32")
    np.testing.assert_array_equal(weights["gemm"].codes, expected.codes)
