"""One callable kernel per layer: M-bucket-specialised PrimFuncs behind a dispatcher.

M (batch x sequence) is dynamic in real models; the best schedule is not. Each bucket of M sizes
(e.g. 1, 2-8, 9-32, 33+) gets its own scheduled PrimFunc; they become private subroutines taking raw
data pointers (and M), and a small public PrimFunc branches on M at run time and calls one of them.
TVM 0.27 lowers calls between PrimFuncs of one IRModule (a ``tirx.Call`` whose op is a GlobalVar).
"""
import dataclasses

from lowbit.compiler.passes.attach_subroutine_device import SUBROUTINE_ATTR
from lowbit.compiler.tvm_api import tirx, tvm


@dataclasses.dataclass(frozen=True)
class Bucket:
    """M sizes ``lo..hi`` (``hi`` None: unbounded) served by one scheduled function."""

    lo: int
    hi: object = None

    @property
    def key(self):
        """Name used in function names and tuning records: ``m1``, ``m2-8``, ``m33+``."""
        if self.hi == self.lo:
            return f"m{self.lo}"
        return f"m{self.lo}+" if self.hi is None else f"m{self.lo}-{self.hi}"

    def contains(self, m):
        return m >= self.lo and (self.hi is None or m <= self.hi)


DEFAULT_BUCKETS = (Bucket(1, 1), Bucket(2, 8), Bucket(9, 32), Bucket(33, None))


def as_subroutine(func, m_var):
    """Turn a scheduled PrimFunc with buffer params into a private one taking data pointers (and M).

    TVM 0.27 lowers buffer-typed params only for public functions (MakePackedAPI), so a subroutine takes
    raw pointers and re-declares the very same buffers on them.
    """
    pointers, decls = [], []
    for buf in func.params:
        ptr = tirx.Var(f"{buf.name}_ptr", tvm.ir.PointerType(tvm.ir.PrimType(buf.dtype)))
        pointers.append(ptr)
        decls.append(tirx.DeclBuffer(buf, data=ptr))
    params = pointers + ([m_var] if m_var is not None else [])
    # Workspace allocation failures return -1 from the function: its return type is int32.
    body = tirx.SeqStmt(decls + [func.body, tirx.Return(tirx.IntImm("int32", 0))])
    attrs = {k: v for k, v in func.attrs.items() if k != "global_symbol"} if func.attrs else {}
    attrs[SUBROUTINE_ATTR] = True  # AttachSubroutineDevice gives it a device for its workspaces
    return tirx.PrimFunc(params, body, ret_type=tvm.ir.PrimType("int32"),
                         attrs=tvm.ir.make_node("ir.DictAttrs", **attrs))


def dispatcher(name, buffers, m_var, calls, prologue=None):
    """The public PrimFunc: ``if M in bucket_0: call f_0 elif ...``.

    Parameters
    ----------
    name : str
        Global symbol of the dispatcher.
    buffers : list of tirx.Buffer
        Params of the kernel (their shapes use ``m_var`` for M).
    calls : list of (Bucket, GlobalVar, tirx.Var or None)
        Each bucket's subroutine and its M parameter (None: M is fixed), whose dtype the call casts to.
    prologue : Prologue, optional
        A subroutine run first into a workspace that the bucket calls then read instead of some params.
    """
    call_buffers = buffers if prologue is None else prologue.call_buffers(buffers)
    body = None
    for bucket, gvar, takes_m in reversed(calls):
        args = [tirx.buffer_data(buf) for buf in call_buffers]
        if takes_m is not None:
            want, have = str(takes_m.ty), str(m_var.ty)
            args.append(m_var if want == have else tirx.Cast(want, m_var))
        call = tirx.Evaluate(tvm.ir.expr.Call(gvar, args, ret_ty="int32"))
        if body is None:
            body = call  # the last bucket catches everything (its lower bound is checked by the one before)
            continue
        cond = m_var <= bucket.hi if bucket.hi is not None else tirx.const(True, "bool")
        body = tirx.IfThenElse(cond, call, body)
    if prologue is not None:
        body = prologue.wrap(body, m_var, buffers)
    func = tirx.PrimFunc(list(buffers), body)
    # scheduled: the float-op rules (lowbit.compiler.passes.schedule_float_ops) and FuseOps leave it alone
    return func.with_attrs({"global_symbol": name, "tirx.is_scheduled": True})


@dataclasses.dataclass(frozen=True)
class Prologue:
    """A subroutine the dispatcher runs before the bucket call (e.g. the HIGGS activation rotation).

    ``gvar(*inputs, workspace, M)`` writes ``workspace``, a buffer the dispatcher allocates (its shape uses
    the dispatcher's M var); the bucket calls then get ``workspace`` in place of the param named
    ``replaces``, and the params only the prologue reads (``consumed``) are not passed to them.
    """

    gvar: object
    inputs: tuple  # param names the prologue reads, in its argument order
    workspace: object  # tirx.Buffer
    replaces: str
    consumed: tuple

    def call_buffers(self, buffers):
        """The bucket calls' buffers: ``buffers`` with the workspace swapped in and consumed ones dropped."""
        return [self.workspace if buf.name == self.replaces else buf for buf in buffers
                if buf.name not in self.consumed]

    def wrap(self, body, m_var, buffers):
        """``allocate workspace; gvar(inputs, workspace, M); body``."""
        by_name = {buf.name: buf for buf in buffers}
        args = [tirx.buffer_data(by_name[name]) for name in self.inputs]
        args += [tirx.buffer_data(self.workspace), m_var]
        call = tirx.Evaluate(tvm.ir.expr.Call(self.gvar, args, ret_ty="int32"))
        return tirx.SeqStmt([tirx.AllocBuffer(self.workspace), call, body])


def packed_dispatcher(name, buffers, m_var, calls):
    """The GPU form of :func:`dispatcher`: ``if M <= hi_0: call_packed(f_0, *buffers) elif ...``.

    On a GPU target each bucket's scheduled function is public (its own host stub launches its kernels:
    TVM splits host and device code per public function), and the dispatcher calls it by name through the
    packed-call convention, which finds functions of the same module first. The call passes the
    dispatcher's own tensors, so each bucket function checks their shapes again (cheap, on the host).

    Parameters
    ----------
    calls : list of (Bucket, str)
        Each bucket and the global symbol of its function.
    """
    body = None
    for bucket, symbol in reversed(calls):
        call = tirx.Evaluate(tirx.call_packed(symbol, *buffers))
        if body is None:
            body = call
            continue
        cond = m_var <= bucket.hi if bucket.hi is not None else tirx.const(True, "bool")
        body = tirx.IfThenElse(cond, call, body)
    func = tirx.PrimFunc(list(buffers), body)
    return func.with_attrs({"global_symbol": name, "tirx.is_scheduled": True})
