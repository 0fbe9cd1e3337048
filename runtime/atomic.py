"""Atomic file writes, one helper for every writer: artifacts, tuning logs, measurement and benchmark results,
quantized models, bundles.

The data goes to a temp file in the destination folder, is flushed to disk, then ``os.replace``d over the
destination, so a crash, a kill or Ctrl-C leaves the previous file intact. The temp file is named
``.<name>.<pid>.<random>.tmp``: the writer's PID says whose it is. A killed writer leaves its temp file behind;
the next write to the same destination removes such leftovers, but only those whose PID is no longer running
or that are over :data:`STALE_SECONDS` old (a PID can be reused), never a concurrent writer's.
"""
import contextlib
import os
import re
import secrets
import time

STALE_SECONDS = 3600


def temp_name(path, pid=None):
    """The temp file name a writer of ``path`` with process id ``pid`` (default: this process) uses."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}.{pid or os.getpid()}.{secrets.token_hex(4)}.tmp")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    return True


def remove_stale_temps(path, now=None):
    """Remove the temp files earlier writers of ``path`` left: their PID is dead, or they are over an hour old.

    Returns the names removed.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(re.escape(f".{name}.") + r"(\d{1,10})\.[0-9a-f]{8}\.tmp", re.ASCII)
    now = time.time() if now is None else now
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry)
        if not match:
            continue
        full = os.path.join(folder, entry)
        try:
            old = now - os.lstat(full).st_mtime > STALE_SECONDS
            if int(match[1]) != os.getpid() and (old or not _alive(int(match[1]))):
                os.unlink(full)
                removed.append(entry)
        except OSError:  # gone already (its writer finished), or not ours to remove
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path, mode=0o644):
    """Yield a temp path beside ``path`` to write (by any means); on success it replaces ``path``.

    On an exception the temp file is removed and ``path`` is left as it was. ``mode``: the permission bits
    of the written file (a temp file is created 0600).
    """
    path = os.fspath(path)
    remove_stale_temps(path)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path, mode=0o644):
    """Yield a binary file object whose content replaces ``path`` when the ``with`` body succeeds."""
    with atomic_path(path, mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()


def write_atomically(path, data, mode=0o644):
    """Write bytes ``data`` to ``path`` (its folder must exist); the file gets permission bits ``mode``."""
    with atomic_file(path, mode) as f:
        f.write(data)
