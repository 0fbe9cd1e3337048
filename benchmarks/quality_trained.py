"""Quantization quality on trained weights: HIGGS vs uniform vs NF4, GPTQ vs RTN, DP allocation at a budget.

Seeded random weights cannot rank formats (Gaussian weights put HIGGS, NF4 and uniform grids within about
1 dB), so this script first trains a small model on real text: a byte-level MLP language model (the previous
16 bytes, embedded, -> 512 -> 512 -> 256 logits, GELU) on the Python standard library's own source files
(English docstrings and code, on every machine that runs lowbit), with Adam in NumPy for a few minutes.
Calibration and evaluation inputs are real contexts of held-out files.

Prints per-layer weight and output SQNR for each candidate format, end-to-end SQNR of the logits for each
single format, GPTQ vs RTN, and the DP allocation at ``--budget``; writes a PNG of error vs bits per weight
and a JSON of the numbers under benchmarks/results/.

    python benchmarks/quality_trained.py [--steps 3000] [--budget 3.25] [--out benchmarks/results]
"""
import argparse
import datetime
import glob
import json
import math
import os
import sys
import sysconfig
import time

import numpy as np

CONTEXT, EMBED, HIDDEN, VOCAB = 16, 16, 512, 256
FORMATS = ("w2g64", "w3g64", "w4g64", "higgs2g64", "higgs3g64", "higgs4g64", "nf4g64", "higgs4g64v2",
           "higgs2g64v2", "higgs3g64v2")


