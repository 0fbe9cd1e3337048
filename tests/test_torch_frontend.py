"""torch: ``lowbit.quantize_model`` on ``nn.Module`` and ``lowbit.compile(module, example_inputs)`` through
``torch.export`` + TVM's ``from_exported_program``.

Tolerances: eager ``QuantizedLinear`` dequantizes in float32 with one correctly rounded product per weight,
as the NumPy reference does, so its weight is *equal* to ``QuantizedWeight.dequantize()``. Compiled and eager
outputs are float32 sums of the same products in different orders: for one layer they differ by at most
``2 * gamma_K * |x| @ |W|^T`` (``gamma_K = K eps / (1 - K eps)``, Higham 3.1); the models here use
LayerNorm / GELU between layers, so the whole-model check uses that bound on the last layer's inputs and
is scaled by ``max|y|`` (``1e-5`` relative: 100x the float32 rounding of a 64-term sum, 1000x below the
effect of one code off by one).
"""
import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lowbit  # noqa: E402  (after the torch skip)
from lowbit.compiler.formats import quantize  # noqa: E402
from lowbit.errors import FormatError, ModelError  # noqa: E402
from lowbit.frontends.torch_quantize import QuantizedLinear  # noqa: E402

D, HIDDEN, OUT = 64, 96, 40


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(D, HIDDEN), torch.nn.Linear(HIDDEN, D)
        self.norm = torch.nn.LayerNorm(D)

    def forward(self, x):
        return self.norm(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = torch.nn.Linear(D, OUT, bias=False)

    def forward(self, tokens):
        return self.head(self.block(tokens))


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize("fmt", ["w4g32", "w4g32s", "w3g16", "ternaryg32", "nf4g32", "fp4"])
def test_quantized_linear_dequantizes_exactly_as_the_numpy_reference(fmt):
    torch.manual_seed(1)
    linear = torch.nn.Linear(D, OUT)
    layer = QuantizedLinear.from_linear(linear, lowbit.parse_format(fmt))
    reference = quantize(linear.weight.detach().numpy(), fmt)
    qw = layer.quantized_weight()
    np.testing.assert_array_equal(qw.codes, reference.codes)
    np.testing.assert_array_equal(layer.dequantized_weight().numpy(), reference.dequantize())
    x = torch.randn(5, D)
    expected = x.numpy() @ reference.dequantize().T + linear.bias.detach().numpy()
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=0, atol=1e-5)


def test_quantize_model_replaces_every_linear_in_place(net):
    model = lowbit.quantize_model(net, formats=["w4g32"])
    assert model is net
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert kinds["block.fc1"] == kinds["block.fc2"] == kinds["head"] == "QuantizedLinear"
    assert model.head.bias is None and model.block.fc1.format_name == "w4g32"
    assert not any(isinstance(module, torch.nn.Linear) for module in model.modules())


def test_several_formats_need_a_budget_and_the_budget_is_kept(net):
    with pytest.raises(FormatError, match="needs budget_bits"):
        lowbit.quantize_model(net, formats=["w4g32", "w2g32"])
    lowbit.quantize_model(net, formats=["w4g32", "w2g32"], budget_bits=3.0)  # data-free: weight errors
    layers = [net.block.fc1, net.block.fc2, net.head]
    sizes = [m.in_features * m.out_features for m in layers]
    bits = [m.format.bits_per_weight(m.in_features) for m in layers]
    assert sum(s * b for s, b in zip(sizes, bits)) / sum(sizes) <= 3.0
    assert [m.format_name for m in layers] == net.lowbit_allocation.formats()


def correlated(rows, mixing):
    return torch.randn(rows, D) @ mixing


def test_gptq_from_hooked_calibration_beats_rtn():
    torch.manual_seed(5)
    linear = torch.nn.Sequential(torch.nn.Linear(D, OUT))
    mixing = torch.randn(D, D) * torch.exp(torch.empty(D).uniform_(-2, 1))[:, None] / D ** 0.5
    calibration = [correlated(256, mixing) for _ in range(4)]
    held_out = correlated(2048, mixing)
    with torch.no_grad():
        exact = linear(held_out)
        errors = {}
        for method in ("rtn", "gptq"):
            model = lowbit.quantize_model(copy.deepcopy(linear), "w3g32", method=method,
                                          calibration=calibration if method == "gptq" else None)
            errors[method] = float(torch.linalg.norm(model(held_out) - exact))
    assert errors["gptq"] < 0.8 * errors["rtn"], errors  # margin: see tests/test_gptq.py


def test_gptq_needs_calibration_to_reach_every_layer(net):
    with pytest.raises(ModelError, match="no calibration input reached"):
        lowbit.quantize_model(net, "w4g32", method="gptq", calibration=[])


@pytest.fixture()
def compiled(net):
    model = lowbit.quantize_model(net, "w4g32")
    example = torch.randn(3, 7, D)
    return model, lowbit.compile(model, (example,), kernel="decode")


