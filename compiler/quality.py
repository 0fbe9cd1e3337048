"""Quantization quality: per-layer and end-to-end SQNR, per-layer format choice under a size budget, the plot.

Model-agnostic at its core: a model is its list of float (N, K) weights, optionally the inputs each layer sees
on calibration data, and optionally ``run(weights) -> output`` that evaluates the model with substituted
weights (for measured sensitivities and end-to-end SQNR). :func:`sequential_view` gives those three for a
:class:`lowbit.compiler.graph.Sequential`; the torch / ONNX frontends give their own.

SQNR (dB) = ``20 log10(|y| / |y - y_hat|)``; weight SQNR compares the weights, output SQNR the layer's outputs
on its calibration inputs, end-to-end SQNR the model's outputs. Bits per weight always count scales, zero
points and codebooks (``lowbit.compiler.formats``' ``bits_per_weight``).
"""
import dataclasses
import math

import numpy as np

from lowbit.compiler import allocation
from lowbit.compiler.formats import parse_format, quantize
from lowbit.errors import InputError

# The 5-8-bit formats let the allocation raise the few sensitive layers (a transformer's first qkv and its
# lm_head: 8-550x the other layers' sensitivity per unit of output error) while the rest go down: on the
# benchmarks/quality_transformer.py model a calibrated 3.25-bit choice among these is 0.4 dB better than among
# the seven formats up to 4 bits (the same within 0.05 dB when its lm_head stays float). The group-128 formats
# give it finer steps (x.125-x.19 bits): +0.55 / +0.85 dB more there (every layer / lm_head float). Every
# default has a fast CPU kernel (a8 or lut) on every AVX2 host. The 2-D grids (higgs{b}g{G}v2) add 0.3-0.5 dB on
# the byte transformer and 0.26 dB on all-MiniLM-L6-v2 (benchmarks/quality_minilm.py). They joined the defaults
# when their lut kernel ran on every AVX2 host (sliced tables through vpshufb without VBMI: 4-7x their gathering
# decode) and their nearest-point search got a cell table: quantizing them takes 1-1.7x as long as higgs3g64 (a
# 4096 x 4096 weight: 6.5 / 10.4 s at 3 / 4 bits vs 6.2 s; 15 / 43 s before; the BLAS rotation then took
# another 1.5-1.8 s off every HIGGS format: higgs3g64 5.45 -> 3.64 s, higgs3g64v2 6.13 -> 4.71 s). They make a
# budgeted compile quantize each layer into 22 formats instead of 16, and measure 22 cells per layer with
# calibration.
DEFAULT_CANDIDATES = ("w2g64", "w3g64", "w4g64", "higgs2g64", "higgs3g64", "higgs4g64", "nf4g64", "w5g64", "w6g64",
                      "w8g64", "w2g128", "w3g128", "w4g128", "higgs2g128", "higgs3g128", "higgs4g128",
                      "higgs2g64v2", "higgs3g64v2", "higgs4g64v2", "higgs2g128v2", "higgs3g128v2", "higgs4g128v2")


@dataclasses.dataclass(frozen=True)
class LayerQuality:
    """One layer in one format."""

    layer: str
    format: str
    bits_per_weight: float
    weight_sqnr_db: float
    output_sqnr_db: object  # None without calibration inputs
    relative_error: float   # t**2: output error with inputs, else weight error
    end_to_end_error: object = None  # with run: the model output's relative squared error, this layer alone quantized


def measure_layers(weights, candidates, inputs=None, names=None, quantizer=None, run=None, progress=False):
    """Every layer in every candidate format: a list (per layer) of lists (per candidate) of LayerQuality.

    ``quantizer(index, weight, format) -> QuantizedWeight`` (default RTN :func:`quantize`) lets a caller use
    GPTQ; ``inputs[l]`` are layer ``l``'s calibration inputs (M, K); with ``run(weights) -> output`` (the
    model on calibration data) each cell also gets its end-to-end error: one model run per (layer, format).
    ``progress``: a progress bar over the cells on stderr (minutes for a transformer with calibration).
    """
    from tqdm import tqdm

    names = names or [f"layer{i}" for i in range(len(weights))]
    formats = [parse_format(c) for c in _checked_candidates(candidates)]
    quantizer = quantizer or (lambda index, w, fmt: quantize(w, fmt))
    end_to_end = None if run is None else _end_to_end_error(run, weights)
    table = []
    bar = tqdm(total=len(weights) * len(formats), desc="lowbit: layers x formats measured", unit="cell",
               disable=not progress, dynamic_ncols=True)
    for index, w in enumerate(weights):
        w = np.asarray(w, np.float64)
        x = None if inputs is None else _checked_inputs(inputs[index], w, names[index])
        row = []
        for fmt in formats:
            approx = quantizer(index, w, fmt).dequantize().astype(np.float64)
            output = None if x is None else allocation.sqnr_db(x @ w.T, x @ approx.T)
            row.append(LayerQuality(names[index], fmt.name, fmt.bits_per_weight(w.shape[1]),
                                    allocation.sqnr_db(w, approx), output, allocation.relative_error(w, approx, x),
                                    None if end_to_end is None else end_to_end(index, approx)))
            bar.update()
        table.append(row)
    bar.close()
    return table


