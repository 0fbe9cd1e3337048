"""Build one quantized linear layer (``Y = X @ dequant(W)^T + b``) into a callable CPU kernel.

This is the unit the whole-model pipeline, the benchmark and the tests share: pick a schedule rule and
config per M bucket, build their TensorIR, wrap them behind an M dispatcher, compile.
"""
import dataclasses

import numpy as np

from lowbit.compiler import dispatch
from lowbit.compiler.intrinsics import x86_dot
from lowbit.compiler.cuda_layout import CudaLayout, relayout_cuda
from lowbit.compiler.layout import relayout, relayout_a8
from lowbit.compiler.plans_cuda import cuda_plan
from lowbit.compiler.target import resolve_target
from lowbit.compiler.tvm_api import compile_module, tensor, tir_pipeline, tirx, tvm
from lowbit.errors import KernelError
from lowbit.schedules.cpu import a8, decode

KERNELS = ("auto", "decode", "a8", "lut")
IMPLEMENTED = ("auto", "decode", "a8")


def check_kernel(kernel):
    """Raise KernelError unless ``kernel`` names a kernel family lowbit can build."""
    if kernel not in KERNELS:
        raise KernelError(f"unknown kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
    if kernel not in IMPLEMENTED:
        raise KernelError(f"kernel {kernel!r} is not implemented yet; available: {', '.join(IMPLEMENTED)} "
                          "(use --kernel decode or auto)")


def a8_unsupported(qw, target):
    """Why the ``a8`` kernel cannot run ``qw`` on ``target`` (a sentence), or None when it can."""
    fmt = qw.format
    if fmt.kind == "codebook":
        return f"{fmt.name} is a codebook format (non-integer levels); a8 needs integer codes: use decode"
    isa = x86_dot.isa_for(target.features)
    if isa is None:
        return "the target has no integer dot-product instructions (needs AVX2, AVX-512BW or AVX-512 VNNI)"
    if fmt.bits > x86_dot.max_bits(isa):
        return (f"{fmt.bits}-bit codes overflow {isa}'s saturating int16 pair sums (vpmaddubsw); 8-bit a8 "
                "needs AVX-512 VNNI: use decode")
    return None


def choose_kernel(qw, target, kernel):
    """The kernel family for one layer: ``kernel`` itself, or for ``auto`` the fastest that applies.

    ``auto`` picks ``a8`` (int8 activations, as onnxruntime's accuracy_level=4 and llama.cpp do) wherever
    the host has integer dot products and the codes are integers: measured 1.5-3x faster than ``decode`` at
    every M on AVX-512 VNNI. ``decode`` keeps activations exact in float32.
    """
    check_kernel(kernel)
    reason = a8_unsupported(qw, target)
    if kernel == "a8" and reason is not None:
        raise KernelError(f"kernel 'a8' cannot run {qw.format.name} here: {reason}")
    if kernel == "a8" or kernel == "auto" and reason is None:
        return "a8"
    return "decode"


def _prepare_cuda_layer(qw, bias, kernel, dtype):
    check_kernel(kernel)
    if kernel not in ("auto", "decode"):
        raise KernelError(f"kernel {kernel!r} is not built for CUDA targets: use 'decode' or 'auto' (decode GEMV "
                          "for M <= 8, tensor-core GEMM above)")
    layout, arrays = relayout_cuda(qw, dtype)
    if bias is not None:
        arrays["B"] = np.ascontiguousarray(bias, dtype=np.float32).reshape(layout.N)
    return "decode", layout, arrays


def prepare_layer(qw, bias, target, kernel="auto", dtype="float16"):
    """Choose the kernel family and re-lay the weights for it: returns (kernel, layout, arrays).

    ``dtype`` is the activation dtype of CUDA kernels (``float16`` or ``bfloat16``); CPU kernels take float32.
    """
    if target.kind == "cuda":
        return _prepare_cuda_layer(qw, bias, kernel, dtype)
    chosen = choose_kernel(qw, target, kernel)
    relay = relayout_a8 if chosen == "a8" else relayout
    layout, arrays = relay(qw, target.vector_lanes)
    if bias is not None:
        arrays["B"] = np.ascontiguousarray(bias, dtype=np.float32).reshape(layout.N)
    return chosen, layout, arrays


def default_plan(layout, bucket):
    if isinstance(layout, CudaLayout):
        return cuda_plan(layout, bucket)
    return _cpu_plan(layout, bucket)


def _cpu_plan(layout, bucket):
    """The (rule, config) lowbit uses for a bucket when no tuning record says otherwise.

    Measured on a Sapphire-Rapids-class CPU (w4g128, 4096x4096): the accumulate kernel wins at M=1
    (every code decoded once, straight into FMAs); from M=2 on, decoding a row tile once to float and
    running a register-tiled GEMM over all rows wins (M=4: 2.9 ms vs 3.9 ms). The a8 kernel shares each
    decoded word across 8 rows from M=9 on (M=128: 12.7 ms with 8 rows vs 16.2 ms with 4).
    """
    if layout.decode == "a8":
        m_tile = 1 if bucket.hi == 1 else 4 if bucket.hi is not None and bucket.hi <= 8 else 8
        return a8.DecodeA8(), a8.A8Config(m_tile=m_tile)
    if bucket.hi == 1:
        return decode.DecodeAccumulate(), decode.AccumulateConfig(partials=0, m_tile=1)
    if bucket.hi is not None and bucket.hi <= 8:
        return decode.DecodeDequantTile(), decode.DequantTileConfig(m_tile=4, n_vectors=2)
    return decode.DecodeDequantTile(), decode.DequantTileConfig(m_tile=6, n_vectors=2)


def _bucket_func(layout, bucket, has_bias, target):
    rule, config = default_plan(layout, bucket)
    # GPU kernels index in int32 (TVM's MMA intrinsics and layouts assume it); CPU kernels in int64.
    m_var = None if bucket.hi == bucket.lo else tirx.Var("M", "int32" if target.kind == "cuda" else "int64")
    func = rule.template(layout, bucket.lo if m_var is None else m_var, has_bias, config)
    sch = rule.apply(func, target, config)
    if sch is None:
        raise KernelError(f"schedule rule {rule.name} declined its own template for {bucket.key}")
    if target.kind == "cuda":  # placed inline in the dispatcher (dispatch.inline_dispatcher)
        return sch.mod["main"], m_var, (rule.name, config)
    return dispatch.as_subroutine(sch.mod["main"], m_var), m_var, (rule.name, config)


def activation_dtype(layout):
    """dtype of X and Y of a layer's kernel: the CUDA layout's (float16 / bfloat16), float32 on CPUs."""
    return getattr(layout, "dtype", "float32")


def _dispatcher_buffers(layout, arrays, has_bias, m_var):
    dtype = activation_dtype(layout)
    shapes = [("X", (m_var, layout.K), dtype)]
    shapes += [(name, arrays[name].shape, str(arrays[name].dtype)) for name in layout.arg_names()]
    if has_bias:
        shapes.append(("B", (layout.N,), "float32"))
    shapes.append(("Y", (m_var, layout.N), dtype))
    return [tirx.decl_buffer(shape, dtype, name) for name, shape, dtype in shapes]


def _bucket_name(name, bucket):
    return f"{name}_{bucket.key.replace('+', 'up').replace('-', '_')}"


def add_linear_functions(add_func, layout, arrays, has_bias, target, name="mpgemm",
                         buckets=dispatch.DEFAULT_BUCKETS):
    """Add one subroutine per M bucket and their dispatcher through ``add_func(func, name) -> GlobalVar``
    (a Relax BlockBuilder's ``add_func``, which gives the GlobalVars the types ``call_tir`` checks).

    Returns (dispatcher GlobalVar, {bucket key: (rule name, config)}).
    """
    calls, plans = [], {}
    if target.kind == "cuda":
        for bucket in buckets:
            func, _, plans[bucket.key] = _bucket_func(layout, bucket, has_bias, target)
            symbol = _bucket_name(name, bucket)
            add_func(func.with_attrs({"global_symbol": symbol, "tirx.is_scheduled": True}), symbol)
            calls.append((bucket, symbol))
        m_var = tirx.Var("M", "int64")
        main = dispatch.packed_dispatcher(name, _dispatcher_buffers(layout, arrays, has_bias, m_var), m_var, calls)
        return add_func(main, name), plans
    for bucket in buckets:
        sub, takes_m, plan = _bucket_func(layout, bucket, has_bias, target)
        gvar = add_func(sub, _bucket_name(name, bucket))
        calls.append((bucket, gvar, takes_m))
        plans[bucket.key] = plan
    m_var = tirx.Var("M", "int64")
    main = dispatch.dispatcher(name, _dispatcher_buffers(layout, arrays, has_bias, m_var), m_var, calls)
    return add_func(main, name), plans


@dataclasses.dataclass
class CompiledLinear:
    """A compiled quantized linear layer.

    Attributes
    ----------
    kernel : str
        Kernel family chosen (``decode`` or ``a8``).
    layout : KernelLayout
    arrays : dict of str -> np.ndarray
        Weights in kernel layout (and bias), in call order after X.
    func : tvm PackedFunc
        ``func(x, *weights, y)`` on ``tvm.runtime.tensor`` arguments.
    plans : dict
        Bucket key -> (rule name, config).
    """

    kernel: str
    layout: object
    arrays: dict
    func: object
    plans: dict
    library: object

    def weight_arrays(self):
        """Kernel-layout weight arrays (and bias) in the order ``func`` takes them after X."""
        return list(self.arrays.values())

    def run(self, x):
        """Compute ``x @ dequant(W)^T (+ b)`` for a float32 (M, K) array (CPU targets)."""
        if self.func is None:
            raise KernelError("this layer was compiled for a CUDA target: run it on a GPU through a model artifact "
                              "(lowbit.compile(...).save(path), then lowbit.runtime.load(path))")
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = tensor(np.empty((x.shape[0], self.layout.N), np.float32))
        self.func(tensor(x), *[tensor(a) for a in self.weight_arrays()], y)
        return y.numpy()


def build_linear(qw, bias=None, target=None, kernel="auto", buckets=dispatch.DEFAULT_BUCKETS, dtype="float16"):
    """Compile one quantized linear layer for ``target`` (default: this CPU).

    Parameters
    ----------
    qw : QuantizedWeight
        (N, K) quantized weight.
    bias : np.ndarray of shape (N,), optional
    target : None, "cpu", dict or TargetInfo
    kernel : {"auto", "decode", "a8", "lut"}
    dtype : {"float16", "bfloat16"}
        Activation dtype of CUDA kernels (CPU kernels take float32).
    """
    info = resolve_target(target)
    chosen, layout, arrays = prepare_layer(qw, bias, info, kernel, dtype)
    from tvm import relax

    from lowbit.compiler.cuda_build import cuda_build_context

    bb = relax.BlockBuilder()
    _, plans = add_linear_functions(bb.add_func, layout, arrays, bias is not None, info, buckets=buckets)
    with cuda_build_context(info):
        lib = compile_module(bb.get(), target=info.tvm_target(), tir_pipeline=tir_pipeline())
    if info.kind == "cuda":  # the kernels run on a GPU: this object is for inspection and artifacts
        return CompiledLinear(chosen, layout, arrays, None, plans, lib)
    return CompiledLinear(chosen, layout, arrays, lib["mpgemm"], plans, lib)
