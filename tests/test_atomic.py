"""One atomic writer for every file lowbit writes: temp names carry the writer's PID, a killed writer's temp is
removed by the next write only when its PID is dead or it is over an hour old, never a running writer's."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from lowbit.runtime import atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]

_KILLED_WRITER = r"""
import os, sys, time
from lowbit.runtime.atomic import atomic_file
with atomic_file(sys.argv[1]) as f:
    f.write(b"half")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def _temps(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


def test_a_killed_writer_leaves_the_old_file_and_the_next_write_removes_its_temp(tmp_path):
    """Regression: a killed compile left a .NAME.XXXX.tmp beside the output, forever."""
    target = tmp_path / "model.lowbit"
    target.write_bytes(b"old")
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE)
    assert writer.stdout.readline() == b"writing\n"
    (left,) = _temps(tmp_path, "model.lowbit")
    assert re.fullmatch(rf"\.model\.lowbit\.{writer.pid}\.[0-9a-f]{{8}}\.tmp", left)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert target.read_bytes() == b"old"
    atomic.write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert _temps(tmp_path, "model.lowbit") == []


def test_a_running_writers_temp_is_kept_unless_over_an_hour_old(tmp_path):
    target = tmp_path / "log.jsonl"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        running = pathlib.Path(atomic.temp_name(target, sleeper.pid))
        running.write_bytes(b"in progress")
        atomic.write_atomically(target, b"mine")
        assert running.exists(), "removed a concurrent writer's temp file"
        hour_ago = time.time() - atomic.STALE_SECONDS - 60
        os.utime(running, (hour_ago, hour_ago))
        atomic.write_atomically(target, b"again")
        assert not running.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "results.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_file(target) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert _temps(tmp_path, "results.json") == []


def test_other_files_temps_are_never_touched(tmp_path):
    other = tmp_path / ".other.json.1.deadbeef.tmp"  # another destination's leftover, PID 1 alive or not
    other.write_bytes(b"x")
    lookalike = tmp_path / ".out.json.tmp"  # not our pattern
    lookalike.write_bytes(b"y")
    atomic.write_atomically(tmp_path / "out.json", b"z")
    assert other.exists() and lookalike.exists()


def test_every_writer_goes_through_the_atomic_helper():
    """No module writes a temp-then-rename of its own (there were three temp-name patterns)."""
    folders_not_files = {"benchmarks/quality_minilm.py: os.replace("}  # renames an extracted folder into place
    offenders = []
    for folder in ("compiler", "schedules", "frontends", "runtime", "lowbit", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "runtime" / "atomic.py":
                continue
            text = path.read_text(encoding="utf-8")
            for pattern in ("os.replace(", "mkstemp(", "NamedTemporaryFile(", '.tmp"', ".tmp{"):
                if pattern in text:
                    offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert sorted(set(offenders) - folders_not_files) == []
