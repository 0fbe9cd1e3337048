"""A model's quantizable layers as the quality tools see them: float weights, calibration Hessians, ``run``.

Takes: a float ONNX model (its ``MatMul`` / ``Gemm`` layers with constant 2-D weights, as
``frontends/onnx_quantize.float_layers`` finds them) or a torch module (its ``nn.Linear`` layers), and optional
calibration batches.
Produces: a :class:`LayerSet`: names, (N, K) float weights, per-layer ``X^T X`` over the calibration rows, and
``run(weights) -> output`` (the model on its first calibration batch with the given float weights substituted),
which :mod:`lowbit.compiler.quality` needs for output errors, measured sensitivities and end-to-end SQNR.

Output errors need only ``X^T X``: for any ``D``, ``||X D^T||^2 = ||R D^T||^2`` where ``R^T R = X^T X``
(:func:`hessian_rows`), so the (K, K) factor ``R`` stands in for the calibration rows and nothing of the
activations is kept.
"""
import dataclasses
import functools

import numpy as np

from lowbit.errors import ModelError


@dataclasses.dataclass
class LayerSet:
    """The quantizable layers of one model (see the module docstring)."""

    names: list
    weights: list            # (N, K) float32 arrays
    hessians: object = None  # list of (K, K) float64 X^T X, or None without calibration
    run: object = None       # run(list of (N, K) float weights) -> np.ndarray, or None without calibration

    @functools.cached_property
    def inputs(self):
        """Per layer, rows ``R`` with ``R^T R = X^T X`` (the stand-in for the calibration inputs), or None;
        computed once (an eigendecomposition per layer)."""
        return None if self.hessians is None else [hessian_rows(H) for H in self.hessians]


def hessian_rows(H):
    """A (K, K) ``R`` with ``R^T R = H`` for a symmetric positive semi-definite ``H`` (``diag(sqrt(l)) V^T``)."""
    values, vectors = np.linalg.eigh(np.asarray(H, np.float64))
    return np.sqrt(np.clip(values, 0.0, None))[:, None] * vectors.T


def onnx_layer_set(proto, layers, calibration=None):
    """:class:`LayerSet` of a float ONNX model's ``layers`` (``onnx_quantize.float_layers``); with calibration
    (feeds as ``onnx_quantize.calibration_feeds`` reads them) also Hessians and ``run``."""
    from lowbit.frontends.onnx_quantize import layer_hessians

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

    from lowbit.frontends.onnx_quantize import calibration_feeds

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
        return _flat_outputs(session.run(None, feeds))

    return run


def _flat_outputs(outputs):
    """Every floating output, flattened and concatenated (the end-to-end SQNR compares them all at once)."""
    parts = [np.asarray(out, np.float64).ravel() for out in outputs if np.issubdtype(np.asarray(out).dtype, np.floating)]
    if not parts:
        raise ModelError("the model has no floating-point output to measure end-to-end errors on")
    return np.concatenate(parts)


def torch_layer_set(model, layers, calibration=None):
    """:class:`LayerSet` of a torch module's ``nn.Linear`` ``layers`` ((name, module) pairs); with calibration
    batches also Hessians (forward pre-hooks) and ``run`` (a forward on the first batch)."""
    import torch

    from lowbit.frontends.torch_quantize import _run_batch, linear_hessians

    names = [name for name, _ in layers]
    weights = [linear.weight.detach().to(torch.float32).cpu().numpy() for _, linear in layers]
    if calibration is None:
        return LayerSet(names, weights)
    batches = list(calibration)
    if not batches:
        raise ModelError("calibration is empty: give at least one batch of model inputs")
    hessians = linear_hessians(model, batches)

    def run(new_weights):
        saved = [linear.weight.data for _, linear in layers]
        try:
            for (_, linear), w in zip(layers, new_weights):
                linear.weight.data = torch.from_numpy(np.asarray(w, np.float32)).to(linear.weight.dtype)
            with torch.no_grad():
                out = _run_batch(model, batches[0])
        finally:
            for (_, linear), w in zip(layers, saved):
                linear.weight.data = w
        flat = out if isinstance(out, (tuple, list)) else [out]
        return _flat_outputs([t.detach().float().cpu().numpy() for t in flat if isinstance(t, torch.Tensor)])

    return LayerSet(names, weights, [hessians[name] for name in names], run)
