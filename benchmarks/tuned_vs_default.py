"""Default vs tuned schedules, per workload, timed in one run on this machine.

For each workload (M, N, K, format) two kernels are built from the same seeded weight: with the rules'
default schedules (``tuning_log=False``) and with a tuning log (default: the records shipped for this CPU).
Both are timed cold (every call reads the next of enough weight copies to span twice the LLC) and
interleaved: ``--rounds`` rounds, each timing default then tuned for ``--repeat`` calls, so that a busy
machine's drift hits both alike; the median over rounds is printed with the ratio default / tuned.

    python benchmarks/tuned_vs_default.py [--log DIR] [--shape M,N,K ...] [--format w4g128]
"""
import argparse
import statistics

import numpy as np

DEFAULT_SHAPES = ("1,4096,4096", "4,4096,4096", "16,4096,4096", "128,4096,4096")


def time_pair(linears, M, K, copies, repeat, rounds):
    """Median over ``rounds`` of each kernel's median ms, the kernels timed in turn within every round."""
    from lowbit import bench

    x = np.random.default_rng([M, K, 1]).standard_normal((M, K)).astype(np.float32)
    runners = [bench.lowbit_runner(linear, x, copies) for linear in linears]
    times = [[] for _ in linears]
    for _ in range(rounds):
        for runner, kept in zip(runners, times):
            kept.append(bench.median_ms(runner, repeat))
    return [statistics.median(kept) for kept in times]


def compare(shape, format_name, log, repeat, rounds):
    """(default ms, tuned ms, the tuned kernel's plan for M's bucket) for one workload."""
    from lowbit import bench
    from lowbit.compiler.formats import quantize
    from lowbit.compiler.linear import build_linear
    from lowbit.schedules.tuning.tuner import bucket_for, seeded_weight

    M, N, K = shape
    qw = quantize(seeded_weight(N, K), format_name)
    default = build_linear(qw, tuning_log=False)
    tuned = build_linear(qw, tuning_log=log)
    copies = bench.copies_for(int(default.layout.packed_bytes), bench.llc_bytes() or bench.FALLBACK_LLC)
    default_ms, tuned_ms = time_pair([default, tuned], M, K, copies, repeat, rounds)
    return default_ms, tuned_ms, tuned.plans[bucket_for(M).key]


def main(argv=None):
    """Print one line per workload: default ms, tuned ms, ratio, where the tuned schedule came from."""
    from lowbit.commands.bench import parse_shape
    from lowbit.compiler.target import host_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="tuning log folder (default: the records shipped for this CPU)")
    parser.add_argument("--shape", action="append", metavar="M,N,K", help=f"default: {' '.join(DEFAULT_SHAPES)}")
    parser.add_argument("--format", default="w4g128")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per kernel per round (median kept)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each timing both kernels")
    args = parser.parse_args(argv)
    target = host_target()
    print(f"{target.cpu_name} ({target.tag}), {target.num_cores} threads; cold cache; median of {args.rounds} "
          f"rounds x {args.repeat} calls, default and tuned interleaved")
    print(f"{'M,N,K':<15} {'format':<8} {'default ms':>10} {'tuned ms':>9} {'ratio':>6}  tuned schedule")
    for text in args.shape or DEFAULT_SHAPES:
        shape = parse_shape(text)
        default_ms, tuned_ms, plan = compare(shape, args.format, args.log, args.repeat, args.rounds)
        config = " ".join(f"{k}={v}" for k, v in vars(plan.config).items())
        print(f"{text:<15} {args.format:<8} {default_ms:>10.3f} {tuned_ms:>9.3f} {default_ms / tuned_ms:>5.2f}x  "
              f"{plan.source}: {plan.rule} {config}")


if __name__ == "__main__":
    main()
