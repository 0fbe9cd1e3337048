"""KeepSubroutinesPrivate: undo Relax's AttachGlobalSymbol on lowbit's kernel subroutines.

Takes: a Relax IRModule after TVM's default build pipeline, whose last pass (AttachGlobalSymbol) gives
every PrimFunc a ``global_symbol``.
Produces: the same module with the symbol removed again from functions marked ``lowbit.subroutine``,
so they stay private subroutines called with raw pointers by their M dispatcher (a public function
would get the packed calling convention and its internal calls would no longer match).
Leaves alone: every other function.
"""
from lowbit.compiler.passes.attach_subroutine_device import SUBROUTINE_ATTR
from lowbit.compiler.tvm_api import tirx, tvm


@tvm.transform.module_pass(opt_level=0, name="lowbit.KeepSubroutinesPrivate")
def KeepSubroutinesPrivate(mod, _ctx):  # noqa: N802 (a pass is named like a class)
    """Remove ``global_symbol`` from PrimFuncs marked ``lowbit.subroutine``."""
    updates = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and SUBROUTINE_ATTR in func.attrs:
            if "global_symbol" in func.attrs:
                updates[gvar] = func.without_attr("global_symbol")
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
