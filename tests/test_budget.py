"""Per-layer formats under a size budget through the frontends (issue 9): quantize_model, compile, the CLI."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import lowbit
from lowbit.errors import LowbitError
from lowbit.frontends.layer_sets import hessian_rows
from lowbit.frontends.onnx_quantize import ALLOCATION_KEY, quantize_onnx, quantize_onnx_layers

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_onnx_quantize import correlated_inputs, float_mlp, run_ort  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")
CANDIDATES = ["w2g32", "w3g32", "w4g32", "higgs3g32"]


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def test_hessian_rows_stand_in_for_the_calibration_rows(rng):
    x = rng.standard_normal((40, 12)) @ rng.standard_normal((12, 12))
    R = hessian_rows(x.T @ x)
    d = rng.standard_normal((7, 12))
    np.testing.assert_allclose(np.linalg.norm(R @ d.T), np.linalg.norm(x @ d.T), rtol=1e-9)


def _chosen_bits(weights):
    sizes = np.array([qw.shape[0] * qw.shape[1] for qw in weights.values()], np.float64)
    bits = np.array([qw.format.bits_per_weight(qw.shape[1]) for qw in weights.values()])
    return float((sizes * bits).sum() / sizes.sum())


@pytest.mark.parametrize("calibrated", [False, True])
def test_onnx_budget_keeps_the_budget_and_reports_each_layer(rng, calibrated):
    model, _ = float_mlp(rng)
    calibration = {"x": correlated_inputs(rng)(64)} if calibrated else None
    _, layers, weights, report = quantize_onnx_layers(model, CANDIDATES, "rtn", calibration, budget_bits=3.3)
    assert [weights[layer.node.name].format.name for layer in layers] == report.formats()
    assert set(report.formats()) <= set(CANDIDATES)
    assert _chosen_bits(weights) == pytest.approx(report.bits_per_weight) and report.bits_per_weight <= 3.3
    assert report.sensitivities == ("measured" if calibrated else "equal")
    assert all((layer["output_sqnr_db"] is not None) == calibrated for layer in report.layers)
    # a larger budget never predicts a worse model
    _, _, _, richer = quantize_onnx_layers(model, CANDIDATES, "rtn", calibration, budget_bits=4.6)
    assert richer.bits_per_weight >= report.bits_per_weight


def test_budget_errors_name_the_feasible_range(rng):
    model, _ = float_mlp(rng)
    with pytest.raises(LowbitError, match=r"below the smallest .*2\.5"):
        quantize_onnx_layers(model, CANDIDATES, budget_bits=2.0)
    with pytest.raises(LowbitError, match="above the largest"):
        quantize_onnx_layers(model, CANDIDATES, budget_bits=8.0)
    with pytest.raises(LowbitError, match="needs budget_bits"):
        lowbit.quantize_model(model, formats=CANDIDATES)
    with pytest.raises(LowbitError, match="calibration is empty"):
        lowbit.quantize_model(model, formats=CANDIDATES, budget_bits=3.3, calibration=[])
    with pytest.raises(LowbitError, match="lacks model inputs"):
        lowbit.quantize_model(model, formats=CANDIDATES, budget_bits=3.3, calibration={"y": np.zeros((2, 64))})


def test_compile_with_a_budget_records_the_choice_and_matches_its_reference(rng):
    model, b2 = float_mlp(rng)
    calibration = {"x": correlated_inputs(rng)(64)}
    compiled = lowbit.compile(model, target="cpu", format=CANDIDATES, budget_bits=3.3, calibration=calibration,
                              kernel="decode")
    manifest = compiled.manifest
    assert manifest["allocation"]["budget_bits"] == 3.3 and manifest["allocation"]["sensitivities"] == "measured"
    formats = [layer["format"] for layer in manifest["layers"]]
    _, _, weights, report = quantize_onnx_layers(model, CANDIDATES, "rtn", calibration, budget_bits=3.3)
    assert formats == report.formats()  # deterministic: the same choice as the frontend alone
    assert all(layer["weight_sqnr_db"] is not None for layer in manifest["layers"])
    # the compiled mixed-precision model equals the float model with the dequantized weights (fp32 kernels)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    w1, w2 = (weights[name].dequantize().astype(np.float64) for name in ("fc1", "fc2"))
    expected = np.maximum(x @ w1.T, 0) @ w2.T + b2
    np.testing.assert_allclose(compiled(x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_quantized_onnx_carries_the_report_and_compile_reads_it(rng, tmp_path):
    model, _ = float_mlp(rng)
    uniform = ["w2g32", "w3g32", "w4g32"]  # ONNX can express uniform formats only
    quantized = quantize_onnx(model, uniform, budget_bits=3.3)
    stored = json.loads({e.key: e.value for e in quantized.metadata_props}[ALLOCATION_KEY])
    assert {layer["format"] for layer in stored["layers"]} <= set(uniform) and stored["bits_per_weight"] <= 3.3
    path = tmp_path / "q.onnx"
    onnx.save(quantized, path)
    compiled = lowbit.compile(str(path), target="cpu")
    assert compiled.manifest["allocation"]["candidates"] == uniform
    assert [layer["format"] for layer in compiled.manifest["layers"]] == [layer["format"] for layer in stored["layers"]]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    assert np.isfinite(run_ort(quantized, {"x": x})).all()


def test_codebook_candidates_cannot_be_written_as_onnx(rng):
    model, _ = float_mlp(rng)
    with pytest.raises(LowbitError, match="codebook"):
        quantize_onnx(model, ["higgs3g32"], budget_bits=3.5)


@pytest.mark.parametrize("estimate, sensitivities", [("direct", "measured"), ("probed", "probed")])
def test_torch_budget_with_calibration(rng, estimate, sensitivities):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32))
    x = torch.randn(8, 64)
    reference = model(x).detach().numpy()
    batches = [torch.randn(32, 64) for _ in range(2)]
    lowbit.quantize_model(model, formats=CANDIDATES, budget_bits=3.3, calibration=batches, estimate=estimate)
    report = model.lowbit_allocation
    assert [m.format_name for m in (model[0], model[2])] == report.formats()
    assert report.bits_per_weight <= 3.3 and report.sensitivities == sensitivities
    y = model(x).detach().numpy()
    assert 20 * np.log10(np.linalg.norm(reference) / np.linalg.norm(reference - y)) > 5  # quantized, not broken
    compiled = lowbit.compile(model, (x,), target="cpu", kernel="decode")
    assert [layer["format"] for layer in compiled.manifest["layers"]] == report.formats()
    np.testing.assert_allclose(compiled(x.numpy()), y, rtol=1e-4, atol=1e-4 * np.abs(y).max())


def test_torch_higgs_layer_runs_eagerly_as_its_dequantized_weight():
    torch = pytest.importorskip("torch")
    from lowbit.frontends.torch_quantize import QuantizedLinear

    linear = torch.nn.Linear(64, 16)
    layer = QuantizedLinear.from_linear(linear, lowbit.parse_format("higgs3g32"))
    x = torch.randn(4, 64)
    expected = x.numpy() @ layer.quantized_weight().dequantize().T + linear.bias.detach().numpy()
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lowbit", *args], capture_output=True, text=True, cwd=cwd,
                          check=False)


def test_cli_compile_budget_quality_and_inspect(rng, tmp_path):
    model, _ = float_mlp(rng)
    onnx.save(model, tmp_path / "f.onnx")
    np.savez(tmp_path / "cal.npz", x=correlated_inputs(rng)(64))
    out = _cli("compile", "f.onnx", "-o", "m.lowbit", "--format", ",".join(CANDIDATES), "--budget-bits", "3.3",
               "--calibration", "cal.npz", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "budget 3.3 bits/weight" in out.stdout and "SQNR weight" in out.stdout
    shown = _cli("inspect", "m.lowbit", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "SQNR weight/output dB" in shown.stdout and "bits/weight on average" in shown.stdout
    assert "formats chosen per layer" in shown.stdout
    report = _cli("quality", "f.onnx", "--formats", "w2g32,w4g32,higgs3g32", "--calibration", "cal.npz",
                  "--budget-bits", "3.3", "--plot", "q.png", "--json", "q.json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    data = json.loads((tmp_path / "q.json").read_text())
    assert {row["format"] for row in data["layers"]} == {"w2g32", "w4g32", "higgs3g32"}
    assert set(data["end_to_end"]) == {"w2g32", "w4g32", "higgs3g32", "budget 3.3"}
    assert data["end_to_end"]["w4g32"]["sqnr_db"] > data["end_to_end"]["w2g32"]["sqnr_db"]
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
    bad = _cli("compile", "f.onnx", "-o", "bad.lowbit", "--format", "w2g32,w4g32", "--budget-bits", "1.0",
               cwd=tmp_path)
    assert bad.returncode != 0 and "below the smallest" in bad.stderr
    assert not (tmp_path / "bad.lowbit").exists()


def test_torch_model_with_2d_grid_layers_compiles_and_matches_eager(rng):
    """2-D-grid HIGGS through the whole-model pipeline (torch.export -> Relax -> kernels): a 2-bit grid runs the
    lut kernel (4-bit pair codes), a 3-bit one lut too (6-bit codes: vpermb with AVX-512 VBMI, sliced tables
    through vpshufb with AVX2), decode only without AVX2;
    the layers' K is the weight's, not the code count's (K / 2)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(128, 96), torch.nn.ReLU(), torch.nn.Linear(96, 64))
    from lowbit.frontends.torch_quantize import QuantizedLinear

    quantized = model
    for index, fmt in ((0, "higgs2g64v2"), (2, "higgs3g32v2")):
        quantized[index] = QuantizedLinear.from_linear(model[index], lowbit.parse_format(fmt))
    x = torch.randn(5, 128)
    y = quantized(x).detach().numpy()
    compiled = lowbit.compile(quantized, (x,), target="cpu")
    layers = compiled.manifest["layers"]
    from lowbit.compiler.intrinsics import x86_lut
    from lowbit.compiler.target import host_target

    features = host_target().features
    first = "lut" if x86_lut.isa_for(features) else "decode"
    second = "lut" if x86_lut.wide_isa_for(features) else "decode"
    assert [(layer["N"], layer["K"], layer["kernel"]) for layer in layers] == [(96, 128, first), (64, 96, second)]
    out = compiled(x.numpy())
    # lut layers quantize activations to int8 (about 1-2% relative): a wrong pairing or K errs by ~100%
    assert np.linalg.norm(out - y) / np.linalg.norm(y) < 0.05
