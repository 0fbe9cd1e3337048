"""Quantization quality on a trained transformer: HIGGS vs uniform vs NF4, GPTQ vs RTN, DP allocation.

Needs torch (``pip install -e .[torch]``; ``make install`` has it). Trains a small byte-level decoder language
model with torch on one CPU thread, on the Python standard library's sources (the corpus of
``benchmarks/quality_trained.py``): 4 pre-LayerNorm blocks, d_model 128, 4 heads, fused q/k/v projection,
GELU MLP 4x, context 128, learned positions, untied ``lm_head``; GPT-2's initialisation, 900 AdamW steps of
32 x 128 bytes (about 4.5 minutes). Every ``nn.Linear`` (qkv, o, up, down of each block and the ``lm_head``:
17 layers) is quantized through ``lowbit.quantize_model`` on a copy of the module; a second pass keeps the
``lm_head`` float (16 layers, as GPTQ's LLM results and most since leave it). The token and position embeddings stay
float (lookups, not matrix products).

Calibration: real contexts from the first half of the held-out files; evaluation: contexts from the second
half. Reported: end-to-end SQNR of the logits (``20 log10(|y| / |y - y_hat|)``) and held-out loss for each
single format, GPTQ vs RTN, and the DP allocation at ``--budget`` bits per weight (data-free and calibrated;
among the seven formats up to 4 bits, lowbit's default candidates without the 2-D grids, and all of them; also
with GPTQ), then the issue's bars as margins. The trained weights are cached in ``build/`` (repo-ignored)
keyed by the training settings; ``--retrain`` ignores the cache. About 8 minutes in all, 3.5 with the cache.

    python benchmarks/quality_transformer.py [--steps 900] [--budget 3.25] [--out benchmarks/results]
"""
import argparse
import copy
import dataclasses
import datetime
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SINGLE = ("w2g64", "w3g64", "w4g64", "higgs2g64", "higgs3g64", "higgs4g64", "nf4g64", "higgs2g64v2",
          "higgs3g64v2", "higgs4g64v2", "w8g64")
GPTQ = ("w2g64", "w3g64", "w4g64", "higgs2g64", "higgs3g64", "higgs4g64", "nf4g64")
SEVEN = ("w2g64", "w3g64", "w4g64", "higgs2g64", "higgs3g64", "higgs4g64", "nf4g64")  # the defaults before 5-8 bit
GRIDS_2D = ("higgs2g64v2", "higgs3g64v2", "higgs4g64v2", "higgs2g128v2", "higgs3g128v2", "higgs4g128v2")
HEADS = ("all", "float head")  # lm_head quantized with the blocks, or kept float (as GPTQ evaluates LLMs)


@dataclasses.dataclass(frozen=True)
class Config:
    """The model and its training (the cache key)."""

    blocks: int = 4
    d_model: int = 128
    heads: int = 4
    context: int = 128
    batch: int = 32
    steps: int = 900
    lr: float = 3e-3
    seed: int = 0
    init: str = "gpt2"  # or "torch" (nn.Linear's default, uniform)


def _require_torch():
    try:
        import torch
    except ImportError:
        sys.exit("benchmarks/quality_transformer.py needs torch: pip install -e '.[torch]' (or make install)")
    torch.set_num_threads(1)  # the machine is shared; results do not depend on it
    return torch


def build_model(config):
    """The byte-level decoder (a torch ``nn.Module``: int64 (B, T) bytes -> float (B, T, 256) logits)."""
    torch = _require_torch()
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d = config.d_model
            self.ln1, self.qkv, self.o = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln2, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            B, T, D = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, config.heads, D // config.heads).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(attended.transpose(1, 2).reshape(B, T, D))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class ByteTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            d = config.d_model
            self.tokens, self.positions = nn.Embedding(256, d), nn.Embedding(config.context, d)
            self.blocks = nn.ModuleList(Block() for _ in range(config.blocks))
            self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, 256, bias=False)

        def forward(self, ids):
            x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    torch.manual_seed(config.seed)
    model = ByteTransformer()
    if config.init == "gpt2":
        _gpt2_init(model, config.blocks)
    return model


