"""Build settings for CUDA targets, and the device code an artifact carries (fatbins built by nvcc).

TVM 0.27's CUDA modules keep their CUDA source and compile it when loaded, through the global function
``tvm_callback_cuda_compile`` (TVM's own needs nvrtc from the ``cuda-bindings`` package, or nvcc, on the
machine that runs the model). lowbit compiles every CUDA module's source with ``nvcc -fatbin`` at compile
time instead (SASS for the target's ``sm_XY`` plus PTX, which newer GPUs JIT-compile), stores the fatbins in
the artifact keyed by the sha256 of the source, and the runtime (:mod:`lowbit.runtime.cuda`) registers a
callback that returns the stored fatbin for that source: no compiler on the GPU machine.
"""
import contextlib
import hashlib
import shutil

from lowbit.compiler.tvm_api import tvm
from lowbit.errors import TargetError

# InjectPTXAsyncCopy (global -> shared copies become cp.async) runs only with this pass option.
PASS_CONFIG = {"tirx.use_async_copy": True}


def nvcc_path():
    """Path of ``nvcc`` (PATH, then /usr/local/cuda/bin), or raise TargetError saying how to get one."""
    found = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")
    if found is None:
        raise TargetError("compiling for a CUDA target needs nvcc (the CUDA toolkit) on PATH: none found; "
                          "install the CUDA toolkit (12.x or 13.x) or add its bin folder to PATH")
    return found


def compile_device_code(source, arch):
    """Compile CUDA ``source`` with nvcc into a fatbin for ``arch`` (bytes)."""
    from tvm.support import nvcc

    major_minor = arch[3:]
    options = ["-gencode", f"arch=compute_{major_minor},code=[sm_{major_minor},compute_{major_minor}]"]
    with tvm.target.Target({"kind": "cuda", "arch": arch}):  # nvcc.compile_cuda reads the current target
        return bytes(nvcc.compile_cuda(source, "fatbin", arch=options, compiler="nvcc"))


def cuda_sources(module):
    """CUDA sources of every CUDA module imported (transitively) by a built module."""
    found, stack = [], [module]
    while stack:
        current = stack.pop()
        for imported in current.imports:
            if imported.kind == "cuda":
                found.append(imported.inspect_source("cuda"))
            stack.append(imported)
    return found


def build_device_code(executable, arch):
    """Fatbins of an executable's CUDA modules: ``[(sha256 of the source, fatbin bytes)]``."""
    nvcc_path()
    return [(hashlib.sha256(source.encode()).hexdigest(), compile_device_code(source, arch))
            for source in cuda_sources(executable.mod)]


@contextlib.contextmanager
def cuda_build_context(target):
    """Pass options for ``tvm.compile`` of a TargetInfo (CUDA: cp.async); nothing for CPU targets."""
    if target.kind != "cuda":
        yield
        return
    nvcc_path()
    with tvm.transform.PassContext(config=PASS_CONFIG):
        yield
