"""Time exported tuning candidates on this machine with TVM's runtime library only (``lowbit measure DIR``).

For targets that cannot hold the compiler: ``lowbit tune --export-candidates DIR`` builds candidates where
the compiler is, this module times them where they run, ``lowbit tune --import-results DIR`` adds the
times to the tuning log. The folder (the schema lives here, with its only reader that must stay light)::

    candidates.json   {"schema": 1, "target": {...}, "target_tag", "required_features", "lowbit_version",
                       "tvm_version", "workloads": [{"id", "workload", "M", "inputs": "<id>.npz",
                       "args": [names of the weight arrays, in call order], "function": "mpgemm"}],
                       "candidates": [{"id", "workload_id", "rule", "config", "library": "<id>.so"}]}
    <workload>.npz    x (M, K) float32, y_reference and y_bound (M, N) float64, the weight arrays by name
    <candidate>.so    the candidate kernel (``export_library``): ``function(x, *weights, y)``
    results.json      written by :func:`measure_folder`: {"schema": 1, "device", "features", "repeat",
                       "time", "results": [{"id", "ms", "error"}]}

Each candidate is checked against the reference (within the bound fp32 arithmetic explains) before it is
timed cold: every timed call reads the next of enough weight copies to span twice the last-level cache.
"""
import datetime
import json
import os

import numpy as np

from lowbit.errors import InputError, TargetError
from lowbit.runtime import timing
from lowbit.runtime.atomic import write_atomically
from lowbit.runtime.host import host_cpu_features, host_cpu_model

SCHEMA = 1
CANDIDATES_FILE = "candidates.json"
RESULTS_FILE = "results.json"


def read_candidates(folder):
    """The parsed ``candidates.json`` of an export folder; InputError naming the fix when absent or newer."""
    path = os.path.join(os.fspath(folder), CANDIDATES_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{folder!r} holds no {CANDIDATES_FILE}: pass the folder `lowbit tune "
                         "--export-candidates DIR` wrote")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("schema") != SCHEMA:
        raise InputError(f"{path}: schema {spec.get('schema')!r}, this lowbit reads schema {SCHEMA}: export the "
                         "candidates again with this lowbit")
    return spec


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
            library = tvm.runtime.load_module(os.path.join(folder, candidate["library"]))
            run = timing.cold_kernel_runner(library[workload["function"]], x_t, weight_sets, y_t)
            run()
            timing.check_close(candidate["id"], y_t.numpy(), reference, bound)
            ms = timing.tuning_ms(run, repeat)
        except Exception as err:  # noqa: BLE001 - a failed candidate is reported as failed, with its reason
            error = timing.failure_reason(err)
        results.append({"id": candidate["id"], "ms": ms, "error": error})
        bar.update(1)
    return results
