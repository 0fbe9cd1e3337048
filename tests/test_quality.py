"""The quality report's pieces: per-layer table, format choice under a budget, end-to-end SQNR, the plot."""
import numpy as np
import pytest

from lowbit.compiler import quality
from lowbit.compiler.graph import Activation, Linear, Sequential
from lowbit.errors import InputError


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(3)
    model = Sequential([Linear(rng.standard_t(4, (128, 64)) / 8, rng.standard_normal(128), "fc0"), Activation("gelu"),
                        Linear(rng.standard_t(4, (64, 128)) / 11, None, "fc1")])
    return model, rng.standard_normal((32, 64))


def test_sequential_view_records_each_layers_inputs_and_runs_the_model(mlp):
    model, x = mlp
    weights, inputs, run = quality.sequential_view(model, x)
    assert [w.shape for w in weights] == [(128, 64), (64, 128)]
    np.testing.assert_allclose(inputs[0], x)
    h = quality._activation("gelu", x @ weights[0].T + model.layers[0].bias)
    np.testing.assert_allclose(inputs[1], h)
    np.testing.assert_allclose(run(weights), h @ weights[1].T)


def test_measuring_shows_progress_over_the_cells_only_when_asked(mlp, capsys):
    model, x = mlp
    weights, inputs, run = quality.sequential_view(model, x)
    quality.choose_formats(weights, ["w2g64", "w4g64", "higgs3g64"], 3.5, inputs, run, progress=True)
    shown = capsys.readouterr().err
    assert "layers x formats measured" in shown and "6/6" in shown, shown
    quality.choose_formats(weights, ["w2g64", "w4g64"], 3.5, inputs, run)
    assert capsys.readouterr().err == ""


def test_layer_table_has_every_layer_and_format_with_output_sqnr_only_given_inputs(mlp):
    model, x = mlp
    weights, inputs, _ = quality.sequential_view(model, x)
    table = quality.measure_layers(weights, ["w2g64", "higgs2g64", "w4g64"], inputs, ["fc0", "fc1"])
    assert [[c.format for c in row] for row in table] == [["w2g64", "higgs2g64", "w4g64"]] * 2
    for row in table:
        assert row[2].weight_sqnr_db > row[0].weight_sqnr_db + 10  # 2 more bits: about 12 dB
        assert all(c.output_sqnr_db is not None for c in row)
    assert table[0][0].bits_per_weight == pytest.approx(2 + 16 / 64 + 2 / 64)
    assert all(c.output_sqnr_db is None for row in quality.measure_layers(weights, "w3g64") for c in row)
    text = quality.format_table(table, {"w4g64": (4.3125, 30.0)})
    assert "higgs2g64" in text and "end-to-end w4g64" in text and len(text.splitlines()) == 1 + 6 + 1


def test_choose_formats_keeps_the_budget_and_beats_uniform_formats_of_that_size(mlp):
    model, x = mlp
    weights, inputs, run = quality.sequential_view(model, x)
    candidates = ["w2g64", "w3g64", "w4g64", "higgs2g64", "higgs3g64", "higgs4g64"]
    formats, alloc, table = quality.choose_formats(weights, candidates, 3.3, inputs, run, ["fc0", "fc1"])
    assert alloc.bits_per_weight <= 3.3 and len(formats) == 2
    from lowbit.compiler.formats import quantize

    chosen = quality.end_to_end_sqnr(run, weights, [quantize(w, f).dequantize() for w, f in zip(weights, formats)])
    uniform = quality.end_to_end_sqnr(run, weights, [quantize(w, "w3g64").dequantize() for w in weights])
    assert chosen >= uniform  # w3g64 (3.30 bits) is one of the choices the DP had


def test_default_candidates_let_a_sensitive_layer_go_above_4_bits():
    """A small layer whose errors weigh 10^4 times more (as a transformer's lm_head or first qkv, measured 8-550x)
    gets 5-8 bits while the big one goes down to 2; before the 5-8-bit defaults it could get at most 4.31."""
    rng = np.random.default_rng(5)
    weights = [rng.standard_normal((64, 128)), rng.standard_normal((512, 128))]
    x = rng.standard_normal((96, 128))

    def run(ws):
        return np.concatenate([100 * x @ np.asarray(ws[0]).T, x @ np.asarray(ws[1]).T], axis=1)

    formats, alloc, _ = quality.choose_formats(weights, quality.DEFAULT_CANDIDATES, 3.25, [x, x], run)
    assert alloc.bits_per_weight <= 3.25
    assert formats[0] in ("w5g64", "w6g64", "w8g64") and formats[1].startswith(("w2", "higgs2")), formats


