"""AttachSubroutineDevice: give lowbit's private kernel subroutines the device their workspaces live on.

Takes: a host IRModule after MakePackedAPI, in which lowbit's M-bucket kernels are private PrimFuncs
(marked ``lowbit.subroutine``) called from a public dispatcher.
Produces: the same module with those functions' bodies wrapped in ``device_type`` / ``device_id``
attributes (CPU, device 0), which LowerTVMBuiltin needs to lower workspace allocations
(``TVMBackendAllocWorkspace``); MakePackedAPI adds them to public functions only.
Leaves alone: every other function.
"""
from lowbit.compiler.tvm_api import tirx, tvm

SUBROUTINE_ATTR = "lowbit.subroutine"


def _wrap(body):
    body = tirx.AttrStmt(tvm.ir.StringImm("default"), "device_id", tirx.IntImm("int32", 0), body)
    return tirx.AttrStmt(tvm.ir.StringImm("default"), "device_type", tirx.IntImm("int32", 1), body)


@tvm.transform.module_pass(opt_level=0, name="lowbit.AttachSubroutineDevice")
def AttachSubroutineDevice(mod, _ctx):  # noqa: N802 (a pass is named like a class)
    """Wrap the bodies of functions marked ``lowbit.subroutine`` in CPU device attributes."""
    updates = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and SUBROUTINE_ATTR in func.attrs:
            updates[gvar] = func.with_body(_wrap(func.body))
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
