"""``lowbit measure DIR``: time the candidates ``lowbit tune --export-candidates DIR`` built, on this machine.

Runtime only: TVM's runtime library (``lowbit.runtime`` imports TVM with ``TVM_USE_RUNTIME_LIB=1`` unless TVM
is imported already), NumPy and ``lowbit.runtime``; nothing of the compiler. Writes ``DIR/results.json``
for ``lowbit tune --import-results``.
"""
HELP = "time exported tuning candidates on this machine (runtime only) and write DIR/results.json"


def add_arguments(parser):
    """Register ``lowbit measure``'s options."""
    parser.add_argument("folder", metavar="DIR", help="a folder written by `lowbit tune --export-candidates DIR`")
    parser.add_argument("--repeat", type=int, default=10, metavar="R",
                        help="timed calls per candidate, cold cache; the fastest is kept (default: 10)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    """Measure, print one line per candidate; 0 when at least one candidate ran."""
    import os

    from lowbit.errors import KernelError
    from lowbit.runtime.measure import RESULTS_FILE, measure_folder, read_candidates

    spec = read_candidates(args.folder)
    out = measure_folder(args.folder, repeat=args.repeat, progress=not args.no_progress)
    by_id = {c["id"]: c for c in spec["candidates"]}
    for result in out["results"]:
        config = " ".join(f"{k}={v}" for k, v in by_id[result["id"]]["config"].items())
        time = f"{result['ms']:.4f} ms" if result["ms"] is not None else f"failed: {result['error']}"
        print(f"{result['id']:>5} {by_id[result['id']]['rule']} {config}: {time}")
    print(f"wrote {os.path.join(args.folder, RESULTS_FILE)} ({out['device']}); import it with `lowbit tune "
          f"--import-results {args.folder}` where it was exported")
    if out["results"] and all(r["ms"] is None for r in out["results"]):
        raise KernelError(f"no candidate in {args.folder} ran and computed the right result on this machine")
    return 0
