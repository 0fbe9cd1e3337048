"""README's first example, end to end (slow: fetches the 83 MB pretrained checkpoint once, exports, quantizes,
compiles): the commands README lists, run as a user runs them."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@pytest.mark.slow
def test_minilm_example_runs_as_readme_says(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    folder = str(tmp_path / "minilm")
    example = os.path.join(ROOT, "examples", "minilm.py")

    def run(*argv):
        return subprocess.run(list(argv), cwd=ROOT, check=True, capture_output=True, text=True).stdout

    run(sys.executable, example, "prepare", folder, "A cat sits on the mat.", "A kitten rests on a rug.",
        "The stock market fell sharply today.")
    run(os.path.join(BIN, "lowbit"), "compile", f"{folder}/minilm-q4.onnx", "-o", f"{folder}/minilm.lowbit")
    run(os.path.join(BIN, "lowbit"), "run", f"{folder}/minilm.lowbit", "-i", f"input_ids={folder}/input_ids.npy",
        "-i", f"attention_mask={folder}/attention_mask.npy", "-o", f"{folder}/hidden.npy")
    out = run(sys.executable, example, "similarity", folder)
    similar = float(out.split("'A kitten rests on a rug.') = ")[1].split()[0])
    unrelated = float(out.split("'The stock market fell sharply today.') = ")[1].split()[0])
    assert similar > unrelated + 0.3
    cosine = float(out.split("cosine ")[1].split(",")[0])
    assert cosine >= 0.999
