"""The one place lowbit imports TVM's churning Python names (TVM 0.27: ``tvm.tirx``, ``tvm.s_tir``).

An upgrade of TVM should change this file only.
"""
import os

# TVM's thread pool assumes hyper-threading and starts half the logical CPUs; lowbit's kernels want all
# the cores this process may run on. Set before the first parallel call; a user's setting wins.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import tvm  # noqa: E402
from tvm import relax, te, tirx  # noqa: E402,F401
from tvm import s_tir  # noqa: E402,F401
from tvm.s_tir import Schedule  # noqa: E402,F401
from tvm.script import tirx as T  # noqa: E402,F401

Target = tvm.target.Target
compile_module = tvm.compile
tensor = tvm.runtime.tensor


def llvm_host_cpu():
    """Return LLVM's name for this machine's CPU (``mcpu: native`` stays unresolved in TVM 0.27)."""
    return tvm.target.codegen.llvm_get_system_cpu()


def tir_pipeline():
    """Name of lowbit's TIR pipeline (TVM's s_tir pipeline plus lowbit's host passes), registered once."""
    if "lowbit" not in _REGISTERED:
        _register_lowbit_pipeline()
        _REGISTERED.add("lowbit")
    return "lowbit"


_REGISTERED = set()


def _register_lowbit_pipeline():
    from tvm.tirx import compilation_pipeline as cp

    from lowbit.compiler.passes.attach_subroutine_device import AttachSubroutineDevice

    def factory(**kwargs):
        pipeline, finalize_host, finalize_device = cp.get_tir_pipeline("s_tir", **kwargs)

        def lowbit_finalize_host():
            return tvm.ir.transform.Sequential([AttachSubroutineDevice, finalize_host()])

        return pipeline, lowbit_finalize_host, finalize_device

    cp.register_tir_pipeline("lowbit", factory)



def relax_pipeline(target=None):
    """TVM's default Relax build pipeline, then lowbit's KeepSubroutinesPrivate.

    For CUDA targets, the graph's own operators (casts, activations, reshapes) are legalized and given
    dlight's default GPU schedules first; lowbit's kernels are marked scheduled and left alone.
    """
    from tvm import relax

    from lowbit.compiler.passes.keep_subroutines_private import KeepSubroutinesPrivate

    passes = [relax.pipeline.default_build_pipeline(), KeepSubroutinesPrivate]
    if target is not None and target.kind == "cuda":
        from tvm.s_tir import dlight

        gpu = dlight.gpu
        # no operator fusion: FuseOps would also fuse lowbit's call_tir kernels with their neighbours
        passes[:0] = [relax.transform.LegalizeOps(),
                      dlight.ApplyDefaultSchedule(gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback())]
    return tvm.transform.Sequential(passes)


def onnx_importer():
    """TVM's ONNX -> Relax importer (``tvm.relax.frontend.onnx.from_onnx``)."""
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx


def onnx_supported_ops():
    """ONNX operator types TVM's ONNX importer converts (its converter map, plus ``If`` it handles itself)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return set(onnx_frontend._get_convert_map()) | {"If", "Constant"}  # noqa: SLF001 (no public accessor)
