"""GPU numerics of lowbit's CUDA kernels, with only the runtime bundle (``lowbit bundle-runtime DIR --cases``).

Run on the GPU machine from the bundle folder::

    PYTHONPATH=site TVM_USE_RUNTIME_LIB=1 python run_gpu_tests.py [cases]

Each case (one format, compiled for the bundle's arch) is loaded with ``lowbit.runtime.load`` and run on
NumPy inputs for M = 1, 5, 19, 70 (every bucket: GEMV and tensor-core GEMM) against the float64 reference
and the error bound stored beside it; with torch, the same inputs as CUDA tensors (DLPack, no copy) must
give the same outputs as device tensors. Prints one line per check, exits 1 if any fails.
"""
import glob
import os
import sys

import numpy as np


def _check(name, y, ref, bound):
    err = np.abs(np.asarray(y, np.float64) - ref)
    ok = bool((err <= bound).all())
    print(f"{'PASS' if ok else 'FAIL'} {name}: max err {err.max():.3e} (bound there {bound.flat[err.argmax()]:.3e})")
    return ok


def _torch_checks(model, case, data, torch):
    ok = True
    for M in (1, 19):
        x = torch.from_numpy(data[f"x{M}"]).cuda()
        y = model(x)
        out = torch.from_dlpack(y)
        if out.device.type != "cuda":
            print(f"FAIL {case} torch M={M}: output on {out.device}, expected the GPU")
            ok = False
        ok &= _check(f"{case} torch M={M}", out.cpu().numpy(), data[f"ref{M}"], data[f"bound{M}"])
    try:
        model(torch.from_numpy(data["x1"]))  # a CPU tensor for a GPU model: must be refused, not copied
        print(f"FAIL {case}: a CPU torch tensor was accepted")
        ok = False
    except ValueError as err:
        print(f"PASS {case}: CPU tensor refused ({str(err)[:60]}...)")
    return ok


def main(folder):
    import lowbit.runtime

    try:
        import torch
    except ImportError:
        torch = None
    cases = sorted(glob.glob(os.path.join(folder, "*.lowbit")))
    if not cases:
        print(f"no cases in {folder}: build the bundle with --cases")
        return 1
    ok = True
    for path in cases:
        case = os.path.basename(path)[:-len(".lowbit")]
        model = lowbit.runtime.load(path)
        data = np.load(path[:-len(".lowbit")] + ".npz")
        for M in (1, 5, 19, 70):
            ok &= _check(f"{case} M={M}", model(data[f"x{M}"]), data[f"ref{M}"], data[f"bound{M}"])
        if torch is not None:
            ok &= _torch_checks(model, case, data, torch)
    print("ALL PASS" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                        "cases")))
