"""CUDA support of the runtime: load TVM's CUDA runtime library and check the GPU against the artifact.

In runtime-only mode (``TVM_USE_RUNTIME_LIB=1``) ``import tvm`` loads ``libtvm_runtime.so`` alone; the
CUDA device API and the loader of the artifact's fatbin live in ``libtvm_runtime_cuda.so`` (which needs
``libcudart.so.13`` and the driver's ``libcuda.so.1``), loaded here explicitly and once. Nothing here imports
the compiler.
"""
import ctypes
import os

from lowbit.errors import TargetError

_LOADED = {}


def is_cuda_manifest(manifest):
    """Whether an artifact's manifest targets a CUDA GPU."""
    return manifest.get("target", {}).get("kind") == "cuda"


def artifact_arch(manifest):
    """(major, minor) of the artifact's CUDA architecture (``sm_90`` -> (9, 0), ``sm_90a`` -> (9, 0))."""
    digits = manifest["target"]["arch"][3:].rstrip("abcdefghijklmnopqrstuvwxyz")  # checked by runtime.manifest
    return int(digits[:-1]), int(digits[-1])


def _library_candidates(tvm):
    folder = os.path.join(os.path.dirname(os.path.abspath(tvm.__file__)), "lib")
    extra = os.environ.get("LOWBIT_TVM_LIB_DIR")  # a runtime bundle may keep the libraries elsewhere
    return [os.path.join(d, "libtvm_runtime_cuda.so") for d in ([extra] if extra else []) + [folder]]


def load_cuda_runtime(tvm, path):
    """dlopen ``libtvm_runtime_cuda.so`` (once); raise TargetError naming what is missing."""
    if "lib" in _LOADED:
        return
    candidates = [c for c in _library_candidates(tvm) if os.path.isfile(c)]
    if not candidates:
        raise TargetError(f"artifact {path!r} runs on an NVIDIA GPU, but libtvm_runtime_cuda.so is not installed "
                          f"(looked in {', '.join(_library_candidates(tvm))}): install the apache-tvm wheel or use "
                          "a lowbit runtime bundle (lowbit bundle-runtime)")
    cudart = os.path.join(os.path.dirname(candidates[0]), "libcudart.so.13")  # a runtime bundle carries it
    try:
        if os.path.isfile(cudart):
            _LOADED["cudart"] = ctypes.CDLL(cudart, mode=ctypes.RTLD_GLOBAL)
        _LOADED["lib"] = ctypes.CDLL(candidates[0], mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise TargetError(f"artifact {path!r} runs on an NVIDIA GPU, but the CUDA runtime could not be loaded "
                          f"({err}): this machine needs an NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime "
                          "(libcudart.so.13); run it on a GPU machine, or compile the model for target 'cpu'") from err


def cuda_device(tvm, manifest, path):
    """The CUDA device the artifact runs on, after checking a GPU exists and is new enough."""
    load_cuda_runtime(tvm, path)
    device = tvm.cuda(0)
    arch = manifest["target"]["arch"]
    if not device.exist:
        raise TargetError(f"artifact {path!r} was compiled for NVIDIA GPUs ({arch}) but no CUDA GPU is visible "
                          "(none present, or CUDA_VISIBLE_DEVICES hides it): run it on a GPU machine, or compile "
                          "the model for target 'cpu'")
    have = tuple(int(x) for x in str(device.compute_version).split("."))
    check_compute_capability(have, manifest, path, device.device_name)
    return device


def check_compute_capability(have, manifest, path, device_name):
    """Raise TargetError when a GPU of compute capability ``have`` (major, minor) cannot run the artifact.

    The fatbin holds SASS for the artifact's ``sm_XY`` (runs on X.Y and later minors of X) and PTX, which
    the driver JIT-compiles for newer GPUs; an older GPU can run neither.
    """
    arch = manifest["target"]["arch"]
    if tuple(have) < artifact_arch(manifest):
        raise TargetError(f"artifact {path!r} was compiled for {arch} but this GPU ({device_name}) is "
                          f"sm_{have[0]}{have[1]}: compile the model again with --target cuda:sm_{have[0]}{have[1]}")


CALLBACK = "tvm_callback_cuda_compile"


def device_code(manifest, parts):
    """The artifact's fatbins: {sha256 of the CUDA source: fatbin bytes} (``manifest["device_code"]``)."""
    return {entry["source_sha256"]: parts[entry["file"]] for entry in manifest.get("device_code", [])}


_FATBINS = {}  # sha256 of a CUDA module's source -> fatbin, over every artifact this process loaded


def provide_device_code(fatbins, path):
    """Make TVM's CUDA module loader use the artifact's fatbins instead of compiling CUDA source.

    ``fatbins`` maps the sha256 of a CUDA module's source to the fatbin nvcc built from it at compile time.
    TVM calls ``tvm_callback_cuda_compile(source)`` when it loads (or first runs) a CUDA module; the callback,
    registered once, serves every artifact loaded so far. A source with no fatbin means the artifact and its
    library disagree.
    """
    import hashlib

    import tvm_ffi

    first = not _FATBINS
    _FATBINS.update(fatbins)
    if not first:
        return

    def compiled(source, *_):
        key = hashlib.sha256(str(source).encode()).hexdigest()
        if key not in _FATBINS:
            raise TargetError(f"no compiled device code for a CUDA module (source sha256 {key[:12]}...) in the "
                              f"artifacts loaded ({path!r} first): the artifact is inconsistent; compile it again")
        return _FATBINS[key]

    tvm_ffi.register_global_func(CALLBACK, compiled, override=True)