def _gpt2_init(model, blocks):
    """GPT-2's initialisation (as nanoGPT): N(0, 0.02), residual projections scaled by 1/sqrt(2 * blocks), biases
    zero. torch's default for nn.Linear is uniform, and a few minutes of training leave much of the initial
    distribution in the weights (``--init torch``; the README's quality section has both)."""
    torch = _require_torch()
    for name, parameter in model.named_parameters():
        if parameter.dim() < 2:  # LayerNorm weights and every bias
            continue
        residual = name.endswith(("o.weight", "down.weight"))
        torch.nn.init.normal_(parameter, 0.0, 0.02 / (math.sqrt(2 * blocks) if residual else 1.0))
    for name, parameter in model.named_parameters():
        if name.endswith(".bias"):
            torch.nn.init.zeros_(parameter)


def windows(stream, count, context, rng):
    """``count`` random windows of ``context + 1`` bytes (int64 torch tensor): inputs ``[:, :-1]``, targets
    ``[:, 1:]``."""
    torch = _require_torch()
    starts = rng.integers(0, len(stream) - context - 1, count)
    return torch.from_numpy(stream[starts[:, None] + np.arange(context + 1)].astype(np.int64))


def train(model, stream, config, log=print):
    """AdamW with warmup and cosine decay; returns the last 50 steps' mean loss (nats/byte)."""
    torch = _require_torch()
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup, recent = 50, []
    for step in range(1, config.steps + 1):
        progress = max(0.0, (step - warmup) / max(1, config.steps - warmup))
        lr = config.lr * min(1.0, step / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = windows(stream, config.batch, config.context, rng)
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).reshape(-1, 256), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 100 == 0 or step == config.steps:
            log(f"  step {step}: loss {np.mean(recent):.3f} nats/byte")
    return float(np.mean(recent))


def trained_model(config, stream, retrain=False):
    """(model, train loss, seconds): trained now, or loaded from ``build/`` when these settings were trained."""
    torch = _require_torch()
    key = hashlib.sha256(repr(config).encode()).hexdigest()[:12]
    path = os.path.join(os.path.dirname(HERE), "build", "quality-transformer", f"{key}.pt")
    model = build_model(config)
    if os.path.exists(path) and not retrain:
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        print(f"loaded the trained model from {path} (--retrain to train again)")
        return model.eval(), saved["loss"], saved["seconds"]
    start = time.time()
    loss = train(model, stream, config)
    seconds = time.time() - start
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from lowbit.runtime.atomic import atomic_path

    with atomic_path(path) as temporary:  # a killed run leaves no half-written cache
        torch.save({"state": model.state_dict(), "loss": loss, "seconds": seconds}, temporary)
    return model.eval(), loss, seconds


class Evaluator:
    """The float model's logits and loss on held-out windows, and the same for quantized copies."""

    second_metric = "loss"  # the name of measure()'s second value in the rows

    def __init__(self, model, held_windows):
        torch = _require_torch()
        self.model, self.inputs, self.targets = model, held_windows[:, :-1], held_windows[:, 1:]
        with torch.no_grad():
            self.reference = model(self.inputs).double().numpy()
        self.reference_loss = self._loss(self.reference)

    def _loss(self, logits):
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return float(-np.take_along_axis(log_probs, self.targets.numpy()[..., None], -1).mean())

    def measure(self, quantized):
        """(end-to-end logits SQNR in dB, held-out loss in nats/byte) of a quantized copy."""
        from lowbit.compiler.allocation import sqnr_db

        torch = _require_torch()
        with torch.no_grad():
            logits = quantized(self.inputs).double().numpy()
        return sqnr_db(self.reference, logits), self._loss(logits)


