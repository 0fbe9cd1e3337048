"""The one place lowbit imports TVM's churning Python names (TVM 0.27: ``tvm.tirx``, ``tvm.s_tir``).

An upgrade of TVM should change this file only.
"""
import tvm

from lowbit.errors import CompilerUnavailableError
from lowbit.runtime.threads import configure_thread_pool

if tvm.base._RUNTIME_ONLY:  # the compiler's Python modules below would fail with raw AttributeErrors
    raise CompilerUnavailableError(
        "lowbit's compiler cannot run in this process: TVM was imported with its runtime library only "
        "(lowbit.runtime.load() ran before the compiler was first used, or TVM_USE_RUNTIME_LIB=1 is set). "
        "Use the compiler before loading artifacts in one process, or compile in a subprocess "
        "(`lowbit compile`), with TVM_USE_RUNTIME_LIB unset")
configure_thread_pool()  # the main thread's kernels (benchmarks, tuning) run on every core, without TVM_NUM_THREADS

from tvm import relax, te, tirx  # noqa: E402,F401 (after the check: they fail under the runtime library)
from tvm import s_tir  # noqa: E402,F401
from tvm.s_tir import Schedule  # noqa: E402,F401
from tvm.s_tir.schedule import ScheduleError  # noqa: E402,F401
from tvm.sym import Analyzer  # noqa: E402,F401 (tvm.arith before 0.27)
from tvm.script import tirx as T  # noqa: E402,F401

Target = tvm.target.Target
compile_module = tvm.compile
tensor = tvm.runtime.tensor


def llvm_host_cpu():
    """Return LLVM's name for this machine's CPU (``mcpu: native`` stays unresolved in TVM 0.27)."""
    return tvm.target.codegen.llvm_get_system_cpu()


def llvm_is_valid_cpu(cpu, triple):
    """Whether LLVM knows ``cpu`` as an ``mcpu`` for ``triple``."""
    return bool(tvm.target.codegen.llvm_is_valid_cpu(cpu, triple))


def tir_compilation_pipeline():
    """TVM's TIR pipeline registry (``tvm.tirx.compilation_pipeline``)."""
    from tvm.tirx import compilation_pipeline

    return compilation_pipeline


def gpu_dlight():
    """TVM's default schedule rules (``tvm.s_tir.dlight``: ``gpu.Reduction``, ``ApplyDefaultSchedule``, ...)."""
    from tvm.s_tir import dlight

    return dlight


def onnx_importer():
    """TVM's ONNX -> Relax importer (``tvm.relax.frontend.onnx.from_onnx``)."""
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx


def onnx_frontend():
    """TVM's ONNX frontend module (its ``ONNXGraphImporter`` and converter helpers, for lowbit's converters)."""
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    return frontend


def onnx_importer_opset():
    """The newest ONNX opset TVM's importer has a converter version for (the highest ``_impl_vN``)."""
    import re

    from tvm.relax.frontend.onnx import onnx_frontend

    versions = [int(match.group(1)) for converter in onnx_frontend._get_convert_map().values()  # noqa: SLF001
                for match in map(re.compile(r"_impl_v(\d+)").fullmatch, dir(converter)) if match]
    return max(versions)


def onnx_supported_ops():
    """ONNX operator types TVM's ONNX importer converts (its converter map, plus ``If`` it handles itself)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return set(onnx_frontend._get_convert_map()) | {"If", "Constant"}  # noqa: SLF001 (no public accessor)


def meta_schedule():
    """TVM's MetaSchedule package (``tvm.s_tir.meta_schedule``: its cost models, feature extractors and
    measure-candidate types), imported on first use: it pulls in xgboost and friends."""
    from tvm.s_tir import meta_schedule as ms

    return ms


def tune_context(mod, target):
    """A MetaSchedule ``TuneContext`` for ``mod`` on ``target``, the handle its cost models and feature
    extractors take (lowbit uses no MetaSchedule space generator or search strategy).

    ``TuneContext.__init__`` imports ``tvm.s_tir.tensor_intrin`` for the space generators that tensorize;
    that import parses some 250 TVMScript functions, each walking ``inspect.stack()``: 17 s here. Nothing
    lowbit asks of the context reads those intrinsics (lowbit registers its own), so the import is skipped
    while the context is made (an empty module stands in, then is removed: a later real import still works).
    """
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    stand_in = name not in sys.modules
    if stand_in:
        sys.modules[name] = types.ModuleType(name)
    try:
        return meta_schedule().TuneContext(mod=mod, target=target, num_threads=1)
    finally:
        if stand_in:
            del sys.modules[name]


def torch_importer():
    """TVM's torch ``ExportedProgram`` -> Relax importer (``tvm.relax.frontend.torch.from_exported_program``)."""
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program
