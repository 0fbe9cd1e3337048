"""Offline measurement: export candidates, ``lowbit measure`` them runtime-only in a fresh process, import."""
import json
import re
import os
import subprocess
import sys

import pytest

from lowbit import cli
from lowbit.compiler.target import host_target
from lowbit.errors import InputError
from lowbit.runtime import measure
from lowbit.schedules.tuning import offline, records, tuner

HOST = host_target()
SHAPE = "4,64,256"

# what `lowbit measure` pulls into a fresh process where only the runtime is wanted
_MEASURE = r"""
import json, os, sys
from lowbit import cli
code = cli.main(["measure", sys.argv[1], "--repeat", "2", "--no-progress"])
maps = [line.split()[-1] for line in open("/proc/self/maps") if "libtvm" in line]
threads = __import__("tvm_ffi").get_global_func("runtime.NumThreads")()
print(json.dumps({"code": code, "libs": sorted({os.path.basename(path) for path in maps}), "threads": threads,
                  "cores": len(os.sched_getaffinity(0)), "env_threads": os.environ.get("TVM_NUM_THREADS"),
                  "modules": [m for m in ("lowbit.compiler", "lowbit.schedules", "lowbit.frontends", "tvm.relax",
                                          "tvm.s_tir", "onnx") if m in sys.modules]}))
"""


def _measure_in_fresh_process(folder):
    env = dict(os.environ)
    env.pop("TVM_USE_RUNTIME_LIB", None)  # `lowbit measure` asks for the runtime library by itself
    env.pop("TVM_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(folder)], capture_output=True, text=True, env=env,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Export 3 candidates of one workload, measure them runtime-only, import the results."""
    base = tmp_path_factory.mktemp("offline")
    log, folder = base / "log", base / "export"
    argv = ["tune", "--shape", SHAPE, "--format", "w4g128", "--trials", "3", "--log", str(log), "--no-progress"]
    assert cli.main([*argv, "--export-candidates", str(folder)]) == 0
    exported = measure.read_candidates(folder)
    fresh = _measure_in_fresh_process(folder)
    assert cli.main(["tune", "--import-results", str(folder), "--log", str(log)]) == 0
    return log, folder, exported, fresh, argv


def test_export_writes_libraries_and_the_workload_inputs(round_trip):
    _, folder, exported, _, _ = round_trip
    assert exported["target_tag"] == HOST.tag and len(exported["candidates"]) == 3
    (workload,) = exported["workloads"]
    assert workload["M"] == 4 and workload["workload"]["N"] == 64 and workload["workload"]["K"] == 256
    for candidate in exported["candidates"]:
        assert (folder / candidate["library"]).stat().st_size > 0
    import numpy as np

    with np.load(folder / workload["inputs"]) as data:
        assert data["x"].shape == (4, 256) and data["y_reference"].shape == (4, 64)
        assert set(workload["args"]) <= set(data.files)


def test_measure_runs_with_the_runtime_library_only(round_trip):
    _, folder, _, fresh, _ = round_trip
    assert fresh["code"] == 0
    assert fresh["modules"] == []
    assert fresh["threads"] == fresh["cores"] and fresh["env_threads"] is None  # every core, no env var set
    assert "libtvm_runtime.so" in fresh["libs"]
    assert not {"libtvm_compiler.so", "libtvm.so"} & set(fresh["libs"]), fresh["libs"]
    results = json.loads((folder / measure.RESULTS_FILE).read_text())
    assert len(results["results"]) == 3 and all(r["ms"] > 0 and r["error"] is None for r in results["results"])


def test_import_adds_one_record_per_result_and_is_idempotent(round_trip):
    log, folder, exported, _, _ = round_trip
    logged = records.TuningDatabase(log, HOST.tag).records
    results = {r["id"]: r["ms"] for r in json.loads((folder / measure.RESULTS_FILE).read_text())["results"]}
    assert sorted(r["ms"] for r in logged) == sorted(results.values())
    assert logged[0]["config"] == exported["candidates"][0]["config"]  # the default was exported first
    assert offline.import_results(folder, log=log) == (0, 3)
    assert len(records.TuningDatabase(log, HOST.tag).records) == 3


def test_the_next_export_continues_after_the_imported_records(round_trip, tmp_path, monkeypatch):
    log, _, exported, _, argv = round_trip
    assert cli.main([*argv, "--export-candidates", str(tmp_path / "again")]) == 0  # trials 3: all in the log
    assert not (tmp_path / "again" / measure.CANDIDATES_FILE).exists()
    more = [a if a != "3" else "5" for a in argv]
    assert cli.main([*more, "--export-candidates", str(tmp_path / "more")]) == 0
    new = measure.read_candidates(tmp_path / "more")["candidates"]
    seen = {json.dumps(c["config"], sort_keys=True) for c in exported["candidates"]}
    assert len(new) == 2 and not seen & {json.dumps(c["config"], sort_keys=True) for c in new}
    # the local search resumes from the imported records too: nothing measured twice
    (result,) = tuner.tune(tuner.tasks_for([(4, 64, 256)], "w4g128"), trials=3, log=log, progress=False)
    assert result.measured == 3


def test_import_without_results_or_with_another_version_is_an_error(round_trip, tmp_path):
    _, folder, exported, _, _ = round_trip
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / measure.CANDIDATES_FILE).write_text(json.dumps(exported))
    with pytest.raises(InputError, match="lowbit measure"):
        offline.import_results(bare, log=tmp_path / "log")
    (bare / measure.RESULTS_FILE).write_text((folder / measure.RESULTS_FILE).read_text())
    (bare / measure.CANDIDATES_FILE).write_text(json.dumps(dict(exported, lowbit_version="0.0.1")))
    with pytest.raises(InputError, match="export and measure again"):
        offline.import_results(bare, log=tmp_path / "log")


