"""Default vs tuned schedules, per workload, timed in one run on this machine.

For each workload (M, N, K, format) two kernels are built from the same seeded weight: with the rules'
default schedules (``tuning_log=False``) and with a tuning log (default: the records shipped for this CPU).
Both are timed cold (every call reads the next of enough weight copies to span twice the LLC) and
interleaved: ``--rounds`` rounds, each timing default then tuned for ``--repeat`` calls, so that a busy
machine's drift hits both alike. Printed: the median over rounds of each kernel's median call, and the
fastest call of all (the statistic the tuner records), each with the ratio default / tuned.

    python benchmarks/tuned_vs_default.py [--log DIR] [--shape M,N,K ...] [--format w4g128]
"""
import argparse
import statistics

import numpy as np

DEFAULT_SHAPES = ("1,4096,4096", "4,4096,4096", "16,4096,4096", "128,4096,4096")


def time_pair(linears, M, K, copies, repeat, rounds):
    """Per kernel (median over ``rounds`` of its median ms, fastest ms), the kernels timed in turn each round."""
    from lowbit import bench
    from lowbit.runtime.timing import call_times_ms

    x = np.random.default_rng([M, K, 1]).standard_normal((M, K)).astype(np.float32)
    runners = [bench.lowbit_runner(linear, x, copies) for linear in linears]
    medians, fastest = [[] for _ in linears], [[] for _ in linears]
    for _ in range(rounds):
        for runner, median, low in zip(runners, medians, fastest):
            calls = call_times_ms(runner, repeat)
            median.append(statistics.median(calls))
            low.append(min(calls))
    return [(statistics.median(median), min(low)) for median, low in zip(medians, fastest)]


def compare(shape, format_name, log, repeat, rounds):
    """((median, fastest) ms of the default, the same of the tuned, the tuned plan of M's bucket)."""
    from lowbit import bench
    from lowbit.compiler.formats import quantize
    from lowbit.compiler.linear import build_linear
    from lowbit.schedules.tuning.tuner import bucket_for, seeded_weight

    M, N, K = shape
    qw = quantize(seeded_weight(N, K), format_name)
    default = build_linear(qw, tuning_log=False)
    tuned = build_linear(qw, tuning_log=log)
    copies = bench.copies_for(int(default.layout.packed_bytes), bench.llc_bytes() or bench.FALLBACK_LLC)
    default, tuned_times = time_pair([default, tuned], M, K, copies, repeat, rounds)
    return default, tuned_times, tuned.plans[bucket_for(M).key]


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
    print(f"{'M,N,K':<15} {'format':<8} {'median: default':>15} {'tuned':>7} {'ratio':>6}   {'fastest: default':>16} "
          f"{'tuned':>7} {'ratio':>6}  tuned schedule")
    for text in args.shape or DEFAULT_SHAPES:
        shape = parse_shape(text)
        (default_med, default_min), (tuned_med, tuned_min), plan = compare(shape, args.format, args.log, args.repeat,
                                                                           args.rounds)
        config = " ".join(f"{k}={v}" for k, v in vars(plan.config).items() if k != "intrinsic")
        print(f"{text:<15} {args.format:<8} {default_med:>12.3f} ms {tuned_med:>7.3f} "
              f"{default_med / tuned_med:>5.2f}x  "
              f"{default_min:>13.3f} ms {tuned_min:>7.3f} {default_min / tuned_min:>5.2f}x  "
              f"{plan.source}: {plan.rule} {config}")


if __name__ == "__main__":
    main()
