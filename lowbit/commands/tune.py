"""``lowbit tune``: search each mpGEMM workload's schedule space, writing every measurement to a tuning log.

``lowbit tune MODEL.onnx`` tunes every distinct quantized layer shape of the model (found by the ONNX
frontend, as ``lowbit compile`` finds them) at one M per M bucket; ``--shape M,N,K --format NAME`` tunes one
kernel. Records are written one per measured candidate, so Ctrl-C keeps what was found and a re-run of the
same command resumes. ``lowbit compile --tuning-log DIR`` then takes the best record per workload.
"""
import os

from lowbit.errors import InputError

HELP = "autotune the mpGEMM kernels of a model (or one shape) and write the records to a tuning log"
DEFAULT_ROWS = (1, 4, 16, 128)  # one M per default M bucket (m1, m2-8, m9-32, m33+)


def add_arguments(parser):
    """Register ``lowbit tune``'s options."""
    parser.add_argument("model", nargs="?", metavar="MODEL.onnx",
                        help="tune every distinct quantized layer of this ONNX model (or give --shape)")
    parser.add_argument("--shape", action="append", metavar="M,N,K",
                        help="tune one kernel shape instead of a model (repeatable; needs --format)")
    parser.add_argument("--format", metavar="NAME",
                        help="weight format of --shape (w4g128, ...); with a model: quantize its float MatMul / "
                             "Gemm weights to it, as `lowbit compile --format` does")
    parser.add_argument("--kernel", default="auto", choices=("auto", "decode", "a8", "lut"),
                        help="kernel family to tune (default: auto, the one `lowbit compile` picks)")
    parser.add_argument("--rows", metavar="M,M,...", default=",".join(map(str, DEFAULT_ROWS)),
                        help="with a model: the M (rows of activations) to tune at, one per M bucket "
                             f"(default: {','.join(map(str, DEFAULT_ROWS))})")
    parser.add_argument("--target", default="cpu", help="where the code runs: 'cpu' (this machine, the default)")
    parser.add_argument("--trials", type=int, default=16, metavar="N",
                        help="configs per workload in the log when done (default: 16; fewer when the space is "
                             "smaller); those already in the log count, so a re-run resumes")
    parser.add_argument("--log", metavar="DIR",
                        help="tuning log folder (default: tuning_logs/<target tag>/ in the current folder)")
    parser.add_argument("--repeat", type=int, default=10, metavar="R",
                        help="timed calls per candidate, cold cache; the fastest is recorded (default: 10)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rpc", metavar="HOST:PORT",
                        help="time candidates on the devices registered with this tvm.rpc tracker (built here, "
                             "for --target), in parallel; needs --key")
    parser.add_argument("--key", help="the devices' key at the --rpc tracker")
    offline = parser.add_mutually_exclusive_group()
    offline.add_argument("--export-candidates", metavar="DIR",
                         help="build the next candidates of each workload into DIR instead of timing them here "
                              "(time them with `lowbit measure DIR` on the target, then --import-results DIR)")
    offline.add_argument("--import-results", metavar="DIR",
                         help="add the times `lowbit measure DIR` wrote to the log (no MODEL or --shape needed)")


def parse_rows(text):
    """``"1,4,16"`` -> (1, 4, 16); InputError with the fix otherwise."""
    try:
        rows = tuple(int(part) for part in text.split(","))
    except ValueError:
        rows = ()
    if not rows or min(rows) < 1:
        raise InputError(f"--rows {text!r} is not a list of positive integers: use e.g. --rows 1,4,16,128")
    return rows


def model_tasks(path, format_name, rows):
    """A TuneTask per (M in ``rows``, distinct (N, K, format) of the model's quantized layers)."""
    from lowbit.frontends.onnx import import_onnx
    from lowbit.schedules.tuning.tuner import TuneTask

    if not os.path.isfile(path):
        raise InputError(f"ONNX model {path!r} does not exist")
    imported = import_onnx(path, format=format_name)
    if not imported.quantized:
        raise InputError(f"{path} has no quantized MatMul / Gemm lowbit recognises: pass --format NAME to "
                         "quantize its float weights")
    layers = sorted({(spec.weight.shape, spec.weight.format.name) for spec in imported.quantized.values()})
    return [TuneTask(M, N, K, name) for (N, K), name in layers for M in rows]


