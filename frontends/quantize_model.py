"""``lowbit.quantize_model``: quantize the linear layers of a torch module or a float ONNX model.

``quantize_model(model, formats="w4g128", method="rtn" | "gptq", calibration=None, budget_bits=None,
progress=False, estimate="direct" | "probed")``.

- torch ``nn.Module``: every ``nn.Linear`` becomes a :class:`lowbit.frontends.torch_quantize.QuantizedLinear`
  holding the exact codes, scales and zero points (``frontends/torch_quantize.py``); the model is changed in
  place and returned.
- ONNX model (path or ``onnx.ModelProto``): every float ``MatMul`` / ``Gemm`` with a constant 2-D weight gets a
  blocked ``DequantizeLinear`` of the integers (``frontends/onnx_quantize.py``); returns a new ModelProto.

``method="gptq"`` needs ``calibration``: torch, an iterable of batches (a tensor, a tuple of positional
inputs, or a dict of keyword inputs); ONNX, a dict ``{input name: array}`` (one batch) or a list of such dicts.

Per-layer formats under a size budget: see ``frontends/quantize.py``.
"""
from lowbit.errors import ModelError
from lowbit.frontends.onnx import is_onnx_model
from lowbit.frontends.onnx_quantize import quantize_onnx
from lowbit.frontends.quantize import candidate_formats, check_estimate, check_method, is_torch_module


def quantize_model(model, formats="w4g128", method="rtn", calibration=None, budget_bits=None, progress=False,
                   estimate="direct"):
    """Quantize the linear layers of ``model`` to ``formats`` (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module, str, os.PathLike or onnx.ModelProto
    formats : str, format object or list of them
        ``w4g128``, ``w4g64s``, ``nf4g64``, ``higgs3g64``, ...; several candidates need ``budget_bits``.
    method : {"rtn", "gptq"}
    calibration : optional
        Calibration batches (required for ``gptq``; with ``budget_bits`` they also give output errors and
        measured sensitivities).
    budget_bits : float, optional
        Average bits per weight (scales included) for a per-layer choice among ``formats``.
    progress : bool
        With a budget, a progress bar (stderr) over the (layer, format) measurements: with calibration each is
        one run of the model, minutes for a transformer.
    estimate : {"direct", "probed"}
        With a budget and calibration, how each (layer, format)'s end-to-end error is found: ``direct`` runs the
        model with that layer alone in that format (one run per layer and candidate); ``probed`` multiplies the
        layer's own output error by its noise-probed sensitivity (4 runs per layer: for models too big for
        ``direct``; 0.06-0.8 dB worse on the trained transformer).

    Returns
    -------
    The torch module (changed in place; with a budget its ``lowbit_allocation`` is the
    :class:`AllocationReport`), or a quantized ``onnx.ModelProto`` (with a budget, the report's JSON is in its
    ``metadata_props`` under ``lowbit.allocation``).
    """
    candidates = candidate_formats(formats, budget_bits)
    check_method(method, calibration)
    check_estimate(estimate, budget_bits, calibration)
    if is_onnx_model(model):
        return quantize_onnx(model, candidates, method, calibration, budget_bits=budget_bits, progress=progress,
                             estimate=estimate)
    if is_torch_module(model):
        from lowbit.frontends.torch_quantize import quantize_torch

        return quantize_torch(model, candidates, method, calibration, budget_bits=budget_bits, progress=progress,
                              estimate=estimate)
    raise ModelError(f"quantize_model takes a torch.nn.Module or an ONNX model (path or onnx.ModelProto), got "
                     f"{type(model).__name__}")
