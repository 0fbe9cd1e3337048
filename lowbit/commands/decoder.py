"""``lowbit decoder``: the model-level demo and benchmark (``lowbit/decoder.py``).

A seeded transformer decoder built in code as ONNX, quantized to 4 bits by onnxruntime's MatMulNBitsQuantizer,
compiled by lowbit; prints the max error against onnxruntime (graph optimizations off) and both timings
(onnxruntime at its best settings: all optimizations, accuracy_level=4) at each M, measured in one process.
"""
import json
import os

HELP = "model demo / benchmark: a transformer decoder quantized by onnxruntime, compiled by lowbit, vs onnxruntime"


def add_arguments(parser):
    parser.add_argument("--hidden", type=int, default=256, help="model width (benchmark: 2048)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (benchmark: 4)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--vocab", type=int, default=512, help="width of the output head")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 32], help="M = tokens per call")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per round (5 alternating rounds)")
    parser.add_argument("--kernel", default="auto", choices=("auto", "decode", "a8"), help="lowbit kernel family")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")


def run(args):
    from lowbit.decoder import compare
    from lowbit.errors import ModelError

    if args.hidden % args.heads or args.hidden % 32:
        raise ModelError(f"--hidden {args.hidden} must be a multiple of --heads ({args.heads}) and of 32 (the "
                         "quantizer's block size)")
    report = compare(args.hidden, args.layers, args.heads, args.vocab, tuple(args.rows), args.repeat, args.kernel)
    print(f"decoder: hidden {report['hidden']}, {report['layers']} layers, vocab {report['vocab']}; "
          f"{report['quantized_layers']} MatMulNBits layers (4-bit, blocks of 32) -> lowbit kernels "
          f"{', '.join(report['kernels'])}; compiled in {report['compile_s']:.1f} s")
    print("error: max|diff| / max|y| against onnxruntime with optimizations off (float activations); "
          "ORT fast = all optimizations, accuracy_level=4")
    print(f"{'M':>4}  {'lowbit error':>12}  {'ORT fast error':>14}  {'lowbit ms':>10}  {'ORT fast ms':>11}  "
          f"{'ORT/lowbit':>10}")
    for row in report["rows"]:
        print(f"{row['M']:>4}  {row['max_abs_diff_over_max_abs']:>12.2e}  "
              f"{row['ort_fast_max_abs_diff_over_max_abs']:>14.2e}  {row['lowbit_ms']:>10.3f}  "
              f"{row['ort_ms']:>11.3f}  {row['ort_over_lowbit']:>9.2f}x")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        from lowbit.runtime.atomic import write_atomically

        write_atomically(args.json, json.dumps(report, indent=1).encode("utf-8"))
    return 0
