"""``lowbit.quantize_model``: quantize the linear layers of a torch module or a float ONNX model.

One signature for both (issue 9, quantization quality, extends it with per-layer formats under a size budget):
``quantize_model(model, formats="w4g128", method="rtn" | "gptq", calibration=None, budget_bits=None)``.

- torch ``nn.Module``: every ``nn.Linear`` becomes a :class:`lowbit.frontends.torch_quantize.QuantizedLinear`
  holding the exact codes, scales and zero points (``frontends/torch_quantize.py``); the model is changed in
  place and returned.
- ONNX model (path or ``onnx.ModelProto``): every float ``MatMul`` / ``Gemm`` with a constant 2-D weight gets a
  blocked ``DequantizeLinear`` of the integers (``frontends/onnx_quantize.py``); returns a new ModelProto.

``method="gptq"`` needs ``calibration``: torch, an iterable of batches (a tensor, a tuple of positional
inputs, or a dict of keyword inputs); ONNX, a dict ``{input name: array}`` (one batch) or a list of such dicts.
"""
import sys

from lowbit.compiler.formats import parse_format, quantize
from lowbit.errors import FormatError, ModelError

METHODS = ("rtn", "gptq")
BUDGET_FEATURE = ("per-layer format allocation under a size budget (issue 9, quantization quality: "
                  "`formats=[...]` with `budget_bits=`)")


def single_format(formats, budget_bits=None):
    """The one format of ``formats`` (a name, a format object, or a one-element list); lists of several
    candidates and ``budget_bits`` belong to issue 9 and are an error naming that feature until it exists."""
    if budget_bits is not None:
        raise FormatError(f"budget_bits={budget_bits!r}: {BUDGET_FEATURE} is not implemented yet; pass one format "
                          "(formats='w4g128') and no budget_bits")
    if isinstance(formats, (list, tuple)):
        if len(formats) != 1:
            raise FormatError(f"formats={list(formats)!r}: choosing among several candidate formats per layer is "
                              f"{BUDGET_FEATURE}, not implemented yet; pass one format (formats='w4g128')")
        formats = formats[0]
    return parse_format(formats)


def check_method(method, calibration):
    """Raise unless ``method`` is one of METHODS and GPTQ has calibration data."""
    if method not in METHODS:
        raise ModelError(f"unknown quantization method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "gptq" and calibration is None:
        raise ModelError("method='gptq' needs calibration inputs (a few batches of typical model inputs): pass "
                         "calibration=..., or use method='rtn' (round to nearest, data-free)")


def quantize_weight(weight, fmt, method, H=None):
    """Quantize one (N, K) float weight: ``rtn`` (round to nearest) or ``gptq`` with Hessian ``H`` = X^T X."""
    if method == "rtn":
        return quantize(weight, fmt)
    from lowbit.compiler.gptq import gptq_quantize

    return gptq_quantize(weight, H, fmt)


def is_torch_module(model):
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch when nothing else did)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def quantize_model(model, formats="w4g128", method="rtn", calibration=None, budget_bits=None):
    """Quantize the linear layers of ``model`` to ``formats`` (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module, str, os.PathLike or onnx.ModelProto
    formats : str, format object or list of one
        ``w4g128``, ``w4g64s``, ``nf4g64``, ... (several candidates: issue 9's budget allocation, not yet).
    method : {"rtn", "gptq"}
    calibration : optional
        Calibration batches (required for ``gptq``).
    budget_bits : float, optional
        Average bits per weight for a per-layer allocation (issue 9; not implemented yet: an error).

    Returns
    -------
    The torch module (changed in place), or a quantized ``onnx.ModelProto``.
    """
    from lowbit.compiler.api import is_onnx_model

    fmt = single_format(formats, budget_bits)
    check_method(method, calibration)
    if is_onnx_model(model):
        from lowbit.frontends.onnx_quantize import quantize_onnx

        return quantize_onnx(model, fmt, method, calibration)
    if is_torch_module(model):
        from lowbit.frontends.torch_quantize import quantize_torch

        return quantize_torch(model, fmt, method, calibration)
    raise ModelError(f"quantize_model takes a torch.nn.Module or an ONNX model (path or onnx.ModelProto), got "
                     f"{type(model).__name__}")
