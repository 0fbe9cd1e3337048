"""torch frontend: a module quantized by ``lowbit.quantize_model`` -> a Relax module with lowbit quantized layers.

``torch.export`` traces the model with each :class:`QuantizedLinear` computing ``x @ lowbit_w{i}`` (+ bias), where
``lowbit_w{i}`` is an extra (K, N) float32 *input* of the exported program standing for the layer's weight (an
uninitialised tensor: only its shape is traced). TVM's ``from_exported_program`` turns that into Relax
``main(*inputs, *lowbit_w) -> outputs`` with ``R.matmul(x, lowbit_w{i})``: the same contract as the ONNX
frontend, so the compiler's ``LowerQuantizedMatmul`` replaces each by its kernel, built from the layer's exact
codes, scales and zero points (read from its buffers, never from a float weight). Every other torch operator
goes through Relax; float parameters become constants. Quantized layers whose output the model never uses
(dead code, such as a pooler next to the output that is returned) are dropped before lowering.

Dims: by default every dim but the last (the features) of every example input is ``Dim.AUTO``: torch decides,
symbolic where the trace allows it (batch, sequence), static where the model fixes it (an example size of 1,
which torch specialises); ``dynamic_shapes`` overrides that.
"""
import inspect
import warnings

import torch

from lowbit.errors import ModelError
from lowbit.frontends.onnx import ImportedModel, QuantizedLinearSpec
from lowbit.frontends.torch_quantize import quantized_layers

WEIGHT_PREFIX = "lowbit_w"


class _WithWeightInputs(torch.nn.Module):
    """``forward(*inputs, *weights)``: runs ``model`` with each quantized layer reading its weight input."""

    def __init__(self, model, layers, n_inputs):
        super().__init__()
        self.model, self.layers, self.n_inputs = model, layers, n_inputs

    def forward(self, *args):  # noqa: D102 (nn.Module)
        inputs, weights = args[:self.n_inputs], args[self.n_inputs:]
        for layer, weight in zip(self.layers, weights):
            layer.placeholder = weight
        try:
            return self.model(*inputs)
        finally:
            for layer in self.layers:
                layer.placeholder = None


def _input_names(model, count):
    parameters = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in parameters[:count]]
    return names + [f"input{i}" for i in range(len(names), count)]


def _default_dynamic_shapes(example_inputs, n_weights):
    # Not the last dim: where torch specialises an AUTO dim to a constant, TVM 0.27's importer still makes it a
    # shape variable (named "64"), and shapes that should match no longer provably do.
    dims = [{axis: torch.export.Dim.AUTO for axis in range(x.dim() - 1)} if isinstance(x, torch.Tensor) else None
            for x in example_inputs]
    return tuple(dims) + (None,) * n_weights


def traceable(model, example_inputs, dynamic_shapes=None):
    """What ``torch.export`` / ``torch.onnx.export`` trace: (wrapper, args, dynamic_shapes, layers, n_inputs).

    ``args`` are the example inputs followed by one uninitialised (K, N) tensor per quantized layer.
    """
    layers = quantized_layers(model)
    if not layers:
        raise ModelError(f"{type(model).__name__} has no lowbit QuantizedLinear layer: quantize it first with "
                         "lowbit.quantize_model(model, formats='w4g128')")
    example_inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    weights = tuple(torch.empty(layer.in_features, layer.out_features) for _, layer in layers)
    wrapper = _WithWeightInputs(model, [layer for _, layer in layers], len(example_inputs)).eval()
    if dynamic_shapes is None:
        dynamic_shapes = _default_dynamic_shapes(example_inputs, len(weights))
    else:
        dynamic_shapes = tuple(dynamic_shapes) + (None,) * len(weights)
    # forward(*args): the specs of all positional inputs form one tuple
    return wrapper, example_inputs + weights, (dynamic_shapes,), layers, len(example_inputs)


def export_program(model, example_inputs, dynamic_shapes=None):
    """``torch.export`` of ``model`` with its quantized layers reading weight inputs; returns (program, layers,
    number of model inputs)."""
    wrapper, args, dynamic_shapes, layers, n_inputs = traceable(model, example_inputs, dynamic_shapes)
    try:
        program = torch.export.export(wrapper, args, dynamic_shapes=dynamic_shapes)
    except Exception as err:  # torch raises UserError, GuardOnDataDependentSymNode, TypeError...
        raise ModelError(f"torch.export failed on {type(model).__name__}: {type(err).__name__}: {err}") from err
    return program, layers, n_inputs


def _drop_unused_weights(mod, n_inputs, layers):
    """Remove the weight inputs of layers the traced model never uses (dead code, e.g. an unused pooler):
    they get no kernel. Returns (module, the layers kept)."""
    from lowbit.compiler.tvm_api import relax

    main = mod["main"]
    used = {var.name for var in relax.analysis.free_vars(main.body)}
    params = list(main.params)
    keep = [index for index, var in enumerate(params[n_inputs:]) if var.name in used]
    if len(keep) == len(layers):
        return mod, layers
    func = relax.Function(params[:n_inputs] + [params[n_inputs + i] for i in keep], main.body, main.ret_ty,
                          main.is_pure, main.attrs)
    mod.update_func(mod.get_global_var("main"), func)
    return mod, [layers[i] for i in keep]


def import_torch(model, example_inputs, dynamic_shapes=None):
    """Import a lowbit-quantized torch module for the compiler; returns an ``ImportedModel`` (source torch)."""
    from lowbit.compiler.tvm_api import relax, torch_importer
    from lowbit.frontends.onnx import _dims

    program, layers, n_inputs = export_program(model, example_inputs, dynamic_shapes)
    from_exported_program = torch_importer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            mod = from_exported_program(program, unwrap_unit_return_tuple=True)
        except Exception as err:  # TVM raises KeyError / AssertionError / TVMError for unsupported operators
            raise ModelError(f"TVM's torch importer could not convert {type(model).__name__}: "
                             f"{type(err).__name__}: {err}") from err
    mod, kept = _drop_unused_weights(mod, n_inputs, layers)
    params = list(mod["main"].params)
    quantized = {var.name: QuantizedLinearSpec(name, layer.quantized_weight(), "torch")
                 for var, (name, layer) in zip(params[n_inputs:], kept)}
    inputs = [{"name": name, "shape": _dims(var.ty), "dtype": str(var.ty.dtype)}
              for name, var in zip(_input_names(model, n_inputs), params[:n_inputs])]
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    outputs = [{"name": "output" if len(fields) == 1 else f"output{i}", "shape": _dims(field),
                "dtype": str(field.dtype)} for i, field in enumerate(fields)]
    return ImportedModel(mod, quantized, inputs, outputs)
