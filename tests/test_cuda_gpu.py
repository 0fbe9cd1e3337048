"""CUDA numerics on a GPU (marked ``gpu``; skipped where there is none): every format, every M bucket
(GEMV and tensor-core GEMM), against the float64 reference and the bound derived from the format, NumPy and
DLPack (torch CUDA tensors) inputs. The same checks run with only the runtime bundle:
``lowbit/gpu_scripts/run_gpu_tests.py`` over ``lowbit bundle-runtime DIR --cases``."""
import glob
import importlib.util
import os

import numpy as np
import pytest

from lowbit.gpu_cases import CASE_FORMATS, CASE_ROWS

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not glob.glob("/dev/nvidia[0-9]*"), reason="no NVIDIA GPU on this machine")]
RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lowbit", "gpu_scripts",
                      "run_gpu_tests.py")


def _runner():
    spec = importlib.util.spec_from_file_location("run_gpu_tests", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arch():
    from lowbit.compiler.tvm_api import tvm

    major, minor = str(tvm.cuda(0).compute_version).split(".")
    return f"sm_{major}{minor}" if f"sm_{major}{minor}" in ("sm_80", "sm_86", "sm_89", "sm_90") else "sm_90"


@pytest.mark.parametrize("fmt", CASE_FORMATS, ids=lambda f: f.split("[")[0])
def test_cuda_layer_matches_reference_on_gpu(fmt, arch, tmp_path):
    import lowbit.runtime
    from lowbit.gpu_cases import write_cases

    [name] = write_cases(str(tmp_path), arch, formats=[fmt])
    model = lowbit.runtime.load(tmp_path / f"{name}.lowbit")
    data = np.load(tmp_path / f"{name}.npz")
    runner = _runner()
    for M in CASE_ROWS:
        assert runner._check(f"{name} M={M}", model(data[f"x{M}"]), data[f"ref{M}"], data[f"bound{M}"])
    torch = pytest.importorskip("torch")
    assert runner._torch_checks(model, name, data, torch)
