"""Targets lowbit compiles for, with the host's features detected once.

Schedule rules read features from a :class:`TargetInfo`; no rule probes the machine itself.
"""
import dataclasses

from lowbit.errors import TargetError
from lowbit.runtime.host import AMX_FEATURES, host_arch, host_cpu_features, host_cpu_model


@dataclasses.dataclass(frozen=True)
class TargetInfo:
    """A compile target: the TVM target dict plus the features lowbit's rules choose by.

    Attributes
    ----------
    kind : str
        ``"llvm"`` (CPU) or ``"cuda"``.
    target : dict
        The TVM target as a dict (``kind``, ``mtriple``, ``mcpu``, ``mattr``, ``num-cores``).
    features : frozenset of str
        LLVM feature names (``avx2``, ``avx512f``, ``avx512bw``, ``avx512vnni``, ...).
    cpu_name : str
        Human-readable CPU name, for reports.
    """

    kind: str
    target: dict
    features: frozenset
    cpu_name: str

    @property
    def tag(self):
        """Key for tuning records and artifacts: LLVM CPU name plus the SIMD level (CPU), ``cuda-sm_90`` (GPU)."""
        if self.kind == "cuda":
            return f"cuda-{self.arch}"
        return f"{self.target.get('mcpu', 'generic')}-{self.simd}"

    @property
    def arch(self):
        """The CUDA architecture (``sm_80``, ``sm_90``); None for CPU targets."""
        return self.target.get("arch") if self.kind == "cuda" else None

    @property
    def compute_capability(self):
        """(major, minor) of the CUDA architecture, e.g. (9, 0); None for CPU targets."""
        if self.kind != "cuda":
            return None
        digits = self.arch[3:]
        return int(digits[:-1]), int(digits[-1])

    @property
    def simd(self):
        """The widest float SIMD level the kernels use: ``avx512``, ``avx2`` or ``scalar``."""
        if {"avx512f", "avx512bw", "avx512vl"} <= self.features:
            return "avx512"
        if {"avx2", "fma"} <= self.features:
            return "avx2"
        return "scalar"

    @property
    def vector_lanes(self):
        """float32 lanes of one vector register at :attr:`simd`."""
        return {"avx512": 16, "avx2": 8, "scalar": 4}[self.simd]

    @property
    def num_cores(self):
        """Cores the kernels may use (``num-cores`` of the target)."""
        return int(self.target.get("num-cores", 1))

    def tvm_target(self):
        """Return the ``tvm.target.Target`` for this target."""
        from lowbit.compiler.tvm_api import Target

        target = dict(self.target)
        if self.kind == "llvm" and AMX_FEATURES <= self.features:
            # LLVM selects tile instructions only with these attributes (the host's mcpu name may lack them)
            target["mattr"] = sorted(set(target.get("mattr", [])) | {"+amx-tile", "+amx-int8"})
        return Target(target)

    def required_features(self):
        """Features a machine must have to run code built for this target (sorted list).

        CUDA targets list none: the runtime checks the GPU's compute capability against ``arch`` instead.
        """
        if self.kind == "cuda":
            return []
        wanted = {"avx512": {"avx512f", "avx512bw", "avx512vl", "avx2", "fma"}, "avx2": {"avx2", "fma"}}
        return sorted(wanted.get(self.simd, set()) & self.features)


