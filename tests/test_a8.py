"""Int8-activation (``a8``) kernels against the NumPy reference with the same activation quantization."""
import functools

import numpy as np
import pytest

from kernel_data import row_scaled_activations, row_scaled_weight
from lowbit.compiler.formats import quantize
from lowbit.compiler.intrinsics import x86_dot
from lowbit.compiler.kernels_a8 import activation_group, quantize_activations_reference, reference
from lowbit.compiler.linear import build_linear, choose_kernel
from lowbit.compiler.target import host_target, resolve_target
from lowbit.errors import KernelError

FORMATS = ["w8", "w8s", "w4g128", "w4g128s", "w3g128", "w2g64", "w1g64", "w5g32", "w6g64", "w7g32",
           "ternary", "ternaryg128"]
ROWS = [1, 3, 17, 64]
N, K = 77, 384
EPS32 = float(np.finfo(np.float32).eps)
HOST = host_target()
HOST_ISA = x86_dot.isa_for(HOST.features)
pytestmark = pytest.mark.skipif(HOST_ISA is None, reason="host has no integer dot-product instructions")
_weight = functools.partial(row_scaled_weight, N=N, K=K)
_activations = functools.partial(row_scaled_activations, K=K)


def error_bound(qw, x):
    """Integer sums are exact; the float epilogue rounds a few times per group and adds G_n group terms, each
    bounded by sum_k |x_deq| |w|: eps * (groups + 4) * sum_k |x_deq[m, k]| |w[n, k]|."""
    x_deq, _, _ = quantize_activations_reference(x, activation_group(qw.group_size))
    groups = K // activation_group(qw.group_size)
    return EPS32 * (groups + 4) * (np.abs(x_deq) @ np.abs(qw.dequantize().astype(np.float64)).T)


def _check(lin, qw, x):
    out = lin.run(x)
    ref = reference(qw, x)
    err = np.abs(out - ref)
    bound = error_bound(qw, x) + EPS32 * np.abs(ref)
    assert (err <= bound).all(), f"max err {err.max():.3e}, bound there {bound[err > bound].min():.3e}"


def _target_without(*features):
    """The host target with some features removed (forces a narrower dot-product path)."""
    kept = sorted(HOST.features - set(features))
    return resolve_target(dict(HOST.target, features=kept))


@pytest.mark.parametrize("name", FORMATS)
def test_a8_kernel_matches_reference(name):
    qw = quantize(_weight(hash(name) % 1000), name)
    if x86_dot.max_bits(HOST_ISA) < qw.format.bits:
        pytest.skip(f"{name} needs VNNI for a8")
    bias = np.random.default_rng(7).standard_normal(N).astype(np.float32)
    lin = build_linear(qw, bias, target=HOST, kernel="a8")
    assert lin.kernel == "a8"
    for M in ROWS:
        x = _activations(M, M)
        out = lin.run(x)
        ref = reference(qw, x) + bias
        bound = error_bound(qw, x) + EPS32 * np.abs(ref)
        assert (np.abs(out - ref) <= bound).all(), f"M={M}: max err {np.abs(out - ref).max():.3e}"


