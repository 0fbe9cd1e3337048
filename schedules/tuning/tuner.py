"""The search: for each workload, measure the default schedule, then the cost model's best-ranked candidates.

One workload is (N, K, format, kernel family, M bucket), tuned at one M of the bucket. Per workload:

1. the space of its rules (:func:`~lowbit.schedules.tuning.space.space`), the default plan first;
2. configs already in the log (this version, this target, this M) are skipped: a re-run resumes;
3. the default is measured first (a record only wins over it, so tuning never makes a layer slower);
4. then, until ``trials`` configs of the workload are in the log or the space is exhausted: rank the
   unmeasured candidates with the cost model, measure the top ``batch``, write each record as soon as it is
   measured, update the model;
5. the default is measured once more, last (first timings on a busy machine run slow): the log keeps both,
   and a record must beat the default's best time.

Measurement is in-process (:class:`LocalRunner`; ``remote.RPCRunner`` for devices behind a tracker) and
cold-cache, as ``lowbit bench``: each timed call reads the next of enough independent weight copies to span
twice the last-level cache; the result is checked against the NumPy reference before it is timed (a wrong
result is a failed candidate); the fastest of ``repeat`` calls after warm-up calls is recorded
(:func:`lowbit.runtime.timing.tuning_ms` says why). A candidate that fails to build, run or compute the right
result is recorded with its reason and the search goes on; a workload left with no valid record is an error.
"""
import dataclasses
import math

import numpy as np

from lowbit.compiler.references import error_bound, kernel_activations, kernel_reference
from lowbit.errors import InputError, KernelError
from lowbit.runtime import timing
from lowbit.schedules.tuning import records as tuning_records
from lowbit.schedules.tuning import space as tuning_space

DEFAULT_TRIALS = 16
DEFAULT_REPEAT = 10
BATCH = 2  # candidates measured between two updates of the cost model


@dataclasses.dataclass
class WorkloadResult:
    """What the log holds for one workload after tuning: default and best times (ms) and counts."""

    workload: dict
    M: int
    default_ms: object  # None when the default failed
    best_rule: str
    best_config: dict
    best_ms: float
    measured: int  # records of this workload and M in the log
    failed: int

    @property
    def speedup(self):
        """Default time over best time (1.0 when the default is the best)."""
        return None if self.default_ms is None else self.default_ms / self.best_ms


def bucket_for(M, buckets=None):
    """The M bucket (``compiler.dispatch.Bucket``) that serves ``M`` rows."""
    from lowbit.compiler import dispatch

    for bucket in buckets or dispatch.DEFAULT_BUCKETS:
        if bucket.contains(M):
            return bucket
    raise InputError(f"M={M} falls in no M bucket: M must be at least 1")


def seeded_weight(N, K):
    """The float32 (N, K) weight tuned on (seeded by the shape, as the benchmark's)."""
    rng = np.random.default_rng([N, K])
    return (rng.standard_normal((N, K)) / math.sqrt(K)).astype(np.float32)


class CandidateBuilder:
    """Builds candidates of one workload (weights re-laid once) and knows the result they must compute.

    Parameters
    ----------
    qw : QuantizedWeight
    M : int
        Rows of X the candidates are checked and timed at.
    kernel : str
        Kernel family asked for (``auto``, ``decode``, ``a8``, ``lut``).
    target : TargetInfo
    """

    def __init__(self, qw, M, kernel, target):
        from lowbit.compiler.linear import prepare_layer

        self.qw, self.M, self.target = qw, M, target
        self.kernel, self.layout, self.arrays = prepare_layer(qw, None, target, kernel)
        self.bucket = bucket_for(M)
        K = qw.shape[1]
        x = np.random.default_rng([M, K, 1]).standard_normal((M, K))
        self.x = x.astype(np.float32)
        x_used = kernel_activations(self.kernel, self.x, qw)
        self.reference = kernel_reference(self.kernel, x_used, qw, qw.dequantize())
        self.bound = error_bound(x_used, qw)  # what fp32 arithmetic can explain (a wrong kernel errs more)

    def build(self, rule, config):
        """The candidate compiled as the bucket's only function (a CompiledLinear)."""
        from lowbit.compiler.linear import build_prepared

        return build_prepared(self.kernel, self.layout, self.arrays, self.target, buckets=(self.bucket,),
                              tuning_log=False, overrides={self.bucket.key: (rule, config)})


