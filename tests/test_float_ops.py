"""The graph's float operators on CPU: scheduled by lowbit's rules (schedules/cpu/float_ops.py, applied by the
ScheduleFloatOps pass in the ``float-ops`` phase), and still computing what NumPy computes.

Graphs are small Relax functions with symbolic sizes, run at awkward sizes (1, 3, 17, 64 rows; widths 40 and 100
that are no multiple of the 16 / 8 vector lanes). Tolerances come from float32 arithmetic: a sum of ``n``
products is off by at most ``n * eps`` of the sum of their magnitudes (any order), TVM's ``fast_exp`` /
``fast_erf`` by at most 4 eps relative (measured 2.1 and 3.2 eps over their ranges).
"""
import warnings
from math import erf

import numpy as np
import pytest

from lowbit.compiler.passes.schedule_float_ops import FLOAT_OP_ATTR, ScheduleFloatOps
from lowbit.compiler.pipeline import schedule_float_ops
from lowbit.compiler.target import host_target, resolve_target
from lowbit.compiler.passes.sequences import relax_pipeline, tir_pipeline
from lowbit.compiler.tvm_api import Analyzer, compile_module, relax, tirx, tvm
from lowbit.schedules.cpu import float_ops

EPS32 = float(np.finfo(np.float32).eps)
ROWS = [1, 3, 17, 64]
HEADS, HEAD_DIM = 2, 40
AVX2 = {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": "znver2", "num-cores": 2, "features": ["avx2", "fma"]}


@pytest.fixture(scope="module")
def target():
    return host_target()


def _function(build, *params):
    """A Relax module ``main(*params)`` whose body ``build(bb, *params)`` emits, returning its output."""
    bb = relax.BlockBuilder()
    with bb.function("main", list(params)):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _attention():
    """``softmax(q k^T * scale + mask) v`` over (batch, HEADS, seq, HEAD_DIM), ``k`` given transposed."""
    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    q = relax.Var("q", relax.TensorType((batch, HEADS, seq, HEAD_DIM), "float32"))
    k_t = relax.Var("k_t", relax.TensorType((batch, HEADS, HEAD_DIM, seq), "float32"))
    v = relax.Var("v", relax.TensorType((batch, HEADS, seq, HEAD_DIM), "float32"))
    mask = relax.Var("mask", relax.TensorType((seq, seq), "float32"))

    def build(bb, q, k_t, v, mask):
        scores = bb.emit(relax.op.add(relax.op.multiply(relax.op.matmul(q, k_t), relax.const(0.125, "float32")),
                                      mask))
        return relax.op.matmul(bb.emit(relax.op.nn.softmax(scores, axis=-1)), v)

    return _function(build, q, k_t, v, mask)


def _attention_reference(q, k_t, v, mask):
    scores = (q.astype(np.float64) @ k_t) * 0.125 + mask
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs @ v, probs


def _norm_mlp(width):
    """``gelu(layer_norm(x + r) @ W + b)`` over (rows, width); W (width, 40) a constant."""
    rows = tirx.Var("rows", "int64")
    x = relax.Var("x", relax.TensorType((rows, width), "float32"))
    r = relax.Var("r", relax.TensorType((rows, width), "float32"))
    weights = _norm_mlp_weights(width)

    def build(bb, x, r):
        h = relax.op.nn.layer_norm(bb.emit(relax.op.add(x, r)), relax.const(weights["gamma"]),
                                   relax.const(weights["beta"]), axes=[-1])
        y = relax.op.add(relax.op.matmul(bb.emit(h), relax.const(weights["w"])), relax.const(weights["b"]))
        return relax.op.nn.gelu(bb.emit(y))

    return _function(build, x, r)


def _norm_mlp_weights(width):
    rng = np.random.default_rng(width)
    return {"gamma": rng.uniform(0.5, 2.0, width).astype(np.float32), "beta": rng.standard_normal(width).astype(
        np.float32), "w": (rng.standard_normal((width, 40)) / np.sqrt(width)).astype(np.float32),
            "b": rng.standard_normal(40).astype(np.float32)}


def _compiled(mod, target):
    scheduled = schedule_float_ops(mod, target)
    executable = compile_module(scheduled, target=target.tvm_target(), relax_pipeline=relax_pipeline(target),
                                tir_pipeline=tir_pipeline())
    return scheduled, tvm.runtime.vm.VirtualMachine(executable, tvm.cpu())


def _run(vm, *arrays):
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def _rules_used(mod):
    """{function name: rule} of the functions ScheduleFloatOps scheduled."""
    return {gvar.name_hint: str(func.attrs[FLOAT_OP_ATTR]) for gvar, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc) and func.attrs is not None and FLOAT_OP_ATTR in func.attrs}


