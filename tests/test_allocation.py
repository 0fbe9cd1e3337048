"""Per-layer bit allocation: the DP finds the optimum within the budget; bad budgets say the feasible range."""
import itertools

import numpy as np
import pytest

from lowbit.compiler import allocation
from lowbit.errors import InputError


def _instance(seed, layers=4, candidates=3):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1000, 100000, layers)
    bits = np.sort(rng.uniform(2, 5, (layers, candidates)), axis=1)
    errors = np.sort(rng.uniform(0.001, 0.2, (layers, candidates)), axis=1)[:, ::-1]  # more bits, less error
    return sizes, bits, errors


def _brute_force(sizes, bits, errors, budget, alphas):
    best = None
    for choice in itertools.product(range(bits.shape[1]), repeat=len(sizes)):
        rows = np.arange(len(sizes))
        average = (sizes * bits[rows, choice]).sum() / sizes.sum()
        if average <= budget:
            error = (alphas * errors[rows, choice]).sum()
            best = error if best is None else min(best, error)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_dp_matches_brute_force_and_keeps_the_budget(seed):
    sizes, bits, errors = _instance(seed)
    alphas = np.random.default_rng(100 + seed).uniform(0.5, 3.0, len(sizes))
    lowest = (sizes * bits.min(axis=1)).sum() / sizes.sum()
    highest = (sizes * bits.max(axis=1)).sum() / sizes.sum()
    budget = float(lowest + (highest - lowest) * 0.55)
    choice, average, predicted = allocation.allocate(sizes, bits, errors, budget, alphas)
    rows = np.arange(len(sizes))
    assert average == pytest.approx((sizes * bits[rows, choice]).sum() / sizes.sum())
    assert average <= budget
    assert predicted == pytest.approx((alphas * errors[rows, choice]).sum())
    # costs round up to 1/RESOLUTION of the budget per layer: the DP may only lose solutions that close
    slack = len(sizes) / allocation.RESOLUTION * budget
    assert predicted <= _brute_force(sizes, bits, errors, budget - slack, alphas) + 1e-12
    assert predicted >= _brute_force(sizes, bits, errors, budget, alphas) - 1e-12


def test_more_budget_never_predicts_more_error():
    sizes, bits, errors = _instance(3, layers=6, candidates=4)
    lowest = (sizes * bits.min(axis=1)).sum() / sizes.sum()
    highest = (sizes * bits.max(axis=1)).sum() / sizes.sum()
    predicted = [allocation.allocate(sizes, bits, errors, float(b))[2] for b in np.linspace(lowest + 0.01, highest, 7)]
    assert all(a >= b - 1e-12 for a, b in zip(predicted, predicted[1:])), predicted
    assert predicted[-1] == pytest.approx(errors.min(axis=1).sum())


def test_sensitive_layers_get_the_bits():
    sizes = [1000, 1000]
    bits = [[2.25, 4.25], [2.25, 4.25]]
    errors = [[0.1, 0.01], [0.1, 0.01]]
    choice, _, _ = allocation.allocate(sizes, bits, errors, 3.25, sensitivities=[1.0, 10.0])
    assert choice == [0, 1]
    choice, _, _ = allocation.allocate(sizes, bits, errors, 3.25, sensitivities=[10.0, 1.0])
    assert choice == [1, 0]


@pytest.mark.parametrize("budget, message", [(1.5, "below the smallest the candidates allow \\(2.2500"),
                                             (9.0, "above the largest the candidates reach \\(4.2500"),
                                             (float("nan"), "give the average bits per weight")])
def test_infeasible_budgets_name_the_range(budget, message):
    with pytest.raises(InputError, match=message):
        allocation.allocate([10, 10], [[2.25, 4.25], [2.25, 4.25]], [[0.1, 0.01], [0.1, 0.01]], budget)


def test_measured_sensitivity_follows_how_much_a_layer_reaches_the_output():
    rng = np.random.default_rng(1)  # not the noise's seed 0: noise equal to x's first rows would correlate
    # big enough that the noise's projection onto x's spectrum averages out (16 x 32 layers vary by 40%)
    x = rng.standard_normal((512, 256))
    w1, w2 = rng.standard_normal((128, 256)), rng.standard_normal((128, 256))

    def run(weights):  # the first layer's output is amplified 10x in the sum
        return 10 * x @ weights[0].T + x @ weights[1].T

    alphas = allocation.measure_sensitivities(run, [w1, w2])
    assert 50 < alphas[0] / alphas[1] < 200, alphas
    assert alphas[0] == pytest.approx(100 / 101, rel=0.1)


def test_relative_error_and_sqnr():
    w = np.array([[3.0, 4.0]])
    assert allocation.relative_error(w, np.array([[3.0, 3.0]])) == pytest.approx(1 / 25)
    assert allocation.sqnr_db(w, np.array([[3.0, 3.0]])) == pytest.approx(20 * np.log10(5.0))
    assert allocation.sqnr_db(w, w) == float("inf")
    x = np.array([[1.0, 0.0]])  # the input never reaches the second column: its error does not count
    assert allocation.relative_error(w, np.array([[3.0, 0.0]]), x) == 0.0


def test_sensitivity_with_inputs_is_per_unit_of_output_error():
    """For a model that is one linear layer, the end-to-end error *is* the layer's output error: alpha = 1
    when measured per unit of output t**2 (the unit the calibrated allocation multiplies it with); per unit of
    weight t**2 it would be the input's anisotropy instead."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 24)) * np.geomspace(0.05, 5, 24)
    w = rng.standard_normal((16, 24))

    def run(weights):
        return x @ weights[0].T

    (per_output,) = allocation.measure_sensitivities(run, [w], inputs=[x])
    (per_weight,) = allocation.measure_sensitivities(run, [w])
    assert per_output == pytest.approx(1.0, rel=1e-9)
    assert abs(per_weight - 1.0) > 0.1
