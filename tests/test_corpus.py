"""The real-model corpus, small: models from transformers configs and a torch MLP, exported by torch (dynamo and
the legacy exporter at opsets 17 and 21) and quantized by onnxruntime's quantizers and by ``lowbit quantize``,
compile with ``lowbit.compile``, run with ``lowbit.runtime`` and match onnxruntime (optimizations off) within
the issue's bar: cosine >= 0.999 and max |diff| / max |y| <= 2e-2 (4-bit) or 1e-2 (8-bit).

Every exporter, quantizer and architecture appears at least once (the whole product runs in
``python benchmarks/corpus.py``; the MiniLM-sized one with ``--full``).
"""
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import corpus  # noqa: E402  (benchmarks/ is not a package)

CASES = [
    ("bert", "dynamo", "nbits4-b32"),
    ("bert", "legacy17", "static-qdq"),
    ("bert", "legacy21", "lowbit"),
    ("llama", "dynamo", "nbits4-b128s"),
    ("llama", "legacy17", "dynamic"),
    ("mlp", "legacy21", "nbits8"),
    ("mlp", "dynamo", "nbits4-qdq"),
]


@pytest.mark.parametrize("architecture,exporter,quantizer", CASES)
def test_corpus_case_matches_onnxruntime(tmp_path, architecture, exporter, quantizer):
    case = corpus.run_case(corpus.Case(architecture, exporter, quantizer), str(tmp_path), speed=False)
    assert case.compiled, case.error
    assert case.layers > 0
    assert case.cosine >= 0.999, case
    assert case.max_rel_diff <= case.bar, case
    assert case.passed


def test_quantized_activations_keep_their_rounding(tmp_path):
    """A model that quantizes its activations itself (static QDQ) runs with float activations by default: the
    int8 kernel would round them a second time (measured 1.6e-2 against onnxruntime, over the 8-bit bar);
    with the model's rounding kept lowbit equals onnxruntime to float accuracy."""
    case = corpus.run_case(corpus.Case("mlp", "legacy17", "static-qdq"), str(tmp_path), speed=False)
    assert case.compiled, case.error
    assert case.max_rel_diff < 1e-5, case


def test_every_axis_is_covered():
    assert {c[0] for c in CASES} == {"bert", "llama", "mlp"}
    assert {c[1] for c in CASES} == set(corpus.EXPORTERS)
    assert {c[2] for c in CASES} == set(corpus.QUANTIZERS)
