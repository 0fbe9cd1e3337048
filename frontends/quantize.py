"""The format-independent steps of quantizing a model's linear layers, shared by the ONNX and torch sides of
``lowbit.quantize_model`` (``frontends/quantize_model.py``): candidate formats and methods checked, one weight
quantized (RTN or GPTQ), per-layer formats chosen under a size budget (:func:`allocate_formats`, reported as an
:class:`AllocationReport`).

Per-layer formats under a size budget (``formats=[...]`` candidates with ``budget_bits=``): each layer's error
in each candidate is measured (relative L2 of the weight; with calibration, of the layer's output on its
calibration inputs), each layer's sensitivity estimated (data-free: 1 for every layer, the linearity theorem
with equal weights; with calibration: measured, the model's output error per unit of noise added to that
layer), and dynamic programming picks the formats minimising the weighted error sum with average bits per
weight (scales, zero points and codebooks included) within the budget (:mod:`lowbit.compiler.quality`).
"""
import dataclasses
import math
import sys

from lowbit.compiler import quality
from lowbit.compiler.formats import parse_format, quantize
from lowbit.compiler.gptq import gptq_quantize
from lowbit.compiler.quality import ESTIMATES
from lowbit.errors import FormatError, ModelError

METHODS = ("rtn", "gptq")


def candidate_formats(formats, budget_bits=None):
    """The candidate format objects: one format, or with ``budget_bits`` one or more to choose from per layer."""
    names = list(formats) if isinstance(formats, (list, tuple)) else [formats]
    if not names:
        raise FormatError("formats=[]: give at least one format, e.g. 'w4g128' or ['w2g64', 'higgs3g64', 'w4g64']")
    if budget_bits is None and len(names) > 1:
        raise FormatError(f"formats={[getattr(n, 'name', n) for n in names]!r} are several candidates: choosing "
                          "among them per layer needs budget_bits=... (average bits per weight allowed, e.g. 3.25); "
                          "or pass one format")
    return [parse_format(name) for name in names]


def single_format(formats, budget_bits=None):
    """The one format of ``formats`` (a name, a format object, or a one-element list), no budget."""
    if budget_bits is not None:
        raise FormatError(f"budget_bits={budget_bits!r} chooses formats per layer; this command writes one format: "
                          "drop budget_bits")
    (fmt,) = candidate_formats(formats)
    return fmt


def check_method(method, calibration):
    """Raise unless ``method`` is one of METHODS and GPTQ has calibration data."""
    if method not in METHODS:
        raise ModelError(f"unknown quantization method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "gptq" and calibration is None:
        raise ModelError("method='gptq' needs calibration inputs (a few batches of typical model inputs): pass "
                         "calibration=..., or use method='rtn' (round to nearest, data-free)")


def check_estimate(estimate, budget_bits, calibration):
    """Raise unless ``estimate`` is one of :data:`lowbit.compiler.quality.ESTIMATES` and, when not the default,
    has what it estimates with (a budget and calibration data)."""
    if estimate not in ESTIMATES:
        raise ModelError(f"unknown error estimate {estimate!r}: choose 'direct' (a model run per layer and "
                         "candidate) or 'probed' (noise-probed sensitivities, 4 runs per layer)")
    if estimate == "probed" and (budget_bits is None or calibration is None):
        raise ModelError("estimate='probed' estimates the per-layer choice's errors on calibration data: it needs "
                         "budget_bits and calibration; drop it, or pass both")


def quantize_weight(weight, fmt, method, H=None):
    """Quantize one (N, K) float weight: ``rtn`` (round to nearest) or ``gptq`` with Hessian ``H`` = X^T X."""
    if method == "rtn":
        return quantize(weight, fmt)
    return gptq_quantize(weight, H, fmt)


@dataclasses.dataclass
class AllocationReport:
    """Per-layer formats chosen under a budget, with what each layer's choice costs and errs.

    ``layers``: one dict per layer: ``name``, ``format``, ``bits_per_weight``, ``weights`` (N * K),
    ``weight_sqnr_db`` and ``output_sqnr_db`` (None without calibration). ``table``: every layer in every
    candidate (:func:`lowbit.compiler.quality.measure_layers`' LayerQuality rows).
    """

    budget_bits: float
    bits_per_weight: float
    candidates: list
    sensitivities: str  # "measured" (calibration, a run per cell), "probed" (calibration, estimate="probed") or
    # "equal" (data-free)
    layers: list
    table: list = dataclasses.field(repr=False, default_factory=list)

    def formats(self):
        """The chosen format names, in layer order."""
        return [layer["format"] for layer in self.layers]

    def as_manifest(self):
        """The JSON-able summary an artifact's manifest keeps (no table)."""
        return {"budget_bits": self.budget_bits, "bits_per_weight": self.bits_per_weight,
                "candidates": self.candidates, "sensitivities": self.sensitivities, "layers": self.layers}


def allocate_formats(layer_set, candidates, budget_bits, method="rtn", progress=False, estimate="direct"):
    """Choose a format per layer of a :class:`~lowbit.frontends.layer_sets.LayerSet` within ``budget_bits``;
    returns an :class:`AllocationReport`. GPTQ (``method="gptq"``) is used for the candidates' errors too.
    ``progress``: a progress bar over the (layer, format) measurements; ``estimate``: see
    :func:`lowbit.compiler.quality.choose_formats`."""
    quantizer = None
    if method == "gptq":
        def quantizer(index, w, fmt):
            return quantize_weight(w, fmt, method, layer_set.hessians[index])
    names = [fmt.name for fmt in candidates]
    formats, allocation, table = quality.choose_formats(layer_set.weights, names, budget_bits, layer_set.inputs,
                                                        layer_set.run, layer_set.names, quantizer, progress,
                                                        estimate)
    layers = []
    for row, chosen, w in zip(table, formats, layer_set.weights):
        cell = next(c for c in row if c.format == chosen)
        layers.append({"name": cell.layer, "format": chosen, "bits_per_weight": cell.bits_per_weight,
                       "weights": int(w.size), "weight_sqnr_db": _finite(cell.weight_sqnr_db),
                       "output_sqnr_db": _finite(cell.output_sqnr_db)})
    return AllocationReport(float(budget_bits), allocation.bits_per_weight, names,
                            "equal" if layer_set.run is None else "probed" if estimate == "probed" else "measured",
                            layers, table)


def layer_formats(candidates, budget_bits, method, count, layer_set, hessians, progress=False, estimate="direct"):
    """(format per layer, {layer name: X^T X}, AllocationReport or None) for a frontend's ``count`` layers.

    ``layer_set()`` makes the :class:`~lowbit.frontends.layer_sets.LayerSet` (with a budget);
    ``hessians()`` gives GPTQ's Hessians by layer name (without one).
    """
    if budget_bits is not None:
        chosen_set = layer_set()
        report = allocate_formats(chosen_set, candidates, budget_bits, method, progress, estimate)
        return ([parse_format(name) for name in report.formats()],
                dict(zip(chosen_set.names, chosen_set.hessians or [])), report)
    return candidates * count, hessians() if method == "gptq" else {}, None


def _finite(value):
    """dB for JSON: None stays None, an exact (infinite) SQNR becomes None too (JSON has no infinity)."""
    return None if value is None or not math.isfinite(value) else round(float(value), 3)


def is_torch_module(model):
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch when nothing else did)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)
