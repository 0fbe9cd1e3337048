"""Recognise the quantized-weight patterns of an ONNX graph; each becomes one lowbit linear layer.

A matcher looks at one node and returns a :class:`Match` (or None: not its pattern). It reads the graph
through :class:`OnnxGraph` and never edits it; the frontend applies the matches. Patterns:

- ``qdq``: ``DequantizeLinear`` of a constant int8/uint8/int4/uint4 weight (per tensor, per axis, or blocked)
  feeding ``MatMul`` (weight (K, N), optionally through ``Transpose``) or ``Gemm`` (``transB``, ``alpha``,
  ``beta``, bias ``C``).
- ``matmulnbits``: ``com.microsoft.MatMulNBits`` (2/4/8 bits, blocks along K, optional zero points and bias).
- ``matmulinteger``: ``MatMulInteger`` of a ``DynamicQuantizeLinear`` activation and a constant 8-bit weight,
  then ``Cast`` to float and ``Mul`` by the activation scale and constant weight scales. The activation keeps
  its exact quantization: it becomes ``DequantizeLinear(DynamicQuantizeLinear(x))`` in float.
- ``qlinearmatmul``: ``QLinearMatMul`` with a constant 8-bit weight: ``DequantizeLinear`` of the activation,
  the lowbit layer, ``QuantizeLinear`` of the result.
- ``float``: with a format, ``MatMul`` / ``Gemm`` of a constant float weight, quantized with lowbit's RTN; or
  given precomputed weights (``frontends/onnx_quantize.py``: GPTQ), the layers they name.
"""
import dataclasses
import warnings
from typing import Optional

import numpy as np
from onnx import helper, numpy_helper

from lowbit.errors import FormatError, ModelError, WeightError
from lowbit.frontends.onnx_graph import attribute, float_array, input_at, node_label
from lowbit.frontends.onnx_weights import INTEGER_TYPES, decode_linear_quantized, decode_matmul_nbits


@dataclasses.dataclass
class Match:
    """One recognised quantized linear layer and how to rewrite it.

    The rewrite computes ``linear_output = MatMul(activation, W) (+ bias)`` with ``W`` the dequantized
    ``weight`` (N, K) transposed, after the ``pre`` nodes (activation side) and before the ``post`` nodes, which
    turn ``linear_output`` into ``output``. The nodes in ``replaced`` are deleted (the last of them, in graph
    order, is where the new nodes go); what else becomes unused is deleted by dead-code elimination.
    """

    node: object
    pattern: str
    activation: str
    weight: object
    output: str
    replaced: list
    bias: Optional[str] = None
    pre: list = dataclasses.field(default_factory=list)
    post: list = dataclasses.field(default_factory=list)
    initializers: list = dataclasses.field(default_factory=list)
    linear_output: Optional[str] = None

    def __post_init__(self):
        if self.linear_output is None:
            self.linear_output = self.output


def _dequantized_weight(graph, consumer, name, k_axis):
    """The QuantizedWeight behind float tensor ``name`` if a DequantizeLinear of constants makes it."""
    node = graph.producer.get(name)
    if node is not None and node.op_type == "Transpose" and list(attribute(node, "perm", [1, 0])) == [1, 0]:
        return _dequantized_weight(graph, consumer, node.input[0], 1 - k_axis)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in graph.constants:
        return None
    where = f"node {node_label(node)} (weight {node.input[0]!r})"
    codes = graph.require(node.input[0], node, "weight")
    if codes.dtype.name not in INTEGER_TYPES:
        warnings.warn(f"{where}: {codes.dtype} weights have no lowbit format (int8/uint8/int4/uint4/int2/uint2): "
                      f"{consumer.name!r} runs as a float matmul of the dequantized weight", stacklevel=2)
        return None
    scale = graph.require(node.input[1], node, "scale")
    zero_name = input_at(node, 2)
    zero = None if zero_name is None else graph.require(zero_name, node, "zero point")
    return decode_linear_quantized(where, codes, float_array(scale, node, "scale"), zero, k_axis,
                                   attribute(node, "axis", 1), attribute(node, "block_size", 0))


def _float_weight(fmt):
    """A weight resolver that quantizes a constant 2-D float weight to ``fmt`` with lowbit's RTN."""
    from lowbit.compiler.formats import quantize

    def resolve(graph, node, name, k_axis):
        value = graph.array(name, node, "weight")
        if value is None or np.ndim(value) != 2 or not np.issubdtype(value.dtype, np.floating):
            return None
        weight = value.T if k_axis == 0 else value
        try:
            return quantize(weight.astype(np.float32), fmt)
        except (FormatError, WeightError) as err:
            raise ModelError(f"node {node_label(node)} (weight {name!r}, N x K = {weight.shape}): {err}") from err

    return resolve


