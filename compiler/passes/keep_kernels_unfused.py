"""KeepKernelsUnfused: keep lowbit's kernels out of the groups FuseOps forms.

Takes: a Relax IRModule after AnnotateTIROpPattern, which gives every PrimFunc an ``op_pattern``. lowbit's M
dispatchers (a branch on M calling bucket subroutines) come out of that analysis as elementwise, so FuseOps
would group a kernel with the bias add after it, and FuseTIR would then inline a dispatcher that has no
TensorIR blocks into one function with the add.
Produces: the same module with lowbit's kernels (already scheduled: ``schedule_float_ops.is_scheduled``) marked opaque
(``op_pattern`` 8, ``OpPatternKind::kOpaque`` in TVM's include/tvm/relax/op_attr_types.h), which FuseOps never
fuses with anything.
Leaves alone: every other function.
"""
from lowbit.compiler.passes.schedule_float_ops import is_scheduled
from lowbit.compiler.tvm_api import tirx, tvm

OPAQUE = 8


@tvm.transform.module_pass(opt_level=0, name="lowbit.KeepKernelsUnfused")
def KeepKernelsUnfused(mod, _ctx):  # noqa: N802 (a pass is named like a class)
    """Mark lowbit's kernels ``op_pattern`` = opaque."""
    updates = {gvar: func.with_attr("op_pattern", OPAQUE) for gvar, func in mod.functions_items()
               if isinstance(func, tirx.PrimFunc) and is_scheduled(func)}
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
