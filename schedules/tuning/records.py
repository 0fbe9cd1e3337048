"""Tuning records: lowbit's own JSON lines, one per measured candidate, readable without TVM's compiler.

A record (one line of ``<log folder>/records.jsonl``)::

    {"workload": {"N": 4096, "K": 4096, "format": "w4g128", "kernel": "a8", "bucket": "m9-32"},
     "M": 16, "target_tag": "emeraldrapids-avx512", "rule": "decode_a8", "config": {"m_tile": 8, ...},
     "ms": 1.234, "error": null, "lowbit_version": "0.1.0", "tvm_version": "0.27.0.post1",
     "time": "2025-11-23T07:00:00+00:00"}

``M`` is the row count the candidate was timed at (inside the workload's M bucket); ``error`` is null for a
valid measurement, else the reason the candidate failed to build, run or compute the right result (then
``ms`` is null). A log folder holds the records of one target tag (``tuning_logs/<target_tag>/``).

Writes are atomic: each record rewrites the whole file (a temp file in the same folder, fsync, then
``os.replace``) while holding an ``fcntl`` lock on ``.records.lock`` beside it, so a crash or Ctrl-C leaves the
previous file intact and two tuners writing the same log lose nothing. Logs hold hundreds of records, so
rewriting is cheap.

Records made by another lowbit or TVM version are ignored with a warning (a schedule measured with other
code says nothing about this code), as are records of another target tag.
"""
import contextlib
import datetime
import fcntl
import json
import os
import warnings

from lowbit.runtime.atomic import write_atomically

RECORDS_FILE = "records.jsonl"
# a record replaces the default only when at least 3% faster: cold timings on a busy machine scatter by ~1-2%
MIN_GAIN = 0.97
LOCK_FILE = ".records.lock"
WORKLOAD_KEYS = ("N", "K", "format", "kernel", "bucket")
RECORD_KEYS = ("workload", "M", "target_tag", "rule", "config", "ms", "error", "lowbit_version", "tvm_version",
               "time")
MAX_LISTED = 10  # broken lines named one by one in the warning
MAX_LINE = 1 << 16  # bytes: a record is a few hundred
MAX_EXTENT = 1 << 31  # N, K, M


def lowbit_version():
    """This lowbit's version (``lowbit.__version__``)."""
    import lowbit

    return lowbit.__version__


