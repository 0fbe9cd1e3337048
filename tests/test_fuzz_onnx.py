"""Odd and hostile ONNX files: symbolic and unnamed dims, a newer opset, and seeded fuzz over file bytes and
graph fields; each compiles and runs right, or is refused with ModelError (or another LowbitError), never a raw
exception from TVM's importer or a compiled artifact that fails inside TVM."""
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.errors import InputError, LowbitError

K, N = 16, 8
# onnx.checker (run by TVM's importer) complains about outputs declared without a shape; they are valid for both
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


def _model(shape, opset=19, extra_outputs=()):
    codes = np.random.default_rng(2).integers(0, 256, (K, N), dtype=np.uint8)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(np.full(N, 0.01, np.float32), "s"),
             numpy_helper.from_array(np.full(N, 128, np.uint8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w"], axis=1, name="dq"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _reference(x):
    codes = np.random.default_rng(2).integers(0, 256, (K, N), dtype=np.uint8)
    return x.astype(np.float64) @ ((codes.astype(np.float64) - 128) * np.float32(0.01))


@pytest.mark.parametrize("shape", [["M", "K"], ["M", None], ["batch", "seq", "hidden"]], ids=str)
def test_a_symbolic_k_is_pinned_to_the_weights_k(shape):
    """Regression: a symbolic K compiled, and the artifact took any K and failed inside TVM (Mismatched X.strides)."""
    compiled = lowbit.compile(_model(shape), kernel="decode")
    assert compiled.manifest["inputs"][0]["shape"][-1] == K
    x = np.random.default_rng(0).standard_normal([2] * (len(shape) - 1) + [K]).astype(np.float32)
    np.testing.assert_allclose(compiled(x), _reference(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match=f"axis {len(shape) - 1} is {K + 1}, must be {K}"):
        compiled(np.ones([2] * (len(shape) - 1) + [K + 1], np.float32))


def test_unnamed_dims_get_names_of_their_own():
    """Regression: dims with neither value nor name shared one TVM variable, so (2, 16) failed as not square."""
    compiled = lowbit.compile(_model([None, None, None]), kernel="decode")
    assert compiled.manifest["inputs"][0]["shape"] == ["x_dim0", "x_dim1", K]
    x = np.random.default_rng(1).standard_normal((3, 5, K)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), _reference(x), rtol=1e-4, atol=1e-4)


def test_a_constant_k_other_than_the_weights_is_a_model_error():
    model = _model(["M", K + 4])
    with pytest.raises(LowbitError):
        lowbit.compile(model, kernel="decode")


def test_an_opset_newer_than_the_importer_knows_warns():
    from lowbit.compiler.tvm_api import onnx_importer_opset

    newer = onnx_importer_opset() + 1
    with pytest.warns(UserWarning, match=f"opset {newer} is newer than TVM's importer knows"):
        try:
            lowbit.compile(_model(["M", K], opset=newer), kernel="decode")
        except LowbitError:
            pass  # whether it then compiles is the importer's; the warning is the point


def _compile_or_refuse(data, tmp_path, index):
    path = tmp_path / f"m{index}.onnx"
    path.write_bytes(data)
    try:
        compiled = lowbit.compile(str(path), kernel="decode")
    except LowbitError:
        return "refused"
    spec = compiled.manifest["inputs"][0]
    shape = [2 if isinstance(d, str) else d for d in spec["shape"]]
    try:
        compiled(np.ones(shape, np.dtype(spec["dtype"])))
    except LowbitError:
        return "refused-input"
    return "ran"


def test_random_byte_changes_in_an_onnx_file_are_model_errors_or_compile(tmp_path):
    """Seeded fuzz: 25 files with a few bytes changed, truncated or extended: ModelError or a working artifact."""
    data = _model(["M", K]).SerializeToString()
    rng = np.random.default_rng(3)
    outcomes = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index in range(25):
            mutated = bytearray(data)
            kind = index % 3
            if kind == 0:
                for _ in range(3):
                    mutated[int(rng.integers(len(mutated)))] = int(rng.integers(256))
            elif kind == 1:
                mutated = mutated[:int(rng.integers(1, len(mutated)))]
            else:
                mutated += bytes(rng.integers(0, 256, 16, dtype=np.uint8))
            outcome = _compile_or_refuse(bytes(mutated), tmp_path, index)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("refused", 0) >= 5, outcomes


GRAPH_EDITS = {
    "input-rank-0": lambda m: m.graph.input[0].type.tensor_type.shape.ClearField("dim"),
    "input-no-shape": lambda m: m.graph.input[0].type.tensor_type.ClearField("shape"),
    "input-int64": lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", TensorProto.INT64),
    "scale-length": lambda m: m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), "s")),
    "zero-dtype": lambda m: m.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.ones(N, np.float64), "z")),
    "axis-huge": lambda m: m.graph.node[0].attribute[0].CopyFrom(helper.make_attribute("axis", 1 << 40)),
    "dangling-input": lambda m: m.graph.node[1].input.__setitem__(1, "missing"),
    "unknown-op": lambda m: setattr(m.graph.node[1], "op_type", "NoSuchOp"),
    "no-nodes": lambda m: m.graph.ClearField("node"),
    "cyclic": lambda m: m.graph.node[0].input.__setitem__(0, "y"),
    "empty-weight": lambda m: m.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.zeros((0, N), np.uint8), "w_q")),
}


@pytest.mark.parametrize("edit", GRAPH_EDITS.values(), ids=GRAPH_EDITS.keys())
def test_malformed_graphs_are_refused_with_a_lowbit_error(tmp_path, edit):
    model = _model(["M", K])
    edit(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = _compile_or_refuse(model.SerializeToString(), tmp_path, 0)
    assert outcome == "refused"
