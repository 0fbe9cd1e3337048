"""Time exported tuning candidates on this machine with TVM's runtime library only (``lowbit measure DIR``).

For targets that cannot hold the compiler: ``lowbit tune --export-candidates DIR`` builds candidates where
the compiler is, this module times them where they run, ``lowbit tune --import-results DIR`` adds the
times to the tuning log. The folder (the schema lives here, with its only reader that must stay light)::

    candidates.json   {"schema": 2, "target": {...}, "target_tag", "required_features", "lowbit_version",
                       "tvm_version", "workloads": [{"id", "workload", "M", "inputs": "<id>.npz",
                       "args": [names of the weight arrays, in call order], "function": "mpgemm"}],
                       "candidates": [{"id", "workload_id", "rule", "config", "library": "<id>.so",
                                       "sha256": "<hex digest of the library>"}]}
    <workload>.npz    x (M, K) float32, y_reference and y_bound (M, N) float64, the weight arrays by name
    <candidate>.so    the candidate kernel (``export_library``): ``function(x, *weights, y)``
    results.json      written by :func:`measure_folder`: {"schema": 1, "device", "features", "repeat",
                       "time", "results": [{"id", "ms", "error"}]}

Each candidate is checked against the reference (within the bound fp32 arithmetic explains) before it is
timed cold: every timed call reads the next of enough weight copies to span twice the last-level cache.

A library is native code loaded into this process, so ``candidates.json`` is checked whole before anything
is loaded (:func:`read_candidates`): every file it names is a plain name inside the folder (no absolute path,
no ``..``, no symlink out), and a library is loaded only when its sha256 equals the one the export recorded.
Schema 2 added the sha256; schema-1 exports are refused (export them again).
"""
import datetime
import hashlib
import json
import os
import re

import numpy as np

from lowbit.errors import InputError, TargetError
from lowbit.runtime import timing
from lowbit.runtime.atomic import write_atomically
from lowbit.runtime.host import host_cpu_features, host_cpu_model

SCHEMA = 2
CANDIDATES_FILE = "candidates.json"
RESULTS_FILE = "results.json"
MAX_SPEC_BYTES = 64 << 20
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def read_json_file(path, what, fix):
    """A JSON file's parsed value (at most :data:`MAX_SPEC_BYTES`); InputError naming ``what`` and ``fix``."""
    if os.path.getsize(path) > MAX_SPEC_BYTES:
        raise InputError(f"{path}: {os.path.getsize(path)} bytes, more than a {what} holds ({MAX_SPEC_BYTES}): {fix}")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"{path}: not a valid {what} ({type(err).__name__}: {str(err)[:100]}): {fix}") from err


