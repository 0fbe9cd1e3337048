"""What this machine's CPU is and can do, read without TVM's compiler (the runtime needs it too).

Feature names follow LLVM's spelling (``avx2``, ``avx512f``, ``avx512bw``, ``avx512vnni``, ``avxvnni``,
``avx512vbmi``, ``fma``, ``f16c``, ...), because the compiler passes them to LLVM as ``-mattr``
and the runtime compares an artifact's required features with the host's.
"""
import functools
import os
import platform

# /proc/cpuinfo flag -> LLVM feature name, for the features lowbit's kernels choose between.
_CPUINFO_TO_LLVM = {
    "sse4_1": "sse4.1",
    "sse4_2": "sse4.2",
    "ssse3": "ssse3",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi2": "bmi2",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512dq": "avx512dq",
    "avx512cd": "avx512cd",
    "avx512_vnni": "avx512vnni",
    "avx512vbmi": "avx512vbmi",
    "avx512_vbmi2": "avx512vbmi2",
    "avx512_bf16": "avx512bf16",
    "avx512_fp16": "avx512fp16",
    "avx_vnni": "avxvnni",
    "amx_tile": "amx-tile",
    "amx_int8": "amx-int8",
}


def _read_cpuinfo():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


AMX_FEATURES = frozenset({"amx-tile", "amx-int8"})
_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18  # x86-64 syscall; asm/prctl.h; 18: tiles


@functools.lru_cache(maxsize=None)
def request_amx():
    """Ask Linux for this process's permission to use AMX tile data; True when granted.

    A process must do this before its first tile instruction, or that instruction raises SIGILL even on a CPU
    whose flags list ``amx_tile`` (Linux keeps the 8 KiB tile state off by default: Documentation/arch/x86/xstate.rst,
    ``ARCH_REQ_XCOMP_PERM``). The permission covers every thread of the process, those started later included.
    """
    if host_arch() != "x86_64" or platform.system() != "Linux":
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0


@functools.lru_cache(maxsize=None)
def host_cpu_features():
    """Return the LLVM names of the SIMD features this CPU has, as a frozenset (empty if unknown).

    AMX counts only when the process is granted its tile state (:func:`request_amx`, which this asks for): the
    CPU's flags alone do not make tile instructions usable.
    """
    forced = os.environ.get("LOWBIT_HOST_FEATURES")  # for tests that pretend to be another CPU
    if forced is not None:
        return frozenset(f for f in forced.split(",") if f)
    for line in _read_cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            features = frozenset(llvm for flag, llvm in _CPUINFO_TO_LLVM.items() if flag in flags)
            if features & AMX_FEATURES and not request_amx():
                features -= AMX_FEATURES
            return features
    return frozenset()


@functools.lru_cache(maxsize=None)
def host_cpu_model():
    """Return the CPU's marketing name from /proc/cpuinfo (or platform.processor())."""
    for line in _read_cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_arch():
    """Return the machine architecture (``x86_64``, ``aarch64``)."""
    return platform.machine()