def test_calibrated_choice_weighs_each_layer_format_by_its_measured_end_to_end_error():
    """With ``run`` every (layer, format) cell holds the model output's relative squared error with that layer
    alone quantized, and the choice minimises their sum. Here the second layer reads only half of the first
    layer's outputs: errors in the other half do not count, which only the end-to-end measure sees."""
    from lowbit.compiler.formats import quantize

    rng = np.random.default_rng(8)
    weights = [rng.standard_normal((128, 64)), rng.standard_normal((32, 128))]
    weights[1][:, 64:] = 0.0  # hidden units 64..127 are never read
    x = rng.standard_normal((48, 64))

    def run(ws):
        return (x @ np.asarray(ws[0]).T) @ np.asarray(ws[1]).T

    candidates = ["w2g64", "w4g64"]
    formats, alloc, table = quality.choose_formats(weights, candidates, 3.3, [x, x @ weights[0].T], run)
    reference = run(weights)
    for index, row in enumerate(table):
        for cell in row:
            substituted = list(weights)
            substituted[index] = quantize(weights[index], cell.format).dequantize()
            expected = ((run(substituted) - reference) ** 2).sum() / (reference ** 2).sum()
            assert cell.end_to_end_error == pytest.approx(expected, rel=1e-9)
    picked = [next(c for c in row if c.format == f) for row, f in zip(table, formats)]
    assert alloc.predicted_error == pytest.approx(sum(c.end_to_end_error for c in picked))
    assert all(c.end_to_end_error is None for row in quality.measure_layers(weights, candidates) for c in row)


def test_probed_estimate_weighs_each_layers_output_error_by_its_sensitivity():
    """estimate="probed": each cell's error is the layer's output error times its noise-probed sensitivity
    (4 model runs per layer plus the reference, none per cell). Here the second layer's outputs are scaled
    by 100 in the model's output: its sensitivity is ~10^4 times the first's, and the choice gives it the bits."""
    from lowbit.compiler import allocation

    rng = np.random.default_rng(5)
    weights = [rng.standard_normal((64, 128)), rng.standard_normal((512, 128))]
    x = rng.standard_normal((96, 128))
    runs = []

    def run(ws):
        runs.append(1)
        return np.concatenate([100 * x @ np.asarray(ws[0]).T, x @ np.asarray(ws[1]).T], axis=1)

    candidates = ["w2g64", "w4g64", "w8g64"]
    formats, alloc, table = quality.choose_formats(weights, candidates, 3.0, [x, x], run, estimate="probed")
    assert len(runs) == 2 * 4 + 1
    alphas = allocation.measure_sensitivities(run, weights, inputs=[x, x])
    assert alphas[0] > 1000 * alphas[1]
    picked = [next(c for c in row if c.format == f) for row, f in zip(table, formats)]
    assert alloc.predicted_error == pytest.approx(sum(a * c.relative_error for a, c in zip(alphas, picked)))
    assert formats == ["w8g64", "w2g64"] and all(c.end_to_end_error is None for row in table for c in row)
    with pytest.raises(InputError, match="unknown error estimate 'exact'"):
        quality.choose_formats(weights, candidates, 3.0, [x, x], run, estimate="exact")


@pytest.mark.parametrize("make, message", [
    (lambda x: x[:0], "non-empty"), (lambda x: x[:, :10], "10 features")])
def test_bad_calibration_inputs_are_errors(mlp, make, message):
    model, x = mlp
    weights, inputs, _ = quality.sequential_view(model, x)
    with pytest.raises(InputError, match=message):
        quality.measure_layers(weights, ["w4g64"], [make(inputs[0]), inputs[1]])
    with pytest.raises(InputError, match="no candidate formats"):
        quality.measure_layers(weights, [])
    with pytest.raises(InputError, match="below the smallest"):
        quality.choose_formats(weights, ["w2g64", "w4g64"], 1.0)


def test_plot_is_a_png(mlp, tmp_path):
    model, x = mlp
    weights, inputs, _ = quality.sequential_view(model, x)
    table = quality.measure_layers(weights, ["w2g64", "w4g64", "higgs2g64", "higgs4g64", "nf4g64"], inputs)
    path = tmp_path / "plot.png"
    quality.plot_error_vs_bits(table, str(path), {"w4g64": (4.31, 25.0)})
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000


def test_cli_help_spells_out_the_default_candidates():
    """The help texts repeat DEFAULT_CANDIDATES (importing it would pull the compiler into `lowbit measure`)."""
    from lowbit import cli

    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    listed = ",".join(quality.DEFAULT_CANDIDATES)
    for command, option in (("quality", "--formats"), ("compile", "--budget-bits")):
        action = next(a for a in subcommands[command]._actions if option in a.option_strings)
        assert listed in action.help, (command, action.help)