def _end_to_end_error(run, weights):
    """``error(index, approx)``: the model output's relative squared error with layer ``index`` replaced."""
    reference = np.asarray(run(weights), np.float64)
    norm = max(float((reference ** 2).sum()), 1e-300)

    def error(index, approx):
        substituted = list(weights)
        substituted[index] = approx.astype(np.asarray(weights[index]).dtype)
        return float(((np.asarray(run(substituted), np.float64) - reference) ** 2).sum() / norm)

    return error


def _checked_candidates(candidates):
    candidates = [candidates] if isinstance(candidates, str) else list(candidates or ())
    if not candidates:
        raise InputError("no candidate formats: give at least one, e.g. ['w2g64', 'higgs3g64', 'w4g64']")
    return candidates


def _checked_inputs(x, w, name):
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"calibration inputs of {name} must be a non-empty (M, K) array, got shape {x.shape}: "
                         "give at least one calibration row")
    if x.shape[1] != w.shape[1]:
        raise InputError(f"calibration inputs of {name} have {x.shape[1]} features, the layer takes K="
                         f"{w.shape[1]}: pass inputs of the model's input width")
    return x


ESTIMATES = ("direct", "probed")  # how a calibrated choice measures each (layer, format)'s end-to-end error


def choose_formats(weights, candidates, budget_bits, inputs=None, run=None, names=None, quantizer=None,
                   progress=False, estimate="direct"):
    """Per-layer formats minimising the predicted error within ``budget_bits`` average bits per weight.

    The predicted error is the linearity theorem's sum over layers. With ``run`` (calibration) each term is
    measured: the model output's relative squared error with that layer alone in that format (one model run
    per layer and candidate). Measured on benchmarks/quality_transformer.py's model, this beat the product of a
    noise-probed sensitivity (:func:`allocation.measure_sensitivities`, 4 runs per layer) and the layer's
    output error in all six candidate sets x head modes tried, by 0.1-0.8 dB end to end at 3.25 bits: a
    format's error is not isotropic noise (e.g. HIGGS's errors in a key projection lie along its top output
    direction), and the direct measure sees that. Data-free (no ``run``): each layer's ``t**2`` (output
    error on ``inputs`` when given, else weight error) with every sensitivity 1. ``progress``: see
    :func:`measure_layers`.

    ``estimate="probed"`` (with ``run``) is the cheaper estimate for models too big for a run per cell: each
    term is the layer's output error on ``inputs`` times its sensitivity, probed with noise
    (:func:`allocation.measure_sensitivities`: 4 runs per layer, instead of one per layer and candidate: 22 with
    the defaults). On the trained transformer it chose 0.06 / 0.4 dB worse than ``direct`` with the defaults (every
    layer / lm_head float), 0.1-0.8 dB worse over earlier candidate sets.

    Returns
    -------
    (formats, allocation, table) : (list of str, allocation.Allocation, measure_layers' table)
    """
    if estimate not in ESTIMATES:
        raise InputError(f"unknown error estimate {estimate!r}: choose one of {', '.join(ESTIMATES)}")
    probed = run is not None and estimate == "probed"
    table = measure_layers(weights, candidates, inputs, names, quantizer, None if probed else run, progress)
    sizes = [int(np.asarray(w).size) for w in weights]
    bits = [[cell.bits_per_weight for cell in row] for row in table]
    if probed:
        weights = [np.asarray(w, np.float64) for w in weights]
        alphas = allocation.measure_sensitivities(run, weights, inputs=[np.asarray(x, np.float64) for x in inputs])
        errors = [[alpha * cell.relative_error for cell in row] for alpha, row in zip(alphas, table)]
    else:
        errors = [[cell.relative_error if run is None else cell.end_to_end_error for cell in row] for row in table]
    choice, average, predicted = allocation.allocate(sizes, bits, errors, budget_bits)
    formats = [table[layer][cand].format for layer, cand in enumerate(choice)]
    return formats, allocation.Allocation(tuple(formats), average, predicted), table