def corpus(limit=3 << 20):
    """(train bytes, held-out bytes) from the standard library's .py files, sorted by path."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True))
    files = [f for f in files if "/test" not in f and "site-packages" not in f]
    data, held = bytearray(), bytearray()
    for index, path in enumerate(files):
        with open(path, "rb") as f:
            text = f.read()
        (held if index % 10 == 0 else data).extend(text)
        if len(data) >= limit:
            break
    return np.frombuffer(bytes(data), np.uint8), np.frombuffer(bytes(held[:limit // 8]), np.uint8)


def contexts(stream, count, rng):
    """``count`` random (context bytes, next byte) pairs from a byte stream."""
    starts = rng.integers(0, len(stream) - CONTEXT - 1, count)
    idx = starts[:, None] + np.arange(CONTEXT)
    return stream[idx], stream[starts + CONTEXT]


def gelu(h):
    return 0.5 * h * (1 + np.tanh(0.7978845608 * (h + 0.044715 * h ** 3)))


def gelu_grad(h):
    t = np.tanh(0.7978845608 * (h + 0.044715 * h ** 3))
    return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * 0.7978845608 * (1 + 3 * 0.044715 * h * h)


class ByteMLP:
    """Embedding (256 x EMBED per position) -> fc0 -> GELU -> fc1 -> GELU -> fc2 logits (float32, NumPy)."""

    def __init__(self, rng):
        K0 = CONTEXT * EMBED
        self.params = {
            "emb": rng.standard_normal((VOCAB, EMBED)).astype(np.float32) * 0.5,
            "fc0": (rng.standard_normal((HIDDEN, K0)) / math.sqrt(K0)).astype(np.float32),
            "b0": np.zeros(HIDDEN, np.float32),
            "fc1": (rng.standard_normal((HIDDEN, HIDDEN)) / math.sqrt(HIDDEN)).astype(np.float32),
            "b1": np.zeros(HIDDEN, np.float32),
            "fc2": (rng.standard_normal((VOCAB, HIDDEN)) / math.sqrt(HIDDEN)).astype(np.float32),
            "b2": np.zeros(VOCAB, np.float32),
        }

    def embed(self, ctx):
        return self.params["emb"][ctx].reshape(len(ctx), CONTEXT * EMBED)

    def forward(self, x0, weights=None, record=None):
        """Logits from embedded inputs, with ``weights`` (fc0, fc1, fc2) substituted when given."""
        p = self.params
        w = weights or (p["fc0"], p["fc1"], p["fc2"])
        h = np.asarray(x0, np.float64)
        for index, (weight, bias) in enumerate(zip(w, (p["b0"], p["b1"], p["b2"]))):
            if record is not None:
                record.append(h)
            h = h @ np.asarray(weight, np.float64).T + bias
            if index < 2:
                h = gelu(h)
        return h

    def train(self, stream, steps, rng, batch=256, lr=2e-3, log=print):
        p = self.params
        moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in p.items()}
        for step in range(1, steps + 1):
            ctx, target = contexts(stream, batch, rng)
            x0 = self.embed(ctx)
            h0 = x0 @ p["fc0"].T + p["b0"]
            a0 = gelu(h0)
            h1 = a0 @ p["fc1"].T + p["b1"]
            a1 = gelu(h1)
            logits = a1 @ p["fc2"].T + p["b2"]
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            loss = -np.log(probs[np.arange(batch), target] + 1e-12).mean()
            d = probs
            d[np.arange(batch), target] -= 1
            d /= batch
            grads = {"fc2": d.T @ a1, "b2": d.sum(0)}
            d = (d @ p["fc2"]) * gelu_grad(h1)
            grads.update(fc1=d.T @ a0, b1=d.sum(0))
            d = (d @ p["fc1"]) * gelu_grad(h0)
            grads.update(fc0=d.T @ x0, b0=d.sum(0))
            d = (d @ p["fc0"]).reshape(batch, CONTEXT, EMBED)
            emb_grad = np.zeros_like(p["emb"])
            np.add.at(emb_grad, ctx, d)
            grads["emb"] = emb_grad
            for key, grad in grads.items():
                m, v = moments[key]
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad * grad
                p[key] -= (lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)).astype(np.float32)
            if step % 500 == 0 or step == steps:
                log(f"  step {step}: loss {loss:.3f} nats/byte")
        return loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--budget", type=float, default=3.25)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)

    from lowbit.compiler import quality
    from lowbit.compiler.formats import parse_format, quantize

    rng = np.random.default_rng(0)
    train, held = corpus()
    print(f"corpus: {len(train)} training bytes, {len(held)} held-out bytes (Python {sys.version.split()[0]} stdlib)")
    model = ByteMLP(rng)
    start = time.time()
    loss = model.train(train, args.steps, rng)
    print(f"trained {args.steps} steps in {time.time() - start:.0f} s")
    calib_ctx, _ = contexts(train, 512, np.random.default_rng(1))
    eval_ctx, _ = contexts(held, 1024, np.random.default_rng(2))
    weights = [model.params[k].astype(np.float64) for k in ("fc0", "fc1", "fc2")]
    names = ["fc0", "fc1", "fc2"]
    calib_inputs = []
    model.forward(model.embed(calib_ctx), record=calib_inputs)
    x_eval = model.embed(eval_ctx)

    def run(ws):
        return model.forward(x_eval, ws)

    gptq = _gptq_quantizer(calib_inputs)
    table = quality.measure_layers(weights, FORMATS, calib_inputs, names)
    end_to_end = {}
    for name in FORMATS:
        fmt = parse_format(name)
        approx = [quantize(w, fmt).dequantize() for w in weights]
        bits = _average_bits(weights, [name] * len(weights))
        end_to_end[name] = (bits, quality.end_to_end_sqnr(run, weights, approx))
        if gptq is not None and fmt.kind == "uniform":
            approx = [gptq(i, w, fmt).dequantize() for i, w in enumerate(weights)]
            end_to_end[f"{name} gptq"] = (bits, quality.end_to_end_sqnr(run, weights, approx))
    compilable = quality.DEFAULT_CANDIDATES  # the defaults: every one has a fast CPU kernel (no 3-4-bit v2)
    for label, calibrated, candidates in (("data-free", False, FORMATS), ("calibrated", True, FORMATS),
                                          ("data-free, compilable", False, compilable),
                                          ("calibrated, compilable", True, compilable)):
        formats, alloc, _ = quality.choose_formats(weights, candidates, args.budget,
                                                   calib_inputs if calibrated else None,
                                                   _calibration_run(model, calib_ctx) if calibrated else None, names)
        approx = [quantize(w, f).dequantize() for w, f in zip(weights, formats)]
        end_to_end[f"DP {args.budget} {label}: {'/'.join(formats)}"] = (
            alloc.bits_per_weight, quality.end_to_end_sqnr(run, weights, approx))
    print(quality.format_table(table, end_to_end))
    _write(args, table, end_to_end, loss)
    return 0


def _average_bits(weights, formats):
    from lowbit.compiler.formats import parse_format

    total = sum(w.size * parse_format(f).bits_per_weight(w.shape[1]) for w, f in zip(weights, formats))
    return total / sum(w.size for w in weights)


def _calibration_run(model, calib_ctx):
    x = model.embed(calib_ctx)
    return lambda ws: model.forward(x, ws)


def _gptq_quantizer(calib_inputs):
    """GPTQ through lowbit's implementation when it exists (None otherwise: RTN only)."""
    try:
        from lowbit.compiler.gptq import gptq_quantize, hessian
    except ImportError:
        return None
    hessians = [hessian([x], x.shape[1])[0] for x in calib_inputs]
    return lambda index, w, fmt: gptq_quantize(w, hessians[index], fmt)


def _write(args, table, end_to_end, loss):
    from lowbit.compiler import quality

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    png = os.path.join(args.out, f"quality-bytemlp-{stamp}.png")
    quality.plot_error_vs_bits(table, png, {k: v for k, v in end_to_end.items() if " " not in k},
                               title="byte-level MLP LM trained on the Python stdlib")
    rows = [{"layer": c.layer, "format": c.format, "bits_per_weight": c.bits_per_weight,
             "weight_sqnr_db": c.weight_sqnr_db, "output_sqnr_db": c.output_sqnr_db} for row in table for c in row]
    path = os.path.join(args.out, f"quality-bytemlp-{stamp}.json")
    from lowbit.runtime.atomic import write_atomically

    write_atomically(path, json.dumps({
        "steps": args.steps, "final_loss": float(loss), "budget": args.budget, "layers": rows,
        "end_to_end": {k: {"bits_per_weight": b, "sqnr_db": s} for k, (b, s) in end_to_end.items()}},
        indent=1).encode("utf-8"))
    print(f"wrote {png} and {path}")


if __name__ == "__main__":
    sys.exit(main())
