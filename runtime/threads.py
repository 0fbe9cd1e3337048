"""TVM's CPU thread pool sized to every core this process may run on, without touching the environment.

TVM keeps one worker pool per calling thread, sized when that thread first launches parallel work: from
``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``), else half the logical CPUs (it assumes hyper-threading). lowbit's
kernels want every core of the process's affinity mask. Setting ``TVM_NUM_THREADS`` in ``os.environ`` would do
that but leaks into every child process, so each calling thread configures its own pool instead, once,
through ``runtime.config_threadpool`` (mode "share all cores" over the affinity mask). A user's
``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS`` wins: then TVM sizes the pool from it and nothing is configured.
"""
import os
import threading

_LOCAL = threading.local()
_SHARE_ALL_CORES = -3  # tvm::runtime::threading::ThreadGroup::kSpecifyThreadShareAllCore


def user_thread_count():
    """The thread count the user set for TVM (``TVM_NUM_THREADS``, then ``OMP_NUM_THREADS``), or None."""
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def thread_count():
    """Threads lowbit's kernels run on: the user's setting, else every core this process may use."""
    value = user_thread_count()
    if value is not None and value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0))


def use_all_cores():
    """Size the calling thread's TVM pool to every core of the affinity mask (once per thread).

    Must run before the thread's first parallel kernel: TVM sizes a thread's pool when it first uses it.
    """
    if getattr(_LOCAL, "configured", False):
        return
    _LOCAL.configured = True
    if user_thread_count() is not None:
        return
    import tvm_ffi

    cpus = [str(cpu) for cpu in sorted(os.sched_getaffinity(0))]
    tvm_ffi.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, 0, cpus)