def match_matmul(graph, node, resolve):
    """``MatMul(x, W)`` whose constant weight ``resolve`` turns into a QuantizedWeight."""
    weight = resolve(graph, node, node.input[1], 0)
    if weight is None:
        return None
    return Match(node, "", node.input[0], weight, node.output[0], [node])


def match_gemm(graph, node, resolve):
    """``Gemm(A, B, C)``: ``alpha`` folds into the scales, ``beta * C`` becomes the bias, ``transA`` a Transpose."""
    weight = resolve(graph, node, node.input[1], attribute(node, "transB", 0))
    if weight is None:
        return None
    alpha = float(attribute(node, "alpha", 1.0))
    if alpha != 1.0:
        weight = dataclasses.replace(weight, scales=weight.scales * np.float32(alpha))
    match = Match(node, "", node.input[0], weight, node.output[0], [node])
    if attribute(node, "transA", 0):
        match.activation = f"{node.name}/lowbit_transA"
        match.pre.append(helper.make_node("Transpose", [node.input[0]], [match.activation], perm=[1, 0],
                                          name=f"{node.name}/lowbit_transpose"))
    _gemm_bias(graph, node, match)
    return match


def _gemm_bias(graph, node, match):
    bias_name, beta = input_at(node, 2), float(attribute(node, "beta", 1.0))
    if bias_name is None or beta == 0.0:
        return
    value = graph.array(bias_name, node, "bias C")
    if beta == 1.0:
        match.bias = bias_name
    elif value is not None:
        match.bias = f"{node.name}/lowbit_bias"
        scaled = (float_array(value, node, "bias C") * np.float32(beta)).astype(np.float32)
        match.initializers.append(numpy_helper.from_array(scaled, match.bias))
    else:
        beta_name, match.bias = f"{node.name}/lowbit_beta", f"{node.name}/lowbit_scaled_bias"
        match.initializers.append(numpy_helper.from_array(np.array(beta, np.float32), beta_name))
        match.pre.append(helper.make_node("Mul", [bias_name, beta_name], [match.bias], name=f"{node.name}/lowbit_beta"))


