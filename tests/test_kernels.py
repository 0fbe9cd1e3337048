"""Decode mpGEMM kernels against the NumPy reference (dequantize in float64, then matmul)."""
import numpy as np
import pytest

from lowbit.compiler.formats import parse_format, quantize
from lowbit.compiler.linear import build_linear
from lowbit.compiler.target import host_target
from lowbit.errors import KernelError

FORMATS = ["w8", "w8s", "w4g128", "w4g128s", "w3g128", "w2g64", "w1g64", "w5g32", "w6g64", "w7g32",
           "ternary", "ternaryg128", "nf4g64", "fp4g32", "nf4", "cb3g64[-1.0,-0.5,-0.25,-0.1,0.1,0.25,0.5,1.0]"]
ROWS = [1, 3, 17, 64]
N, K = 77, 384  # N odd (no multiple of the 16 / 8 vector lanes); K a multiple of every group, of no tile
EPS32 = float(np.finfo(np.float32).eps)


def _random_weight(seed):
    rng = np.random.default_rng(seed)
    # rows of different magnitudes and a shifted mean: non-trivial scales and zero points
    return (rng.standard_normal((N, K)) * rng.uniform(0.2, 3.0, (N, 1)) + rng.uniform(-0.5, 0.5, (N, 1)))


def error_bound(qw, x):
    """First-order bound on float32 accumulation error, from the format and the accumulation length.

    Every partial sum the kernels form is bounded by T = sum_k |x_k| * s * (2^(b+1) + z) (codes decoded
    as 1 + q/2^b are scaled by s*2^b; the zero-point term adds s*(2^b + z)*sum x); each of the at most
    K + 2*groups*codes_per_word + 4 additions on one output's chain adds at most eps*T.
    """
    fmt = qw.format
    if fmt.kind == "codebook":
        weight_max = np.abs(qw.scales).max() * max(abs(v) for v in fmt.levels) * 2
    else:
        weight_max = np.abs(qw.scales).max() * (2 ** (fmt.bits + 1) + np.abs(qw.affine_zeros()).max())
    groups = K // (fmt.group_size or K)
    chain = K + 2 * groups * (32 // fmt.bits) + 4
    return EPS32 * chain * weight_max * np.abs(x).sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def target():
    return host_target()


@pytest.mark.parametrize("name", FORMATS, ids=lambda n: n.split("[")[0])
def test_decode_kernel_matches_reference(name, target):
    qw = quantize(_random_weight(hash(name) % 1000), parse_format(name))
    bias = np.random.default_rng(7).standard_normal(N).astype(np.float32)
    lin = build_linear(qw, bias, target=target, kernel="decode")
    w64 = qw.dequantize().astype(np.float64)
    for M in ROWS:
        x = np.random.default_rng(M).standard_normal((M, K)).astype(np.float32)
        ref = x.astype(np.float64) @ w64.T + bias
        out = lin.run(x)
        assert out.shape == (M, N)
        err = np.abs(out - ref)
        bound = error_bound(qw, x) + EPS32 * np.abs(ref)
        assert (err <= bound).all(), f"M={M}: max err {err.max():.3e} > bound {bound[err > bound].min():.3e}"


def test_bucket_boundaries_dispatch_correctly(target):
    """Every M-bucket edge (1|2, 8|9, 32|33) runs the right subroutine and gives the reference."""
    qw = quantize(_random_weight(3), "w4g128")
    lin = build_linear(qw, target=target, kernel="decode")
    w64 = qw.dequantize().astype(np.float64)
    for M in (1, 2, 8, 9, 32, 33, 40):
        x = np.random.default_rng(M).standard_normal((M, K)).astype(np.float32)
        np.testing.assert_allclose(lin.run(x), x @ w64.T, rtol=0, atol=float(error_bound(qw, x).max()))
    assert set(lin.plans) == {"m1", "m2-8", "m9-32", "m33+"}


def test_lut_on_a_format_without_bit_planes_is_a_clear_error(target):
    qw = quantize(_random_weight(4), "w8")
    with pytest.raises(KernelError, match="kernel 'lut' cannot run w8: .* lut supports 1..4 bits"):
        build_linear(qw, target=target, kernel="lut")


def test_unknown_kernel_is_a_clear_error(target):
    qw = quantize(_random_weight(5), "w4g128")
    with pytest.raises(KernelError, match="unknown kernel 'fast'"):
        build_linear(qw, target=target, kernel="fast")


def test_avx2_target_builds_eight_lane_layout():
    """A target without AVX-512 gets 8-lane tiles (and the code still runs on this host)."""
    from lowbit.compiler.target import resolve_target

    avx2 = resolve_target({"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": "znver2", "num-cores": 2,
                           "features": ["avx2", "fma"]})
    assert avx2.vector_lanes == 8 and avx2.required_features() == ["avx2", "fma"]
    qw = quantize(_random_weight(6), "w4g128")
    lin = build_linear(qw, target=avx2, kernel="decode")
    assert lin.layout.lanes == 8
    x = np.random.default_rng(0).standard_normal((3, K)).astype(np.float32)
    np.testing.assert_allclose(lin.run(x), x @ qw.dequantize().astype(np.float64).T, rtol=0,
                               atol=float(error_bound(qw, x).max()))
