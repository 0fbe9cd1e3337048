"""The real-model corpus: transformer and MLP models exported and quantized the ways users do it, each compiled
by lowbit, run by ``lowbit.runtime`` and compared with onnxruntime on the same inputs.

Axes (every combination that applies):

- architecture: ``bert`` (transformers' BertModel from a config; the full corpus uses all-MiniLM-L6-v2's
  dimensions), ``minilm`` (the pretrained all-MiniLM-L6-v2 checkpoint, full corpus only: benchmarks/quality_minilm
  fetches it, pinned by sha256), ``llama`` (LlamaModel from a config with grouped-query attention, full-sequence
  causal forward, no KV cache; the full corpus uses SmolLM-135M's widths; GPT-2 is not used because its Conv1D
  layers export as Gemm, which onnxruntime's MatMulNBitsQuantizer leaves in float by default) and
  ``mlp`` (a torch MLP with GELU);
- exporter: ``dynamo`` (``torch.onnx.export(dynamo=True)``, torch's default), ``legacy17`` / ``legacy21`` (the
  TorchScript exporter, ``dynamo=False``, opset 17 / 21); batch and sequence dims symbolic;
- quantizer: onnxruntime's ``MatMulNBitsQuantizer`` (``nbits4-b32`` asymmetric, ``nbits4-b128s`` symmetric,
  ``nbits8``, ``nbits4-qdq``: blocked int4 DequantizeLinear + MatMul), ``dynamic`` (``quantize_dynamic``:
  MatMulInteger), ``static-qdq`` (``quantize_static``, QDQ, per-channel int8), and ``lowbit`` (``lowbit
  quantize --format w4g64``: groups of 64 divide every K here, 576 included).

Numerics: onnxruntime with graph optimizations off runs the same quantized file; the bar per model is cosine
>= 0.999 on the final output and max |diff| / max |y| <= 2e-2 (4-bit) or 1e-2 (8-bit). Speed: onnxruntime at its
defaults and lowbit on the same threads, batch 1 and 32, median of timed calls in alternating blocks (median_ms).

    python benchmarks/corpus.py [--full] [--exporters dynamo ...] [--json PATH]   # small corpus: ~8 minutes
"""
import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURES = ("bert", "llama", "mlp", "minilm")
EXPORTERS = ("dynamo", "legacy17", "legacy21")
QUANTIZERS = ("nbits4-b32", "nbits4-b128s", "nbits8", "nbits4-qdq", "dynamic", "static-qdq", "lowbit")
EIGHT_BIT = ("nbits8", "dynamic", "static-qdq")
SEQUENCE = 16
VOCAB = 30522


@dataclasses.dataclass
class Case:
    """One corpus model: how it was made, and what lowbit made of it."""

    architecture: str
    exporter: str
    quantizer: str
    compiled: bool = False
    error: str = ""
    cosine: float = float("nan")
    max_rel_diff: float = float("nan")
    bar: float = float("nan")
    layers: int = 0
    ort_self_rel_diff: float = float("nan")  # onnxruntime at its defaults vs unoptimized: the reference's own spread
    ms: dict = dataclasses.field(default_factory=dict)  # "lowbit-1", "ort-1", "lowbit-32", "ort-32"

    @property
    def passed(self):
        """Whether it compiled and met the numerics bar."""
        return self.compiled and self.cosine >= 0.999 and self.max_rel_diff <= self.bar


def _torch():
    import torch

    logging.getLogger("transformers").setLevel(logging.ERROR)
    return torch


def build_model(architecture, full=False):
    """``(torch module, example inputs tuple, input names)`` of an architecture, seeded."""
    torch = _torch()
    torch.manual_seed(0)
    if architecture == "mlp":
        hidden = 1024 if full else 128
        model = torch.nn.Sequential(torch.nn.Linear(hidden, 4 * hidden), torch.nn.GELU(),
                                    torch.nn.Linear(4 * hidden, hidden)).eval()
        return model, (torch.randn(2, SEQUENCE, hidden),), ["x"]
    import transformers

    if architecture == "minilm":
        sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
        from quality_minilm import checkpoint_dir

        encoder = transformers.BertModel.from_pretrained(checkpoint_dir(), add_pooling_layer=False)
    elif architecture == "bert":
        dims = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536) if full \
            else dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
        encoder = transformers.BertModel(transformers.BertConfig(vocab_size=VOCAB if full else 1000,
                                                                 max_position_embeddings=512, **dims),
                                         add_pooling_layer=False)
    elif architecture == "llama":
        dims = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=9,
                    num_key_value_heads=3) if full else \
            dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
        encoder = transformers.LlamaModel(transformers.LlamaConfig(vocab_size=VOCAB if full else 1000,
                                                                   max_position_embeddings=512, use_cache=False,
                                                                   **dims))
    else:
        raise ValueError(f"unknown architecture {architecture!r}: one of {', '.join(ARCHITECTURES)}")
    model = _LastHidden(encoder.eval()).eval()
    vocab = encoder.config.vocab_size
    ids = torch.randint(0, vocab, (2, SEQUENCE))
    return model, (ids, torch.ones(2, SEQUENCE, dtype=torch.int64)), ["input_ids", "attention_mask"]


