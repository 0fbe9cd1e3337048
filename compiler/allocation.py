"""Per-layer weight formats under a size budget, by dynamic programming (HIGGS's linearity theorem).

The linearity theorem (Malinovskii et al. 2024): for small quantization errors a model's loss increase is close
to ``sum_l alpha_l * t_l**2``, where ``t_l = ||W_l - Q(W_l)||_F / ||W_l||_F`` is layer ``l``'s relative error
and ``alpha_l`` its sensitivity. Choosing one format per layer so that the average bits per weight (scales,
zero points and codebooks counted) stays within a budget is then a multiple-choice knapsack, solved exactly
up to a cost resolution by dynamic programming over the discretised bit budget.

Sensitivities: data-free, every ``alpha_l = 1`` (the theorem's weights need data to estimate; equal weights
minimise the summed relative errors); with calibration data, :func:`measure_sensitivities` measures them by
adding noise of a known relative size to one layer at a time and measuring the relative error of the
model's output.
"""
import dataclasses
import math

import numpy as np

from lowbit.errors import InputError

RESOLUTION = 4096  # cost units the whole budget is cut into (see allocate: the budget always holds)


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The result of :func:`allocate`: a format per layer, the bits they take and the predicted error."""

    formats: tuple          # format names, one per layer, in layer order
    bits_per_weight: float  # average over all weights, scales included
    predicted_error: float  # sum_l alpha_l * t_l**2


def relative_error(w, dequantized, x=None):
    """``t**2``: squared relative L2 error of a layer's weight, or of its output on inputs ``x`` (M, K)."""
    w, dequantized = np.asarray(w, np.float64), np.asarray(dequantized, np.float64)
    if x is None:
        return float(((w - dequantized) ** 2).sum() / max((w ** 2).sum(), 1e-300))
    x = np.asarray(x, np.float64)
    y = x @ w.T
    return float((((x @ (w - dequantized).T)) ** 2).sum() / max((y ** 2).sum(), 1e-300))


def allocate(sizes, bits, errors, budget_bits, sensitivities=None):
    """Pick one candidate per layer minimising ``sum alpha_l * errors[l][c]`` with average bits <= budget.

    Parameters
    ----------
    sizes : sequence of int
        Weights per layer (N * K).
    bits : sequence of sequence of float
        ``bits[l][c]``: bits per weight of candidate ``c`` on layer ``l`` (depends on K through group sizes).
    errors : sequence of sequence of float
        ``errors[l][c]``: the layer's ``t**2`` in candidate ``c``.
    budget_bits : float
        Average bits per weight allowed over the whole model.
    sensitivities : sequence of float, optional
        ``alpha_l`` (default all 1).

    Returns
    -------
    (choice, bits_per_weight, predicted_error) : (list of int, float, float)
    """
    sizes = np.asarray(sizes, np.float64)
    bits, errors = np.asarray(bits, np.float64), np.asarray(errors, np.float64)
    alphas = np.ones(len(sizes)) if sensitivities is None else np.asarray(sensitivities, np.float64)
    _check_budget(sizes, bits, budget_bits)
    total = budget_bits * sizes.sum()
    unit = total / RESOLUTION
    # Costs round down, so a choice that fills the budget exactly is not lost to rounding; every end state
    # is then checked against the real budget (a state at most RESOLUTION - layers units is always within it).
    costs = np.floor(sizes[:, None] * bits / unit + 1e-9).astype(np.int64)
    weighted = alphas[:, None] * errors
    best = np.full(RESOLUTION + 1, np.inf)
    best[0] = 0.0
    picks = []
    for layer in range(len(sizes)):
        nxt, pick = np.full(RESOLUTION + 1, np.inf), np.full(RESOLUTION + 1, -1)
        for cand in range(bits.shape[1]):
            cost = costs[layer, cand]
            if cost > RESOLUTION:
                continue
            shifted = np.full(RESOLUTION + 1, np.inf)
            shifted[cost:] = best[:RESOLUTION + 1 - cost] + weighted[layer, cand]
            better = shifted < nxt
            nxt[better], pick[better] = shifted[better], cand
        best = nxt
        picks.append(pick)
    return _backtrack(best, picks, costs, sizes, bits, weighted, budget_bits)


