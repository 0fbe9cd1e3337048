"""NaN-keeping legalization of ``relax.nn.relu`` and ``relax.clip`` (a customization of TVM's LegalizeOps).

TVM legalizes ReLU as ``max(x, 0)`` and clip as ``max(min(x, hi), lo)``; LLVM lowers a float ``max(a, b)`` to
``a > b ? a : b``, so a NaN input becomes 0 (or the clip bound), where NumPy, torch and onnxruntime give NaN.
Here each is a select that falls through to ``x`` on NaN (every comparison with NaN is false, IEEE 754
section 5.11): ReLU ``x < 0 ? 0 : x``, clip ``x < lo ? lo : (x > hi ? hi : x)``. The same result for every other
input, and the same cost (one compare and a blend per element).
"""
from lowbit.compiler.tvm_api import relax, te, tirx, tvm


def _bound(value, dtype):
    return value.astype(dtype) if isinstance(value, tvm.ir.expr.Expr) else tirx.const(value, dtype)


def _relu_te(x):
    zero = tirx.const(0, x.dtype)
    return te.compute(x.shape, lambda *i: tirx.Select(x(*i) < zero, zero, x(*i)), name="relu")


def _clip_te(x, lo, hi):
    lo, hi = _bound(lo, x.dtype), _bound(hi, x.dtype)

    def element(*i):
        value = x(*i)
        return tirx.Select(value < lo, lo, tirx.Select(value > hi, hi, value))

    return te.compute(x.shape, element, name="clip")


def _relu(bb, call):
    return bb.call_te(_relu_te, call.args[0], primfunc_name_hint="relu")


def _clip(bb, call):
    return bb.call_te(_clip_te, *call.args, primfunc_name_hint="clip")


NAN_KEEPING = {"relax.nn.relu": _relu, "relax.clip": _clip}


def LegalizeOps():  # noqa: N802 (a pass is named like a class)
    """TVM's LegalizeOps with :data:`NAN_KEEPING` in place of its ReLU and clip."""
    return relax.transform.LegalizeOps(customize_legalize_map=NAN_KEEPING)