class _LastHidden:
    """Wraps a transformers model into ``(input_ids, attention_mask) -> last_hidden_state`` (set up lazily so
    importing this file needs no torch)."""

    def __new__(cls, encoder):
        torch = _torch()

        class LastHidden(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return LastHidden(encoder)


def export(model, example, names, exporter, path):
    """Write ``model`` as ONNX with ``exporter``; batch and sequence dims symbolic."""
    torch = _torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            shapes = tuple({0: batch, 1: seq} for _ in names)
            torch.onnx.export(model, example, path, input_names=names, output_names=["y"], dynamo=True,
                              dynamic_shapes=shapes, verbose=False)
        else:
            axes = {name: {0: "batch", 1: "seq"} for name in names + ["y"]}
            torch.onnx.export(model, example, path, input_names=names, output_names=["y"], dynamo=False,
                              opset_version=int(exporter[len("legacy"):]), dynamic_axes=axes)
    return path


def quantize(source, quantizer, target, calibration):
    """Write the quantized model of ``source`` (ONNX path) made by ``quantizer`` to ``target``."""
    import onnx

    if quantizer == "lowbit":
        from lowbit import cli

        code = cli.main(["quantize", source, "--format", "w4g64", "-o", target])
        if code:
            raise RuntimeError(f"lowbit quantize exited {code}")
        return target
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if quantizer.startswith("nbits"):
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                     MatMulNBitsQuantizer)

        bits = 8 if quantizer == "nbits8" else 4
        config = DefaultWeightOnlyQuantConfig(block_size=128 if quantizer == "nbits4-b128s" else 32,
                                              is_symmetric=quantizer == "nbits4-b128s", bits=bits,
                                              quant_format=QuantFormat.QDQ if quantizer.endswith("qdq")
                                              else QuantFormat.QOperator)
        quantizer_ = MatMulNBitsQuantizer(onnx.load(source), algo_config=config)
        quantizer_.process()
        onnx.save(quantizer_.model.model, target)
    elif quantizer == "dynamic":
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    elif quantizer == "static-qdq":
        quantize_static(source, target, _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=["MatMul", "Gemm"])
    else:
        raise ValueError(f"unknown quantizer {quantizer!r}: one of {', '.join(QUANTIZERS)}")
    return target


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # onnxruntime >= 1.17 may call it
        pass