@pytest.mark.parametrize("isa", ["host", "avx2"])
def test_attention_is_scheduled_parallel_and_matches_numpy(isa):
    # AVX2: 8-lane vectors and 4-row tiles (code that also runs on an AVX-512 host)
    target = host_target() if isa == "host" else resolve_target(AVX2)
    scheduled, vm = _compiled(_attention(), target)
    used = _rules_used(scheduled)
    assert sorted(used.values()) == ["float_matmul", "float_matmul", "row_reduction"]
    for name in used:
        # symbolic sizes: a parallel and a single-thread schedule, chosen at run time
        branch = _work_branch(scheduled[name])
        assert "T.parallel" in branch.then_case.script() and "T.parallel" not in branch.else_case.script()
    assert f"T.vectorized(T.int64({target.vector_lanes}))" in scheduled["matmul1"].script()
    rng = np.random.default_rng(0)
    for batch, seq in [(1, rows) for rows in ROWS] + [(2, 17), (1, 128)]:  # 128: every function parallel
        q, k_t, v = (rng.standard_normal(shape).astype(np.float32) for shape in
                     ((batch, HEADS, seq, HEAD_DIM), (batch, HEADS, HEAD_DIM, seq), (batch, HEADS, seq, HEAD_DIM)))
        mask = np.triu(np.full((seq, seq), -1e9, np.float32), 1)
        ours = _run(vm, q, k_t, v, mask)
        reference, probs = _attention_reference(q, k_t, v, mask)
        # scores: HEAD_DIM products; probabilities: fast_exp and a sum of seq terms; output: seq products
        score_error = HEAD_DIM * EPS32 * (np.abs(q) @ np.abs(k_t)) * 0.125
        prob_error = probs * (2 * score_error.max(-1, keepdims=True) + (4 + seq) * EPS32)
        bound = prob_error @ np.abs(v) + seq * EPS32 * (probs @ np.abs(v)) + EPS32 * np.abs(reference)
        assert ours.shape == reference.shape
        assert (np.abs(ours - reference) <= bound).all(), f"batch {batch}, seq {seq}"


@pytest.mark.parametrize("width", [100, 256], ids=["width100", "width256"])
def test_norm_and_mlp_are_scheduled_and_match_numpy(target, width):
    scheduled, vm = _compiled(_norm_mlp(width), target)
    assert {"row_reduction", "float_matmul", "elementwise"} <= set(_rules_used(scheduled).values())
    weights, rng = _norm_mlp_weights(width), np.random.default_rng(1)
    for rows in ROWS + [1024]:  # 1024: every function parallel
        x, r = (rng.standard_normal((rows, width)).astype(np.float32) * 3 for _ in range(2))
        h = (x + r).astype(np.float64)
        centered = h - h.mean(-1, keepdims=True)
        normed = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5) * weights["gamma"] + weights["beta"]
        y = normed @ weights["w"] + weights["b"]
        reference = y * (0.5 + 0.5 * np.vectorize(erf)(y / np.sqrt(2)))
        # layer norm: sums of width terms, relative to the row's scale; matmul: width products; GELU: fast_erf
        normed_error = 4 * width * EPS32 * np.abs(normed).max(-1, keepdims=True)
        y_error = normed_error * np.abs(weights["w"]).sum(0) + width * EPS32 * (np.abs(normed) @ np.abs(weights["w"]))
        bound = 1.5 * y_error + 4 * EPS32 * np.abs(y) + EPS32 * np.abs(reference)
        ours = _run(vm, x, r)
        assert (np.abs(ours - reference) <= bound).all(), f"rows {rows}"