class ColdMeasurer(CandidateBuilder):
    """Builds and times candidates of one workload, cold cache, reusing one set of weight copies.

    ``repeat``: timed calls per candidate (the fastest kept); ``llc``: last-level cache bytes the weight copies
    must exceed (default: sysfs). Other parameters as :class:`CandidateBuilder`.
    """

    def __init__(self, qw, M, kernel, target, repeat=DEFAULT_REPEAT, llc=None):
        from lowbit.compiler.tvm_api import tensor

        super().__init__(qw, M, kernel, target)
        self.repeat = repeat
        llc = llc or timing.llc_bytes() or timing.FALLBACK_LLC
        copies = timing.copies_for(int(self.layout.packed_bytes), llc)
        self._x_t = tensor(self.x)
        self._y_t = tensor(np.empty((M, self.layout.N), np.float32))
        self._weights = timing.weight_copies(list(self.arrays.values()), copies, tensor)

    def measure(self, rule, config):
        """``(ms, None)`` for a candidate that builds, runs and is right, else ``(None, reason)``."""
        try:
            linear = self.build(rule, config)
            run = timing.cold_kernel_runner(linear.func, self._x_t, self._weights, self._y_t)
            run()
            timing.check_close(f"{rule.name} {config}", self._y_t.numpy(), self.reference, self.bound)
            return timing.tuning_ms(run, self.repeat), None
        except Exception as err:  # noqa: BLE001 - a failed candidate is scored as failed, its reason recorded
            return None, timing.failure_reason(err)


@dataclasses.dataclass(frozen=True)
class TuneTask:
    """One workload to tune: a GEMM shape (activation M x K, weight N x K) and a weight format name."""

    M: int
    N: int
    K: int
    format: str


def tasks_for(shapes, format_name):
    """A :class:`TuneTask` per (M, N, K) of ``shapes``, all in one format."""
    return [TuneTask(M, N, K, format_name) for M, N, K in _checked_shapes(shapes)]


def tune(tasks, kernel="auto", trials=DEFAULT_TRIALS, log=None, target=None, repeat=DEFAULT_REPEAT, llc=None,
         progress=True, batch=BATCH, runner=None):
    """Tune the mpGEMM kernel of each task; returns one :class:`WorkloadResult` each.

    Parameters
    ----------
    tasks : iterable of TuneTask
        Shapes and formats (:func:`tasks_for`); the weight is a seeded random one (tuning depends on shapes).
    kernel : {"auto", "decode", "a8", "lut"}
    trials : int
        Configs per workload in the log when done (those already there count: a re-run resumes).
    log : str, optional
        Log folder (default: ``tuning_logs/<target tag>`` in the current folder).
    target : TargetInfo, optional
        Default: this CPU.
    repeat : int
        Timed calls per candidate (the fastest recorded).
    runner : optional
        Where candidates are timed: an object with ``measure(job, pairs) -> [(ms, error)]``
        (default: :class:`LocalRunner`, in this process; ``remote.RPCRunner``: on RPC devices).
    """
    target, jobs = jobs_for(tasks, kernel, trials, log, target, repeat, batch)
    from lowbit.schedules.tuning.cost_model import CostModel

    runner = runner or LocalRunner(repeat, llc)
    batch = max(batch, runner.parallel)
    model, results = CostModel(target), []
    with progress_bar(sum(job.todo(trials) for job in jobs), progress) as bar:
        for job in jobs:
            results.append(job.run(runner, trials, model, bar, batch))
    return results


def jobs_for(tasks, kernel, trials, log, target, repeat, batch):
    """(TargetInfo, one job per distinct workload of ``tasks``) after checking the arguments."""
    from lowbit.compiler.formats import parse_format
    from lowbit.compiler.linear import check_kernel
    from lowbit.compiler.target import resolve_target

    target = resolve_target(target)
    check_kernel(kernel)
    _check_counts(trials, repeat, batch)
    tasks = list(tasks)
    if not tasks:
        raise InputError("no workload to tune: give at least one M,N,K and format (e.g. --shape 16,4096,4096)")
    database = tuning_records.TuningDatabase(log or default_log(target), target.tag)
    jobs = {}
    for task in tasks:
        job = WorkloadJob((task.M, task.N, task.K), parse_format(task.format), kernel, target, database)
        jobs.setdefault((job.M, json_key(job.workload)), job)  # two layers of one shape: one workload
    return target, list(jobs.values())


def json_key(value):
    """A hashable key of a JSON-like value (dicts by sorted items)."""
    import json

    return json.dumps(value, sort_keys=True)