def test_a8_error_against_float_is_the_activation_rounding():
    """Against exact float activations the error is what int8 rounding of x costs (about 0.4% here), no more."""
    qw = quantize(_weight(11), "w4g128")
    x = _activations(5, 2)
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    out = build_linear(qw, target=HOST, kernel="a8").run(x)
    relative = np.linalg.norm(out - exact) / np.linalg.norm(exact)
    assert 1e-4 < relative < 1e-2


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_intrinsic_equals_its_description(bits):
    """The tensorized kernel and the same schedule without tensorize (LLVM runs the description) agree exactly."""
    from lowbit.compiler.layout import relayout_a8
    from lowbit.compiler.tvm_api import tensor, tvm
    from lowbit.schedules.cpu.a8 import A8Config, DecodeA8

    if bits > x86_dot.max_bits(HOST_ISA):
        pytest.skip("needs VNNI")
    qw = quantize(_weight(bits), f"w{bits}g32")
    layout, arrays = relayout_a8(qw, HOST.vector_lanes)
    x = _activations(3, bits)
    outs = []
    for intrinsic in (True, False):
        rule, config = DecodeA8(), A8Config(m_tile=4, intrinsic=intrinsic)
        sch = rule.apply(rule.template(layout, 3, False, config), HOST, config)
        if intrinsic:
            assert x86_dot.intrin_name(bits, HOST_ISA) in str(sch.trace)
        lib = tvm.compile(sch.mod, target=HOST.tvm_target())
        y = tensor(np.zeros((3, N), np.float32))
        lib["main"](tensor(x), *[tensor(a) for a in arrays.values()], y)
        outs.append(y.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("isa", ["avx512bw", "avx2"])
def test_each_dot_product_path_the_host_supports(isa):
    """Force the narrower paths by hiding features: AVX-512BW (no VNNI) and AVX2 (8 lanes)."""
    hide = {"avx512bw": ("avx512vnni",), "avx2": ("avx512f", "avx512bw", "avx512vnni", "avx512vl")}[isa]
    target = _target_without(*hide)
    if x86_dot.isa_for(target.features) != isa:
        pytest.skip(f"host cannot run the {isa} path")
    for name in ("w4g128", "w7g32", "ternary"):
        qw = quantize(_weight(3), name)
        lin = build_linear(qw, target=target, kernel="a8")
        assert lin.layout.lanes == x86_dot.LANES[isa]
        for M in (1, 3, 17):
            _check(lin, qw, _activations(M, M + 1))


def test_eight_bit_a8_without_vnni_is_a_clear_error():
    target = _target_without("avx512vnni")
    if x86_dot.isa_for(target.features) is None:
        pytest.skip("no dot-product path at all")
    qw = quantize(_weight(4), "w8")
    with pytest.raises(KernelError, match="8-bit codes overflow .* saturating int16 pair sums"):
        build_linear(qw, target=target, kernel="a8")
    assert choose_kernel(qw, target, "auto") == "decode"


def test_codebook_a8_is_a_clear_error_and_auto_uses_another_family():
    qw = quantize(_weight(5), "nf4g64")
    with pytest.raises(KernelError, match="nf4g64 is a codebook format"):
        choose_kernel(qw, HOST, "a8")
    assert choose_kernel(qw, HOST, "auto") in ("lut", "decode")
    assert choose_kernel(quantize(_weight(5), "w4g128"), HOST, "auto") == "a8"


def test_all_zero_activation_group_gives_zero():
    qw = quantize(_weight(6), "w4g128")
    x = _activations(2, 3)
    x[:, :128] = 0.0  # one whole group of zeros: its scale guard must not produce NaN
    lin = build_linear(qw, target=HOST, kernel="a8")
    out = lin.run(x)
    assert np.isfinite(out).all()
    _check(lin, qw, x)


def test_activations_are_scaled_per_32_under_wider_weight_groups_without_repeating_weight_scales():
    """w4g128: the int8 activation scale covers 32 weights (the kernel equals the reference that quantizes
    activations per 32, test above), while the weight's scales and zero points stay one per 128: the kernel reads
    no more bytes than before."""
    from lowbit.compiler.layout import relayout_a8

    qw = quantize(_weight(12), "w4g128")
    layout, arrays = relayout_a8(qw, 16)
    assert (layout.group_size, layout.scale_ratio) == (32, 4)
    assert arrays["S"].shape == (layout.n_tiles, K // 128, 16) == arrays["Z"].shape
    assert layout.packed_bytes == arrays["W"].nbytes + arrays["S"].nbytes + arrays["Z"].nbytes
    assert activation_group(128) == 32 and activation_group(32) == 32 and activation_group(48) == 48
    x = _activations(3, 13)
    coarse = quantize_activations_reference(x, 128)[0] @ qw.dequantize().astype(np.float64).T
    fine = reference(qw, x)
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert np.abs(fine - exact).max() < np.abs(coarse - exact).max()


CODES_CASES = [("w8", "uint8", 70), ("w8s", "int8", 384), ("w4g32", "uint8", 384), ("ternary", "int8", 70),
               ("w3g128", "uint8", 384)]


@pytest.mark.parametrize("name,activation,width", CODES_CASES, ids=[f"{c[0]}-{c[1]}-K{c[2]}" for c in CODES_CASES])
def test_a8_on_the_models_activation_codes_matches_reference(name, activation, width):
    """The a8 kernel on the model's own codes (onnxruntime's dynamic / static quantization): the integer product
    is exact and the float epilogue rounds per group, bounded from the format:
    eps * (groups + 4) * xs * (|a| @ |w|^T + |shift - xz| * sum_k |w|), with a = code - shift the int8 operand."""
    from lowbit.compiler.kernels_a8 import code_shift, codes_reference
    from lowbit.compiler.linear import build_prepared, prepare_layer
    from lowbit.compiler.tvm_api import tensor

    rng = np.random.default_rng(hash(name) % 1000)
    qw = quantize(row_scaled_weight(hash(name) % 1000, N=N, K=width), name)
    if x86_dot.max_bits(HOST_ISA) < qw.format.bits:
        pytest.skip(f"{name} needs VNNI for a8")
    bias = rng.standard_normal(N).astype(np.float32)
    chosen, layout, arrays = prepare_layer(qw, bias, HOST, "auto", activation=activation)
    assert (chosen, layout.activation, layout.scale_ratio) == ("a8", activation, 1)
    lin = build_prepared(chosen, layout, arrays, HOST)
    weights = [tensor(array) for array in arrays.values()]
    low, high = (0, 256) if activation == "uint8" else (-128, 128)
    scale, zero = np.float32(0.0173), (201 if activation == "uint8" else -5)
    w_abs = np.abs(qw.dequantize().astype(np.float64))
    groups = width // layout.group_size
    for M in ROWS:
        codes = rng.integers(low, high, (M, width)).astype(activation)
        y = tensor(np.empty((M, N), np.float32))
        lin.func(tensor(codes), tensor(np.array([scale], np.float32)), tensor(np.array([zero], np.int32)),
                 *weights, y)
        ref = codes_reference(qw, codes, scale, zero) + bias
        shift = code_shift(activation)
        spread = np.abs(codes.astype(np.float64) - shift) @ w_abs.T + abs(shift - zero) * w_abs.sum(axis=1)
        bound = EPS32 * (groups + 4) * scale * spread + EPS32 * np.abs(ref)
        err = np.abs(y.numpy() - ref)
        assert (err <= bound).all(), f"M={M}: max err {err.max():.3e}"


def test_model_codes_need_a8_and_say_so():
    """The model's codes run on a8 only: asking for decode with them, or a codebook weight, is a KernelError."""
    from lowbit.compiler.linear import prepare_layer

    with pytest.raises(KernelError, match="activation codes need the a8 kernel"):
        prepare_layer(quantize(_weight(3), "w4g128"), None, HOST, "decode", activation="uint8")
    with pytest.raises(KernelError, match="codebook"):
        prepare_layer(quantize(_weight(3), "nf4g64"), None, HOST, "auto", activation="uint8")
