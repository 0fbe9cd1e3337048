"""Offline measurement: export built candidates, time them elsewhere (``lowbit measure``), import the times.

For a target that cannot hold TVM's compiler (``lowbit.runtime.measure`` describes the folder):

1. :func:`export_candidates` picks, per workload, the candidates a search would measure next (the default
   first while unmeasured, then the cost model's best-ranked, the model trained on the log's records), builds
   each into a library and writes it with the workload's inputs and reference result. A candidate that
   fails to build is recorded in the log as failed right away.
2. ``lowbit measure DIR`` (runtime only) times them on the target and writes ``results.json``.
3. :func:`import_results` appends one record per result to the log. The next export (or search) trains its
   cost model on them: repeat 1-3 until ``trials`` configs of each workload are in the log.
"""
import dataclasses
import hashlib
import os

import numpy as np

from lowbit.errors import InputError
from lowbit.runtime import measure as offline_files
from lowbit.runtime import timing
from lowbit.runtime.atomic import atomic_file
from lowbit.schedules.tuning import records as tuning_records
from lowbit.schedules.tuning import tuner


def export_candidates(tasks, folder, kernel="auto", trials=tuner.DEFAULT_TRIALS, log=None, target=None,
                      progress=True):
    """Build the next candidates of each task into ``folder`` (created; must hold no earlier export).

    Returns the number of candidates written (0: every workload has ``trials`` configs in the log).
    """
    from lowbit.schedules.tuning.cost_model import CostModel

    folder = os.fspath(folder)
    if os.path.exists(os.path.join(folder, offline_files.CANDIDATES_FILE)):
        raise InputError(f"{folder!r} already holds an export: measure and import it, or pick an empty folder")
    target, jobs = tuner.jobs_for(tasks, kernel, trials, log, target, tuner.DEFAULT_REPEAT,
                                  tuner.BATCH)
    spec = {"schema": offline_files.SCHEMA, "target": dict(target.target), "target_tag": target.tag,
            "required_features": target.required_features(), "lowbit_version": tuning_records.lowbit_version(),
            "tvm_version": tuning_records.tvm_version(), "workloads": [], "candidates": []}
    model = CostModel(target)
    with tuner.progress_bar(sum(job.todo(trials) for job in jobs), progress) as bar:
        for job in jobs:
            count = job.todo(trials)
            if count:
                _export_job(job, model, count, folder, spec, bar)
    if spec["workloads"]:  # else nothing was left to measure: no export folder to measure by mistake
        offline_files.write_json_atomically(os.path.join(folder, offline_files.CANDIDATES_FILE), spec)
    return len(spec["candidates"])


def _export_job(job, model, count, folder, spec, bar):
    os.makedirs(folder, exist_ok=True)
    job.learn_logged(model)
    picked = job.pick(model, job.pending(), count)
    builder = tuner.CandidateBuilder(job.weight(), job.M, job.kernel, job.target)
    workload_id = f"w{len(spec['workloads'])}"
    names = list(builder.arrays)
    with atomic_file(os.path.join(folder, f"{workload_id}.npz")) as f:
        np.savez(f, x=builder.x, y_reference=builder.reference, y_bound=builder.bound, **builder.arrays)
    spec["workloads"].append({"id": workload_id, "workload": job.workload, "M": job.M, "inputs": f"{workload_id}.npz",
                              "args": names, "function": "mpgemm"})
    bar.set_description(job.describe())
    for rule, config in picked:
        candidate_id = f"c{len(spec['candidates'])}"
        try:
            linear = builder.build(rule, config)
            linear.library.export_library(os.path.join(folder, f"{candidate_id}.so"))
        except Exception as err:  # noqa: BLE001 - a candidate that fails to build is recorded as failed
            job.record(rule.name, dataclasses.asdict(config), None, timing.failure_reason(err))
            bar.update(1)
            continue
        with open(os.path.join(folder, f"{candidate_id}.so"), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()  # `lowbit measure` loads only the library recorded here
        spec["candidates"].append({"id": candidate_id, "workload_id": workload_id, "rule": rule.name,
                                   "config": dataclasses.asdict(config), "library": f"{candidate_id}.so",
                                   "sha256": digest})
        bar.update(1)


def import_results(folder, log=None):
    """Append the times ``lowbit measure`` wrote in ``folder`` to the log of the export's target tag.

    ``log``: the log folder (default: ``tuning_logs/<target tag>``). Results already in the log (same
    workload, M and config) are skipped, so importing twice adds nothing. Returns (added, skipped).
    """
    folder = os.fspath(folder)
    spec = offline_files.read_candidates(folder)
    results_path = os.path.join(folder, offline_files.RESULTS_FILE)
    if not os.path.isfile(results_path):
        raise InputError(f"{folder!r} holds no {offline_files.RESULTS_FILE}: run `lowbit measure {folder}` on the "
                         "target first")
    versions = (tuning_records.lowbit_version(), tuning_records.tvm_version())
    if (spec["lowbit_version"], spec["tvm_version"]) != versions:
        raise InputError(f"{folder!r} was built by lowbit {spec['lowbit_version']} / TVM {spec['tvm_version']}, "
                         f"this is lowbit {versions[0]} / TVM {versions[1]}: export and measure again")
    results = offline_files.read_json_file(results_path, "results file", f"run `lowbit measure {folder}` again")
    if not isinstance(results, dict) or not isinstance(results.get("results"), list) or not all(
            isinstance(r, dict) and isinstance(r.get("id"), str) and _time_or_error(r) for r in results["results"]):
        raise InputError(f"{results_path}: not a results file of `lowbit measure` (a 'results' list of "
                         f"{{id, ms, error}}, a positive ms or an error string each): run `lowbit measure {folder}` "
                         "again")
    results = {r["id"]: r for r in results["results"]}
    database = tuning_records.TuningDatabase(log or os.path.join("tuning_logs", spec["target_tag"]),
                                             spec["target_tag"])
    workloads = {w["id"]: w for w in spec["workloads"]}
    added = skipped = 0
    for candidate in spec["candidates"]:
        result, workload = results.get(candidate["id"]), workloads[candidate["workload_id"]]
        if result is None or _logged(database, workload, candidate):
            skipped += 1
            continue
        database.append(tuning_records.make_record(workload["workload"], workload["M"], spec["target_tag"],
                                                   candidate["rule"], candidate["config"], result["ms"],
                                                   result["error"]))
        added += 1
    return added, skipped


def _time_or_error(result):
    ms, error = result.get("ms"), result.get("error")
    if error is None:
        return isinstance(ms, (int, float)) and not isinstance(ms, bool) and 0 < ms < float("inf")
    return isinstance(error, str) and ms is None


def _logged(database, workload, candidate):
    key = tuning_records.config_key(candidate["rule"], candidate["config"])
    return any(r["workload"] == workload["workload"] and r["M"] == workload["M"] and
               tuning_records.config_key(r["rule"], r["config"]) == key for r in database.records)