class LocalRunner:
    """Times candidates in this process, cold cache (:class:`ColdMeasurer`, one per workload)."""

    parallel = 1  # candidates timed at once

    def __init__(self, repeat=DEFAULT_REPEAT, llc=None):
        self.repeat, self.llc, self._measurers = repeat, llc, {}

    def measure(self, job, pairs):
        """``[(ms, error)]`` for the ``(rule, config)`` pairs of ``job``, in order."""
        key = id(job)
        if key not in self._measurers:
            self._measurers.clear()  # one workload's weight copies at a time
            self._measurers[key] = ColdMeasurer(job.weight(), job.M, job.kernel, job.target, self.repeat,
                                                self.llc)
        measurer = self._measurers[key]
        assert measurer.layout == job.layout, (measurer.layout, job.layout)
        return [measurer.measure(rule, config) for rule, config in pairs]


def default_log(target):
    """``tuning_logs/<target tag>`` relative to the current folder (the repository's shipped logs there)."""
    import os

    return os.path.join("tuning_logs", target.tag)


def _check_counts(trials, repeat, batch):
    for name, value in (("trials", trials), ("repeat", repeat), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name}={value!r}: must be a positive integer (e.g. trials=16, repeat=10)")


def _checked_shapes(shapes):
    from lowbit.compiler.linear import check_shapes

    shapes = check_shapes(shapes)
    if not shapes:
        raise InputError("no shape to tune: give at least one M,N,K (e.g. --shape 16,4096,4096)")
    return shapes


def progress_bar(total, enabled):
    """The tuning progress bar: trials done, ETA (tqdm's), the best time so far as its postfix."""
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="trial", dynamic_ncols=True)