def test_compiled_torch_model_matches_eager_with_symbolic_batch_and_sequence(compiled):
    model, module = compiled
    spec = module.manifest["inputs"][0]
    assert spec["name"] == "tokens" and all(isinstance(dim, str) for dim in spec["shape"][:2])
    assert spec["shape"][2] == D
    assert module.manifest["source"] == "torch"
    layers = {layer["name"]: layer for layer in module.manifest["layers"]}
    assert sorted(layers) == ["block.fc1", "block.fc2", "head"]
    assert {layer["format"] for layer in layers.values()} == {"w4g32"}
    for batch, sequence in ((1, 1), (2, 7), (5, 3)):
        x = torch.randn(batch, sequence, D)
        with torch.no_grad():
            eager = model(x).numpy()
        ours = module(x.numpy())
        assert ours.shape == (batch, sequence, OUT)
        assert np.abs(ours - eager).max() <= 1e-5 * np.abs(eager).max()


def test_exact_integers_reach_the_kernels(net):
    from lowbit.frontends.torch_export import import_torch

    model = lowbit.quantize_model(net, "w4g32")
    imported = import_torch(model, (torch.randn(2, 7, D),))
    specs = {spec.name: spec.weight for spec in imported.quantized.values()}
    for name in ("block.fc1", "block.fc2", "head"):
        layer = model.get_submodule(name)
        np.testing.assert_array_equal(specs[name].codes, layer.codes.numpy())
        np.testing.assert_array_equal(specs[name].scales, layer.scales.numpy())
        np.testing.assert_array_equal(specs[name].zeros, layer.zeros.numpy())
    params = [p.name for p in imported.mod["main"].params]  # the model's input, then one weight input per layer
    assert params[1:] == list(imported.quantized) and imported.inputs[0]["name"] == "tokens"


def test_torch_artifact_runs_with_the_runtime_alone(compiled, tmp_path):
    model, module = compiled
    path = module.save(str(tmp_path / "net.lowbit"))
    x = np.random.default_rng(0).standard_normal((2, 4, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np, lowbit.runtime; "
              f"y = lowbit.runtime.load({path!r})(tokens=np.load({str(tmp_path / 'x.npy')!r})); "
              "assert 'torch' not in sys.modules and 'lowbit.compiler' not in sys.modules; "
              f"np.save({str(tmp_path / 'y.npy')!r}, y)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"TVM_USE_RUNTIME_LIB": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), module(x))


def test_compile_needs_example_inputs_and_quantized_layers(net):
    with pytest.raises(ModelError, match="needs example_inputs"):
        lowbit.compile(net)
    with pytest.raises(ModelError, match="no lowbit QuantizedLinear"):
        lowbit.compile(net, (torch.randn(2, 7, D),))
    with pytest.raises(ModelError, match="quantized first, in place: lowbit.quantize_model"):
        lowbit.compile(net, (torch.randn(2, 7, D),), format="w4g32")


@pytest.mark.parametrize("style", ["qdq", "matmulnbits"])
def test_exported_onnx_runs_in_onnxruntime_and_compiles_back_to_the_same_integers(net, style, tmp_path):
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    from lowbit.frontends.onnx import import_onnx

    model = lowbit.quantize_model(net, "w4g32")
    path = tmp_path / "net.onnx"
    proto = lowbit.export_onnx(model, (torch.randn(3, 7, D),), path=str(path), style=style)
    assert path.exists() and [value.name for value in proto.graph.input] == ["tokens"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 7, D)
    with torch.no_grad():
        eager = model(x).numpy()
    theirs = session.run(None, {"tokens": x.numpy()})[0]
    assert np.abs(theirs - eager).max() <= 1e-5 * np.abs(eager).max()  # module docstring
    layers = dict(zip(["block.fc1", "block.fc2", "head"], import_onnx(proto).quantized.values()))
    for name, spec in layers.items():
        buffers = model.get_submodule(name)
        np.testing.assert_array_equal(spec.weight.codes, buffers.codes.numpy())
        np.testing.assert_array_equal(spec.weight.scales, buffers.scales.numpy())
        np.testing.assert_array_equal(spec.weight.zeros, buffers.zeros.numpy())


class TransposedInput(torch.nn.Module):
    """A Linear reading a non-contiguous (transposed) tensor, and one whose output is never used."""

    def __init__(self):
        super().__init__()
        self.fc, self.unused = torch.nn.Linear(D, OUT), torch.nn.Linear(D, OUT)

    def forward(self, x):  # x: (batch, D, sequence)
        self.unused(x.transpose(1, 2))
        return self.fc(x.transpose(1, 2))


def test_linear_on_a_transposed_input_is_lowered_and_an_unused_layer_dropped():
    """Regressions: torch lowered such a matmul to bmm with the weight broadcast (the layer was refused), and a
    dead layer's weight input was refused as 'not used as the right-hand side of one matmul'."""
    torch.manual_seed(2)
    model = lowbit.quantize_model(TransposedInput().eval(), "w4g32")
    compiled = lowbit.compile(model, (torch.randn(2, D, 5),), kernel="decode")
    assert [layer["name"] for layer in compiled.manifest["layers"]] == ["fc"]
    x = torch.randn(3, D, 5)
    with torch.no_grad():
        eager = model(x).numpy()
    assert np.abs(compiled(x.numpy()) - eager).max() <= 1e-5 * np.abs(eager).max()


class Unsupported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(D, D)

    def forward(self, x):
        return torch.special.bessel_j0(self.fc(x)) + torch.special.i0(x)


def test_unsupported_torch_operators_are_listed_together():
    model = lowbit.quantize_model(Unsupported().eval(), "w4g32")
    with pytest.raises(ModelError, match=r"Unsupported function types .*(bessel_j0.*i0|i0.*bessel_j0)"):
        lowbit.compile(model, (torch.randn(2, D),))
