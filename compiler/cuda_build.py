"""Build settings for CUDA targets: device code compiled by nvcc at compile time, cp.async enabled.

``tvm.compile`` hands each CUDA module's source to the global function ``tvm_callback_cuda_compile``;
TVM's default (nvrtc through the ``cuda-bindings`` package) is not installed here, and without a callback the
module keeps CUDA source that would be compiled when loaded. :func:`cuda_build_context` registers a callback
that runs ``nvcc -fatbin`` for the target's architecture (SASS for ``sm_XY`` plus PTX for the JIT of newer
GPUs), so an artifact carries compiled device code and the GPU machine needs no compiler.
"""
import contextlib
import shutil

from lowbit.compiler.tvm_api import tvm
from lowbit.errors import TargetError

CALLBACK = "tvm_callback_cuda_compile"
# InjectPTXAsyncCopy (global -> shared copies become cp.async) runs only with this pass option.
PASS_CONFIG = {"tirx.use_async_copy": True}


def nvcc_path():
    """Path of ``nvcc`` (PATH, then /usr/local/cuda/bin), or raise TargetError saying how to get one."""
    found = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")
    if found is None:
        raise TargetError("compiling for a CUDA target needs nvcc (the CUDA toolkit) on PATH: none found; "
                          "install the CUDA toolkit (12.x or 13.x) or add its bin folder to PATH")
    return found


def compile_device_code(source, arch):  # noqa: D401
    """Compile CUDA ``source`` with nvcc into a fatbin for ``arch`` (bytes)."""
    from tvm.support import nvcc

    major_minor = arch[3:]
    options = ["-gencode", f"arch=compute_{major_minor},code=[sm_{major_minor},compute_{major_minor}]"]
    with tvm.target.Target({"kind": "cuda", "arch": arch}):  # nvcc.compile_cuda reads the current target
        return bytes(nvcc.compile_cuda(source, "fatbin", arch=options, compiler="nvcc"))


@contextlib.contextmanager
def cuda_build_context(target):
    """Context for ``tvm.compile`` of a TargetInfo: for CUDA, the nvcc callback and cp.async; else nothing."""
    if target.kind != "cuda":
        yield
        return
    nvcc_path()
    previous = tvm.get_global_func(CALLBACK, allow_missing=True)

    def callback(source, *_):
        return compile_device_code(source, target.arch)

    tvm.register_global_func(CALLBACK, callback, override=True)
    try:
        with tvm.transform.PassContext(config=PASS_CONFIG):
            yield
    finally:
        if previous is not None:
            tvm.register_global_func(CALLBACK, previous, override=True)