def sequential_view(model, x=None):
    """(weights, per-layer inputs or None, run or None) of a float :class:`~lowbit.compiler.graph.Sequential`."""
    from lowbit.compiler.graph import Activation, Linear

    linears = model.linear_layers()
    if not all(isinstance(layer, Linear) for layer in linears):
        raise InputError("the quality report takes the float model (Linear layers), not a quantized one")
    weights = [np.asarray(layer.weight, np.float64) for layer in linears]
    if x is None:
        return weights, None, None

    def run(substitute, record=None):
        h = np.asarray(x, np.float64)
        index = 0
        for layer in model.layers:
            if isinstance(layer, Activation):
                h = _activation(layer.kind, h)
                continue
            if record is not None:
                record.append(h)
            h = h @ np.asarray(substitute[index], np.float64).T + (0 if layer.bias is None else layer.bias)
            index += 1
        return h

    inputs = []
    run(weights, inputs)
    return weights, inputs, run


def _activation(kind, h):
    if kind == "relu":
        return np.maximum(h, 0)
    if kind == "silu":
        return h / (1 + np.exp(-h))
    return 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))  # gelu (tanh form)


def end_to_end_sqnr(run, weights, quantized_weights):
    """SQNR (dB) of the model's output with ``quantized_weights`` (dequantized arrays) against ``weights``."""
    return allocation.sqnr_db(run(weights), run(quantized_weights))


def format_table(table, end_to_end=None):
    """A text table: one line per (layer, format) with bits per weight and SQNRs; then end-to-end lines."""
    lines = [f"{'layer':<16} {'format':<12} {'bits/w':>7} {'weight dB':>10} {'output dB':>10}"]
    for row in table:
        for cell in row:
            output = "-" if cell.output_sqnr_db is None else f"{cell.output_sqnr_db:.2f}"
            lines.append(f"{cell.layer:<16} {cell.format:<12} {cell.bits_per_weight:>7.3f} "
                         f"{cell.weight_sqnr_db:>10.2f} {output:>10}")
    for label, (bits, sqnr) in (end_to_end or {}).items():
        lines.append(f"end-to-end {label:<17} {bits:>7.3f} {sqnr:>10.2f}")
    return "\n".join(lines)


def plot_error_vs_bits(table, path, end_to_end=None, title="quantization error vs bits per weight"):
    """Write a PNG: mean weight SQNR per candidate format against its bits per weight (and end-to-end points)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for family, marker in (("w", "o"), ("higgs", "s"), ("nf", "^"), ("fp", "v"), ("ternary", "x")):
        points = _family_points(table, family)
        if points:
            xs, ys, labels = zip(*points)
            axes.plot(xs, ys, marker=marker, linestyle="-", label=f"{family} (mean layer weight SQNR)")
            for x, y, label in points:
                axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for label, (bits, sqnr) in (end_to_end or {}).items():
        axes.plot([bits], [sqnr], marker="*", markersize=12, linestyle="none", label=f"end-to-end: {label}")
    axes.set_xlabel("bits per weight (scales, zero points included)")
    axes.set_ylabel("SQNR (dB)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    from lowbit.runtime.atomic import atomic_file

    with atomic_file(path) as f:
        figure.savefig(f, dpi=120, format="png")
    plt.close(figure)


def _family_points(table, family):
    by_format = {}
    for row in table:
        for cell in row:
            by_format.setdefault(cell.format, []).append(cell)
    points = []
    for name, cells in by_format.items():
        kind = "higgs" if name.startswith("higgs") else "ternary" if name.startswith("ternary") else \
            "nf" if name.startswith("nf") else "fp" if name.startswith("fp") else "w"
        if kind == family:
            points.append((float(np.mean([c.bits_per_weight for c in cells])),
                           float(np.mean([c.weight_sqnr_db for c in cells])), name))
    return sorted(points)