def quantized_copy(model, formats, head="all", **options):
    """``lowbit.quantize_model`` on a deep copy (it replaces the copy's ``nn.Linear`` layers in place); with
    ``head="float head"`` the ``lm_head`` becomes a module that is not an ``nn.Linear`` first, which
    quantize_model leaves float."""
    import lowbit

    torch = _require_torch()
    duplicate = copy.deepcopy(model)
    if head == "float head":
        class FloatHead(torch.nn.Module):
            def __init__(self, weight):
                super().__init__()
                self.weight = weight

            def forward(self, x):
                return torch.nn.functional.linear(x, self.weight)

        duplicate.lm_head = FloatHead(duplicate.lm_head.weight)
    return lowbit.quantize_model(duplicate, formats, **options)


def average_bits(quantized):
    """Bits per weight over the quantized layers of a model (scales, zero points included)."""
    from lowbit.frontends.torch_quantize import quantized_layers

    layers = [layer for _, layer in quantized_layers(quantized)]
    total = sum(layer.codes.shape[0] * layer.in_features * layer.format.bits_per_weight(layer.in_features)
                for layer in layers)
    return total / sum(layer.codes.shape[0] * layer.in_features for layer in layers)


def measure_head_mode(model, evaluator, calibration, budget, head):
    """Every row of one head mode: {label: {bits_per_weight, sqnr_db, loss, seconds[, formats]}}, and the
    calibrated allocation report over the widest candidate set (its table has every layer in every format)."""
    from lowbit.compiler.quality import DEFAULT_CANDIDATES

    rows = {}

    def record(label, started, **options):
        quantized = quantized_copy(model, head=head, **options)
        sqnr, second = evaluator.measure(quantized)
        report = getattr(quantized, "lowbit_allocation", None)
        rows[label] = {"bits_per_weight": average_bits(quantized), "sqnr_db": sqnr, evaluator.second_metric: second,
                       "seconds": round(time.time() - started, 2)}
        if report is not None:
            rows[label]["formats"] = report.formats()
        print(f"  {head:<10} {label:<40} {rows[label]['bits_per_weight']:6.3f} bpw  {sqnr:6.2f} dB  "
              f"{evaluator.second_metric} {second:.4f}", flush=True)
        return report

    for name in SINGLE:
        record(name, time.time(), formats=name)
    for name in GPTQ:
        record(f"{name} gptq", time.time(), formats=name, method="gptq", calibration=calibration)
    one_d = tuple(name for name in DEFAULT_CANDIDATES if name not in GRIDS_2D)
    for label, candidates in (("7 formats", SEVEN), ("default without 2-D grids", one_d),
                              ("default", DEFAULT_CANDIDATES)):
        for data, options in (("data-free", {}), ("calibrated", {"calibration": calibration})):
            report = record(f"DP {budget} {data}, {label}", time.time(), formats=list(candidates),
                            budget_bits=budget, **options)
    record(f"DP {budget} calibrated gptq, default", time.time(), formats=list(DEFAULT_CANDIDATES),
           budget_bits=budget, calibration=calibration, method="gptq")
    return rows, report


