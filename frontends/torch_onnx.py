"""``lowbit.export_onnx``: a torch module quantized by lowbit -> an ONNX model holding its exact integers.

torch's ONNX exporter (``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``) traces the module with
each :class:`QuantizedLinear` computing ``x @ lowbit_w{i}`` (``lowbit_w{i}`` an extra graph input, as for
``lowbit.compile``); each such input's ``MatMul`` then gets the layer's codes, scales and zero points through
``frontends/onnx_export.py`` (blocked ``DequantizeLinear`` at opset 21, or ``MatMulNBits``), and the inputs go.
onnxruntime runs the result; lowbit's ONNX frontend reads the same integers back.
"""
import warnings

from lowbit.errors import ModelError

OPSET = 21  # blocked DequantizeLinear (int4 / uint4 weights)


def export_onnx(model, example_inputs, path=None, style="qdq", dynamic_shapes=None):
    """Export a lowbit-quantized torch module as ONNX; returns the ``onnx.ModelProto`` (and writes ``path``).

    Parameters
    ----------
    model : torch.nn.Module
        With ``QuantizedLinear`` layers (``lowbit.quantize_model``).
    example_inputs : torch.Tensor or tuple of torch.Tensor
    path : str, optional
        File to write (atomically).
    style : {"qdq", "matmulnbits"}
    dynamic_shapes : optional
        As for ``torch.export``; default: every dim but the last ``Dim.AUTO`` (``frontends/torch_export.py``).
    """
    import torch

    from lowbit.frontends.onnx_export import write_quantized
    from lowbit.frontends.torch_export import _input_names, traceable

    wrapper, args, shapes, layers, n_inputs = traceable(model, example_inputs, dynamic_shapes)
    weight_names = [f"lowbit_w{i}" for i in range(len(layers))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, args, dynamo=True, dynamic_shapes=shapes, opset_version=OPSET,
                                        input_names=_input_names(model, n_inputs) + weight_names, verbose=False)
    except Exception as err:  # torch.onnx raises its own errors and ImportError without onnxscript
        raise ModelError(f"torch's ONNX exporter failed on {type(model).__name__}: {type(err).__name__}: {err} "
                         "(it needs the onnxscript package: pip install -e '.[torch]')") from err
    proto = program.model_proto
    onnx_layers, weights = _weight_consumers(proto, weight_names, layers)
    proto = write_quantized(proto, onnx_layers, weights, style)
    inputs = [value for value in proto.graph.input if value.name not in set(weight_names)]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    if path is not None:
        _save(proto, path)
    return proto


def _weight_consumers(proto, weight_names, layers):
    """The MatMul reading each weight input, as FloatLayers, and their QuantizedWeights by node name."""
    from lowbit.frontends.onnx_graph import OnnxGraph, name_nodes
    from lowbit.frontends.onnx_quantize import FloatLayer

    name_nodes(proto.graph)
    graph = OnnxGraph(proto.graph)
    found, weights = [], {}
    for weight_name, (layer_name, layer) in zip(weight_names, layers):
        readers = graph.consumers.get(weight_name, [])
        if len(readers) != 1 or readers[0].op_type != "MatMul" or readers[0].input[1] != weight_name:
            kinds = [node.op_type for node in readers]
            raise ModelError(f"layer {layer_name!r}: torch's ONNX export uses its weight in {kinds or 'no node'}, "
                             "not as the right-hand side of one MatMul; lowbit cannot write it as ONNX")
        node = readers[0]
        found.append(FloatLayer(node, None, 0, node.input[0]))
        weights[node.name] = layer.quantized_weight()
    return found, weights


def _save(proto, path):
    import onnx

    from lowbit.runtime.atomic import atomic_path

    with atomic_path(path) as temporary:  # a failed export leaves no half-written file
        onnx.save(proto, temporary)