def tvm_version():
    """The installed TVM's version, read from its package metadata (no TVM import)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:  # a TVM built from source: ask the module itself
        import tvm

        return tvm.__version__


def make_workload(N, K, format_name, kernel, bucket_key):
    """The workload key of a record: ``{"N", "K", "format", "kernel", "bucket"}``."""
    return {"N": int(N), "K": int(K), "format": str(format_name), "kernel": str(kernel), "bucket": str(bucket_key)}


def make_record(workload, M, target_tag, rule, config, ms=None, error=None):
    """A complete record for one measured candidate (``config`` a dict; ``error`` None when it ran)."""
    if (ms is None) == (error is None):
        raise ValueError(f"a record has either a time or an error, got ms={ms!r}, error={error!r}")
    return {"workload": dict(workload), "M": int(M), "target_tag": target_tag, "rule": rule, "config": dict(config),
            "ms": None if ms is None else float(ms), "error": error, "lowbit_version": lowbit_version(),
            "tvm_version": tvm_version(), "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def parse_record(line):
    """``(record, None)`` for one valid line of a log (bytes), else ``(None, what is wrong with it)``.

    Checks what every reader of a record relies on: a JSON object with every key of :data:`RECORD_KEYS`, a
    workload with positive integer ``N``, ``K`` and string ``format``, ``kernel``, ``bucket``; a positive
    integer ``M``; string rule, tag and versions; a config of knob names to integers, booleans or strings; and either
    a positive finite ``ms`` with a null ``error`` or a null ``ms`` with a string ``error``. Whether the
    knobs lie in the rule's space is the matcher's check (:func:`lowbit.schedules.tuning.space.tuned_plan`).
    """
    if len(line) > MAX_LINE:
        return None, f"{len(line)} bytes, more than a record's {MAX_LINE}"
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except (json.JSONDecodeError, RecursionError) as err:
        return None, f"not JSON ({getattr(err, 'msg', 'nested too deeply')})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    return record, _record_problem(record)


def _record_problem(record):
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    workload = record["workload"]
    if not isinstance(workload, dict) or any(key not in workload for key in WORKLOAD_KEYS):
        return f"workload is not an object with {', '.join(WORKLOAD_KEYS)}"
    for owner, key in [(workload, "N"), (workload, "K"), (record, "M")]:
        if not _count(owner[key]):
            return f"{key} is {owner[key]!r}, not an integer in 1..{MAX_EXTENT}"
    strings = [(workload, key) for key in ("format", "kernel", "bucket")] + \
              [(record, key) for key in ("target_tag", "rule", "lowbit_version", "tvm_version")]
    for owner, key in strings:
        if not isinstance(owner[key], str):
            return f"{key} is {owner[key]!r}, not a string"
    config = record["config"]
    if not isinstance(config, dict) or not all(isinstance(v, (int, str)) for v in config.values()):
        return f"config is {config!r}, not an object of integer / boolean / string knobs"
    ms, error = record["ms"], record["error"]
    if error is None:
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 < ms < float("inf"):
            return f"ms is {ms!r}, not a positive number (and error is null)"
    elif not isinstance(error, str) or ms is not None:
        return f"error is {error!r} with ms {ms!r}: a failed record has a string error and a null ms"
    return None


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_EXTENT


def config_key(rule, config):
    """Hashable identity of a candidate: its rule name and config dict."""
    return rule, tuple(sorted(config.items()))


class TuningDatabase:
    """The records of one log folder for one target tag (current lowbit and TVM versions only).

    Parameters
    ----------
    folder : str or os.PathLike
        Folder holding ``records.jsonl`` (it need not exist yet; :meth:`append` creates it).
    target_tag : str
        Records of other tags are ignored with a warning.
    """

    def __init__(self, folder, target_tag):
        self.folder = os.fspath(folder)
        self.target_tag = target_tag
        self.path = os.path.join(self.folder, RECORDS_FILE)
        self.records = []
        self._lines = {}  # id(record) -> its line number in the file
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                self.records = self._usable(f.read().split(b"\n"))

    def line_of(self, record):
        """The line of ``path`` a loaded record came from (None for one appended in this process)."""
        return self._lines.get(id(record))

    def _usable(self, lines):
        versions = (lowbit_version(), tvm_version())
        usable, other_version, other_tag, broken = [], set(), 0, []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record, problem = parse_record(line)
            if problem:
                broken.append(f"line {number}: {problem}")
            elif (record["lowbit_version"], record["tvm_version"]) != versions:
                other_version.add((record["lowbit_version"], record["tvm_version"]))
            elif record["target_tag"] != self.target_tag:
                other_tag += 1
            else:
                usable.append(record)
                self._lines[id(record)] = number
        self._warn(versions, other_version, other_tag, broken, sum(1 for line in lines if line.strip()))
        return usable

    def _warn(self, versions, other_version, other_tag, broken, total):
        if other_version:
            made = ", ".join(f"lowbit {lb} / TVM {tv}" for lb, tv in sorted(other_version))
            warnings.warn(f"{self.path}: ignored the records made by {made}; this is lowbit {versions[0]} / TVM "
                          f"{versions[1]}: re-run `lowbit tune` to measure them again", stacklevel=3)
        if other_tag:
            warnings.warn(f"{self.path}: ignored {other_tag} records of other targets than {self.target_tag}: a log "
                          "folder holds one target's records (tuning_logs/<target_tag>/)", stacklevel=3)
        if broken:
            more = f"; and {len(broken) - MAX_LISTED} more" if len(broken) > MAX_LISTED else ""
            warnings.warn(f"{self.path}: ignored {len(broken)} of {total} lines that are not records: "
                          f"{'; '.join(broken[:MAX_LISTED])}{more}", stacklevel=3)

    def find(self, predicate):
        """Records (dicts) for which ``predicate(record)`` is true."""
        return [record for record in self.records if predicate(record)]

    def append(self, record):
        """Add one record to the file (atomically, under the folder's lock) and to :attr:`records`."""
        if record["target_tag"] != self.target_tag:
            raise ValueError(f"record of target {record['target_tag']!r} written to the log of {self.target_tag!r}")
        line = json.dumps(record, sort_keys=False) + "\n"
        os.makedirs(self.folder, exist_ok=True)
        with _locked(os.path.join(self.folder, LOCK_FILE)):
            previous = b""
            if os.path.exists(self.path):
                with open(self.path, "rb") as f:
                    previous = f.read()
            if previous and not previous.endswith(b"\n"):
                previous += b"\n"
            write_atomically(self.path, previous + line.encode("utf-8"))
        self.records.append(record)


@contextlib.contextmanager
def _locked(lock_path):
    with open(lock_path, "a", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def best_record(records, default_rule, default_config):
    """The record whose config beats the default by the most, or None when none is faster.

    ``records`` are valid and failed records of one (workload, bucket). Times compare only at the same
    (format, M): each config's time is divided by the default config's time measured at that (format, M),
    and a config's score is the geometric mean of its ratios. A record at an (format, M) where the default was
    not measured (or failed) cannot show that it is faster and is skipped. The winner must score below
    :data:`MIN_GAIN`: a config within timing noise of the default is not worth leaving the default for.
    """
    groups = {}
    for record in records:
        if record["error"] is None:
            group = groups.setdefault((record["workload"]["format"], record["M"]), {})
            key = config_key(record["rule"], record["config"])
            if key not in group or record["ms"] < group[key]["ms"]:
                group[key] = record
    default_key = config_key(default_rule, default_config)
    ratios, example = {}, {}
    for group in groups.values():
        if default_key not in group:
            continue
        base = group[default_key]["ms"]
        for key, record in group.items():
            ratios.setdefault(key, []).append(record["ms"] / base)
            example.setdefault(key, record)
    scores = {key: _geometric_mean(values) for key, values in ratios.items()}
    best = min(scores, key=scores.get, default=None)
    if best is None or scores[best] >= MIN_GAIN:
        return None
    return example[best]


def _geometric_mean(values):
    product = 1.0
    for value in values:
        product *= value
    return product ** (1.0 / len(values))


def shipped_folder(target_tag):
    """The folder of the records shipped with lowbit for a target tag (``lowbit/tuning_logs/<tag>``)."""
    import lowbit.tuning_logs

    return os.path.join(os.path.dirname(os.path.abspath(lowbit.tuning_logs.__file__)), target_tag)


_LOADED = {}


def open_log(folder, target_tag):
    """The :class:`TuningDatabase` of ``folder`` for ``target_tag``, loaded once per version of the file.

    ``folder`` is a log folder (holding ``records.jsonl``) or a folder of per-tag log folders (then its
    ``<target_tag>/`` subfolder is used). A missing ``records.jsonl`` is an empty log.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.exists(os.path.join(folder, RECORDS_FILE)) and os.path.isdir(os.path.join(folder, target_tag)):
        folder = os.path.join(folder, target_tag)
    path = os.path.join(folder, RECORDS_FILE)
    stamp = os.stat(path) if os.path.exists(path) else None
    key = (folder, target_tag, stamp and (stamp.st_mtime_ns, stamp.st_size))
    if key not in _LOADED:
        _LOADED[key] = TuningDatabase(folder, target_tag)
    return _LOADED[key]
