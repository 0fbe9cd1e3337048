"""``lowbit bundle-runtime``: the folder holds what lowbit.runtime needs, and nothing of the compiler."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lowbit.bundle import LIMIT_BYTES, BundleError, bundle_runtime, folder_bytes


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle") / "runtime"
    summary = bundle_runtime(str(folder))
    return folder, summary


@pytest.fixture(scope="module")
def cpu_artifact(tmp_path_factory):
    import lowbit
    from lowbit.compiler.graph import Linear, Sequential

    weight = np.random.default_rng(0).standard_normal((48, 64)).astype(np.float32)
    compiled = lowbit.compile(Sequential([Linear(weight, name="fc")]), target="cpu", format="w4g32")
    path = tmp_path_factory.mktemp("artifact") / "fc.lowbit"
    compiled.save(path)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    return path, x, compiled(x)


def test_bundle_holds_the_runtime_pieces_under_the_limit(bundle):
    folder, summary = bundle
    site = folder / "site"
    for part in ("tvm_ffi/__init__.py", "tvm/__init__.py", "tvm/runtime/vm.py", "tvm/lib/libtvm_runtime.so",
                 "tvm/lib/libtvm_runtime_cuda.so", "lowbit/__init__.py", "lowbit/errors.py",
                 "lowbit/runtime/module.py", "lowbit/runtime/cuda.py"):
        assert (site / part).is_file(), part
    assert (folder / "run_gpu_tests.py").is_file() and (folder / "gpu_bench.py").is_file()
    assert not (site / "tvm" / "lib" / "libtvm_compiler.so").exists()
    assert not (site / "lowbit" / "compiler").exists()
    assert summary["bytes"] == folder_bytes(str(folder)) < LIMIT_BYTES


def test_bundle_alone_loads_and_runs_a_cpu_artifact(bundle, cpu_artifact):
    folder, _ = bundle
    path, x, expected = cpu_artifact
    np.save(folder / "x.npy", x)
    # tvm and tvm_ffi are imported after the load (as the runtime imports them, keeping an installed torch out)
    code = ("import sys, numpy as np, lowbit.runtime\n"
            f"y = lowbit.runtime.load({str(path)!r})(np.load({str(folder / 'x.npy')!r}))\n"
            "import tvm, tvm_ffi\n"
            f"np.save({str(folder / 'y.npy')!r}, y)\n"
            "print(tvm.__file__, tvm_ffi.__file__, lowbit.runtime.__file__)\n"
            "print(sorted(k for k in sys.modules if k.startswith('lowbit.compiler') or k == 'torch'))\n")
    # Only the bundle provides tvm, tvm_ffi and lowbit: it comes first on the path, and -S keeps site's .pth
    # files (lowbit's editable install) out; numpy comes from this environment, as on the GPU machine.
    numpy_home = os.path.dirname(os.path.dirname(np.__file__))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{folder / 'site'}:{numpy_home}", "TVM_USE_RUNTIME_LIB": "1"}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, check=False,
                         cwd=folder)  # not the repository: its lowbit/ folder would shadow the bundle's
    assert out.returncode == 0, out.stderr[-3000:]
    files, imported = out.stdout.strip().splitlines()[-2:]
    assert all(f.startswith(str(folder / "site")) for f in files.split()), files
    assert imported == "[]"
    np.testing.assert_array_equal(np.load(folder / "y.npy"), expected)


def test_bundle_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        bundle_runtime(str(tmp_path))


@pytest.mark.slow
def test_gpu_cases_and_bench_kernels_compile(tmp_path):
    from lowbit.gpu_cases import write_bench_kernels, write_cases

    assert write_cases(str(tmp_path / "cases"), "sm_90", formats=["w4g128", "nf4g64"]) == ["w4g128", "nf4g64"]
    data = np.load(tmp_path / "cases" / "w4g128.npz")
    assert {"x1", "ref70", "bound19"} <= set(data.files)
    [out] = write_bench_kernels(str(tmp_path / "bench"), "sm_90", shapes=[("w4g128", 256, 512)])
    assert os.path.isfile(os.path.join(out, "lib.so")) and os.path.isfile(os.path.join(out, "device", "0.fatbin"))


def test_bundle_reads_only_the_installed_package():
    """Regression: bundle.py globbed the repository's runtime/ and benchmarks/ folders, absent when lowbit is
    installed from a wheel. It reads the package's own files, and the GPU scripts are package data a wheel ships."""
    import importlib.resources
    import tomllib

    from lowbit import bundle

    assert not hasattr(bundle, "REPO")
    for script in ("run_gpu_tests.py", "gpu_bench.py"):
        assert (importlib.resources.files("lowbit") / "gpu_scripts" / script).is_file()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "gpu_scripts/*.py" in package_data["lowbit"]