def match_matmul_nbits(graph, node):
    """``com.microsoft.MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?)``."""
    where = f"node {node_label(node)}"
    K, N = attribute(node, "K"), attribute(node, "N")
    bits, block_size = attribute(node, "bits", 4), attribute(node, "block_size")
    if K is None or N is None or block_size is None:
        raise ModelError(f"{where}: the attributes K, N and block_size are required")
    g_idx_name = input_at(node, 4)
    if g_idx_name is not None:
        g_idx = graph.require(g_idx_name, node, "g_idx")
        if not np.array_equal(np.asarray(g_idx).reshape(-1), np.arange(K) // block_size):
            raise ModelError(f"{where}: g_idx {g_idx_name!r} reorders K (act-order GPTQ): not supported yet; "
                             "export the model without act-order (desc_act=False)")
    zero_name = input_at(node, 3)
    weight = decode_matmul_nbits(where, graph.require(node.input[1], node, "B"),
                                 graph.require(node.input[2], node, "scales"),
                                 None if zero_name is None else graph.require(zero_name, node, "zero_points"),
                                 N, K, bits, block_size)
    return Match(node, "matmulnbits", node.input[0], weight, node.output[0], [node], bias=input_at(node, 5))


def match_qlinear_matmul(graph, node):
    """``QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)`` with a constant weight ``b``."""
    if node.input[3] not in graph.constants:
        return None
    where = f"node {node_label(node)} (weight {node.input[3]!r})"
    weight = decode_linear_quantized(where, graph.require(node.input[3], node, "weight b"),
                                     float_array(graph.require(node.input[4], node, "b_scale"), node, "b_scale"),
                                     graph.require(node.input[5], node, "b_zero_point"), k_axis=0, axis=1)
    activation, linear = f"{node.name}/lowbit_a", f"{node.name}/lowbit_y"
    pre = [helper.make_node("DequantizeLinear", list(node.input[0:3]), [activation], name=f"{node.name}/lowbit_dq")]
    post = [helper.make_node("QuantizeLinear", [linear, node.input[6], node.input[7]], [node.output[0]],
                             name=f"{node.name}/lowbit_q")]
    return Match(node, "qlinearmatmul", activation, weight, node.output[0], [node], pre=pre, post=post,
                 linear_output=linear)


def match_matmul_integer(graph, node):
    """``MatMulInteger(DynamicQuantizeLinear(x), Wq) -> Cast(float) -> Mul(scales)...`` (onnxruntime's dynamic
    quantization). Falls back (None, with a warning) when the chain around it is not that shape."""
    chain = _integer_chain(graph, node)
    if chain is None:
        warnings.warn(f"MatMulInteger {node.name!r} does not match DynamicQuantizeLinear -> MatMulInteger -> "
                      "Cast -> Mul(scales): it runs as TVM's integer matmul, not a lowbit kernel", stacklevel=2)
        return None
    dql, replaced, constant_scale = chain
    where = f"node {node_label(node)} (weight {node.input[1]!r})"
    zero_name = input_at(node, 3)
    zero = None if zero_name is None else graph.require(zero_name, node, "b_zero_point")
    weight = decode_linear_quantized(where, graph.require(node.input[1], node, "weight B"), constant_scale, zero,
                                     k_axis=0, axis=1)
    activation = f"{node.name}/lowbit_a"
    pre = [helper.make_node("DequantizeLinear", list(dql.output), [activation], name=f"{node.name}/lowbit_dq")]
    return Match(node, "matmulinteger", activation, weight, replaced[-1].output[0], replaced, pre=pre)


def _integer_chain(graph, node):
    """(DynamicQuantizeLinear node, replaced nodes, constant weight scale) or None."""
    dql = graph.producer.get(node.input[0])
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or node.input[0] != dql.output[0]:
        return None
    if input_at(node, 2) != dql.output[2] or node.input[1] not in graph.constants:
        return None
    cast = graph.single_consumer(node.output[0])
    if cast is None or cast.op_type != "Cast" or attribute(cast, "to") != 1:  # 1: TensorProto.FLOAT
        return None
    replaced, current, leaves = [node, cast], cast.output[0], []
    while (mul := graph.single_consumer(current)) is not None and mul.op_type == "Mul":
        other = mul.input[1] if mul.input[0] == current else mul.input[0]
        factors = _scale_factors(graph, other, dql)
        if factors is None:
            break
        leaves += factors
        replaced.append(mul)
        current = mul.output[0]
    if leaves.count(dql.output[1]) != 1:
        return None
    constants = [graph.array(name, node, "scale") for name in leaves if name != dql.output[1]]
    scale = np.float32(1.0)
    for value in constants:
        scale = scale * float_array(value, node, "weight scale").reshape(-1)
    return dql, replaced, np.asarray(scale, np.float32).reshape(-1) if np.size(scale) > 1 else np.asarray(scale)


def _scale_factors(graph, name, dql):
    """Leaves of a product of scales: constants and the activation scale of ``dql`` (None if not one)."""
    if name in graph.constants or name == dql.output[1]:
        return [name]
    producer = graph.producer.get(name)
    if producer is None or producer.op_type != "Mul":
        return None
    left, right = (_scale_factors(graph, operand, dql) for operand in producer.input)
    return None if left is None or right is None else left + right


def _precomputed_weight(weights):
    """A weight resolver that returns the QuantizedWeight already computed for the node (GPTQ, by node name)."""

    def resolve(graph, node, name, k_axis):
        value = graph.array(name, node, "weight")
        if value is None or np.ndim(value) != 2 or not np.issubdtype(value.dtype, np.floating):
            return None
        return weights.get(node.name)

    return resolve


def find_matches(graph, fmt=None, weights=None):
    """Every quantized linear layer of ``graph``; with ``fmt``, every constant float MatMul / Gemm too (RTN),
    and with ``weights`` (node name -> QuantizedWeight, e.g. from GPTQ) the float layers it names."""
    if fmt is not None and weights is not None:
        raise ModelError("pass either a format (lowbit quantizes float weights) or precomputed weights, not both")
    float_resolver = _float_weight(fmt) if fmt is not None else None
    if weights is not None:
        float_resolver = _precomputed_weight(weights)
    matches = []
    for node in graph.nodes:
        match = _match_node(graph, node, float_resolver)
        if match is not None:
            matches.append(match)
    return matches


def _match_node(graph, node, float_resolver):
    if node.op_type in ("MatMul", "Gemm"):
        matcher = match_matmul if node.op_type == "MatMul" else match_gemm
        match = matcher(graph, node, _dequantized_weight)
        if match is not None:
            match.pattern = "qdq"
        elif float_resolver is not None:
            match = matcher(graph, node, float_resolver)
            if match is not None:
                match.pattern = "float"
        return match
    if node.op_type == "MatMulNBits":
        return match_matmul_nbits(graph, node)
    if node.op_type == "QLinearMatMul":
        return match_qlinear_matmul(graph, node)
    if node.op_type == "MatMulInteger":
        return match_matmul_integer(graph, node)
    return None

