"""NaN in, NaN out: a NaN activation makes its output row NaN in every kernel family and M bucket (and leaves
the other rows as they were), and the graph's ReLU and Clip keep NaN as NumPy, torch and onnxruntime do."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.compiler import dispatch
from lowbit.compiler.formats import quantize
from lowbit.compiler.graph import Activation, Linear, Sequential
from lowbit.compiler.linear import build_linear
from lowbit.compiler.target import host_target
from lowbit.errors import KernelError

HOST = host_target()
N, K = 48, 256
ROWS = [b.lo for b in dispatch.DEFAULT_BUCKETS[:1]] + [4, 17, 40]  # one M per default bucket
CASES = [("decode", "w4g32"), ("decode", "nf4g64"), ("decode", "higgs3g64"), ("a8", "w4g32"), ("a8", "w8"),
         ("lut", "w2g64"), ("lut", "ternary"), ("lut", "higgs2g64")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{k}-{f}" for k, f in CASES])
def layer(request):
    kernel, name = request.param
    weight = np.random.default_rng(0).standard_normal((N, K)).astype(np.float32)
    try:
        return build_linear(quantize(weight, name), target=HOST, kernel=kernel)
    except KernelError as err:  # a family this host cannot run (a8 without integer dot products)
        pytest.skip(str(err))


@pytest.mark.parametrize("M", ROWS)
def test_a_nan_activation_makes_its_row_nan_and_leaves_the_others(layer, M):
    """Regression (a8): one NaN in a row gave finite garbage in that row (max |x| dropped the NaN)."""
    rng = np.random.default_rng(M)
    x = rng.standard_normal((M, K)).astype(np.float32)
    clean = layer.run(x)
    row, column = M // 2, int(rng.integers(K))
    x[row, column] = np.nan
    y = layer.run(x)
    assert np.isnan(y[row]).all(), f"row {row} has {np.isfinite(y[row]).sum()} finite outputs"
    others = np.arange(M) != row
    np.testing.assert_array_equal(y[others], clean[others])


def test_relu_keeps_nan():
    """Regression: ReLU lowered as max(x, 0) turned NaN into 0."""
    rng = np.random.default_rng(1)
    model = Sequential([Linear(rng.standard_normal((64, 64)).astype(np.float32), None, "fc1"), Activation("relu"),
                        Linear(rng.standard_normal((32, 64)).astype(np.float32), None, "fc2")])
    compiled = lowbit.compile(model, format="w4g32", kernel="decode")
    x = rng.standard_normal((3, 64)).astype(np.float32)
    x[1, 5] = np.nan
    y = compiled(x)
    assert np.isnan(y[1]).all()
    assert np.isfinite(y[[0, 2]]).all()


def test_onnx_relu_keeps_nan():
    codes = np.random.default_rng(2).integers(0, 256, (16, 8), dtype=np.uint8)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(np.full(8, 0.01, np.float32), "s"),
             numpy_helper.from_array(np.full(8, 128, np.uint8), "z")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w"],
                                                                      axis=1),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["M", n]) for name, n in (("y", 8), ("r", 16))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    x[0, 3] = np.nan
    y, relu = lowbit.compile(model, kernel="decode")(x)
    np.testing.assert_array_equal(relu, np.maximum(x, 0))  # NumPy's maximum keeps NaN; equal treats NaN == NaN
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


@pytest.mark.parametrize("bounds", [("lo", "hi"), ("lo", ""), ("", "hi"), ("nan", "hi")], ids=str)
def test_onnx_clip_keeps_nan_and_clamps_like_onnxruntime(bounds):
    """Regression: TVM imports Clip as max / min, which turned a NaN input into a clip bound."""
    import onnxruntime as ort

    inits = [numpy_helper.from_array(np.float32(-0.5), "lo"), numpy_helper.from_array(np.float32(0.25), "hi"),
             numpy_helper.from_array(np.float32(np.nan), "nan")]
    codes = np.random.default_rng(3).integers(0, 256, (16, 8), dtype=np.uint8)
    inits += [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(np.full(8, 0.01, np.float32), "s"),
              numpy_helper.from_array(np.full(8, 128, np.uint8), "z")]
    nodes = [helper.make_node("Clip", ["x", *bounds], ["c"], name="clip"),
             helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w"], axis=1),
             helper.make_node("MatMul", ["c", "w"], ["y"])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["M", n]) for name, n in (("y", 8), ("c", 16))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 10
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    x[0, 3] = np.nan
    _, clip = lowbit.compile(model, kernel="decode")(x)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["c"], {"x": x})
    np.testing.assert_array_equal(clip, expected[0])
    assert np.isnan(clip[0, 3])


def test_legalized_relu_and_clip_keep_nan_and_clamp_the_rest():
    """relax.clip (torch's clamp / hardtanh) and relax.nn.relu through lowbit's LegalizeOps."""
    from tvm import relax

    from lowbit.compiler.passes.keep_nan import LegalizeOps
    from lowbit.compiler.tvm_api import tvm

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 16), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.Tuple([relax.op.nn.relu(x), relax.op.clip(x, -0.5, 0.25)]))
        builder.emit_func_output(out)
    executable = tvm.compile(LegalizeOps()(builder.get()), target="llvm")
    machine = relax.VirtualMachine(executable, tvm.cpu())
    data = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    data[0, 3] = np.nan
    relu, clip = (t.numpy() for t in machine["main"](tvm.runtime.tensor(data)))
    np.testing.assert_array_equal(relu, np.maximum(data, 0))
    np.testing.assert_array_equal(clip, np.clip(data, -0.5, 0.25))
    assert np.isnan(relu[0, 3]) and np.isnan(clip[0, 3])