def feeds_for(architecture, names, rows, seed=1, full=False):
    """Real-shaped inputs: token ids (a padded shorter sentence in row 1) or float activations."""
    rng = np.random.default_rng(seed)
    if architecture == "mlp":
        return {"x": rng.standard_normal((rows, SEQUENCE, 1024 if full else 128)).astype(np.float32)}
    vocab = VOCAB if full or architecture == "minilm" else 1000
    ids = rng.integers(0, vocab, (rows, SEQUENCE)).astype(np.int64)
    mask = np.ones((rows, SEQUENCE), np.int64)
    if rows > 1:
        mask[1, SEQUENCE // 2:] = 0
    return dict(zip(names, (ids, mask)))


def ort_session(path, optimized, threads):
    """An onnxruntime CPU session; ``optimized=False`` runs every node as written (the numerics reference)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def compare(ours, reference):
    """``(cosine over the flattened outputs, max |diff| / max |reference|)``."""
    a, b = ours.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return cosine, float(np.abs(a - b).max() / np.abs(b).max())


def median_ms(runs, repeat, rounds=4):
    """Median wall time in ms of each ``runs[name]()``, timed in alternating blocks: ``rounds`` times, each engine
    one warm-up call then ``repeat // rounds`` timed calls. The machine is shared and its speed drifts; blocks
    spread the drift over both engines, and the warm-up call after each switch lets the other engine's spinning
    threads go idle (onnxruntime measured 1.7 ms before lowbit ran and 3-6 ms right after, on the same model)."""
    times = {name: [] for name in runs}
    per_round = max(1, repeat // rounds)
    for _ in range(rounds):
        for name, run in runs.items():
            run()
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(values)) for name, values in times.items()}


def run_case(case, folder, full=False, speed=True, repeat=20):
    """Build, export, quantize, compile and check one case (filled in place); returns it."""
    import lowbit
    import lowbit.runtime
    from lowbit.runtime.threads import thread_count

    stem = os.path.join(folder, f"{case.architecture}-{'full' if full else 'small'}-{case.exporter}")
    model, example, names = build_model(case.architecture, full)
    float_path = stem + ".onnx"
    if not os.path.exists(float_path):  # main() removes the exports of earlier runs: they may differ
        export(model, example, names, case.exporter, float_path)
    calibration = [feeds_for(case.architecture, names, 2, seed, full) for seed in range(4)]
    quantized = quantize(float_path, case.quantizer, f"{stem}-{case.quantizer}.onnx", calibration)
    artifact = f"{stem}-{case.quantizer}.lowbit"
    try:
        compiled = lowbit.compile(quantized)
        compiled.save(artifact)
    except lowbit.errors.LowbitError as err:
        case.error = f"{type(err).__name__}: {str(err)[:300]}"
        return case
    case.compiled, case.layers = True, len(compiled.manifest["layers"])
    module = lowbit.runtime.load(artifact)
    feeds = feeds_for(case.architecture, names, 2, seed=7, full=full)
    reference = ort_session(quantized, False, thread_count()).run(None, feeds)[0]
    case.cosine, case.max_rel_diff = compare(module(**feeds), reference)
    case.bar = 1e-2 if case.quantizer in EIGHT_BIT else 2e-2
    fast = ort_session(quantized, True, thread_count())
    case.ort_self_rel_diff = compare(fast.run(None, feeds)[0], reference)[1]
    if speed:
        for rows in (1, 32):
            batch = feeds_for(case.architecture, names, rows, seed=3, full=full)
            timed = median_ms({"lowbit": lambda: module(**batch), "ort": lambda: fast.run(None, batch)}, repeat)
            case.ms.update({f"{name}-{rows}": ms for name, ms in timed.items()})
    return case


def corpus(full=False):
    """Every case of the small (default) or full corpus."""
    architectures = ("bert", "llama", "mlp", "minilm") if full else ("bert", "llama", "mlp")
    return [Case(a, e, q) for a in architectures for e in EXPORTERS for q in QUANTIZERS]


def table(cases):
    """Markdown rows: model, exporter, quantizer, compiles, max error, cosine, speed vs ORT at batch 1 / 32."""
    lines = ["| model | exporter | quantizer | compiles | max \\|diff\\| / max \\|y\\| | cosine | ORT optimized vs "
             "unoptimized | ORT / lowbit, batch 1 | ORT / lowbit, batch 32 |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        speed = [f"{c.ms[f'ort-{r}'] / c.ms[f'lowbit-{r}']:.2f}x" if f"lowbit-{r}" in c.ms else "-" for r in (1, 32)]
        status = ("yes" if not c.error else f"yes; onnxruntime failed: {c.error[:60]}") if c.compiled \
            else f"no: {c.error[:80]}"
        lines.append(f"| {c.architecture} | {c.exporter} | {c.quantizer} | {status} | {c.max_rel_diff:.2e} | "
                     f"{c.cosine:.5f} | {c.ort_self_rel_diff:.1e} | {speed[0]} | {speed[1]} |")
    return "\n".join(lines)


def _run_case_reporting(case, folder, full):
    try:
        run_case(case, folder, full)
    except Exception as err:  # noqa: BLE001 - an export or quantizer failure is reported, the corpus goes on
        case.error = f"{type(err).__name__}: {str(err)[:300]}"
    return case


def _remove_exports(folder, full):
    size = "full" if full else "small"
    for name in os.listdir(folder):
        if any(name.startswith(f"{arch}-{size}-{exporter}.onnx") for arch in ARCHITECTURES for exporter in EXPORTERS):
            os.remove(os.path.join(folder, name))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="MiniLM-sized models and the pretrained MiniLM")
    parser.add_argument("--json", help="results file (default: benchmarks/results/corpus-<date>.json)")
    parser.add_argument("--folder", default=os.path.join(ROOT, "build", "corpus"), help="where models are written")
    parser.add_argument("--only", nargs=3, metavar=("ARCH", "EXPORTER", "QUANTIZER"), help="one case")
    parser.add_argument("--exporters", nargs="+", choices=EXPORTERS, help="only these exporters")
    args = parser.parse_args(argv)
    os.makedirs(args.folder, exist_ok=True)
    cases = [Case(*args.only)] if args.only else corpus(args.full)
    if args.exporters:
        cases = [case for case in cases if case.exporter in args.exporters]
    _remove_exports(args.folder, args.full)
    import concurrent.futures
    import multiprocessing

    # one fresh process per case: torch's exporter and onnxruntime's quantizers keep memory across cases (a
    # whole --full run in one process was killed by the OOM killer at 24 GiB), and a crash stays one row
    context = multiprocessing.get_context("spawn")
    for index, case in enumerate(cases, 1):
        start = time.time()
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            try:
                case = cases[index - 1] = pool.submit(_run_case_reporting, case, args.folder, args.full).result()
            except Exception as err:  # noqa: BLE001 - the case's process died: reported, the corpus goes on
                case.error = f"{type(err).__name__}: {str(err)[:300]}"
        print(f"[{index}/{len(cases)}] {case.architecture} {case.exporter} {case.quantizer}: "
              f"{'pass' if case.passed else 'FAIL'} {case.error[:120]} ({time.time() - start:.0f} s)", flush=True)
    print(table(cases))
    import datetime

    from lowbit.runtime.atomic import write_atomically
    from lowbit.runtime.host import host_cpu_model

    path = args.json or os.path.join(ROOT, "benchmarks", "results",
                                     f"corpus-{'full' if args.full else 'small'}-{datetime.date.today()}.json")
    write_atomically(path, json.dumps({"cpu": host_cpu_model(), "full": args.full,
                                       "cases": [dataclasses.asdict(c) for c in cases]}, indent=1).encode())
    print(f"wrote {path}")
    return 0 if all(c.passed for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
