"""The onnx package's backend node test cases for the quantization operators, run through lowbit.

``onnx.backend.test.case.node.collect_testcases()`` generates each case's model and expected outputs (onnx
1.23 ships no data files). Every case of ``DequantizeLinear``, ``QuantizeLinear``, ``MatMulInteger``,
``QLinearMatMul`` and ``DynamicQuantizeLinear`` goes through lowbit's ONNX frontend and pipeline
(``import_onnx`` + ``run_relax_pipeline``), as written (every operand a graph input) and, for the two matmuls,
with the weight operands as initializers (the form lowbit turns into its kernels). Outputs must equal the
expected ones exactly (integer outputs; float outputs to 1e-6 relative, the rounding of one float32 op).

Each case either passes or is refused with a ModelError before anything runs; never a wrong answer. Which
cases are refused, and why, is listed in ``REFUSED`` (and in docs/design.md, "ONNX node test cases").
"""
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lowbit.api import CompiledModel, _imported_manifest
from lowbit.compiler.pipeline import run_relax_pipeline
from lowbit.compiler.target import resolve_target
from lowbit.errors import ModelError
from lowbit.frontends.onnx import import_onnx

OPS = ("DequantizeLinear", "QuantizeLinear", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear")
WEIGHT_OPERANDS = {"B", "b", "b_scale", "b_zero_point"}
TVM_TYPES = "TVM's importer has no float8 / 2-bit / 4-bit / float4 (de)quantization"
REFUSED = {  # case name -> why lowbit refuses it (a ModelError)
    **{f"test_dequantizelinear_{kind}": TVM_TYPES for kind in
       ("e4m3fn", "e4m3fn_float16", "e4m3fn_zero_point", "e5m2", "uint4", "int4", "uint2", "int2", "float4e2m1")},
    **{f"test_quantizelinear_{kind}": TVM_TYPES for kind in
       ("e4m3fn", "e5m2", "uint4", "int4", "uint2", "int2", "float4e2m1")},
    "test_dequantizelinear_blocked": "blocked DequantizeLinear is read only as a MatMul / Gemm weight",
    "test_quantizelinear_blocked_asymmetric": "TVM's importer has no blocked QuantizeLinear",
    "test_quantizelinear_blocked_symmetric": "TVM's importer has no blocked QuantizeLinear",
    **{f"test_qlinearmatmul_{shape}_{types}": "3-D (batched) weights are not linear layers"
       for shape in ("3D",) for types in ("uint8_float32", "uint8_float16", "int8_float32", "int8_float16")},
    **{f"test_qlinearmatmul_2D_{types}": "float16 activations: lowbit kernels take float32"
       for types in ("uint8_float16", "int8_float16")},
}
# QLinearMatMul with a runtime weight (as written): TVM's importer lacks QLinearMatMul, lowbit needs a constant
RUNTIME_WEIGHT_REFUSED = "QLinearMatMul with a weight computed at run time (TVM's importer lacks the operator)"


def quantization_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return [case for case in cases if any(node.op_type in OPS for node in case.model.graph.node)]


CASES = quantization_cases()


def with_constant_weights(case):
    """The case's model with its weight operands as initializers, and the remaining inputs' values."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, kept, feeds = case.data_sets[0][0], [], []
    for value, array in zip(case.model.graph.input, inputs):
        if value.name in WEIGHT_OPERANDS:
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), value.name))
        else:
            kept.append(value)
            feeds.append(array)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, feeds


def run_through_lowbit(model, feeds):
    target = resolve_target("cpu")
    imported = import_onnx(model)
    compiled = run_relax_pipeline(imported, target, kernel="decode")
    outputs = CompiledModel(compiled, target, _imported_manifest(imported, compiled, target, "onnx"))(*feeds)
    return outputs if isinstance(outputs, tuple) else (outputs,)


def variants(case):
    op = case.model.graph.node[0].op_type
    yield "as-written", case.model, list(case.data_sets[0][0])
    if op in ("MatMulInteger", "QLinearMatMul"):
        yield "constant-weight", *with_constant_weights(case)


def assert_outputs_equal(outputs, expected):
    for ours, theirs in zip(outputs, expected):
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        if theirs.dtype.kind == "f":
            np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)
        else:
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_quantization_node_case(case):
    passed = []
    for label, model, feeds in variants(case):
        refused = REFUSED.get(case.name) or (RUNTIME_WEIGHT_REFUSED if label == "as-written" and
                                             case.model.graph.node[0].op_type == "QLinearMatMul" else None)
        if refused:
            with pytest.raises(ModelError):
                run_through_lowbit(model, feeds)
            continue
        assert_outputs_equal(run_through_lowbit(model, feeds), case.data_sets[0][1])
        passed.append(label)
    assert bool(passed) == (case.name not in REFUSED)


def test_count_of_cases():
    """onnx 1.23 generates 42 cases: 17 pass (all 6 DynamicQuantizeLinear, MatMulInteger, 8 of the 8/16-bit
    (de)quantizations, the 2 float32 QLinearMatMul with a 2-D constant weight), 25 are refused with a reason."""
    names = [case.name for case in CASES]
    assert len(names) == 42 and set(REFUSED) <= set(names)
    assert len(names) - len(REFUSED) == 17
