"""Quantize the float ``MatMul`` / ``Gemm`` layers of an ONNX model (round to nearest, or GPTQ).

Takes a float ONNX model; finds every ``MatMul`` / ``Gemm`` whose weight is a constant 2-D float tensor;
quantizes each weight, as (N, K), to one lowbit format. For GPTQ each layer's Hessian ``X^T X`` comes from its
input activations, read by running the float model in onnxruntime (graph optimizations off, so every tensor
keeps its name) on the calibration batches with the activations added as graph outputs. Hessians come from
the float model's activations (not re-run after earlier layers are quantized).

Returns the quantized weights by node name: :func:`quantize_onnx_layers` hands them to the compiler's ONNX
frontend (``import_onnx(weights=...)``), :func:`quantize_onnx` writes them into the model as ONNX
(``frontends/onnx_export.py``: blocked ``DequantizeLinear`` or ``MatMulNBits``).
"""
import dataclasses
import os

import numpy as np

from lowbit.compiler.gptq import hessian
from lowbit.errors import ModelError
from lowbit.frontends.layer_sets import LayerSet, flat_outputs
from lowbit.frontends.onnx import load_onnx
from lowbit.frontends.onnx_export import write_quantized
from lowbit.frontends.onnx_graph import OnnxGraph, attribute, check_references, name_nodes
from lowbit.frontends.quantize import candidate_formats, layer_formats, quantize_weight


@dataclasses.dataclass
class FloatLayer:
    """A float linear layer of the graph: ``node`` computes ``activation @ weight^T`` (+ bias)."""

    node: object
    weight: np.ndarray  # (N, K) float32
    k_axis: int  # axis of K in the stored weight: 0 for MatMul (K, N), 1 for Gemm transB=1 (N, K)
    activation: str
    transposed_activation: bool = False  # Gemm transA=1: the layer's rows are the columns of ``activation``


def float_layers(graph):
    """Every MatMul / Gemm of ``graph`` (an OnnxGraph) whose weight is a constant 2-D float tensor."""
    layers = []
    for node in graph.nodes:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        value = graph.array(node.input[1], node, "weight")
        if value is None or value.ndim != 2 or not np.issubdtype(value.dtype, np.floating):
            continue
        k_axis = attribute(node, "transB", 0) if node.op_type == "Gemm" else 0
        weight = (value.T if k_axis == 0 else value).astype(np.float32)
        layers.append(FloatLayer(node, weight, k_axis, node.input[0],
                                 node.op_type == "Gemm" and bool(attribute(node, "transA", 0))))
    return layers


def calibration_feeds(calibration, input_names):
    """Calibration as a list of ``{input name: array}`` feeds (from a dict, a list of dicts or an .npz path)."""
    if isinstance(calibration, (str, os.PathLike)):
        path = os.fspath(calibration)
        if not os.path.isfile(path):
            raise ModelError(f"calibration file {path!r} does not exist; write one with np.savez(path, "
                             "input_name=array, ...)")
        with np.load(path, allow_pickle=False) as data:
            calibration = {name: data[name] for name in data.files}
    feeds = [calibration] if isinstance(calibration, dict) else list(calibration)
    if not feeds:
        raise ModelError("calibration is empty: give at least one batch {input name: array}")
    for index, feed in enumerate(feeds):
        if not isinstance(feed, dict):
            raise ModelError(f"calibration batch {index} is a {type(feed).__name__}; ONNX calibration batches are "
                             "dicts {input name: array}")
        missing = sorted(set(input_names) - set(feed))
        if missing:
            raise ModelError(f"calibration batch {index} lacks model inputs {missing} (it has {sorted(feed)}); "
                             f"the model's inputs are {list(input_names)}")
    return [{name: np.asarray(feed[name]) for name in input_names} for feed in feeds]


def layer_hessians(proto, layers, calibration):
    """``X^T X`` (float64, (K, K)) of each layer's input rows over the calibration batches, by node name."""
    import onnxruntime as ort

    probe = _with_outputs(proto, layers)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_names = [value.name for value in session.get_inputs()]
    names = sorted({layer.activation for layer in layers})
    # one running X^T X per (activation, orientation): batches are not kept
    sums = {(layer.activation, layer.transposed_activation): None for layer in layers}
    for feed in calibration_feeds(calibration, input_names):
        values = dict(zip(names, session.run(names, feed)))
        for (name, transposed), total in sums.items():
            value = np.asarray(values[name])
            K = value.shape[0] if transposed else value.shape[-1]
            batch, _ = hessian([value.T if transposed else value], K)
            sums[(name, transposed)] = batch if total is None else total + batch
    return {layer.node.name: sums[(layer.activation, layer.transposed_activation)] for layer in layers}