def test_measure_refuses_candidates_for_features_this_cpu_lacks(round_trip, tmp_path):
    from lowbit.errors import TargetError

    _, folder, exported, _, _ = round_trip
    other = tmp_path / "other"
    other.mkdir()
    (other / measure.CANDIDATES_FILE).write_text(json.dumps(dict(exported, required_features=["amx-int9"])))
    with pytest.raises(TargetError, match="amx-int9"):
        measure.measure_folder(other)
    with pytest.raises(InputError, match="--export-candidates"):
        measure.measure_folder(tmp_path)


def _replace_library(folder, index, data):
    """Give candidate ``index`` the library ``data``, recorded (sha256) in the export as if built so."""
    import hashlib

    spec = json.loads((folder / measure.CANDIDATES_FILE).read_text())
    (folder / spec["candidates"][index]["library"]).write_bytes(data)
    spec["candidates"][index]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / measure.CANDIDATES_FILE).write_text(json.dumps(spec))


def test_a_candidate_that_fails_on_the_target_is_reported_with_its_reason(round_trip, tmp_path, capsys):
    import shutil

    _, folder, exported, _, _ = round_trip
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / measure.RESULTS_FILE).unlink()
    _replace_library(broken, 1, b"not a shared library")  # recorded in the export: it fails to load, not refused
    out = measure.measure_folder(broken, repeat=2)
    failed = [r for r in out["results"] if r["error"] is not None]
    assert [r["id"] for r in failed] == [exported["candidates"][1]["id"]] and failed[0]["ms"] is None
    assert len(out["results"]) == 3
    empty = tmp_path / "empty"  # a fresh copy: overwriting a library this process loaded would crash it
    shutil.copytree(folder, empty)
    (empty / measure.RESULTS_FILE).unlink()
    for index in range(len(exported["candidates"])):
        _replace_library(empty, index, b"")
    assert cli.main(["measure", str(empty), "--no-progress"]) == 1  # nothing ran: an error
    assert "no candidate" in capsys.readouterr().err


