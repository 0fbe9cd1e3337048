"""Write lowbit-quantized weights into an ONNX model, so that onnxruntime (or any ONNX runtime) can run it.

Takes a float ONNX model, its float layers (``onnx_quantize.FloatLayer``) and their QuantizedWeights; produces
the model with each layer's float weight replaced by its exact integers, in one of two styles:

- ``qdq``: ``DequantizeLinear(codes, scale, zero_point)`` feeding the unchanged ``MatMul`` / ``Gemm`` (opset 21:
  ``block_size`` along K for grouped formats, per-axis scales for per-channel ones). Codes of up to 4 bits are
  stored as ``uint4``, wider ones as ``uint8``; zero points are always stored (symmetric formats store
  ``2**(bits-1)``, ternary stores 1). Models below opset 21 are converted by ``onnx.version_converter``.
- ``matmulnbits``: each layer becomes ``com.microsoft.MatMulNBits`` (2, 4 or 8 bits, power-of-two blocks of at
  least 16 along K), the layout ``onnx_weights.decode_matmul_nbits`` reads.

Codebook formats (NF4, FP4, user levels) have no ONNX equivalent: an error. Re-importing the result with
lowbit's ONNX frontend gives back the same codes, scales and zero points (2- and 3-bit codes come back as a
4-bit format when stored as ``uint4``: the integers are the same, the kernel reads 4 bits).
"""
import numpy as np

from lowbit.compiler.formats import pack_bits
from lowbit.errors import ModelError

STYLES = ("qdq", "matmulnbits")
QDQ_OPSET = 21


def write_quantized(proto, layers, weights, style="qdq"):
    """Return ``proto`` (changed in place) with every layer's weight written as ``style`` (see module docstring)."""
    if style not in STYLES:
        raise ModelError(f"unknown ONNX quantization style {style!r}: choose one of {', '.join(STYLES)}")
    for layer in layers:
        if weights[layer.node.name].format.kind in ("codebook", "higgs"):
            raise ModelError(f"node {layer.node.name!r}: {weights[layer.node.name].format.name} is a codebook "
                             "format, which ONNX cannot express (DequantizeLinear and MatMulNBits are affine): use "
                             "uniform formats (w4g128, w8, ...), or compile it with lowbit directly (lowbit compile "
                             "--format ... --budget-bits ...)")
    if style == "qdq":
        proto = _at_least_opset(proto, QDQ_OPSET)
        replaced = {layer.node.name: _qdq_nodes(proto, layer, weights[layer.node.name]) for layer in layers}
    else:
        _add_opset(proto, "com.microsoft", 1)
        replaced = {layer.node.name: _matmul_nbits_nodes(proto, layer, weights[layer.node.name]) for layer in layers}
    nodes = []
    for node in proto.graph.node:
        nodes.extend(replaced.get(node.name, [node]))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    _drop_unused_initializers(proto)
    return proto


def _at_least_opset(proto, version):
    from onnx import version_converter

    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= version:
        return proto
    try:
        return version_converter.convert_version(proto, version)
    except Exception as err:  # the converter raises bare RuntimeError / ValueError per unconvertible node
        raise ModelError(f"the model is opset {current}; blocked DequantizeLinear needs opset {version} and "
                         f"onnx's version converter failed: {err}. Re-export the model at opset {version}, or "
                         "write style='matmulnbits'") from err


def _add_opset(proto, domain, version):
    from onnx import helper

    if not any(o.domain == domain for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(domain, version))


def _integer_zeros(qw):
    return qw.zeros if qw.zeros is not None else qw.affine_zeros().astype(np.uint8)