def host_target(num_cores=None):
    """Detect this machine's CPU and return the :class:`TargetInfo` that compiles for it."""
    import os

    from lowbit.compiler.tvm_api import llvm_host_cpu

    if host_arch() != "x86_64":
        raise TargetError(f"host architecture {host_arch()!r} is not supported yet: lowbit's CPU kernels "
                          "target x86-64 (AVX2 / AVX-512); compile on an x86-64 machine")
    features = host_cpu_features()
    cores = num_cores or len(os.sched_getaffinity(0))
    target = {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": llvm_host_cpu(), "num-cores": cores}
    return TargetInfo(kind="llvm", target=target, features=features, cpu_name=host_cpu_model())


# Architectures lowbit's CUDA kernels are built and tested for (mma.sync m16n8k16, ldmatrix, cp.async: sm_80+).
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
DEFAULT_CUDA_ARCH = "sm_80"
# Host code of CUDA artifacts (the Relax VM, kernel launches): generic x86-64, to run on any GPU machine's CPU.
CUDA_HOST = {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu"}


def cuda_target(arch=DEFAULT_CUDA_ARCH):
    """The :class:`TargetInfo` for NVIDIA GPUs of ``arch`` (``sm_80``: A100; ``sm_90``: H100, H200).

    Compiling needs ``nvcc`` (the device code is compiled to a fatbin at compile time), not a GPU.
    """
    if arch not in CUDA_ARCHS:
        raise TargetError(f"unknown CUDA architecture {arch!r}: lowbit supports {', '.join(CUDA_ARCHS)} "
                          "(tensor-core mma.sync needs sm_80 or newer); use e.g. 'cuda:sm_90'")
    target = {"kind": "cuda", "arch": arch, "host": dict(CUDA_HOST)}
    return TargetInfo(kind="cuda", target=target, features=frozenset({arch}), cpu_name=f"NVIDIA GPU {arch}")


def _parse_cuda(text):
    """``cuda`` (sm_80) or ``cuda:sm_XY``."""
    _, colon, arch = text.partition(":")
    if colon and not arch:
        raise TargetError(f"target {text!r} names no CUDA architecture after the colon: use 'cuda:sm_90' (one of "
                          f"{', '.join(CUDA_ARCHS)}), or 'cuda' for {DEFAULT_CUDA_ARCH}")
    return cuda_target(arch or DEFAULT_CUDA_ARCH)


def _llvm_target(target):
    """A TargetInfo for a ``{"kind": "llvm", ...}`` dict, every field lowbit reads checked."""
    from lowbit.compiler.tvm_api import llvm_is_valid_cpu

    features = target.get("features", host_cpu_features())
    if not isinstance(features, (list, tuple, set, frozenset)) or not all(isinstance(f, str) for f in features):
        raise TargetError(f"target features {features!r}: give a list of LLVM feature names, e.g. ['avx2', 'fma']")
    clean = {k: v for k, v in target.items() if k != "features"}
    clean.setdefault("num-cores", 1)
    cores = clean["num-cores"]
    if not isinstance(cores, int) or isinstance(cores, bool) or not 1 <= cores <= 4096:
        raise TargetError(f"target num-cores {cores!r}: give a positive integer (the cores the kernels may use)")
    triple = clean.get("mtriple", "x86_64-pc-linux-gnu")
    if not isinstance(triple, str) or not triple.startswith("x86_64-"):
        raise TargetError(f"target mtriple {triple!r}: lowbit's CPU kernels target x86-64; use "
                          "'x86_64-pc-linux-gnu' (the default)")
    mcpu = clean.get("mcpu")
    if mcpu is not None and (not isinstance(mcpu, str) or not llvm_is_valid_cpu(mcpu, triple)):
        raise TargetError(f"target mcpu {mcpu!r} is not a CPU LLVM knows for {triple}: use e.g. 'skylake-avx512', "
                          "'znver4', 'sapphirerapids', or leave it out for this machine ('cpu')")
    return TargetInfo(kind="llvm", target=clean, features=frozenset(features), cpu_name=str(clean.get("mcpu")))


def resolve_target(target):
    """Turn a user's target into a TargetInfo.

    Accepts None / ``"cpu"`` / ``"llvm"`` (this CPU), ``"cuda"`` (sm_80) or ``"cuda:sm_90"``, a dict
    (``{"kind": "llvm", ...}`` or ``{"kind": "cuda", "arch": "sm_90"}``) or a TargetInfo.
    """
    if target is None or isinstance(target, str) and target in ("cpu", "llvm", "host"):
        return host_target()
    if isinstance(target, TargetInfo):
        return target
    if isinstance(target, str) and (target == "cuda" or target.startswith("cuda:")):
        return _parse_cuda(target)
    if isinstance(target, dict) and target.get("kind") == "cuda":
        return cuda_target(target.get("arch", DEFAULT_CUDA_ARCH))
    if isinstance(target, dict) and target.get("kind") == "llvm":
        return _llvm_target(target)
    raise TargetError(f"unknown target {target!r}: use 'cpu' (this machine), 'cuda', 'cuda:sm_80', 'cuda:sm_90' "
                      "or a dict {'kind': 'llvm', 'mcpu': ..., 'features': [...]}")
