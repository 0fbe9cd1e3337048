"""Tuning: records (atomic, filtered by version and target), the design spaces, and one real search."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from lowbit.compiler import dispatch
from lowbit.compiler.formats import quantize
from lowbit.compiler.intrinsics import x86_dot
from lowbit.compiler.layout import KernelLayout
from lowbit.compiler.linear import build_linear, default_plan
from lowbit.compiler.target import host_target
from lowbit.schedules.cpu import a8, decode
from lowbit.schedules.tuning import records, space, tuner

TAG = "testcpu-avx512"
WORKLOAD = records.make_workload(64, 256, "w4g128", "a8", "m2-8")
HOST = host_target()
M1, M2_8, M9_32, M33 = dispatch.DEFAULT_BUCKETS


def _record(config, ms, M=4, workload=WORKLOAD, tag=TAG, error=None):
    return records.make_record(workload, M, tag, "decode_a8", config, ms=ms, error=error)


def _a8(m_tile, n_tile=1):
    return dataclasses.asdict(a8.A8Config(m_tile=m_tile, n_tile=n_tile))


def _write_lines(folder, lines):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, records.RECORDS_FILE), "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


# ---- records ----------------------------------------------------------------------------------------------

def test_append_keeps_previous_records_and_reloads(tmp_path):
    database = records.TuningDatabase(tmp_path / "log", TAG)
    database.append(_record(_a8(4), 1.0))
    database.append(_record(_a8(2), 0.5))
    reloaded = records.TuningDatabase(tmp_path / "log", TAG)
    assert [r["config"]["m_tile"] for r in reloaded.records] == [4, 2]
    assert [r["ms"] for r in reloaded.records] == [1.0, 0.5]


def test_a_crash_while_writing_leaves_the_previous_log_intact(tmp_path, monkeypatch):
    database = records.TuningDatabase(tmp_path, TAG)
    database.append(_record(_a8(4), 1.0))
    before = (tmp_path / records.RECORDS_FILE).read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        database.append(_record(_a8(2), 0.5))
    assert (tmp_path / records.RECORDS_FILE).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted([records.RECORDS_FILE, records.LOCK_FILE])  # no temp file left


def test_records_of_other_versions_are_ignored_with_a_warning(tmp_path):
    old = dict(_record(_a8(2), 0.5), lowbit_version="0.0.1")
    current = _record(_a8(4), 1.0)
    _write_lines(tmp_path, [json.dumps(old), json.dumps(current)])
    with pytest.warns(UserWarning, match=r"ignored the records made by lowbit 0\.0\.1"):
        database = records.TuningDatabase(tmp_path, TAG)
    assert database.records == [current]


def test_records_of_other_targets_and_broken_lines_are_ignored_with_warnings(tmp_path):
    other = _record(_a8(2), 0.5, tag="zen2-avx2")
    current = _record(_a8(4), 1.0)
    _write_lines(tmp_path, [json.dumps(other), "{not json", json.dumps({"M": 3}), json.dumps(current)])
    with pytest.warns(UserWarning) as caught:
        database = records.TuningDatabase(tmp_path, TAG)
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 records of other targets than testcpu-avx512" in messages
    assert "2 of 4 lines that are not records" in messages
    assert database.records == [current]


def test_a_record_has_a_time_or_an_error():
    with pytest.raises(ValueError, match="either a time or an error"):
        records.make_record(WORKLOAD, 4, TAG, "decode_a8", _a8(4))
    with pytest.raises(ValueError, match="either a time or an error"):
        records.make_record(WORKLOAD, 4, TAG, "decode_a8", _a8(4), ms=1.0, error="boom")


def test_appending_a_record_of_another_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="zen2-avx2"):
        records.TuningDatabase(tmp_path, TAG).append(_record(_a8(4), 1.0, tag="zen2-avx2"))


DEFAULT = _a8(4)


@pytest.mark.parametrize("logged, expected", [
    pytest.param([(DEFAULT, 1.0), (_a8(2), 1.2), (_a8(6), 1.01)], None, id="all-slower"),
    pytest.param([(DEFAULT, 1.0), (_a8(2), 0.8), (_a8(6), 0.9)], _a8(2), id="fastest-wins"),
    pytest.param([(DEFAULT, 1.0), (_a8(2), 0.98)], None, id="within-noise"),
    pytest.param([(_a8(2), 0.5)], None, id="default-not-measured"),
    pytest.param([(DEFAULT, None), (_a8(2), 0.5)], None, id="default-failed"),
    pytest.param([(DEFAULT, 1.0), (_a8(2), None), (_a8(6), 0.9)], _a8(6), id="failed-skipped"),
], )
def test_best_record_never_picks_a_config_slower_than_the_default(logged, expected):
    found = [_record(config, ms, error=None if ms is not None else "build failed") for config, ms in logged]
    best = records.best_record(found, "decode_a8", DEFAULT)
    assert (best and best["config"]) == expected


def test_best_record_compares_times_only_at_the_same_rows():
    # 2 looks faster at M=8 only because M=8 is timed at no default: it must not win against M=4's numbers
    found = [_record(DEFAULT, 1.0, M=4), _record(_a8(2), 1.5, M=4), _record(_a8(2), 0.1, M=8)]
    assert records.best_record(found, "decode_a8", DEFAULT) is None
    found += [_record(DEFAULT, 0.2, M=8)]  # now 2 scores sqrt(1.5 * 0.5) < 1
    assert records.best_record(found, "decode_a8", DEFAULT)["config"] == _a8(2)


# ---- spaces -----------------------------------------------------------------------------------------------

def _layout(N=4096, K=4096, bits=4, decode_kind="a8", lanes=16):
    return KernelLayout(N=N, K=K, bits=bits, group_size=128, lanes=lanes, decode=decode_kind)


@pytest.mark.parametrize("bucket", dispatch.DEFAULT_BUCKETS, ids=lambda b: b.key)
@pytest.mark.parametrize("decode_kind", ["a8", "affine", "codebook"])
def test_space_holds_the_default_and_only_distinct_fitting_configs(bucket, decode_kind):
    layout = _layout(N=96, decode_kind=decode_kind)  # 6 column tiles: n_tile 4 does not divide them
    candidates = space.space(layout, bucket)
    keys = [(rule.name, config) for rule, config in candidates]
    assert len(set(keys)) == len(keys)
    rule, config = default_plan(layout, bucket)
    assert (rule.name, config) in keys
    for _, config in candidates:
        assert bucket.hi is None or config.m_tile <= bucket.hi
        assert getattr(config, "n_tile", 1) in (1, 2)


def test_a8_space_tunes_register_tiles_loop_order_and_unrolling():
    configs = {config for _, config in space.space(_layout(), M33)}
    assert {c.m_tile for c in configs} == set(space.A8_M_TILES)
    assert {c.n_tile for c in configs} == set(space.A8_N_TILES)
    assert all(not c.rows_outer for c in configs if c.m_tile == 1 or c.n_tile == 1)  # one order only
    both = (len(space.A8_M_TILES) - 1) * (len(space.A8_N_TILES) - 1)
    assert len(configs) == 2 * (len(space.A8_M_TILES) * len(space.A8_N_TILES) + both) == 66
    assert len(space.space(_layout(), M1)) == 6


def test_config_round_trips_through_a_record():
    record = _record(_a8(6, 2), 1.0)
    rule, config = space.config_from_record(record)
    assert isinstance(rule, a8.DecodeA8) and config == a8.A8Config(m_tile=6, n_tile=2)
    with pytest.raises(ValueError, match="no knobs"):
        space.config_from_record(dict(record, config={"m_tile": 2, "warp": 4}))
    with pytest.raises(ValueError, match="unknown schedule rule"):
        space.config_from_record(dict(record, rule="cuda_mma"))


def test_record_fits_layers_with_the_same_kernel_code():
    layout = _layout(N=64, K=256)
    record = _record(_a8(2), 1.0)
    assert space.record_fits(record, layout, M2_8)
    assert space.record_fits(dict(record, workload=dict(WORKLOAD, format="w4g128s")), layout, M2_8)
    assert not space.record_fits(dict(record, workload=dict(WORKLOAD, format="w2g128")), layout, M2_8)
    assert not space.record_fits(record, layout, M9_32)
    assert not space.record_fits(record, _layout(N=128, K=256), M2_8)


def _lut_layout(name="w2g64", N=14336, K=4096, vector_bytes=64, params=None):
    from lowbit.compiler.formats import parse_format
    from lowbit.compiler.layout import LutParams, lut_layout

    return lut_layout(parse_format(name), N, K, vector_bytes, params or LutParams())


def test_lut_space_tunes_tiles_and_chunk_unrolling_with_the_default_lookup():
    layout = _lut_layout()  # 112 row tiles of 128, 16 chunks per table group
    candidates = space.space(layout, M1)
    rule, default = default_plan(layout, M1)
    configs = [config for _, config in candidates]
    assert default in configs and len(set(configs)) == len(configs) == 12
    assert {c.lookup for c in configs} == {default.lookup}
    assert all(c.fits(layout) for c in configs)
    small = _lut_layout(N=1024)  # 8 row tiles: 2 or 4 per iteration would leave fewer than 8 parallel iterations
    assert {c.tiles for _, c in space.space(small, M1)} == {1}


def test_lut_records_fit_the_same_kind_of_weight_with_default_lut_params():
    from lowbit.compiler.layout import LutParams

    layout = _lut_layout(N=64, K=256)
    workload = records.make_workload(64, 256, "w2g64", "lut", "m1")
    record = records.make_record(workload, 1, TAG, "lut_lookup", {"lookup": "shuffle", "tiles": 1,
                                                                  "chunk_unroll": 2}, ms=1.0)
    assert space.record_fits(record, layout, M1)
    assert space.record_fits(dict(record, workload=dict(workload, format="w2g64s")), layout, M1)  # same code
    assert not space.record_fits(dict(record, workload=dict(workload, format="ternary")), layout, M1)
    assert not space.record_fits(record, _lut_layout("nf4g64", N=64, K=256), M1)  # codebook codes
    assert not space.record_fits(record, _lut_layout(N=64, K=256, params=LutParams(group=2)), M1)
    rule, config = space.config_from_record(record)
    assert rule.name == "lut_lookup" and config.chunk_unroll == 2


def test_a_lut_workload_tunes_and_compile_follows_its_log(tmp_path):
    log = tmp_path / "log"
    results = tuner.tune(tuner.tasks_for([(1, 256, 512)], "w2g64"), kernel="lut", trials=3, log=log, repeat=3,
                         llc=1 << 16, progress=False)
    (result,) = results
    assert result.workload["kernel"] == "lut" and result.measured >= 3 and result.failed == 0
    qw = quantize(np.random.default_rng(0).standard_normal((256, 512)), "w2g64")
    linear = build_linear(qw, kernel="lut", tuning_log=log)
    plan = linear.plans["m1"]
    assert plan.rule == "lut_lookup"
    # a record is used only where it beat the default (by records.MIN_GAIN): then it is the log's best
    if plan.source == "record":
        assert dataclasses.asdict(plan.config) == result.best_config
    else:
        assert plan.source == "default" and plan.config == default_plan(linear.layout, M1)[1]


def test_higgs_workloads_tune_their_rotated_codebook_kernel(tmp_path):
    """A HIGGS layer runs a codebook kernel (2-D for v2) after the rotation: the tuner times that kernel, and
    its records fit the compiled HIGGS layer (not a uniform 2-bit one of the same size)."""
    log = tmp_path / "log"
    (result,) = tuner.tune(tuner.tasks_for([(1, 128, 256)], "higgs2g64v2"), kernel="decode", trials=2, log=log,
                           repeat=2, llc=1 << 16, progress=False)
    assert result.measured >= 2 and result.failed == 0
    linear = build_linear(quantize(np.random.default_rng(1).standard_normal((128, 256)), "higgs2g64v2"),
                          kernel="decode", tuning_log=log)
    assert linear.layout.decode == "codebook" and linear.layout.dim == 2 and linear.layout.bits == 4
    assert space.layout_key("higgs2g64v2", "decode", 256) == space._layout_signature(linear.layout)
    assert space.layout_key("w4g64", "decode", 256) != space._layout_signature(linear.layout)
    assert space.layout_key("higgs4g64", "lut", 256)[-1] == 1 and space.layout_key("higgs2g64v2", "lut", 256)[-1] == 2


def test_decode_rules_build_m_tile_1_for_a_dynamic_bucket():
    """Regression: fusing the symbolic M loop with the tile loop broke decompose_reduction for m_tile=1."""
    qw = quantize(np.random.default_rng(0).standard_normal((40, 256)), "w4g128")
    x = np.random.default_rng(1).standard_normal((5, 256)).astype(np.float32)
    checker = tuner.ColdMeasurer(qw, 5, "decode", HOST, repeat=1, llc=1 << 16)
    assert checker.measure(decode.DecodeAccumulate(), decode.AccumulateConfig(partials=0, m_tile=1))[1] is None
    linear = checker.build(decode.DecodeAccumulate(), decode.AccumulateConfig(partials=0, m_tile=1))
    np.testing.assert_allclose(linear.run(x), x @ qw.dequantize().T, rtol=1e-4, atol=1e-4)


# ---- one real search ---------------------------------------------------------------------------------------

SMALL = (4, 64, 256)  # M, N, K: bucket m2-8, four 16-lane column tiles
needs_a8 = pytest.mark.skipif(x86_dot.isa_for(HOST.features) is None or HOST.vector_lanes != 16,
                              reason="host has no AVX-512 integer dot product (the a8 tuning test's layout)")


@pytest.fixture(scope="module")
def tuned_log(tmp_path_factory):
    """A log of 5 real measurements of the SMALL workload (default first, then the cost model's picks)."""
    if x86_dot.isa_for(HOST.features) is None:
        pytest.skip("host has no integer dot-product instructions")
    log = tmp_path_factory.mktemp("tuning") / "log"
    results = tuner.tune(tuner.tasks_for([SMALL], "w4g128"), trials=5, log=log, repeat=3, llc=1 << 16,
                         progress=False)
    return log, results


def test_tuning_writes_one_record_per_measured_candidate(tuned_log):
    log, (result,) = tuned_log
    database = records.TuningDatabase(log, HOST.tag)
    mine = [r for r in database.records if r["M"] == SMALL[0]]
    assert len(mine) == 6 and result.measured == 5  # 5 configs, the default timed first and last
    assert len({records.config_key(r["rule"], r["config"]) for r in mine}) == 5
    default = dataclasses.asdict(default_plan(_small_layout(), M2_8)[1])
    assert mine[0]["config"] == default == mine[-1]["config"]
    valid = [r["ms"] for r in mine if r["error"] is None]
    assert result.best_ms == min(valid) and result.default_ms == min(mine[0]["ms"], mine[-1]["ms"])
    assert result.speedup >= 1.0


def _small_layout():
    return KernelLayout(N=SMALL[1], K=SMALL[2], bits=4, group_size=128, lanes=HOST.vector_lanes, decode="a8")


def test_rerunning_resumes_without_measuring_again(tuned_log, monkeypatch):
    log, (result,) = tuned_log
    before = (log / records.RECORDS_FILE).read_bytes()

    def measured(*args):
        raise AssertionError("a candidate already in the log was measured again")

    monkeypatch.setattr(tuner.LocalRunner, "measure", measured)
    (again,) = tuner.tune(tuner.tasks_for([SMALL], "w4g128"), trials=5, log=log, repeat=3, progress=False)
    assert again == result
    assert (log / records.RECORDS_FILE).read_bytes() == before


def test_more_trials_measure_only_the_new_candidates(tuned_log, tmp_path):
    log, _ = tuned_log
    copy = tmp_path / "log"
    shutil.copytree(log, copy)
    (result,) = tuner.tune(tuner.tasks_for([SMALL], "w4g128"), trials=7, log=copy, repeat=3, llc=1 << 16,
                           progress=False)
    assert result.measured == 7
    lines = (copy / records.RECORDS_FILE).read_text().splitlines()
    assert lines[:6] == (log / records.RECORDS_FILE).read_text().splitlines()
    assert len(lines) == 6 + 2 + 1  # two new configs, the default again


def _small_weight():
    return quantize(tuner.seeded_weight(SMALL[1], SMALL[2]), "w4g128")


@needs_a8
def test_compile_follows_the_log(tuned_log):
    log, (result,) = tuned_log
    database = records.TuningDatabase(log, HOST.tag)
    linear = build_linear(_small_weight(), target=HOST, tuning_log=log)
    plan = linear.plans["m2-8"]
    best = records.best_record(database.records, "decode_a8", dataclasses.asdict(default_plan(_small_layout(),
                                                                                             M2_8)[1]))
    if best is None:  # nothing beat the default by MIN_GAIN (the tuner's fastest may still be within noise)
        assert plan.source == "default" and plan.config == default_plan(_small_layout(), M2_8)[1]
        assert result.best_config == dataclasses.asdict(plan.config) or result.speedup < 1 / records.MIN_GAIN
    else:
        assert plan.source == "record" and dataclasses.asdict(plan.config) == best["config"]
    assert {linear.plans[key].source for key in ("m1", "m9-32", "m33+")} == {"default"}  # nothing tuned there


@needs_a8
def test_compile_uses_a_faster_record_and_tuning_log_false_ignores_it(tuned_log, tmp_path):
    log, _ = tuned_log
    folder = tmp_path / HOST.tag  # a folder of per-target logs works too: its <target tag>/ is read
    shutil.copytree(log, folder)
    database = records.TuningDatabase(folder, HOST.tag)
    fastest_ms = min(r["ms"] for r in database.records if r["error"] is None)
    others = [r for r in database.records if r["config"] != database.records[0]["config"]]  # not the default
    slowest = max(others, key=lambda r: r["ms"] or 0.0)
    # the slowest candidate, re-stamped at half the fastest time of any record, the default's two timings (first
    # and last) included: the compile must now take it. (Half the default's first timing flaked on a loaded
    # machine, where its last timing came in faster than that.)
    database.append(dict(slowest, ms=fastest_ms / 2, error=None))
    x = np.random.default_rng(2).standard_normal((5, SMALL[2])).astype(np.float32)
    tuned = build_linear(_small_weight(), target=HOST, tuning_log=tmp_path)
    assert tuned.plans["m2-8"].source == "record"
    assert dataclasses.asdict(tuned.plans["m2-8"].config) == slowest["config"]
    plain = build_linear(_small_weight(), target=HOST, tuning_log=False)
    assert plain.plans["m2-8"].source == "default"
    assert plain.plans["m2-8"].config == default_plan(_small_layout(), M2_8)[1]
    np.testing.assert_allclose(tuned.run(x), plain.run(x), rtol=1e-5, atol=1e-5)


def test_a_missing_tuning_log_folder_is_an_error(tmp_path):
    from lowbit.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        build_linear(_small_weight(), target=HOST, tuning_log=tmp_path / "nowhere")


def test_a_failed_candidate_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    real_build = tuner.ColdMeasurer.build

    def build(self, rule, config):
        if config != default_plan(self.layout, self.bucket)[1]:  # every candidate but the default fails
            raise RuntimeError("LLVM ran out of registers")
        return real_build(self, rule, config)

    monkeypatch.setattr(tuner.ColdMeasurer, "build", build)
    (result,) = tuner.tune(tuner.tasks_for([(2, 64, 256)], "w4g128"), kernel="decode", trials=4,
                           log=tmp_path, repeat=2, llc=1 << 16, progress=False)
    logged = records.TuningDatabase(tmp_path, HOST.tag).records
    failed = [r for r in logged if r["error"] is not None]
    assert len(logged) == 5 and len(failed) == 3
    assert all("LLVM ran out of registers" in r["error"] and r["ms"] is None for r in failed)
    assert result.measured == 4 and result.failed == 3 and result.best_ms == result.default_ms


def test_a_search_with_no_valid_candidate_is_an_error(tmp_path, monkeypatch):
    from lowbit.errors import KernelError

    monkeypatch.setattr(tuner.ColdMeasurer, "build", lambda self, rule, config: 1 / 0)
    with pytest.raises(KernelError, match="ZeroDivisionError"):
        tuner.tune(tuner.tasks_for([(2, 64, 256)], "w4g128"), kernel="decode", trials=2, log=tmp_path, repeat=2,
                   llc=1 << 16, progress=False)


def test_shipped_logs_are_current_records_of_their_folders_target_with_a_readme(recwarn):
    import lowbit.tuning_logs

    root = os.path.dirname(lowbit.tuning_logs.__file__)
    folders = [name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)) and name != "__pycache__"]
    assert folders, "no tuning logs shipped"
    for tag in folders:
        assert os.path.isfile(os.path.join(root, tag, "README.md")), tag
        database = records.TuningDatabase(records.shipped_folder(tag), tag)
        assert database.records and all(space.config_from_record(r) for r in database.records)
    assert not [w for w in recwarn if "ignored" in str(w.message)]  # none from another version or target