def _check_budget(sizes, bits, budget_bits):
    lowest = float((sizes * bits.min(axis=1)).sum() / sizes.sum())
    highest = float((sizes * bits.max(axis=1)).sum() / sizes.sum())
    if not isinstance(budget_bits, (int, float)) or not math.isfinite(budget_bits):
        raise InputError(f"budget_bits={budget_bits!r}: give the average bits per weight allowed, e.g. 3.25")
    if budget_bits < lowest:
        raise InputError(f"budget of {budget_bits} bits per weight is below the smallest the candidates allow "
                         f"({lowest:.4f}, every layer in its smallest format): raise the budget to at least "
                         f"{lowest:.4f} or add smaller formats")
    if budget_bits > highest:
        raise InputError(f"budget of {budget_bits} bits per weight is above the largest the candidates reach "
                         f"({highest:.4f}, every layer in its largest format): nothing to choose; lower it to at "
                         f"most {highest:.4f}, add larger formats, or quantize every layer with one format")


def _backtrack(best, picks, costs, sizes, bits, weighted, budget_bits):
    """The best end state whose backtracked choice keeps the real (unrounded) budget."""
    rows = np.arange(len(picks))
    for end in np.argsort(best, kind="stable"):
        if not np.isfinite(best[end]):
            break
        choice, state = [], int(end)
        for layer in range(len(picks) - 1, -1, -1):
            cand = int(picks[layer][state])
            choice.append(cand)
            state -= costs[layer, cand]
        choice.reverse()
        average = float((sizes * bits[rows, choice]).sum() / sizes.sum())
        if average <= budget_bits * (1 + 1e-12):
            return choice, average, float(weighted[rows, choice].sum())
    raise InputError(f"no choice of formats keeps {budget_bits} bits per weight: raise the budget slightly")


def measure_sensitivities(run, weights, relative_noise=0.05, draws=4, seed=0, inputs=None):
    """``alpha_l`` per layer from calibration: the output's relative squared error per unit ``t**2``.

    Parameters
    ----------
    run : callable
        ``run(weights) -> output array``: the model on fixed calibration inputs with the given (N, K) weights.
    weights : list of np.ndarray
        The float weights, one per quantizable layer.
    relative_noise : float
        ``t`` of the Gaussian noise added to one layer at a time (small: the theorem is a linearisation).
    draws : int
        Noise draws averaged per layer (one draw's estimate varies by tens of percent on small layers).
    inputs : list of np.ndarray, optional
        Layer ``l``'s calibration inputs (M, K): then ``alpha_l`` is per unit of the layer's *output* ``t**2``
        (:func:`relative_error` with ``x``), the error measure the allocation multiplies it with. Per unit of
        weight ``t**2`` while errors are output errors would count each layer's input scaling twice (measured:
        a calibrated 3.25-bit allocation 2 dB below the data-free one on a trained model).
    """
    reference = np.asarray(run(weights), np.float64)
    norm = max(float((reference ** 2).sum()), 1e-300)
    rng = np.random.default_rng(seed)
    alphas = []
    for index, w in enumerate(weights):
        total = 0.0
        for _ in range(draws):
            noise = rng.standard_normal(w.shape)
            noise *= relative_noise * np.linalg.norm(w) / max(np.linalg.norm(noise), 1e-300)
            perturbed = list(weights)
            perturbed[index] = (w + noise).astype(w.dtype)
            output = np.asarray(run(perturbed), np.float64)
            t2 = relative_noise ** 2 if inputs is None else relative_error(w, perturbed[index], inputs[index])
            total += float(((output - reference) ** 2).sum() / norm) / max(t2, 1e-300)
        alphas.append(total / draws)
    return alphas


def sqnr_db(reference, approximation):
    """Signal-to-quantization-noise ratio ``20 log10(|y| / |y - y_hat|)`` in dB (inf when exact)."""
    reference = np.asarray(reference, np.float64)
    noise = np.linalg.norm(reference - np.asarray(approximation, np.float64))
    return math.inf if noise == 0 else 20.0 * math.log10(np.linalg.norm(reference) / noise)