def _qdq_nodes(proto, layer, qw):
    """[DequantizeLinear, the layer's node reading it]; adds the integer initializers to ``proto``."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    node, name = layer.node, layer.node.name
    storage = ml_dtypes.uint4 if qw.format.bits <= 4 else np.uint8
    codes, scales, zeros = qw.codes, qw.scales, _integer_zeros(qw)
    grouped = qw.format.group_size is not None
    if layer.k_axis == 0:  # stored (K, N): K is axis 0
        codes, scales, zeros = codes.T, scales.T, zeros.T
    attributes = {"axis": layer.k_axis, "block_size": qw.format.group_size} if grouped else {"axis": 1 - layer.k_axis}
    if not grouped:
        scales, zeros = scales.reshape(-1), zeros.reshape(-1)
    names = [f"{name}/lowbit_codes", f"{name}/lowbit_scale", f"{name}/lowbit_zero"]
    proto.graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(codes).astype(storage), names[0]),
        numpy_helper.from_array(np.ascontiguousarray(scales, np.float32), names[1]),
        numpy_helper.from_array(np.ascontiguousarray(zeros).astype(storage), names[2])])
    weight = f"{name}/lowbit_weight"
    dequantize = helper.make_node("DequantizeLinear", names, [weight], name=f"{name}/lowbit_dq", **attributes)
    node.input[1] = weight
    return [dequantize, node]


def _matmul_nbits_nodes(proto, layer, qw):
    """[MatMulNBits] replacing the layer's node; adds B, scales and zero points to ``proto``."""
    from onnx import helper, numpy_helper

    node, name, fmt = layer.node, layer.node.name, qw.format
    bias = _nbits_bias(layer)
    N, K = qw.codes.shape
    block = fmt.group_size
    if fmt.kind != "uniform" or fmt.bits not in (2, 4, 8):
        raise ModelError(f"node {name!r}: MatMulNBits holds 2, 4 or 8-bit uniform codes; {fmt.name} is not one: "
                         "write style='qdq'")
    if block is None or block < 16 or block & (block - 1):
        raise ModelError(f"node {name!r}: MatMulNBits needs a power-of-two block size of at least 16 along K; "
                         f"{fmt.name} has {'none (per channel)' if block is None else block}: use e.g. "
                         f"w{fmt.bits}g32, or write style='qdq'")
    n_blocks = K // block
    inputs = [node.input[0], f"{name}/lowbit_B", f"{name}/lowbit_scales"]
    initializers = [numpy_helper.from_array(pack_bits(qw.codes, fmt.bits).reshape(N, n_blocks, block * fmt.bits // 8),
                                            inputs[1]),
                    numpy_helper.from_array(qw.scales.reshape(-1), inputs[2])]
    if qw.zeros is not None:
        inputs.append(f"{name}/lowbit_zero_points")
        initializers.append(numpy_helper.from_array(pack_bits(qw.zeros, fmt.bits).reshape(-1), inputs[-1]))
    if bias is not None:
        inputs += [""] * (5 - len(inputs)) + [bias]
    proto.graph.initializer.extend(initializers)
    return [helper.make_node("MatMulNBits", inputs, list(node.output), name=name, domain="com.microsoft",
                             K=K, N=N, bits=fmt.bits, block_size=block)]


def _nbits_bias(layer):
    """The bias input of a Gemm written as MatMulNBits (None for MatMul); Gemm options it cannot hold: error."""
    from lowbit.frontends.onnx_graph import attribute, input_at

    node = layer.node
    if node.op_type == "MatMul":
        return None
    beta, bias = float(attribute(node, "beta", 1.0)), input_at(node, 2)
    if layer.transposed_activation or float(attribute(node, "alpha", 1.0)) != 1.0 or (bias and beta != 1.0):
        raise ModelError(f"node {node.name!r}: a Gemm with transA, alpha != 1 or beta != 1 has no MatMulNBits "
                         "form: write style='qdq'")
    return bias


def _drop_unused_initializers(proto):
    used = {name for node in proto.graph.node for name in node.input} | {v.name for v in proto.graph.output}
    kept = [tensor for tensor in proto.graph.initializer if tensor.name in used]
    dropped = {tensor.name for tensor in proto.graph.initializer} - {tensor.name for tensor in kept}
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    inputs = [value for value in proto.graph.input if value.name not in dropped]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
