"""``lowbit bench``: time lowbit's mpGEMM kernels against NumPy, torch and onnxruntime (cold cache).

Only the standard library is imported here, so that ``lowbit --help`` stays fast; the benchmark itself
(``lowbit.bench``) is imported when the command runs.
"""
import datetime
import os

from lowbit.errors import InputError

HELP = "benchmark mpGEMM kernels against NumPy, torch and onnxruntime (cold cache)"
KERNEL_CHOICES = ("auto", "decode", "a8", "lut")


def add_arguments(parser):
    """Register ``lowbit bench``'s options."""
    parser.add_argument("--shape", action="append", metavar="M,N,K",
                        help="GEMM shape: activation M x K, weight N x K (repeatable; default: 1,4096,4096 "
                             "1,14336,4096 1,4096,14336 16,4096,4096 128,4096,4096)")
    parser.add_argument("--format", action="append", metavar="NAME",
                        help="weight format, e.g. w4g128, w4g128s, w8, w2g64, ternary, nf4g64 (repeatable; "
                             "default: w8 w4g128 w3g128 w2g64 ternary nf4g64)")
    parser.add_argument("--kernel", action="append", choices=KERNEL_CHOICES,
                        help="lowbit kernel family (repeatable; default: auto)")
    parser.add_argument("--repeat", type=int, default=20, metavar="R",
                        help="timed calls per implementation; the median is reported (default: 20)")
    parser.add_argument("--json", metavar="PATH",
                        help="where to write the results (default: benchmarks/results/bench-<cpu-tag>-<date>.json)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_shape(text):
    """``"M,N,K"`` -> (M, N, K) positive ints; InputError with the fix otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"--shape {text!r} is not three positive integers M,N,K (activation M x K, weight "
                         "N x K): use e.g. --shape 1,4096,4096")
    return shape


def default_json_path(target_tag, today=None):
    """``benchmarks/results/bench-<cpu-tag>-<YYYYMMDD>.json`` (relative to the current folder)."""
    today = today or datetime.date.today()
    return os.path.join("benchmarks", "results", f"bench-{target_tag}-{today:%Y%m%d}.json")


def run(args):
    """Run the benchmark, print the table and write the JSON; returns the exit code."""
    shapes = [parse_shape(text) for text in args.shape] if args.shape else None
    if args.repeat < 1:
        raise InputError(f"--repeat {args.repeat}: the number of timed calls must be at least 1 (e.g. 20)")
    from lowbit import bench, peers

    peers.SHARED_POOL = True  # this process is the benchmark's own: one onnxruntime pool for all sessions
    json_path = args.json
    if json_path is None:
        from lowbit.compiler.target import host_target

        json_path = default_json_path(host_target().tag)
    result = bench.run_bench(shapes=shapes or bench.DEFAULT_SHAPES, formats=args.format or bench.DEFAULT_FORMATS,
                             kernels=args.kernel or bench.DEFAULT_KERNELS, repeat=args.repeat,
                             json_path=json_path, progress=not args.no_progress)
    print(bench.describe(result["header"]))
    print()
    print(bench.format_table(result, markdown=args.markdown))
    print(f"\nwrote {json_path}")
    return 0
