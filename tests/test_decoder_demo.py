"""The model-level demo (``lowbit decoder``): a decoder built as ONNX, quantized by onnxruntime's
MatMulNBitsQuantizer, compiled by lowbit, compared with onnxruntime.

With the ``decode`` kernel lowbit's activations stay float32, so its outputs equal onnxruntime's (optimizations
off) up to float32 summation order: 1e-5 of the output range flags any decoding error (one code off moves an
output by ~1e-2 of the range). Speed is reported by the command, never asserted here.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx_ir")  # onnxruntime's MatMulNBitsQuantizer needs it

from lowbit import decoder  # noqa: E402


def test_decoder_graph_runs_in_onnxruntime_with_symbolic_batch_and_sequence():
    model = decoder.decoder_onnx(hidden=64, layers=1, heads=2, vocab=48)
    session = decoder.ort_session(model, optimized=False)
    for shape in ((1, 1, 64), (2, 5, 64)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        y = session.run(None, {"x": x})[0]
        assert y.shape == shape[:2] + (48,)
    # causal: the first token's output does not depend on later tokens
    x = np.random.default_rng(1).standard_normal((1, 4, 64)).astype(np.float32)
    changed = x.copy()
    changed[0, 3] += 1.0
    first, second = (session.run(None, {"x": value})[0] for value in (x, changed))
    np.testing.assert_array_equal(first[0, :3], second[0, :3])
    assert not np.array_equal(first[0, 3], second[0, 3])


def test_accuracy_level_is_set_on_every_matmul_nbits():
    quantized = decoder.quantize_with_onnxruntime(decoder.decoder_onnx(hidden=64, layers=1, heads=2, vocab=48))
    nbits = [node for node in decoder.with_accuracy_level(quantized, 4).graph.node if node.op_type == "MatMulNBits"]
    assert len(nbits) == 5  # qkv, out, fc1, fc2, head
    assert all(any(a.name == "accuracy_level" and a.i == 4 for a in node.attribute) for node in nbits)


def test_cli_decoder_reports_errors_within_float_rounding_with_the_decode_kernel(tmp_path):
    report_path = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "lowbit", "decoder", "--hidden", "64", "--layers", "1", "--heads",
                           "2", "--vocab", "48", "--rows", "1", "5", "--repeat", "2", "--kernel", "decode",
                           "--json", str(report_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["quantized_layers"] == 5 and report["kernels"] == ["decode"]
    assert [row["M"] for row in report["rows"]] == [1, 5]
    assert all(row["max_abs_diff_over_max_abs"] <= 1e-5 for row in report["rows"])
    assert all(row["lowbit_ms"] > 0 and row["ort_ms"] > 0 and row["ort_over_lowbit"] > 0 for row in report["rows"])
    assert "ORT/lowbit" in done.stdout
