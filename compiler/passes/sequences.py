"""The pass sequences lowbit builds with: its TIR pipeline, the Relax build pipeline, the float-operator phase.

Each is TVM's own sequence with lowbit's passes (``compiler/passes/``) in their places; the pipeline phases
(``compiler/pipeline.py``) and the one-layer build (``compiler/linear.py``) run them.
"""
from lowbit.compiler.passes.attach_subroutine_device import AttachSubroutineDevice
from lowbit.compiler.passes.fast_float_math import FastFloatMath
from lowbit.compiler.passes.keep_kernels_unfused import KeepKernelsUnfused
from lowbit.compiler.passes.keep_nan import LegalizeOps
from lowbit.compiler.passes.keep_subroutines_private import KeepSubroutinesPrivate
from lowbit.compiler.passes.schedule_float_ops import ScheduleFloatOps
from lowbit.compiler.tvm_api import gpu_dlight, relax, tir_compilation_pipeline, tvm


def tir_pipeline():
    """Name of lowbit's TIR pipeline (TVM's s_tir pipeline plus lowbit's host passes), registered once."""
    if "lowbit" not in _REGISTERED:
        _register_lowbit_pipeline()
        _REGISTERED.add("lowbit")
    return "lowbit"


_REGISTERED = set()


def _register_lowbit_pipeline():
    cp = tir_compilation_pipeline()

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
    passes = [relax.pipeline.default_build_pipeline(), KeepSubroutinesPrivate]
    if target is not None and target.kind == "cuda":
        dlight = gpu_dlight()
        gpu = dlight.gpu
        # no operator fusion: FuseOps would also fuse lowbit's call_tir kernels with their neighbours
        passes[:0] = [LegalizeOps(),
                      dlight.ApplyDefaultSchedule(gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback())]
    return tvm.transform.Sequential(passes)


def float_op_pipeline(target):
    """CPU targets: the Relax passes that turn a model's float operators into scheduled TensorIR.

    GELU / softmax with vectorizable math (FastFloatMath), legalized, fused the way TVM's CPU pipeline fuses
    (``relax.backend.cpu_generic``: FuseOps / FuseTIR; lowbit's kernels kept out by KeepKernelsUnfused), then
    each fused function given a CPU schedule (ScheduleFloatOps).
    """
    passes = [FastFloatMath(), LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              KeepKernelsUnfused, relax.transform.FoldConstant(), relax.transform.FuseOps(),
              relax.transform.FuseTIR(), ScheduleFloatOps(target)]
    return tvm.transform.Sequential(passes, name="lowbit.FloatOps")