@needs_a8
@pytest.mark.parametrize("config", [
    a8.A8Config(m_tile=1, n_tile=4), a8.A8Config(m_tile=4, n_tile=2, rows_outer=True),
    a8.A8Config(m_tile=2, n_tile=4, unroll_words=True), a8.A8Config(m_tile=6, n_tile=2, rows_outer=True,
                                                                     unroll_words=True),
], ids=lambda c: f"m{c.m_tile}n{c.n_tile}{'-rows_outer' if c.rows_outer else ''}{'-unroll' if c.unroll_words else ''}")
@pytest.mark.parametrize("M", [3, 17])
def test_every_a8_knob_computes_the_reference(config, M):
    from lowbit.compiler.kernels_a8 import activation_group, quantize_activations_reference, reference

    qw = quantize(np.random.default_rng(3).standard_normal((64, 256)), "w4g128")
    builder = tuner.CandidateBuilder(qw, M, "a8", HOST)
    linear = builder.build(a8.DecodeA8(), config)
    x = np.random.default_rng(M).standard_normal((M, 256)).astype(np.float32)
    expected = reference(qw, x)
    # integer sums are exact: the float epilogue's rounding over the 8 activation groups bounds the error
    # (test_a8's bound)
    x_deq = quantize_activations_reference(x, activation_group(qw.group_size))[0]
    bound = np.finfo(np.float32).eps * (256 // 32 + 4) * (np.abs(x_deq) @ np.abs(qw.dequantize()).T)
    assert (np.abs(linear.run(x) - expected) <= bound).all()


@needs_a8
def test_cost_model_learns_from_results_and_ranks_every_candidate():
    from lowbit.schedules.tuning.cost_model import CostModel

    layout = _small_layout()
    pairs = space.space(layout, M2_8)
    model = CostModel(HOST)
    # made-up times: the larger the register block, the faster (the model must rank by what it was taught)
    times = {config: 1.0 / (config.m_tile * config.n_tile) for _, config in pairs}
    taught = [(rule, config, times[config]) for rule, config in pairs[::2]] + [(pairs[1][0], pairs[1][1], None)]
    model.update(layout, SMALL[0], taught)
    ranked = model.rank(layout, SMALL[0], pairs[1::2])
    assert sorted(map(id, ranked)) == sorted(map(id, pairs[1::2]))  # a permutation: nothing lost or added
    top, bottom = ranked[: len(ranked) // 3], ranked[-(len(ranked) // 3):]
    mean = lambda group: np.mean([times[config] for _, config in group])  # noqa: E731
    assert mean(top) < mean(bottom)


def test_records_of_the_float_a8_do_not_apply_to_the_models_activation_codes():
    """A tuning record measures one kernel: the a8 kernel on the model's own activation codes (another template,
    AMX tiles from 9 rows on) takes no record of the float-activation a8 of the same weight."""
    from lowbit.compiler.linear import prepare_layer
    from lowbit.schedules.tuning.space import record_fits

    qw = quantize(np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32), "w8s")
    target = host_target()
    _, float_layout, _ = prepare_layer(qw, None, target, "a8")
    _, codes_layout, _ = prepare_layer(qw, None, target, "a8", activation="uint8")
    record = {"workload": {"N": 64, "K": 256, "format": "w8s", "kernel": "a8", "bucket": "m33+"}}
    bucket = dispatch.Bucket(33, None)
    assert record_fits(record, float_layout, bucket)
    assert not record_fits(record, codes_layout, bucket)
