"""Hostile tuning logs: every line that is not a valid record, and every record whose knobs lie outside its
rule's space, is skipped with a warning naming the file and the line; compiling with such a log never crashes
and keeps the default schedule."""
import copy
import dataclasses
import json
import os
import warnings

import numpy as np
import pytest

from lowbit.compiler import dispatch
from lowbit.compiler.formats import quantize
from lowbit.compiler.layout import KernelLayout
from lowbit.compiler.linear import build_linear, default_plan
from lowbit.compiler.target import host_target
from lowbit.schedules.tuning import records, tuner

HOST = host_target()
N, K = 64, 256
WORKLOAD = records.make_workload(N, K, "w4g128", "decode", "m2-8")


def _default():
    layout = KernelLayout(N=N, K=K, bits=4, group_size=128, lanes=HOST.vector_lanes, decode="affine")
    rule, config = default_plan(layout, dispatch.DEFAULT_BUCKETS[1])
    return rule.name, dataclasses.asdict(config)


def _record(rule, config, ms):
    return records.make_record(WORKLOAD, 4, HOST.tag, rule, config, ms=ms)


def _write(folder, lines):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, records.RECORDS_FILE), "wb") as f:
        f.write(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return folder


def _build(log):
    weight = quantize(tuner.seeded_weight(N, K), "w4g128")
    return build_linear(weight, target=HOST, kernel="decode", tuning_log=log)


@pytest.mark.parametrize("m_tile", [1000000, 0, -3])
def test_absurd_knob_in_a_winning_record_is_skipped_naming_its_line(tmp_path, m_tile):
    """Regression: m_tile 1000000 drove compile past 3 GiB; 0 or negative gave a raw ZeroDivisionError."""
    rule, config = _default()
    absurd = dict(config, m_tile=m_tile)
    log = _write(tmp_path / "log", [json.dumps(_record(rule, config, 1.0)), json.dumps(_record(rule, absurd, 0.01))])
    with pytest.warns(UserWarning, match=r"records\.jsonl, line 2: skipped a record whose schedule .* not in that "
                                         r"rule's space"):
        linear = _build(log)
    assert linear.plans["m2-8"].source == "default"
    assert dataclasses.asdict(linear.plans["m2-8"].config) == config


BAD_LINES = {
    "null": "null", "number": "3", "boolean": "true", "string": '"record"', "list": "[]",
    "not-json": "{not json", "invalid-utf8": b'{"workload": "\xff\xfe"}', "deep": "[" * 50000 + "]" * 50000,
    "workload-list": lambda r: dict(r, workload=[]), "config-list": lambda r: dict(r, config=[1]),
    "ms-missing": lambda r: {k: v for k, v in r.items() if k != "ms"}, "ms-string": lambda r: dict(r, ms="fast"),
    "ms-zero": lambda r: dict(r, ms=0), "ms-negative": lambda r: dict(r, ms=-1.0),
    "n-string": lambda r: dict(r, workload=dict(r["workload"], N="64")), "m-bool": lambda r: dict(r, M=True),
    "error-and-ms": lambda r: dict(r, error="boom"), "knob-float": lambda r: dict(r, config={"m_tile": 1.5}),
}


def test_every_kind_of_bad_line_is_skipped_with_a_warning_naming_it(tmp_path):
    rule, config = _default()
    good = _record(rule, config, 1.0)
    lines = [json.dumps(good)]
    for bad in BAD_LINES.values():
        lines.append(json.dumps(bad(copy.deepcopy(good))) if callable(bad) else bad)
    with pytest.warns(UserWarning) as caught:
        database = records.TuningDatabase(_write(tmp_path, lines), HOST.tag)
    assert database.records == [good]
    message = " | ".join(str(w.message) for w in caught)
    assert f"ignored {len(BAD_LINES)} of {len(lines)} lines that are not records" in message
    for number in range(2, 2 + records.MAX_LISTED):
        assert f"line {number}: " in message
    assert f"and {len(BAD_LINES) - records.MAX_LISTED} more" in message


_JUNK = [None, True, -1, 0, 1 << 40, 1e308, float("nan"), "", "x" * 300, [], {}, [[[]]], {"a": {}}]


def _leaves(node, trail=()):
    yield trail
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _leaves(child, trail + (key,))


def test_random_record_mutations_never_crash_loading_or_compiling(tmp_path):
    """Seeded fuzz: 300 copies of a winning record, each with one node replaced by junk, in one log beside the
    default's record; loading warns, and compiling keeps a schedule that computes the reference."""
    rule, config = _default()
    winner = _record(rule, dict(config, n_vectors=1), 0.01)
    trails = [t for t in _leaves(winner) if t]
    rng = np.random.default_rng(0)
    lines = [json.dumps(_record(rule, config, 1.0))]
    for _ in range(300):
        mutated = copy.deepcopy(winner)
        node, trail = mutated, trails[int(rng.integers(len(trails)))]
        for key in trail[:-1]:
            node = node[key]
        node[trail[-1]] = copy.deepcopy(_JUNK[int(rng.integers(len(_JUNK)))])
        lines.append(json.dumps(mutated))
    log = _write(tmp_path / "log", lines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        linear = _build(log)
    assert any("lines that are not records" in str(w.message) for w in caught)
    x = np.random.default_rng(1).standard_normal((4, K)).astype(np.float32)
    plain = _build(False)
    np.testing.assert_allclose(linear.run(x), plain.run(x), rtol=1e-5, atol=1e-4)