def test_measure_in_process_leaves_the_environment_alone(round_trip, tmp_path):
    """Regression: `lowbit measure` run in-process set TVM_USE_RUNTIME_LIB=1 for every later child process
    (a `lowbit compile` subprocess then loaded TVM without its compiler)."""
    import shutil

    _, folder, _, _, _ = round_trip
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    before = os.environ.get("TVM_USE_RUNTIME_LIB")
    assert cli.main(["measure", str(copy), "--repeat", "1", "--no-progress"]) == 0
    assert os.environ.get("TVM_USE_RUNTIME_LIB") == before


def _edited_copy(round_trip, tmp_path, edit):
    import shutil

    _, folder, _, _, _ = round_trip
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    spec = json.loads((copy / measure.CANDIDATES_FILE).read_text())
    edit(spec, copy)
    (copy / measure.CANDIDATES_FILE).write_text(json.dumps(spec))
    return copy


def _symlink_out(spec, copy):
    outside = copy.parent / "outside.so"
    outside.write_bytes((copy / spec["candidates"][0]["library"]).read_bytes())
    (copy / "link.so").symlink_to(outside)
    spec["candidates"][0]["library"] = "link.so"


LIBRARY_EDITS = {
    "absolute": (lambda spec, copy: spec["candidates"][0].update(library="/usr/lib/x86_64-linux-gnu/libz.so.1"),
                 r"candidates\[0\]\.library is '/usr.*not a plain file name"),
    "dotdot": (lambda spec, copy: spec["candidates"][0].update(library="../export/c0.so"), "not a plain file name"),
    "symlink-out": (_symlink_out, "is a link to a file outside the folder"),
    "no-sha256": (lambda spec, copy: spec["candidates"][0].pop("sha256"), r"candidates\[0\]\.sha256 is None"),
    "replaced-library": (lambda spec, copy: (copy / spec["candidates"][1]["library"]).write_bytes(
        (copy / spec["candidates"][0]["library"]).read_bytes()), "differs from the export's record"),
    "npz-outside": (lambda spec, copy: spec["workloads"][0].update(inputs="../w0.npz"), r"workloads\[0\]\.inputs"),
    "schema-1": (lambda spec, copy: spec.update(schema=1), "schema 1, this lowbit reads schema 2"),
    "candidates-dict": (lambda spec, copy: spec.update(candidates={}), "candidates is {}, not a list"),
}


@pytest.mark.parametrize("edit, message", LIBRARY_EDITS.values(), ids=LIBRARY_EDITS.keys())
def test_measure_loads_only_the_exported_libraries_inside_the_folder(round_trip, tmp_path, capsys, edit, message):
    copy = _edited_copy(round_trip, tmp_path, edit)
    (copy / measure.RESULTS_FILE).unlink()
    assert cli.main(["measure", str(copy), "--repeat", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (copy / measure.RESULTS_FILE).exists()  # refused before anything was timed


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[]", b"null", b"[" * 100000],
                         ids=["not-json", "not-utf8", "list", "null", "deep"])
def test_a_corrupt_candidates_or_results_file_is_a_clear_error(round_trip, tmp_path, capsys, content):
    copy = _edited_copy(round_trip, tmp_path, lambda spec, copy: None)
    results = (copy / measure.RESULTS_FILE).read_bytes()
    (copy / measure.CANDIDATES_FILE).write_bytes(content)
    assert cli.main(["measure", str(copy), "--no-progress"]) == 1
    assert "candidates.json" in capsys.readouterr().err
    copy2 = _edited_copy(round_trip, tmp_path / "2", lambda spec, copy: None)
    (copy2 / measure.RESULTS_FILE).write_bytes(content)
    assert cli.main(["tune", "--import-results", str(copy2), "--log", str(tmp_path / "log")]) == 1
    assert "results.json" in capsys.readouterr().err
    assert results  # the original folder's results were there to corrupt
