"""torch side of ``lowbit.quantize_model``: ``nn.Linear`` -> :class:`QuantizedLinear` (exact lowbit integers).

:class:`QuantizedLinear` keeps a :class:`~lowbit.compiler.formats.QuantizedWeight` as buffers (``codes`` uint8
(N, K), ``scales`` float32 (N, G), ``zeros`` uint8 (N, G) for zero-point formats, ``levels`` for codebooks)
and, in eager torch, computes ``x @ dequantize(W)^T + b`` with the weight dequantized in float32 on each call
(the same float32 values as the NumPy reference: one correctly rounded product per weight).
``lowbit.compile(module, example_inputs)`` (``frontends/torch_export.py``) reads the integers from these
buffers and compiles lowbit kernels from them.

GPTQ's Hessians come from forward pre-hooks on the float ``nn.Linear`` layers while the calibration batches
run through the float model (all layers at once, before any is replaced).
"""
import numpy as np
import torch

from lowbit.compiler.formats import QuantizedWeight, parse_format
from lowbit.errors import ModelError
from lowbit.frontends.layer_sets import LayerSet, flat_outputs
from lowbit.frontends.quantize import candidate_formats, layer_formats, quantize_weight


class QuantizedLinear(torch.nn.Module):
    """A linear layer with a lowbit-quantized weight: ``y = x @ dequantize(weight)^T + bias``.

    Parameters
    ----------
    weight : QuantizedWeight
        (N, K) = (out_features, in_features).
    bias : torch.Tensor of shape (N,), optional
    """

    def __init__(self, weight, bias=None):
        super().__init__()
        N, K = weight.shape
        self.in_features, self.out_features = K, N
        self.format_name = weight.format.name
        self.register_buffer("codes", torch.from_numpy(weight.codes.copy()))
        self.register_buffer("scales", torch.from_numpy(weight.scales.copy()))
        zeros = None if weight.zeros is None else torch.from_numpy(weight.zeros.copy())
        self.register_buffer("zeros", zeros)
        levels = weight.format.levels if weight.format.kind == "codebook" else None
        self.register_buffer("levels", None if levels is None else torch.tensor(levels, dtype=torch.float32))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.placeholder = None  # set by lowbit's torch export: a (K, N) input standing for the weight

    @classmethod
    def from_linear(cls, linear, fmt, method="rtn", H=None):
        """Quantize an ``nn.Linear`` (``rtn``, or ``gptq`` with its input Hessian ``H``)."""
        weight = linear.weight.detach().to(torch.float32).cpu().numpy()
        return cls(quantize_weight(weight, fmt, method, H), linear.bias)

    @property
    def format(self):
        """The weight's format object."""
        return parse_format(self.format_name)

    def quantized_weight(self):
        """The :class:`QuantizedWeight` these buffers hold (NumPy copies)."""
        zeros = None if self.zeros is None else self.zeros.cpu().numpy()
        return QuantizedWeight(self.format, self.codes.cpu().numpy(), self.scales.cpu().numpy(), zeros)

    def dequantized_weight(self):
        """The float32 (N, K) weight, computed in torch (HIGGS formats: the NumPy reference's un-rotated
        weight, computed once: its inverse rotation has no torch twin here)."""
        fmt = self.format
        if fmt.kind == "higgs":
            if getattr(self, "_higgs_weight", None) is None:
                self._higgs_weight = torch.from_numpy(self.quantized_weight().dequantize())
            return self._higgs_weight
        group = fmt.group_size or self.in_features
        scales = self.scales.repeat_interleave(group, dim=1)
        if self.levels is not None:  # a 2-D codebook's code covers two weights: its points are pairs
            values = self.levels.reshape(-1, fmt.dim)[self.codes.long()]
            return scales * values.reshape(self.out_features, self.in_features)
        if self.zeros is not None:
            zeros = self.zeros.to(torch.float32).repeat_interleave(group, dim=1)
        else:
            zeros = 1.0 if fmt.kind == "ternary" else float(2 ** (fmt.bits - 1))
        return scales * (self.codes.to(torch.float32) - zeros)

    def forward(self, x):  # noqa: D102 (nn.Module)
        if self.placeholder is not None:
            # always a 2-D matmul: torch lowers a matmul of a non-contiguous 3-D x to bmm with the weight expanded
            rows = torch.matmul(x.reshape(-1, self.in_features), self.placeholder)
            y = rows.reshape(*x.shape[:-1], self.out_features)
        else:
            y = torch.nn.functional.linear(x, self.dequantized_weight().to(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self):  # noqa: D102 (nn.Module)
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format_name}"


def quantized_layers(model):
    """(qualified name, QuantizedLinear) for every lowbit quantized layer of ``model``, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, QuantizedLinear)]


def _linear_layers(model):
    return [(name, module) for name, module in model.named_modules() if type(module) is torch.nn.Linear]


def _run_batch(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def linear_hessians(model, calibration):
    """``X^T X`` (float64 NumPy, (K, K)) of every ``nn.Linear``'s inputs over the calibration batches."""
    sums, handles = {}, []

    def hook(name, K):
        def accumulate(_module, args):
            x = args[0].detach().to(torch.float64).reshape(-1, K)
            sums[name] = sums.get(name, 0) + x.T @ x
        return accumulate

    for name, linear in _linear_layers(model):
        handles.append(linear.register_forward_pre_hook(hook(name, linear.in_features)))
    try:
        with torch.no_grad():
            for batch in calibration:
                _run_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name, _ in _linear_layers(model) if name not in sums]
    if missing:
        raise ModelError(f"no calibration input reached the linear layers {missing}: give at least one batch, and "
                         "check that the model's forward uses them")
    return {name: value.cpu().numpy() for name, value in sums.items()}


def torch_layer_set(model, layers, calibration=None):
    """:class:`LayerSet` of a torch module's ``nn.Linear`` ``layers`` ((name, module) pairs); with calibration
    batches also Hessians (forward pre-hooks) and ``run`` (a forward on the first batch)."""
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
        return flat_outputs([t.detach().float().cpu().numpy() for t in flat if isinstance(t, torch.Tensor)])

    return LayerSet(names, weights, [hessians[name] for name in names], run)


def quantize_torch(model, formats, method="rtn", calibration=None, budget_bits=None, progress=False,
                   estimate="direct"):
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantizedLinear`; returns ``model``.

    ``formats``: one format, or with ``budget_bits`` the candidates each layer's format is chosen from
    (``frontends.quantize.allocate_formats``); the report is then ``model.lowbit_allocation``.
    """

    candidates = candidate_formats(formats, budget_bits)
    layers = _linear_layers(model)
    if not layers:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer to quantize")
    was_training = model.training
    model.eval()
    chosen, hessians, report = layer_formats(candidates, budget_bits, method, len(layers),
                                             lambda: torch_layer_set(model, layers, calibration),
                                             lambda: linear_hessians(model, calibration), progress, estimate)
    for (name, linear), fmt in zip(layers, chosen):
        try:
            quantized = QuantizedLinear.from_linear(linear, fmt, method, hessians.get(name))
        except ValueError as err:
            raise ModelError(f"layer {name!r} (nn.Linear {linear.in_features} -> {linear.out_features}): "
                             f"{err}") from err
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, quantized)
    if report is not None:
        model.lowbit_allocation = report
    model.train(was_training)
    return model


__all__ = ["QuantizedLinear", "quantize_torch", "quantized_layers", "linear_hessians"]
