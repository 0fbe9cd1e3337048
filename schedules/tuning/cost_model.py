"""MetaSchedule's XGBoost cost model, fed lowbit's own candidate schedules.

``tvm.s_tir.meta_schedule.cost_model.XGBModel`` learns from ``MeasureCandidate`` objects (a scheduled
``Schedule`` plus its argument info) and their ``RunnerResult`` times, through the ``PerStoreFeature``
extractor, within a ``TuneContext`` (whose module names the workload: results are normalised per workload,
as MetaSchedule does per task). None of that requires MetaSchedule's own search space: a lowbit candidate
is a rule's template scheduled by ``rule.apply`` with one config, which is a ``Schedule`` like any other.

Features are taken from the candidate scheduled for the measured M as a constant (PerStoreFeature needs
static loop extents); the measured kernel is the bucket's function with a symbolic M. One model serves
every workload of a tuning run, so what it learns on one shape ranks the next.
"""
from lowbit.compiler.tvm_api import meta_schedule, tune_context, tvm
from lowbit.schedules.tuning.space import kernel_of

WARMUP_SAMPLES = 2  # XGBModel answers random scores until it has this many results (exploration)


class CostModel:
    """Ranks unmeasured candidates by predicted speed; learns from every measurement.

    Parameters
    ----------
    target : TargetInfo
    warmup_samples : int
        Measurements before the model's predictions replace random scores.
    """

    def __init__(self, target, warmup_samples=WARMUP_SAMPLES):
        ms = meta_schedule()
        self._ms, self.target = ms, target
        # verbose_eval: a log line every N boosting rounds; the bar is the tuner's only output
        self.model = ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(),
                                            num_warmup_samples=warmup_samples, verbose_eval=1 << 30,
                                            num_tuning_cores=1)
        self._contexts, self._candidates = {}, {}

    def _context(self, layout, M):
        key = (layout, M)
        if key not in self._contexts:
            # the module only names the workload (MetaSchedule hashes it to group results): any compute of
            # this layout and M does
            func = _computes()[kernel_of(layout)](layout, M, False)
            self._contexts[key] = tune_context(tvm.IRModule({"main": func}), self.target.tvm_target())
        return self._contexts[key]

    def _candidate(self, layout, M, rule, config):
        key = (layout, M, rule.name, config)
        if key not in self._candidates:
            sch = rule.apply(rule.template(layout, M, False, config), self.target, config)
            if sch is None:
                raise ValueError(f"rule {rule.name} declined its own template")
            self._candidates[key] = self._ms.MeasureCandidate(
                sch, self._ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"]))
        return self._candidates[key]

    def update(self, layout, M, results):
        """Learn from ``results``: a list of ``(rule, config, ms or None)`` measured at ``M`` (None: failed)."""
        candidates, outcomes = [], []
        for rule, config, ms in results:
            try:
                candidates.append(self._candidate(layout, M, rule, config))
            except Exception:  # noqa: BLE001 - the measurement already recorded why it fails to build
                continue
            outcomes.append(self._ms.runner.RunnerResult(None if ms is None else [ms * 1e-3],
                                                         None if ms is not None else "failed"))
        if candidates:
            self.model.update(self._context(layout, M), candidates, outcomes)

    def rank(self, layout, M, pairs):
        """``pairs`` (``(rule, config)``) sorted by predicted speed, best first.

        A candidate whose schedule cannot be built for the features goes last: its measurement will record why.
        """
        buildable, broken = [], []
        for pair in pairs:
            try:
                buildable.append((pair, self._candidate(layout, M, *pair)))
            except Exception:  # noqa: BLE001 - ranked last, measured (and its error recorded) by the tuner
                broken.append(pair)
        if not buildable:
            return broken
        scores = self.model.predict(self._context(layout, M), [candidate for _, candidate in buildable])
        order = sorted(range(len(buildable)), key=lambda i: -scores[i])
        return [buildable[i][0] for i in order] + broken


def _computes():
    """Compute definition of each kernel family: ``(layout, M, has_bias) -> PrimFunc``."""
    from lowbit.compiler.kernels import dequant_tile_compute
    from lowbit.compiler.kernels_a8 import a8_compute
    from lowbit.compiler.kernels_lut import lut_compute

    return {"decode": dequant_tile_compute, "a8": a8_compute, "lut": lut_compute}