class WorkloadJob:
    """One workload of a tuning run: its candidates, what the log has, the search loop."""

    def __init__(self, shape, fmt, kernel, target, database):
        from lowbit.compiler.formats import kernel_format
        from lowbit.compiler.layout import KernelLayout, a8_layout, lut_layout
        from lowbit.compiler.linear import choose_kernel, lut_vector_bytes

        self.M, self.N, self.K = shape
        self.target, self.database, self.fmt = target, database, fmt
        # HIGGS: the kernel is its rotated codebook's (the rotation prologue is not part of the tuned kernel)
        self.kernel_fmt = kernel_format(fmt)
        probe = _ShapeOnly(self.kernel_fmt, self.N, self.K)
        self.kernel = choose_kernel(probe, target, kernel)
        self.bucket = bucket_for(self.M)
        group = fmt.group_size or self.K
        if self.K % group:
            raise InputError(f"K={self.K} is not a multiple of {fmt.name}'s group size {group}: pick K or the format")
        if self.kernel == "lut":
            self.layout = lut_layout(self.kernel_fmt, self.N, self.K, lut_vector_bytes(target, self.kernel_fmt))
        else:
            bits, _, decode, *dim = tuning_space.layout_key(fmt.name, self.kernel, self.K)
            if decode == "a8":  # the layout relayout_a8 builds
                self.layout = a8_layout(self.N, self.K, bits, group, target.vector_lanes)
            else:
                self.layout = KernelLayout(N=self.N, K=self.K, bits=bits, group_size=group,
                                           lanes=target.vector_lanes, decode=decode, dim=dim[0] if dim else 1)
        self.workload = tuning_records.make_workload(self.N, self.K, fmt.name, self.kernel, self.bucket.key)
        self.candidates = self._ordered_space()

    def _ordered_space(self):
        from lowbit.compiler.linear import default_plan

        default = default_plan(self.layout, self.bucket)
        rest = [pair for pair in tuning_space.space(self.layout, self.bucket) if _key(*pair) != _key(*default)]
        return [default] + rest

    def logged(self):
        """Records of this workload at this M in the log, by config key: the fastest valid one of a config
        measured twice (the default is, see :meth:`run`), else its failure."""
        mine = self.database.find(lambda r: r["workload"] == self.workload and r["M"] == self.M)
        mine = tuning_space.within_space(self.database, mine, self.layout, self.bucket, _key(*self.candidates[0]))
        best = {}
        for record in mine:
            key = tuning_records.config_key(record["rule"], record["config"])
            kept = best.get(key)
            if kept is None or kept["error"] is not None or (record["error"] is None and record["ms"] < kept["ms"]):
                best[key] = record
        return best

    def todo(self, trials):
        """Candidates still to measure for ``trials`` configs in the log."""
        return max(0, min(trials, len(self.candidates)) - len(self.logged()))

    def weight(self):
        """The seeded QuantizedWeight this workload is timed with."""
        from lowbit.compiler.formats import quantize

        return quantize(seeded_weight(self.N, self.K), self.kernel_fmt)

    def describe(self):
        """``M,N,K format kernel bucket``: the workload as the progress bar names it."""
        return f"{self.M},{self.N},{self.K} {self.fmt.name} {self.kernel} {self.bucket.key}"

    def run(self, runner, trials, model, bar, batch):
        """Measure until ``trials`` configs are in the log (or the space is done); the log's result."""
        todo = self.todo(trials)
        bar.set_description(self.describe())
        if todo:
            self.learn_logged(model)
            self._search(runner, model, todo, bar, batch)
            self._measure_default_again(runner)
        return self._result()

    def _measure_default_again(self, runner):
        """Time the default once more, last: it was timed first, before the machine settled into the search
        (measured here: up to 3x slower first timings on a busy machine), and a record must beat its best."""
        (rule, config), = self.candidates[:1]
        (ms, error), = runner.measure(self, [(rule, config)])
        self.record(rule.name, dataclasses.asdict(config), ms, error)

    def learn_logged(self, model):
        """Train the cost model on this workload's records in the log (a resumed search starts informed)."""
        logged = self.logged().values()
        known = [(*tuning_space.config_from_record(r), r["ms"]) for r in logged]
        model.update(self.layout, self.M, known)

    def pending(self):
        """Candidates not in the log yet, the default first when it is among them."""
        logged = self.logged()
        return [pair for pair in self.candidates if _key(*pair) not in logged]

    def pick(self, model, pending, count):
        """The next ``count`` candidates to measure: the default while it is unmeasured (a record only wins
        over a measured default, so tuning never makes a layer slower), then the cost model's best-ranked."""
        picked = []
        if pending and pending[0] is self.candidates[0]:
            picked, pending = [pending[0]], pending[1:]
        return picked + model.rank(self.layout, self.M, pending)[:count - len(picked)]

    def _search(self, runner, model, todo, bar, batch):
        pending = self.pending()
        while todo > 0 and pending:
            # the default alone first: the model has nothing to rank by yet
            picked = self.pick(model, pending, 1 if pending[0] is self.candidates[0] else min(batch, todo))
            pending = [pair for pair in pending if pair not in picked]
            self._measure(runner, model, picked, bar)
            todo -= len(picked)

    def _measure(self, runner, model, pairs, bar):
        results = []
        for (rule, config), (ms, error) in zip(pairs, runner.measure(self, pairs)):
            self.record(rule.name, dataclasses.asdict(config), ms, error)
            results.append((rule, config, ms))
            if error is not None:
                bar.write(f"failed: {rule.name} {config}: {error}")
            best = self._best_ms()
            bar.set_postfix_str(f"best {best:.3f} ms" if best is not None else "no valid candidate yet")
            bar.update(1)
        model.update(self.layout, self.M, results)

    def record(self, rule_name, config, ms, error):
        """Append one measured candidate to the log (atomically)."""
        self.database.append(tuning_records.make_record(self.workload, self.M, self.target.tag, rule_name, config,
                                                        ms, error))

    def _best_ms(self):
        valid = [r["ms"] for r in self.logged().values() if r["error"] is None]
        return min(valid, default=None)

    def _result(self):
        logged = self.logged()
        valid = [r for r in logged.values() if r["error"] is None]
        if not valid:
            reasons = "; ".join(f"{r['rule']} {r['config']}: {r['error']}" for r in logged.values()) or "none measured"
            raise KernelError(f"no candidate of {self.workload} at M={self.M} built, ran and computed the right "
                              f"result: {reasons}")
        best = min(valid, key=lambda r: r["ms"])
        default = logged.get(_key(*self.candidates[0]))
        default_ms = default["ms"] if default is not None else None
        return WorkloadResult(self.workload, self.M, default_ms, best["rule"], best["config"], best["ms"],
                              len(logged), len(logged) - len(valid))


def _key(rule, config):
    return tuning_records.config_key(rule.name, dataclasses.asdict(config))


@dataclasses.dataclass(frozen=True)
class _ShapeOnly:
    """What the kernel choice reads of a QuantizedWeight (its format and shape), before any weight exists."""

    format: object
    N: int
    K: int

    @property
    def shape(self):
        return self.N, self.K
