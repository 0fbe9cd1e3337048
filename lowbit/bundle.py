"""``lowbit bundle-runtime``: gather exactly what :mod:`lowbit.runtime` needs into one folder.

The lent GPU machine has Python, NumPy and torch but no TVM; the full TVM wheel (100 MB) cannot be carried
there. A bundle holds, under ``DIR/site`` (put it on ``sys.path``):

- ``tvm_ffi``: the ``apache-tvm-ffi`` wheel for the target Python, unpacked (copied from this environment
  when the Python versions match, else ``pip download``-ed);
- ``tvm``: the TVM Python files that ``import tvm`` in runtime-only mode (``TVM_USE_RUNTIME_LIB=1``) and
  loading an artifact actually import (traced in a subprocess), plus ``lib/libtvm_runtime.so``,
  ``lib/libtvm_runtime_cuda.so`` and, when this machine has it, the ``libcudart.so.13`` it links to;
- ``lowbit``: ``lowbit/__init__.py``, ``lowbit/errors.py`` and ``lowbit.runtime``.

Beside them: ``run_gpu_tests.py`` (the GPU numerics checks over ``cases/``), ``gpu_bench.py`` (the GPU
benchmark over ``bench/``) and, with ``cases=True`` / ``bench=True``, the artifacts they run, compiled here.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import lowbit.runtime
from lowbit.errors import LowbitError

LIMIT_BYTES = 64 * 2**20
PACKAGE = os.path.dirname(os.path.abspath(__file__))  # lowbit/, installed or not: nothing outside the package is read
_TRACE = r"""
import json, sys
import numpy as np
import lowbit.runtime
model = lowbit.runtime.load(sys.argv[1])
model(np.ones((2, model.inputs[0]["shape"][1]), np.float32))
import tvm.runtime, tvm.runtime.vm  # noqa
print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values())
                         if getattr(m, "__file__", None) and "site-packages/tvm/" in m.__file__})))
"""


class BundleError(LowbitError, RuntimeError):
    """A runtime bundle could not be built (download failed, size over the limit)."""


def _tvm_root():
    import importlib.util

    return os.path.dirname(importlib.util.find_spec("tvm").origin)


def _traced_tvm_files(probe_artifact):
    """TVM Python files imported when a runtime-only process loads and runs ``probe_artifact``."""
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    out = subprocess.run([sys.executable, "-c", _TRACE, probe_artifact], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode != 0:
        raise BundleError(f"tracing the runtime's TVM imports failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe_artifact(workdir):
    """A tiny CPU artifact whose loading exercises the runtime's imports."""
    import numpy as np

    import lowbit
    from lowbit.compiler.graph import Linear, Sequential

    weight = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    path = os.path.join(workdir, "probe.lowbit")
    lowbit.compile(Sequential([Linear(weight, name="probe")]), target="cpu", format="w4g32").save(path)
    return path


def _copy_tvm(site, traced):
    root = _tvm_root()
    wanted = set(traced) | set(glob.glob(os.path.join(root, "runtime", "**", "*.py"), recursive=True))
    for path in sorted(wanted):  # every package on the way needs its __init__.py
        folder = os.path.dirname(path)
        while folder.startswith(root):
            init = os.path.join(folder, "__init__.py")
            if os.path.isfile(init):
                wanted.add(init)
            folder = os.path.dirname(folder)
    for path in wanted:
        _copy(path, os.path.join(site, "tvm", os.path.relpath(path, root)))
    for name in ("libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        _copy(os.path.join(root, "lib", name), os.path.join(site, "tvm", "lib", name))
    cudart = _find_cudart()
    if cudart:
        _copy(cudart, os.path.join(site, "tvm", "lib", "libcudart.so.13"))


def _find_cudart():
    for pattern in ("/usr/local/cuda/lib64/libcudart.so.13*", "/usr/local/cuda*/lib*/libcudart.so.13*"):
        found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p) and not os.path.islink(p))
        if found:
            return found[0]
    return None


def _copy(src, dst):
    from lowbit.runtime.atomic import atomic_path

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with atomic_path(dst, os.stat(src).st_mode & 0o777) as temporary:  # a killed bundle run leaves no half file
        shutil.copy2(src, temporary)


def _tvm_ffi(site, python, workdir):
    """Unpack the apache-tvm-ffi wheel for ``python`` (e.g. "3.12") into ``site``."""
    from importlib import metadata

    version = metadata.version("apache-tvm-ffi")
    if python == f"{sys.version_info.major}.{sys.version_info.minor}":
        dist = metadata.distribution("apache-tvm-ffi")
        for file in dist.files:
            if str(file).startswith("tvm_ffi/") and "__pycache__" not in str(file):
                _copy(str(file.locate()), os.path.join(site, str(file)))
        return f"apache-tvm-ffi {version} (copied from this environment)"
    cmd = [sys.executable, "-m", "pip", "download", f"apache-tvm-ffi=={version}", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--platform", "manylinux_2_28_x86_64", "-d", workdir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = glob.glob(os.path.join(workdir, "apache_tvm_ffi-*.whl"))
    if out.returncode != 0 or not wheels:
        raise BundleError(f"could not download apache-tvm-ffi {version} for Python {python} "
                          f"({out.stderr.strip()[-500:]}): check the network, or bundle for this Python")
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in wheel.namelist():
            if name.startswith("tvm_ffi/"):
                wheel.extract(name, site)
    return f"{os.path.basename(wheels[0])} (downloaded)"


def _copy_lowbit(site):
    _copy(os.path.join(PACKAGE, "__init__.py"), os.path.join(site, "lowbit", "__init__.py"))
    _copy(os.path.join(PACKAGE, "errors.py"), os.path.join(site, "lowbit", "errors.py"))
    for path in glob.glob(os.path.join(os.path.dirname(os.path.abspath(lowbit.runtime.__file__)), "*.py")):
        _copy(path, os.path.join(site, "lowbit", "runtime", os.path.basename(path)))


def folder_bytes(folder):
    """Total size of the files under ``folder``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def bundle_runtime(folder, python=None, cases=False, bench=False, arch="sm_90"):
    """Write a runtime bundle to ``folder`` (created; must not exist or be empty). Returns a summary dict."""
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    if os.path.exists(folder) and os.listdir(folder):
        raise BundleError(f"bundle folder {folder!r} is not empty: choose a new folder or remove it first")
    site = os.path.join(folder, "site")
    os.makedirs(site, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lowbit-bundle-") as workdir:
        ffi = _tvm_ffi(site, python, workdir)
        _copy_tvm(site, _traced_tvm_files(_probe_artifact(workdir)))
    _copy_lowbit(site)
    for script in ("run_gpu_tests.py", "gpu_bench.py"):
        _copy(os.path.join(PACKAGE, "gpu_scripts", script), os.path.join(folder, script))
    if cases:
        from lowbit.gpu_cases import write_cases

        write_cases(os.path.join(folder, "cases"), arch)
    if bench:
        from lowbit.gpu_cases import write_bench_kernels

        write_bench_kernels(os.path.join(folder, "bench"), arch)
    size = folder_bytes(folder)
    if size > LIMIT_BYTES:
        raise BundleError(f"bundle {folder!r} is {size / 2**20:.1f} MiB, over the {LIMIT_BYTES // 2**20} MiB a GPU "
                          "machine call can carry: bundle fewer cases")
    return {"folder": folder, "python": python, "tvm_ffi": ffi, "bytes": size}
