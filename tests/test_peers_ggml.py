"""The llama.cpp peer: ggml gets the weight it is paired with, computes x @ W^T, and refuses what it lacks."""
import numpy as np
import pytest

from lowbit import peers_ggml
from lowbit.compiler.formats import parse_format, quantize

pytest.importorskip("ggml", reason="ggml-python is the optional `bench` extra (make bench installs it)")


def _weight(N, K, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)


@pytest.mark.parametrize("fmt, types", [("w8", ("Q8_0",)), ("w4g128", ("Q4_0", "Q4_K")), ("w2g64", ("Q2_K",)),
                                        ("ternary", ("TQ2_0",)), ("nf4g64", ("IQ4_NL",))])
def test_pairing_and_result_near_the_lowbit_weight(fmt, types):
    K = 512
    qw = quantize(_weight(96, K), fmt)
    w = qw.dequantize()
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)
    assert peers_ggml.usable_types(qw.format, K) == types
    reference = x.astype(np.float64) @ w.T.astype(np.float64)
    for name in types:
        run = peers_ggml.ggml_peer(x, w, copies=2, threads=1, type_name=name)
        results = [run().copy() for _ in range(2)]  # both copies
        np.testing.assert_array_equal(results[0], results[1])
        error = np.linalg.norm(results[0] - reference) / np.linalg.norm(reference)
        # ternary and 8-bit weights are exact in TQ2_0 / Q8_0: only the int8 activations err
        assert error < (0.02 if name in ("Q8_0", "TQ2_0") else 0.3), (name, error)


def test_a_transposed_weight_fails_the_check():
    x = np.random.default_rng(2).standard_normal((2, 256)).astype(np.float32)
    w = _weight(256, 256, seed=3)
    wrong = peers_ggml.GgmlMatmul(x, np.ascontiguousarray(w.T), "Q8_0", threads=1)
    with pytest.raises(AssertionError, match="relative error"):
        peers_ggml.check(wrong, x, w, "Q8_0")


def test_unsupported_formats_say_why():
    assert "no 1-bit" in peers_ggml.unsupported_reason(parse_format("w1g64"), 512)
    assert "not a multiple of the block size" in peers_ggml.unsupported_reason(parse_format("w2g64"), 320)
    assert peers_ggml.unsupported_reason(parse_format("w4g128"), 320) is None  # Q4_0 (blocks of 32) still fits
    assert peers_ggml.usable_types(parse_format("w4g128"), 320) == ("Q4_0",)
