"""ScheduleFloatOps: give every TensorIR function that is not a lowbit kernel a CPU schedule.

Takes: a Relax IRModule after LegalizeOps / FuseOps / FuseTIR for a CPU target: lowbit's kernels (M dispatchers
marked ``tirx.is_scheduled``, their bucket subroutines marked ``lowbit.subroutine``) and the graph's float
operators as unscheduled TensorIR (one loop nest per operator, one thread, scalar).
Produces: the same module where each float function that a rule of ``lowbit.schedules.cpu.float_ops.RULES``
takes (first match wins) is scheduled. A schedule with parallel loops is built twice, parallel and on one
thread: when the function's work (``float_ops.work``, in its symbolic sizes) is known, the one that fits
replaces the function; otherwise the function runs one or the other by its work at run time (at M = 1 most
operators are too small to pay for waking a second core). Replacements are marked ``tirx.is_scheduled`` and
``lowbit.float_op`` (the rule's name).
A function no rule takes stays as it is: correct, unscheduled. A rule that matches but whose schedule a
primitive refuses (ScheduleError) is skipped for that function, the next rule tried, and the refusal listed in
``refused`` and in one warning (slower code for that function, never wrong code).
Leaves alone: lowbit's kernels, reshapes (RewriteDataflowReshape makes them views of their input), functions
without TensorIR blocks, every Relax function.
"""
import warnings

from lowbit.compiler.passes.attach_subroutine_device import SUBROUTINE_ATTR
from lowbit.compiler.tvm_api import Analyzer, ScheduleError, relax, s_tir, tirx, tvm
from lowbit.schedules.cpu import float_ops


# Marks a function this pass scheduled: the rule's name.
FLOAT_OP_ATTR = "lowbit.float_op"


def is_scheduled(func):
    """Whether ``func`` needs no schedule from here: one of lowbit's kernels, their dispatchers and bucket
    subroutines, or a float operator this pass scheduled."""
    attrs = func.attrs if func.attrs is not None else {}
    return SUBROUTINE_ATTR in attrs or bool(attrs.get("tirx.is_scheduled", False))


def is_float_op(func):
    """Whether ``func`` is one of the model's float operators (scheduled by this pass or not)."""
    attrs = func.attrs if func.attrs is not None else {}
    return FLOAT_OP_ATTR in attrs or not is_scheduled(func)


@tvm.transform.module_pass(opt_level=0, name="lowbit.ScheduleFloatOps")
class ScheduleFloatOps:
    """The pass (see the module docstring).

    Parameters
    ----------
    target : TargetInfo
        The CPU target; rules read its vector width.
    rules : sequence, optional
        Rules in priority order (default: ``float_ops.RULES``).
    """

    def __init__(self, target, rules=None):
        self.target = target
        self.rules = tuple(rules if rules is not None else float_ops.RULES)
        self.scheduled = {}  # function name -> rule name
        self.refused = []  # (function name, rule name, first line of the ScheduleError)

    def transform_module(self, mod, _ctx):  # noqa: D102 (module_pass hook)
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
                continue
            if not isinstance(func.body, s_tir.stmt.SBlockRealize) or relax.analysis.has_reshape_pattern(func):
                continue  # a reshape: RewriteDataflowReshape makes it a view of its input, no copy at all
            updates.update(self._replacements(gvar, func))
        for gvar, func in updates.items():
            mod[gvar] = func
        if self.refused:
            listed = "; ".join(f"{name} ({rule}: {reason})" for name, rule, reason in self.refused)
            warnings.warn(f"lowbit: {len(self.refused)} float operator schedule(s) refused, those functions run "
                          f"with the next rule or unscheduled: {listed}", stacklevel=2)
        return mod

    def _replacements(self, gvar, func):
        """{GlobalVar: PrimFunc} replacing ``gvar`` (nothing when no rule takes it)."""
        name = gvar.name_hint
        found = self._schedule(name, func, parallel=True)
        if found is None:
            return {}
        rule, sch = found
        parallel = _scheduled(sch, rule)
        if not float_ops.has_parallel_loop(sch):
            return {gvar: parallel}
        serial = _scheduled(rule.apply(func, self.target, parallel=False), rule)
        big_enough = Analyzer().simplify(float_ops.work(func) >= float_ops.PARALLEL_MIN_WORK)
        if isinstance(big_enough, tirx.IntImm):
            return {gvar: parallel if big_enough.value else serial}
        return {gvar: _either(big_enough, parallel, serial)}

    def _schedule(self, name, func, parallel):
        """(rule, Schedule) from the first rule that takes ``func``, or None."""
        for rule in self.rules:
            try:
                sch = rule.apply(func, self.target, parallel=parallel)
            except ScheduleError as err:
                self.refused.append((name, rule.name, str(err).strip().splitlines()[0]))
                continue
            if sch is not None:
                self.scheduled[name] = rule.name
                return rule, sch
        return None


def _scheduled(sch, rule):
    return sch.mod["main"].with_attrs({"tirx.is_scheduled": True, FLOAT_OP_ATTR: rule.name})


def _either(condition, taken, otherwise):
    """One PrimFunc running ``taken``'s loop nests when ``condition`` holds, else ``otherwise``'s: two schedules
    of one function (same params, same root buffers; the buffers either schedule added are allocated too).

    Not two subroutines behind a dispatcher (as lowbit's M buckets): TVM 0.27's LLVM code generation took 4-6 s
    for each padded matmul in subroutine form against 0.15 s as a function of its own (the attention graph of
    tests/test_float_ops.py: 11 s to build instead of 1).
    """
    first, second = taken.body.block, otherwise.body.block
    buffers = list(first.alloc_buffers) + [buf for buf in second.alloc_buffers
                                           if not any(buf.same_as(have) for have in first.alloc_buffers)]
    root = s_tir.stmt.SBlock([], [], [], "root", tirx.IfThenElse(condition, first.body, second.body),
                             alloc_buffers=buffers)
    both = taken.with_body(s_tir.stmt.SBlockRealize([], True, root))
    # loops a schedule left alone keep their variables in both: give each definition its own
    return tirx.transform.ConvertSSA()(tvm.IRModule({"main": both}))["main"]
