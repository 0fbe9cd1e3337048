"""Cold-cache timing, shared by the benchmark, the tuner and ``lowbit measure`` (which runs where only the
runtime is installed: this module imports neither TVM nor the compiler).

A kernel is timed cold as a layer of a real model runs: every timed call reads the next of ``copies``
independent weight copies, with enough copies to span twice the last-level cache, so its weights come
from DRAM. The median of ``repeat`` calls after :data:`WARMUP` untimed ones is reported.
"""
import glob
import itertools
import math
import statistics
import time

WARMUP = 2
COPIES_MEMORY_CAP = 6 << 30  # bytes of weight copies one implementation may hold at a time
FALLBACK_LLC = 512 << 20     # assumed where sysfs does not say (large: errs towards colder caches)
# Seconds to wait before timing: the result check that precedes every timing runs NumPy (OpenBLAS), whose
# worker threads keep spinning for a while after a call and take cores from the kernel being timed. Measured
# (w4g128, 1 x 14336 x 4096, a8, cold, 2 cores): 4.1 ms right after the check, 1.9 ms after 0.1 s or more.
SETTLE_S = 0.2


def llc_bytes():
    """Size in bytes of this CPU's largest cache (sysfs ``cpu0/cache/index*/size``), or None if unknown."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        sizes.append(int(text.rstrip("KMGkmg")) * unit)
    return max(sizes) if sizes else None


def copies_for(weight_bytes, llc):
    """Weight copies to rotate through so that each call misses the cache: ceil(2 * LLC / bytes) + 1,
    capped at :data:`COPIES_MEMORY_CAP` bytes in all (at least 2)."""
    wanted = math.ceil(2 * llc / weight_bytes) + 1
    return max(2, min(wanted, COPIES_MEMORY_CAP // weight_bytes))


def call_times_ms(run, repeat, warmup=WARMUP):
    """Wall times in ms of ``repeat`` calls of ``run`` after :data:`SETTLE_S` idle and ``warmup`` untimed calls."""
    time.sleep(SETTLE_S)
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def median_ms(run, repeat, warmup=WARMUP):
    """Median wall time in ms of ``repeat`` calls of ``run`` after ``warmup`` untimed calls (benchmarks)."""
    return statistics.median(call_times_ms(run, repeat, warmup))


def tuning_ms(run, repeat, warmup=WARMUP):
    """The time a tuning record keeps: the fastest of ``repeat`` cold calls. Other jobs on the machine only
    ever add time to a call, and every call is cold (its own weight copy), so the fastest one is the
    kernel's own time; a median moves with the load (measured here, load 5-7 on 2 cores: one config's
    median 20-27 ms between two runs, 4.0 vs 2.0 ms for another)."""
    return min(call_times_ms(run, repeat, warmup))


def rotate(calls):
    """One callable that runs ``calls`` round-robin, one per call."""
    cycle = itertools.cycle(calls)
    return lambda: next(cycle)()


def weight_copies(weights, copies, tensor):
    """``copies`` lists of the arrays ``weights``, each array copied into its own buffer by ``tensor``."""
    return [[tensor(array) for array in weights] for _ in range(copies)]


def cold_kernel_runner(func, x_t, weight_sets, y_t):
    """Zero-argument callable running ``func(x_t, *weights, y_t)`` on the next of ``weight_sets``."""
    return rotate([lambda ws=ws: func(x_t, *ws, y_t) for ws in weight_sets])


def check_close(name, y, reference, bound):
    """Raise AssertionError naming ``name`` where ``|y - reference|`` exceeds ``bound`` (arrays of one shape)."""
    import numpy as np

    err = np.abs(np.asarray(y, np.float64) - reference)
    if not (err <= bound).all():
        m, n = np.unravel_index(int(np.argmax(err - bound)), err.shape)
        raise AssertionError(f"{name}: result differs from x @ dequant(W)^T at [{m}, {n}]: {y[m, n]!r} vs "
                             f"{reference[m, n]!r} (|err| {err[m, n]:.3g} > bound {bound[m, n]:.3g})")


MAX_REASON = 400  # characters of a failure's message kept (TVM errors carry long traces)


def failure_reason(err):
    """One line saying why a candidate failed: the exception's type and message, cut to MAX_REASON."""
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."
