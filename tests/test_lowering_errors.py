"""LowerQuantizedMatmul's own errors reach the caller as lowbit errors, not as TVM's RuntimeError."""
import numpy as np
import pytest

from lowbit.compiler.formats import quantize
from lowbit.compiler.pipeline import run_relax_pipeline
from lowbit.compiler.target import resolve_target
from lowbit.compiler.tvm_api import relax
from lowbit.errors import KernelError
from lowbit.frontends.onnx import ImportedModel, QuantizedLinearSpec


def test_placeholder_used_outside_a_matmul_is_a_kernel_error_not_a_runtime_error():
    """Regression: the pass raised KernelError, TVM's pass infrastructure turned it into a RuntimeError."""
    K, N = 64, 32
    x = relax.Var("x", relax.TensorType((4, K), "float32"))
    w = relax.Var("lowbit_w0", relax.TensorType((K, N), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, w))
            z = bb.emit_output(relax.op.add(y, relax.op.sum(w)))  # the weight read as data too
        bb.emit_func_output(z)
    weight = quantize(np.random.default_rng(0).standard_normal((N, K)).astype(np.float32), "w4g32")
    imported = ImportedModel(bb.get(), {"lowbit_w0": QuantizedLinearSpec("fc", weight)}, [], [])
    with pytest.raises(KernelError, match=r"layers \['fc'\] are used other than as the right-hand side"):
        run_relax_pipeline(imported, resolve_target("cpu"), kernel="decode")
