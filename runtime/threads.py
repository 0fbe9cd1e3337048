"""TVM's CPU thread pool sized by lowbit, per calling thread, without touching the environment.

TVM keeps one worker pool per calling thread, sized when that thread first launches parallel work: from
``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``), else half the logical CPUs (it assumes hyper-threading). lowbit's
kernels want every core of the process's affinity mask. Setting ``TVM_NUM_THREADS`` in ``os.environ`` would do
that but leaks into every child process, so each calling thread configures its own pool instead, once,
through ``runtime.config_threadpool`` over the first :func:`thread_count` cores of the affinity mask.

A user's ``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``) is honoured up to the cores of the mask; a value that is
not a positive integer (TVM would read ``abc`` as 0, and a huge one as that many threads) is ignored with a
warning, and every core is used.
"""
import os
import threading
import warnings

_LOCAL = threading.local()
_SHARE_ALL_CORES = -3  # tvm::runtime::threading::ThreadGroup::kSpecifyThreadShareAllCore
_WARNED = set()


def _cores():
    return sorted(os.sched_getaffinity(0))


def thread_count():
    """Threads lowbit's kernels run on: the user's ``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS`` (at most the cores
    of the affinity mask), else every core this process may use."""
    cores = len(_cores())
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        if value.isascii() and value.isdigit() and len(value) <= 6 and int(value) > 0:
            return min(int(value), cores)
        if (name, value) not in _WARNED:
            _WARNED.add((name, value))
            warnings.warn(f"{name}={value[:20]!r} is not a positive thread count: lowbit runs its kernels on all "
                          f"{cores} cores of this process; set it to an integer in 1..{cores}", stacklevel=3)
        return cores
    return cores


def configure_thread_pool():
    """Size the calling thread's TVM pool to :func:`thread_count` cores of the affinity mask (once per thread).

    Must run before the thread's first parallel kernel: TVM sizes a thread's pool when it first uses it.
    """
    if getattr(_LOCAL, "configured", False):
        return
    _LOCAL.configured = True
    import tvm_ffi

    cpus = [str(cpu) for cpu in _cores()[:thread_count()]]
    tvm_ffi.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, 0, cpus)