def read_candidates(folder):
    """The parsed, checked ``candidates.json`` of an export folder; InputError naming the fix otherwise."""
    folder = os.fspath(folder)
    path = os.path.join(folder, CANDIDATES_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{folder!r} holds no {CANDIDATES_FILE}: pass the folder `lowbit tune "
                         "--export-candidates DIR` wrote")
    fix = "export the candidates again with `lowbit tune --export-candidates DIR`"
    spec = read_json_file(path, "candidates file", fix)
    if not isinstance(spec, dict) or spec.get("schema") != SCHEMA:
        schema = spec.get("schema") if isinstance(spec, dict) else None
        raise InputError(f"{path}: schema {schema!r}, this lowbit reads schema {SCHEMA}: {fix} of this lowbit")
    problem = _spec_problem(folder, spec)
    if problem:
        raise InputError(f"{path}: {problem}: the folder is corrupt or was edited; {fix}")
    return spec


def _spec_problem(folder, spec):
    """What is wrong with a schema-2 spec (None if nothing): types, ids, and every file name it holds."""
    for key, kind in (("workloads", list), ("candidates", list), ("target_tag", str), ("lowbit_version", str),
                      ("tvm_version", str), ("required_features", list)):
        if not isinstance(spec.get(key), kind):
            return f"{key} is {spec.get(key)!r}, not a {kind.__name__}"
    workload_ids = set()
    for index, workload in enumerate(spec["workloads"]):
        if not isinstance(workload, dict) or not isinstance(workload.get("id"), str) or \
                not isinstance(workload.get("workload"), dict) or not isinstance(workload.get("args"), list) or \
                not all(isinstance(a, str) for a in workload["args"]) or \
                not isinstance(workload.get("function"), str) or not _positive(workload.get("M")):
            return f"workloads[{index}] is not a workload entry"
        problem = _file_problem(folder, workload.get("inputs"), f"workloads[{index}].inputs")
        if problem:
            return problem
        workload_ids.add(workload["id"])
    for index, candidate in enumerate(spec["candidates"]):
        if not isinstance(candidate, dict) or not isinstance(candidate.get("id"), str) or \
                candidate.get("workload_id") not in workload_ids or not isinstance(candidate.get("rule"), str) or \
                not isinstance(candidate.get("config"), dict):
            return f"candidates[{index}] is not a candidate entry of a listed workload"
        if not isinstance(candidate.get("sha256"), str) or not _SHA256.fullmatch(candidate["sha256"]):
            return f"candidates[{index}].sha256 is {candidate.get('sha256')!r}, not a sha256 hex digest"
        problem = _file_problem(folder, candidate.get("library"), f"candidates[{index}].library")
        if problem:
            return problem
    return None


def _positive(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _file_problem(folder, name, where):
    """Why ``name`` is not a plain file name inside ``folder`` (None when it is one)."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        return f"{where} is {name!r}, not a plain file name inside the folder (no path, no '..')"
    real_folder = os.path.realpath(folder)
    if os.path.dirname(os.path.realpath(os.path.join(folder, name))) != real_folder:
        return f"{where} {name!r} is a link to a file outside the folder"
    return None


def checked_library(folder, candidate):
    """The path of a candidate's library after its sha256 matched the export's record (else InputError)."""
    path = os.path.join(folder, candidate["library"])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != candidate["sha256"]:
        raise InputError(f"{path}: sha256 {digest.hexdigest()[:16]}... differs from the export's record "
                         f"{candidate['sha256'][:16]}...: the library was replaced or corrupted; export again")
    return path


def write_json_atomically(path, value):
    """Write ``value`` as JSON to ``path`` atomically (:func:`lowbit.runtime.atomic.write_atomically`)."""
    write_atomically(path, json.dumps(value, indent=1).encode("utf-8"))


def _check_host(spec, folder):
    missing = sorted(set(spec.get("required_features", [])) - host_cpu_features())
    if missing:
        raise TargetError(f"the candidates in {folder!r} were built for {spec.get('target_tag')} and need CPU "
                          f"features {', '.join(missing)} that this CPU lacks: measure them on such a machine")


def measure_folder(folder, repeat=10, llc=None, progress=False):
    """Time every candidate of an export folder; writes and returns ``results.json``'s content."""
    from lowbit.runtime.module import _import_tvm

    folder = os.fspath(folder)
    spec = read_candidates(folder)
    _check_host(spec, folder)
    if not isinstance(repeat, int) or repeat < 1:
        raise InputError(f"repeat={repeat!r}: the number of timed calls must be a positive integer (e.g. 10)")
    for candidate in spec["candidates"]:  # every library is the exported one before any is loaded
        checked_library(folder, candidate)
    tvm = _import_tvm()
    llc = llc or timing.llc_bytes() or timing.FALLBACK_LLC
    results = []
    with _bar(len(spec["candidates"]), progress) as bar:
        for workload in spec["workloads"]:
            mine = [c for c in spec["candidates"] if c["workload_id"] == workload["id"]]
            results += _measure_workload(tvm, folder, workload, mine, repeat, llc, bar)
    out = {"schema": SCHEMA, "device": host_cpu_model(), "features": sorted(host_cpu_features()),
           "repeat": repeat, "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "results": results}
    write_json_atomically(os.path.join(folder, RESULTS_FILE), out)
    return out


def _bar(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="candidate", dynamic_ncols=True)


def _measure_workload(tvm, folder, workload, candidates, repeat, llc, bar):
    with np.load(os.path.join(folder, workload["inputs"])) as data:
        x, reference, bound = data["x"], data["y_reference"], data["y_bound"]
        weights = [data[name] for name in workload["args"]]
    tensor = tvm.runtime.tensor
    copies = timing.copies_for(sum(int(a.nbytes) for a in weights), llc)
    x_t, y_t = tensor(x), tensor(np.empty(reference.shape, np.float32))
    weight_sets = timing.weight_copies(weights, copies, tensor)
    results = []
    for candidate in candidates:
        ms, error = None, None
        try:
            library = tvm.runtime.load_module(checked_library(folder, candidate))
            run = timing.cold_kernel_runner(library[workload["function"]], x_t, weight_sets, y_t)
            run()
            timing.check_close(candidate["id"], y_t.numpy(), reference, bound)
            ms = timing.tuning_ms(run, repeat)
        except Exception as err:  # noqa: BLE001 - a failed candidate is reported as failed, with its reason
            error = timing.failure_reason(err)
        results.append({"id": candidate["id"], "ms": ms, "error": error})
        bar.update(1)
    return results
