"""Atomic file writes: a temp file in the destination folder, flushed to disk, then ``os.replace``d over the
destination, so a crash or Ctrl-C leaves the previous file intact (tuning logs, measurement results)."""
import os
import tempfile


def write_atomically(path, data, mode=0o644):
    """Write bytes ``data`` to ``path`` (its folder must exist); the file gets permission bits ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # mkstemp creates 0600; logs and results are meant to be shared
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