def tasks_from_args(args):
    """The workloads the command line asks for (a model's, or ``--shape`` ones)."""
    from lowbit.commands.bench import parse_shape
    from lowbit.schedules.tuning.tuner import tasks_for

    if (args.model is None) == (not args.shape):
        raise InputError("give either MODEL.onnx or --shape M,N,K (with --format NAME), e.g. "
                         "`lowbit tune --shape 16,4096,4096 --format w4g128`")
    if args.shape:
        shapes = [parse_shape(text) for text in args.shape]
        if args.format is None:
            raise InputError("--shape needs --format NAME (the weight format to tune, e.g. w4g128)")
        return tasks_for(shapes, args.format)
    return model_tasks(args.model, args.format, parse_rows(args.rows))


def run(args):
    """Tune, print one line per workload; 130 after Ctrl-C (the log keeps every measured candidate)."""
    from lowbit.compiler.target import resolve_target
    from lowbit.schedules.tuning import tuner

    if args.trials < 1 or args.repeat < 1:
        raise InputError(f"--trials {args.trials} / --repeat {args.repeat}: both must be at least 1")
    if args.import_results:
        return _import(args)
    target = resolve_target(args.target)
    log = args.log or tuner.default_log(target)
    tasks = tasks_from_args(args)
    if args.export_candidates:
        return _export(args, tasks, target, log)
    runner = _runner(args)
    try:
        results = tuner.tune(tasks, kernel=args.kernel, trials=args.trials, log=log, target=target,
                             repeat=args.repeat, progress=not args.no_progress, runner=runner)
    except KeyboardInterrupt:
        print(f"\nlowbit tune: interrupted; every candidate measured so far is in {log}: run the same command "
              "again to resume", flush=True)
        return 130
    finally:
        if runner is not None:
            runner.close()
    print(format_results(results))
    print(f"log: {log} (target {target.tag}); compile with `lowbit compile MODEL.onnx -o OUT --tuning-log {log}`")
    return 0


def _runner(args):
    """The RPC runner for ``--rpc``/``--key`` (None: time in this process)."""
    if (args.rpc is None) != (args.key is None):
        raise InputError("--rpc HOST:PORT and --key KEY go together: the tracker's address and the devices' key")
    if args.rpc is None:
        return None
    from lowbit.schedules.tuning.remote import RPCRunner

    return RPCRunner(args.rpc, args.key, repeat=args.repeat)


def _export(args, tasks, target, log):
    from lowbit.schedules.tuning.offline import export_candidates

    count = export_candidates(tasks, args.export_candidates, kernel=args.kernel, trials=args.trials, log=log,
                              target=target, progress=not args.no_progress)
    if count == 0:
        print(f"nothing to export: every workload has {args.trials} configs (or its whole space) in {log}")
        return 0
    print(f"wrote {count} candidates to {args.export_candidates}; on the target: `lowbit measure "
          f"{args.export_candidates}`, then here: `lowbit tune --import-results {args.export_candidates}"
          f"{' --log ' + log if args.log else ''}`")
    return 0


def _import(args):
    from lowbit.schedules.tuning.offline import import_results

    if args.model is not None or args.shape:
        raise InputError("--import-results takes no MODEL or --shape: the exported folder names its workloads")
    added, skipped = import_results(args.import_results, log=args.log)
    print(f"added {added} records ({skipped} already in the log or not measured); export again to go on")
    return 0


def format_results(results):
    """One line per tuned workload: default and best times, speedup, candidates measured and failed."""
    lines = [f"{'M':>5} {'N':>6} {'K':>6} {'format':<9} {'kernel':<7} {'bucket':<7} {'default ms':>10} "
             f"{'best ms':>9} {'speedup':>7}  measured  best config"]
    for r in results:
        default = f"{r.default_ms:.4f}" if r.default_ms is not None else "failed"
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        config = " ".join(f"{k}={v}" for k, v in r.best_config.items())
        w = r.workload
        lines.append(f"{r.M:>5} {w['N']:>6} {w['K']:>6} {w['format']:<9} {w['kernel']:<7} {w['bucket']:<7} "
                     f"{default:>10} {r.best_ms:>9.4f} {speedup:>7}  {r.measured:>3} ({r.failed} failed)  "
                     f"{r.best_rule} {config}")
    return "\n".join(lines)