def test_rules_take_their_operators_and_decline_the_others(target):
    funcs = _legalized_and_fused(_attention())
    matmuls = [f for name, f in funcs.items() if "matmul" in name]
    softmax = next(f for name, f in funcs.items() if "softmax" in name)
    assert matmuls and all(float_ops.FloatMatmul().apply(f, target) is not None for f in matmuls)
    assert float_ops.FloatMatmul().apply(softmax, target) is None
    assert float_ops.RowReduction().apply(softmax, target) is not None
    assert all(float_ops.Elementwise().apply(f, target) is None for f in matmuls)
    assert float_ops.Elementwise().apply(softmax, target) is None
    for func in (softmax, *matmuls):
        assert float_ops.has_parallel_loop(float_ops.Fallback().apply(func, target))
        assert not float_ops.has_parallel_loop(float_ops.Fallback().apply(func, target, parallel=False))


def _legalized_and_fused(mod):
    mod = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
    return {gvar.name_hint: func for gvar, func in mod.functions_items() if isinstance(func, tirx.PrimFunc)}


class _RefusingRule:
    """A rule that matches everything and then asks for something TVM refuses."""

    name = "refusing"

    def apply(self, func, target, parallel=True):
        from lowbit.compiler.tvm_api import Schedule

        sch = Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        sch.compute_inline(blocks[-1])  # the output block: never inlinable
        return sch


def test_a_refused_schedule_leaves_the_function_unscheduled_and_warns(target):
    funcs = _legalized_and_fused(_attention())
    schedule = ScheduleFloatOps(target, rules=(_RefusingRule(),))
    with pytest.warns(UserWarning, match="refused"):
        out = schedule(tvm.IRModule(funcs))
    assert len(schedule.refused) == len(funcs) and all(rule == "refusing" for _, rule, _ in schedule.refused)
    assert not _rules_used(out)
    for gvar, func in out.functions_items():
        assert func.same_as(funcs[gvar.name_hint])  # untouched: the unscheduled, correct loop nest


def _work_branch(func):
    """The ``if <work is large>: <parallel schedule> else: <single-thread schedule>`` of a scheduled function."""
    branch = func.body.block.body
    assert isinstance(branch, tirx.IfThenElse)
    return branch


def test_one_thread_at_one_row_and_two_at_many(target):
    scheduled = schedule_float_ops(_attention(), target)
    for name in ("fused_matmul_multiply_add", "fast_softmax", "matmul1"):
        condition = _work_branch(scheduled[name]).condition
        for seq, parallel in ((1, False), (128, True)):
            analyzer = Analyzer()
            for var in tirx.analysis.undefined_vars(condition):
                analyzer.bind(var, {"batch": 1, "seq": seq}[var.name])
            assert bool(analyzer.simplify(condition)) == parallel, (name, seq)