def _with_outputs(proto, layers):
    """A copy of ``proto`` whose graph also outputs every layer's activation."""
    import onnx
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    present = {value.name for value in probe.graph.output}
    for layer in layers:
        if layer.activation not in present:
            elem = helper.np_dtype_to_tensor_dtype(layer.weight.dtype)
            probe.graph.output.append(helper.make_tensor_value_info(layer.activation, elem, None))
            present.add(layer.activation)
    return probe


def onnx_layer_set(proto, layers, calibration=None):
    """:class:`LayerSet` of a float ONNX model's ``layers`` (``onnx_quantize.float_layers``); with calibration
    (feeds as ``onnx_quantize.calibration_feeds`` reads them) also Hessians and ``run``."""
    names = [layer.node.name for layer in layers]
    weights = [layer.weight for layer in layers]
    if calibration is None:
        return LayerSet(names, weights)
    hessians = layer_hessians(proto, layers, calibration)
    return LayerSet(names, weights, [hessians[name] for name in names], _onnx_runner(proto, layers, calibration))


def _onnx_runner(proto, layers, calibration):
    """``run(weights)``: onnxruntime (optimizations off) on the first calibration batch, the layers' weight
    initializers turned into inputs fed with the given weights."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    stored = {init.name: init for init in model.graph.initializer}
    fed = {}
    for layer in layers:
        name = layer.node.input[1]
        if name in fed:
            raise ModelError(f"weight {name!r} is shared by several MatMul / Gemm nodes; per-layer formats need one "
                             "weight per layer: give each node its own initializer")
        init = stored.get(name)
        if init is None:
            raise ModelError(f"weight {name!r} of node {layer.node.name!r} is not an initializer (a Constant node?); "
                             "store it as an initializer to measure the model with substituted weights")
        dtype = numpy_helper.to_array(init).dtype
        fed[name] = (layer.k_axis, dtype)
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    kept = [init for init in model.graph.initializer if init.name not in fed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    data_inputs = [value.name for value in session.get_inputs() if value.name not in fed]
    feed = calibration_feeds(calibration, data_inputs)[0]
    order = [layer.node.input[1] for layer in layers]

    def run(weights):
        feeds = dict(feed)
        for name, w in zip(order, weights):
            k_axis, dtype = fed[name]
            feeds[name] = np.ascontiguousarray((w.T if k_axis == 0 else w).astype(dtype))
        return flat_outputs(session.run(None, feeds))

    return run


def quantize_onnx_layers(model, formats, method="rtn", calibration=None, budget_bits=None, progress=False,
                         estimate="direct"):
    """Quantize the float layers of ``model``: returns (named ModelProto, layers, {node name: QuantizedWeight},
    AllocationReport or None).

    ``formats``: one format (every layer), or with ``budget_bits`` the candidates each layer's format is chosen
    from (``frontends.quantize.allocate_formats``; calibration, when given, gives output errors and measured
    sensitivities, and GPTQ's Hessians are the same ones).
    """

    candidates = candidate_formats(formats, budget_bits)
    proto = load_onnx(model)
    name_nodes(proto.graph)
    check_references(proto.graph)
    layers = float_layers(OnnxGraph(proto.graph))
    if not layers:
        raise ModelError("the ONNX model has no float MatMul / Gemm with a constant 2-D weight to quantize")
    chosen, hessians, report = layer_formats(candidates, budget_bits, method, len(layers),
                                             lambda: onnx_layer_set(proto, layers, calibration),
                                             lambda: layer_hessians(proto, layers, calibration), progress,
                                             estimate)
    weights = {}
    for layer, fmt in zip(layers, chosen):
        try:
            weights[layer.node.name] = quantize_weight(layer.weight, fmt, method, hessians.get(layer.node.name))
        except ValueError as err:
            raise ModelError(f"node {layer.node.name!r} ({layer.node.op_type}, weight {layer.node.input[1]!r}, "
                             f"N x K = {layer.weight.shape}): {err}") from err
    return proto, layers, weights, report


ALLOCATION_KEY = "lowbit.allocation"  # metadata_props key of a budget-quantized model's AllocationReport (JSON)


def quantize_onnx(model, formats, method="rtn", calibration=None, style="qdq", budget_bits=None, progress=False,
                  estimate="direct"):
    """Quantize a float ONNX model and return it as a quantized ``onnx.ModelProto`` (``style``: ``qdq`` =
    blocked ``DequantizeLinear`` of the integers, ``matmulnbits`` = ``com.microsoft.MatMulNBits``). With
    ``budget_bits`` the per-layer choice's report is kept as JSON in ``metadata_props[ALLOCATION_KEY]``."""
    import json

    proto, layers, weights, report = quantize_onnx_layers(model, formats, method, calibration, budget_bits,
                                                          progress, estimate)
    quantized = write_quantized(proto, layers, weights, style)
    if report is not None:
        entry = quantized.metadata_props.add()
        entry.key, entry.value = ALLOCATION_KEY, json.dumps(report.as_manifest())
    return quantized