def bars(rows, budget):
    """The issue's bars as margins in dB (a bar holds when its margin is >= 0)."""
    def sqnr(label):
        return rows[label]["sqnr_db"]

    dp = f"DP {budget} calibrated, default"
    one_d = f"DP {budget} calibrated, default without 2-D grids"
    smaller = [k for k in SINGLE if rows[k]["bits_per_weight"] <= budget + 1e-9]  # the budget's size or less
    best_smaller = max(smaller, key=sqnr)
    return {
        "higgs2g64 - w2g64 - 2.5": sqnr("higgs2g64") - sqnr("w2g64") - 2.5,
        "higgs3g64 - w3g64 - 0.7": sqnr("higgs3g64") - sqnr("w3g64") - 0.7,
        "higgs4g64v2 - nf4g64 - 0.3": sqnr("higgs4g64v2") - sqnr("nf4g64") - 0.3,
        "w2g64: gptq - rtn": sqnr("w2g64 gptq") - sqnr("w2g64"),
        "w3g64: gptq - rtn": sqnr("w3g64 gptq") - sqnr("w3g64"),
        f"DP - best single format of <= its size ({best_smaller})": sqnr(dp) - sqnr(best_smaller),
        "DP - w4g64 + 1": sqnr(dp) - sqnr("w4g64") + 1.0,
        "DP (default without 2-D grids) - w4g64 + 1": sqnr(one_d) - sqnr("w4g64") + 1.0,
        "DP gptq - w4g64 gptq + 1": sqnr(f"DP {budget} calibrated gptq, default") - sqnr("w4g64 gptq") + 1.0,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--budget", type=float, default=3.25)
    parser.add_argument("--init", choices=("gpt2", "torch"), default=Config.init)
    parser.add_argument("--retrain", action="store_true", help="train even when build/ has these settings")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    _require_torch()
    sys.path.insert(0, HERE)
    from quality_trained import corpus

    started = time.time()
    config = Config(steps=args.steps, init=args.init)
    stream, held = corpus()
    print(f"corpus: {len(stream)} training bytes, {len(held)} held-out bytes (Python {sys.version.split()[0]} stdlib)")
    model, train_loss, train_seconds = trained_model(config, stream, args.retrain)
    half = len(held) // 2
    calibration = [windows(held[:half], 16, config.context, np.random.default_rng(1 + i))[:, :-1] for i in range(4)]
    evaluator = Evaluator(model, windows(held[half:], 64, config.context, np.random.default_rng(9)))
    print(f"trained {config.steps} steps ({train_seconds:.0f} s): train loss {train_loss:.3f}, held-out "
          f"{evaluator.reference_loss:.3f} nats/byte; end-to-end logits SQNR on {tuple(evaluator.inputs.shape)} "
          "held-out bytes:")
    results = {head: measure_head_mode(model, evaluator, calibration, args.budget, head) for head in HEADS}
    for head, (rows, _) in results.items():
        print(f"bars, {head} (margin in dB; a bar holds at >= 0):")
        for label, margin in bars(rows, args.budget).items():
            print(f"  {label:<58} {margin:+6.2f}")
    _write(args, config, results, evaluator.reference_loss, train_loss, train_seconds, time.time() - started)
    return 0


def layer_rows(report):
    """Every (layer, format) cell of an allocation report's table, for the results JSON."""
    return [{"layer": c.layer, "format": c.format, "bits_per_weight": c.bits_per_weight,
             "weight_sqnr_db": c.weight_sqnr_db, "output_sqnr_db": c.output_sqnr_db} for row in report.table
            for c in row]


def _write(args, config, results, held_loss, train_loss, train_seconds, seconds):
    os.makedirs(args.out, exist_ok=True)
    init = "" if config.init == Config.init else f"-{config.init}-init"
    stem = os.path.join(args.out, f"quality-transformer{init}-{datetime.date.today().isoformat()}")
    result = {"model": dataclasses.asdict(config), "train_loss": train_loss, "held_out_loss": held_loss,
              "train_seconds": round(train_seconds, 1), "total_seconds": round(seconds, 1), "budget": args.budget,
              "end_to_end": {head: rows for head, (rows, _) in results.items()},
              "bars": {head: bars(rows, args.budget) for head, (rows, _) in results.items()}}
    write_results(stem, *results["all"], "byte-level transformer (4 blocks, d 128) trained on the Python stdlib",
                  result)


def write_results(stem, rows, report, title, result):
    """``stem.png`` (error vs bits: the report's layers and the single formats' end-to-end SQNR) and
    ``stem.json`` (``result`` with every (layer, format) cell of the report added)."""
    from lowbit.compiler import quality

    singles = {k: (v["bits_per_weight"], v["sqnr_db"]) for k, v in rows.items() if " " not in k}
    quality.plot_error_vs_bits(report.table, stem + ".png", singles, title=title)
    from lowbit.runtime.atomic import write_atomically

    write_atomically(stem + ".json", json.dumps(dict(result, layers=layer_rows(report)), indent=1).encode("utf-8"))
    print(f"wrote {stem}.png and {stem}.json ({result['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    sys.exit(main())