def test_kernel_followed_by_activation_is_not_fused_with_it(tmp_path):
    import lowbit
    from lowbit.compiler.graph import Activation, Linear, Sequential, quantize_sequential

    rng = np.random.default_rng(3)
    model = quantize_sequential(Sequential([Linear(rng.standard_normal((48, 64)).astype(np.float32), name="fc"),
                                            Activation("gelu")]), "w4g32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no refused schedule
        compiled = lowbit.compile(model, kernel="decode", dump_ir=str(tmp_path))
    graph = (tmp_path / "3-float-ops.txt").read_text()
    assert "R.call_tir(cls.layer0_mpgemm," in graph and "fused_layer0" not in graph  # the kernel stays its own call
    x = rng.standard_normal((5, 64)).astype(np.float32)
    y = x.astype(np.float64) @ model.layers[0].weight.dequantize().astype(np.float64).T
    reference = y * (0.5 + 0.5 * np.vectorize(erf)(y / np.sqrt(2)))
    bound = 64 * EPS32 * (np.abs(x) @ np.abs(model.layers[0].weight.dequantize()).T) + 4 * EPS32 * np.abs(y)
    assert (np.abs(compiled(x) - reference) <= 1.5 * bound + EPS32 * np.abs(reference)).all()


def _rms_norm_silu(width):
    """``silu(x / sqrt(mean(x * x, -1, keepdims) + 1e-6) * gamma)`` over (batch, seq, width): Llama's RMSNorm as
    torch exports it (a keepdims mean), then the MLP's SiLU."""
    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = relax.Var("x", relax.TensorType((batch, seq, width), "float32"))
    gamma = np.random.default_rng(width).uniform(0.5, 2.0, width).astype(np.float32)

    def build(bb, x):
        ms = bb.emit(relax.op.mean(bb.emit(relax.op.multiply(x, x)), axis=[-1], keepdims=True))
        scale = bb.emit(relax.op.sqrt(relax.op.add(ms, relax.const(1e-6, "float32"))))
        h = bb.emit(relax.op.multiply(relax.op.divide(x, scale), relax.const(gamma)))
        return relax.op.multiply(h, bb.emit(relax.op.sigmoid(h)))

    return _function(build, x), gamma


@pytest.mark.parametrize("width", [64, 576])
def test_keepdims_norm_runs_its_reduction_once_per_row(target, width):
    """Regression: a keepdims reduction's unit axis was counted as a row axis, so RMSNorm's row loop ran over every
    element with the row's sum of squares recomputed under it (576 times the work). Sigmoid uses fast_exp."""
    (mod, gamma) = _rms_norm_silu(width)
    scheduled, vm = _compiled(mod, target)
    norm = next(func for name, func in scheduled.functions_items() if "mean" in name.name_hint)
    assert str(norm.attrs[FLOAT_OP_ATTR]) == "row_reduction"
    assert "T.parallel(batch * seq)" in norm.script()
    from lowbit.compiler.passes.fast_float_math import FastFloatMath

    assert "R.sigmoid" in mod.script() and "R.sigmoid" not in FastFloatMath()(mod).script()
    rng = np.random.default_rng(2)
    for batch, seq in [(1, 1), (1, 16), (2, 17), (4, 64)]:
        x = rng.standard_normal((batch, seq, width)).astype(np.float32) * 2
        h = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * gamma
        reference = h / (1 + np.exp(-h))
        # the mean: width positive terms; rsqrt, divide, scale: a few eps; silu: sigmoid's slope |h| carries h's
        # error, fast_exp 4 eps and the division 2
        h_error = (width / 2 + 4) * EPS32
        bound = (h_error * (1 + np.abs(h)) + 8 * EPS32) * np.abs(reference) + EPS32 * 1e-30
        ours = _run(vm, x)
        assert (np.abs(ours - reference) <= bound).all(), f"batch {batch}, seq {seq}"


def test_whole_tensor_max_and_min_are_parallel_and_exact(target):
    """DynamicQuantizeLinear's max and min of the whole activation: the full_reduction rule (rows in parallel,
    vector partial maxima), and exactly NumPy's value (max and min do not round)."""
    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = relax.Var("x", relax.TensorType((batch, seq, 64), "float32"))
    mod = _function(lambda bb, x: relax.Tuple([bb.emit(relax.op.max(x)), bb.emit(relax.op.min(x))]), x)
    scheduled, vm = _compiled(mod, target)
    used = _rules_used(scheduled)
    assert sorted(used.values()) == ["full_reduction", "full_reduction"]
    for name in used:
        assert "T.parallel" in _work_branch(scheduled[name]).then_case.script()
    rng = np.random.default_rng(4)
    for batch_size, seq_len in [(1, 1), (1, 16), (3, 17), (32, 64)]:
        values = rng.standard_normal((batch_size, seq_len, 64)).astype(np.float32)
        biggest, smallest = vm["main"](tvm.runtime.tensor(values))
        assert biggest.numpy() == values.max() and smallest.numpy() == values.min()
