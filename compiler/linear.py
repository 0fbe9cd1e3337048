"""Build one quantized linear layer (``Y = X @ dequant(W)^T + b``) into a callable CPU kernel.

This is the unit the whole-model pipeline, the benchmark and the tests share: pick a schedule rule and
config per M bucket (the best tuning record that beats the default, else the default), build their
TensorIR, wrap them behind an M dispatcher, compile.
"""
import dataclasses
import functools
import os

import numpy as np

from lowbit.compiler import dispatch
from lowbit.compiler.intrinsics import x86_dot, x86_lut
from lowbit.compiler.cuda_build import cuda_build_context
from lowbit.compiler.cuda_layout import CudaLayout, relayout_cuda
from lowbit.compiler.higgs import rotation_signs
from lowbit.compiler.layout import (KernelLayout, LutParams, lut_unsupported, relayout, relayout_a8, relayout_lut,
                                   wide_codebook)
from lowbit.compiler.plans_cuda import cuda_plan
from lowbit.compiler.target import resolve_target
from lowbit.compiler.passes.sequences import tir_pipeline
from lowbit.compiler.tvm_api import compile_module, relax, tensor, tirx
from lowbit.errors import InputError, KernelError
from lowbit.schedules.cpu import a8, decode, lut, rotate
from lowbit.schedules.tuning import records as tuning_records
from lowbit.schedules.tuning.space import tuned_plan

KERNELS = ("auto", "decode", "a8", "lut")
ROTATION_SIGNS = "R"  # the arrays entry of a HIGGS layer: its rotation's signs (length = group size)


def check_shapes(shapes):
    """Validate (M, N, K) triples of positive integers; return them as tuples."""
    checked = []
    for shape in shapes:
        if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise InputError(f"benchmark shape {shape!r} is not three positive integers (M, N, K): "
                             "use e.g. (1, 4096, 4096)")
        checked.append(tuple(int(d) for d in shape))
    return checked


def check_kernel(kernel):
    """Raise KernelError unless ``kernel`` names a kernel family lowbit can build."""
    if kernel not in KERNELS:
        raise KernelError(f"unknown kernel {kernel!r}: choose one of {', '.join(KERNELS)}")


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


def lut_preferred(qw, target):
    """Whether ``auto`` picks ``lut`` for ``qw`` on ``target``: ternary, 1-2-bit uniform and every codebook on
    hosts with a byte shuffle (AVX2 / AVX-512BW; codebooks of 5-8-bit codes, 2-D ones included, look up
    whole-byte indices with AVX-512 VBMI's byte permutes, or with sliced tables and byte shuffles without it),
    where it measured fastest at M=1 (docs/design.md; a codebook's decode gathers its levels per weight)."""
    fmt = qw.format
    wanted = fmt.kind in ("ternary", "codebook") or fmt.kind == "uniform" and fmt.bits <= 2
    isa = (x86_lut.wide_isa_for if wide_codebook(fmt) else x86_lut.isa_for)(target.features)
    return wanted and isa is not None and lut_unsupported(qw, LutParams()) is None


def choose_kernel(qw, target, kernel):
    """The kernel family for one layer: ``kernel`` itself, or for ``auto`` the fastest that applies.

    ``auto`` picks ``lut`` where :func:`lut_preferred` says so (1.1-1.3x ``a8`` for ternary and 1-2 bits at
    M=1, 10-35x ``decode`` for nf4; slower than ``a8`` from M=16 on: one layout serves every M, and M=1 is
    the DRAM-bound case it exists for), else ``a8`` (int8 activations, as onnxruntime's accuracy_level=4 and
    llama.cpp do) wherever the host has integer dot products and the codes are integers: measured 1.5-3x
    faster than ``decode`` at every M on AVX-512 VNNI. ``decode`` keeps activations exact in float32.
    """
    check_kernel(kernel)
    if kernel == "lut" or kernel == "auto" and lut_preferred(qw, target):
        reason = lut_unsupported(qw, LutParams())
        if reason is not None:
            raise KernelError(f"kernel 'lut' cannot run {qw.format.name}: {reason}")
        return "lut"
    reason = a8_unsupported(qw, target)
    if kernel == "a8" and reason is not None:
        raise KernelError(f"kernel 'a8' cannot run {qw.format.name} here: {reason}")
    if kernel == "a8" or kernel == "auto" and reason is None:
        return "a8"
    return "decode"


def model_codes_kernel(qw, target, kernel):
    """Whether a layer whose activation the model quantizes (one scale and zero point per tensor) runs the ``a8``
    kernel on the model's own codes: exact (the model's integer product) and the int8 dot products' speed.

    Under ``auto`` and ``a8`` it does wherever ``a8`` runs the weight on a CPU; ``auto`` otherwise keeps the
    activation in float (``decode``): re-quantizing it per group (float ``a8``) rounded it a second time and
    measured 1.5-3e-2 max error against onnxruntime on such models.
    """
    return target.kind != "cuda" and kernel in ("auto", "a8") and a8_unsupported(qw, target) is None


def lut_vector_bytes(target, fmt=None):
    """Weight bytes per lookup vector on ``target``: its byte shuffle's width (for a codebook of 5-8-bit codes,
    with whole-byte indices, that of its wide lookup: AVX-512 VBMI's byte permutes or sliced shuffles), or the
    portable kernel's."""
    isa = (x86_lut.wide_isa_for if wide_codebook(fmt) else x86_lut.isa_for)(target.features)
    return x86_lut.VECTOR_BYTES[isa] if isa is not None else x86_lut.PORTABLE_BYTES


def _prepare_cuda_layer(qw, bias, kernel, dtype):
    check_kernel(kernel)
    if kernel not in ("auto", "decode"):
        raise KernelError(f"kernel {kernel!r} is not built for CUDA targets: use 'decode' or 'auto' (decode GEMV "
                          "for M <= 8, tensor-core GEMM above)")
    if qw.format.kind == "higgs":
        raise KernelError(f"{qw.format.name}: the activation rotation of HIGGS formats is built for CPU targets "
                          "only; quantize GPU models to w*/nf4/fp4/ternary formats")
    layout, arrays = relayout_cuda(qw, dtype)
    return "decode", layout, _with_bias(arrays, bias, layout)


def _with_bias(arrays, bias, layout):
    """``arrays`` with the bias as its ``B`` entry (float32, N) when there is one."""
    if bias is not None:
        arrays["B"] = np.ascontiguousarray(bias, dtype=np.float32).reshape(layout.N)
    return arrays


def prepare_layer(qw, bias, target, kernel="auto", lut_params=LutParams(), dtype="float16", activation="float32"):
    """Choose the kernel family and re-lay the weights for it: returns (kernel, layout, arrays).

    ``dtype`` is the activation dtype of CUDA kernels (``float16`` or ``bfloat16``); CPU kernels take float32, or
    with ``activation`` "uint8" / "int8" the model's own activation codes (the ``a8`` kernel only: see
    :func:`model_codes_kernel`).
    """
    if activation != "float32":
        if not model_codes_kernel(qw, target, kernel):
            reason = "a CUDA target" if target.kind == "cuda" else \
                a8_unsupported(qw, target) or f"kernel {kernel!r} was asked for"
            raise KernelError(f"the model's {activation} activation codes need the a8 kernel, which cannot run "
                              f"{qw.format.name} here: {reason}")
        layout, arrays = relayout_a8(qw, target.vector_lanes, activation)
        return "a8", layout, _with_bias(arrays, bias, layout)
    if target.kind == "cuda":
        return _prepare_cuda_layer(qw, bias, kernel, dtype)
    rotation = None
    if qw.format.kind == "higgs":
        # the kernel multiplies rotated activations with the rotated weight, a plain codebook weight
        rotation, qw = qw.format.group_size, qw.rotated_codebook()
    chosen = choose_kernel(qw, target, kernel)
    if chosen == "lut":
        reason = lut_unsupported(qw, lut_params)
        if reason is not None:
            raise KernelError(f"kernel 'lut' cannot run {qw.format.name} with {lut_params}: {reason}")
        layout, arrays = relayout_lut(qw, lut_vector_bytes(target, qw.format), lut_params)
    else:
        relay = relayout_a8 if chosen == "a8" else relayout
        layout, arrays = relay(qw, target.vector_lanes)
    if rotation is not None:
        arrays[ROTATION_SIGNS] = rotation_signs(rotation)
    return chosen, layout, _with_bias(arrays, bias, layout)


AMX_MIN_ROWS = 9  # the buckets from M = 9 on run the a8 kernel on AMX tiles where it applies (16-row tiles)


def default_plan(layout, bucket, target=None):
    """The (rule, config) a bucket gets without a tuning record; ``target`` (a TargetInfo) adds the rules that
    need a feature (AMX-INT8 tiles for the buckets from :data:`AMX_MIN_ROWS` rows on)."""
    if isinstance(layout, CudaLayout):
        return cuda_plan(layout, bucket)
    if target is not None and bucket is not None and bucket.lo >= AMX_MIN_ROWS and \
            a8.DecodeA8Amx.applies(layout, target):
        return a8.DecodeA8Amx(), a8.AmxConfig()
    return _cpu_plan(layout, bucket)


def _cpu_plan(layout, bucket):
    """The (rule, config) lowbit uses for a bucket when no tuning record says otherwise.

    Measured on a Sapphire-Rapids-class CPU (w4g128, 4096x4096): the accumulate kernel wins at M=1
    (every code decoded once, straight into FMAs); from M=2 on, decoding a row tile once to float and
    running a register-tiled GEMM over all rows wins (M=4: 2.9 ms vs 3.9 ms). The a8 kernel shares each
    decoded word across 8 rows from M=9 on (M=128: 12.7 ms with 8 rows vs 16.2 ms with 4).
    """
    if layout.decode == "lut":
        # the most row tiles per parallel iteration the layer and the accumulator registers allow (measured at
        # M=1, 14336x4096 w2g64, cold, minimum of 36 calls: 0.96 ms with one tile, 0.81 with two, 0.81 with
        # four; 1x4096x4096 ternary and w2g64 likewise): independent lookup chains and weight streams hide the
        # shuffles' latency
        return lut.LutLookup(), lut.default_config(layout)
    if layout.decode == "a8":
        m_tile = 1 if bucket.hi == 1 else 4 if bucket.hi is not None and bucket.hi <= 8 else 8
        return a8.DecodeA8(), a8.A8Config(m_tile=m_tile)
    if bucket.hi == 1:
        return decode.DecodeAccumulate(), decode.AccumulateConfig(partials=0, m_tile=1)
    if bucket.hi is not None and bucket.hi <= 8:
        return decode.DecodeDequantTile(), decode.DequantTileConfig(m_tile=4, n_vectors=2)
    return decode.DecodeDequantTile(), decode.DequantTileConfig(m_tile=6, n_vectors=2)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One M bucket's schedule: the rule's name, its config, and where it came from.

    ``source``: ``"record"`` (a tuning record that beat the default), ``"default"`` (:func:`default_plan`) or
    ``"override"`` (given explicitly, as the tuner does for the candidate it measures).
    """

    rule: str
    config: object
    source: str

    def as_manifest(self):
        """The plan as the artifact manifest records it: ``{"rule", "config", "source"}``."""
        return {"rule": self.rule, "config": dataclasses.asdict(self.config), "source": self.source}


@dataclasses.dataclass
class LayerPlan:
    """One quantized layer as compiled (what the artifact manifest lists): names, sizes, its kernel and the
    schedules per M bucket."""

    name: str
    format: str
    N: int
    K: int
    kernel: str
    plans: dict
    param_names: list
    bits_per_weight: float
    activation: str = "float32"  # what the kernel takes: float32, or the model's own "uint8" / "int8" codes


def tuning_database(target, tuning_log=None):
    """The tuning records a build consults (a TuningDatabase), or None for ``tuning_log=False``.

    ``tuning_log``: None for the records shipped with lowbit for ``target.tag`` (``lowbit/tuning_logs/<tag>/``,
    possibly none), a folder (a log folder with ``records.jsonl``, or one holding ``<tag>/`` log folders), a
    TuningDatabase, or False to use the default schedules only.
    """
    if tuning_log is False:
        return None
    if isinstance(tuning_log, tuning_records.TuningDatabase):
        return tuning_log
    if tuning_log is None:
        return tuning_records.open_log(tuning_records.shipped_folder(target.tag), target.tag)
    if not os.path.isdir(tuning_log):
        raise InputError(f"tuning log folder {os.fspath(tuning_log)!r} does not exist: pass the folder `lowbit tune "
                         f"--log DIR` wrote (e.g. tuning_logs/{target.tag}), or leave it out for the shipped records")
    return tuning_records.open_log(tuning_log, target.tag)


def select_plan(layout, bucket, database, target=None):
    """``(rule, config, source)`` for a bucket: the best record beating the default, else the default."""
    rule, config = default_plan(layout, bucket, target)
    if database is not None:
        tuned = tuned_plan(database, layout, bucket, rule, config)
        if tuned is not None:
            return tuned[0], tuned[1], "record"
    return rule, config, "default"


def _bucket_func(layout, bucket, has_bias, target, rule, config):
    """A bucket's scheduled function and its M var (None: M fixed). CPU: a private subroutine taking
    pointers; CUDA: the scheduled public function itself (its host stub launches the kernels)."""
    # GPU kernels index in int32 (TVM's MMA intrinsics and layouts assume it); CPU kernels in int64.
    m_var = None if bucket.hi == bucket.lo else tirx.Var("M", "int32" if target.kind == "cuda" else "int64")
    func = rule.template(layout, bucket.lo if m_var is None else m_var, has_bias, config)
    sch = rule.apply(func, target, config)
    if sch is None:
        raise KernelError(f"schedule rule {rule.name} declined its own template for {bucket.key}")
    if target.kind == "cuda":  # called by name from dispatch.packed_dispatcher
        return sch.mod["main"], m_var
    return dispatch.as_subroutine(sch.mod["main"], m_var), m_var


def activation_dtype(layout):
    """dtype of X and Y of a layer's kernel: the CUDA layout's (float16 / bfloat16), float32 on CPUs."""
    return getattr(layout, "dtype", "float32")


def _dispatcher_buffers(layout, arrays, has_bias, m_var):
    dtype = activation_dtype(layout)
    # an a8 layout of the model's activation codes takes their scale and zero point after them
    shapes = layout.activation_args(m_var) if isinstance(layout, KernelLayout) else [("X", (m_var, layout.K), dtype)]
    shapes += [(name, arrays[name].shape, str(arrays[name].dtype)) for name in layout.arg_names()]
    if ROTATION_SIGNS in arrays:
        shapes.append((ROTATION_SIGNS, arrays[ROTATION_SIGNS].shape, "float32"))
    if has_bias:
        shapes.append(("B", (layout.N,), "float32"))
    shapes.append(("Y", (m_var, layout.N), dtype))
    return [tirx.decl_buffer(shape, dtype, name) for name, shape, dtype in shapes]


def _bucket_name(name, bucket):
    return f"{name}_{bucket.key.replace('+', 'up').replace('-', '_')}"


def add_linear_functions(add_func, layout, arrays, has_bias, target, name="mpgemm",
                         buckets=dispatch.DEFAULT_BUCKETS, tuning_log=None, overrides=None):
    """Add one subroutine per M bucket and their dispatcher through ``add_func(func, name) -> GlobalVar``
    (a Relax BlockBuilder's ``add_func``, which gives the GlobalVars the types ``call_tir`` checks).

    ``tuning_log`` chooses the records consulted (see :func:`tuning_database`; default: the shipped ones);
    ``overrides`` maps bucket keys to an explicit ``(rule, config)`` (the tuner's candidates).

    Returns (dispatcher GlobalVar, {bucket key: :class:`Plan`}).
    """
    # CUDA kernels have no tuning records yet (lowbit tune searches CPU schedule rules): their defaults only
    database = None if target.kind == "cuda" else tuning_database(target, tuning_log)
    calls, plans = [], {}
    for bucket in buckets:
        if overrides and bucket.key in overrides:
            rule, config, source = (*overrides[bucket.key], "override")
        else:
            rule, config, source = select_plan(layout, bucket, database, target)
        func, takes_m = _bucket_func(layout, bucket, has_bias, target, rule, config)
        plans[bucket.key] = Plan(rule.name, config, source)
        if target.kind == "cuda":
            symbol = _bucket_name(name, bucket)
            add_func(func.with_attrs({"global_symbol": symbol, "tirx.is_scheduled": True}), symbol)
            calls.append((bucket, symbol))
        else:
            calls.append((bucket, add_func(func, _bucket_name(name, bucket)), takes_m))
    if target.kind == "cuda":
        m_var = tirx.Var("M", "int64")
        main = dispatch.packed_dispatcher(name, _dispatcher_buffers(layout, arrays, has_bias, m_var), m_var, calls)
        return add_func(main, name), plans
    m_var = tirx.Var("M", "int64")
    prologue = None
    if ROTATION_SIGNS in arrays:
        prologue = _rotation_prologue(add_func, layout, len(arrays[ROTATION_SIGNS]), target, name, m_var)
    main = dispatch.dispatcher(name, _dispatcher_buffers(layout, arrays, has_bias, m_var), m_var, calls, prologue)
    return add_func(main, name), plans


def _rotation_prologue(add_func, layout, group_size, target, name, m_var):
    """The HIGGS activation rotation as the dispatcher's prologue: X -> XR, which the buckets read as X."""
    rule = rotate.HadamardRotate()
    rot_m = tirx.Var("M", "int64")
    sch = rule.apply(rule.template(layout.K, group_size, rot_m), target)
    gvar = add_func(dispatch.as_subroutine(sch.mod["main"], rot_m), f"{name}_rotate")
    workspace = tirx.decl_buffer((m_var, layout.K), "float32", "X")  # named X: it stands in for X
    return dispatch.Prologue(gvar, ("X", ROTATION_SIGNS), workspace, "X", (ROTATION_SIGNS,))


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
        Bucket key -> :class:`Plan` (``.source``: "record" or "default").
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
        self.func(tensor(x), *self._weight_tensors, y)
        return y.numpy()

    @functools.cached_property
    def _weight_tensors(self):
        """The weight arrays as TVM tensors, copied once (not on every call of :meth:`run`)."""
        return [tensor(a) for a in self.weight_arrays()]


def build_linear(qw, bias=None, target=None, kernel="auto", buckets=dispatch.DEFAULT_BUCKETS, tuning_log=None,
                 lut_params=LutParams(), dtype="float16"):
    """Compile one quantized linear layer for ``target`` (default: this CPU).

    Parameters
    ----------
    qw : QuantizedWeight
        (N, K) quantized weight.
    bias : np.ndarray of shape (N,), optional
    target : None, "cpu", dict or TargetInfo
    kernel : {"auto", "decode", "a8", "lut"}
    tuning_log : None, folder, TuningDatabase or False
        Tuning records to take schedules from (default: those shipped for the target; False: none), see
        :func:`tuning_database`.
    lut_params : LutParams
        Table group ``g`` and table precision of the ``lut`` kernels.
    dtype : {"float16", "bfloat16"}
        Activation dtype of CUDA kernels (CPU kernels take float32).
    """
    info = resolve_target(target)
    chosen, layout, arrays = prepare_layer(qw, bias, info, kernel, lut_params, dtype)
    return build_prepared(chosen, layout, arrays, info, buckets, tuning_log)


def build_prepared(kernel, layout, arrays, target, buckets=dispatch.DEFAULT_BUCKETS, tuning_log=None,
                   overrides=None):
    """Compile a layer already re-laid by :func:`prepare_layer` (``kernel, layout, arrays``) for a TargetInfo.

    The tuner builds every candidate of a workload this way (one bucket, ``overrides`` naming the candidate),
    re-laying the weights once.
    """
    bb = relax.BlockBuilder()
    _, plans = add_linear_functions(bb.add_func, layout, arrays, "B" in arrays, target, buckets=buckets,
                                    tuning_log=tuning_log, overrides=overrides)
    with cuda_build_context(target):
        lib = compile_module(bb.get(), target=target.tvm_target(), tir_pipeline=tir_pipeline())
    if target.kind == "cuda":  # the kernels run on a GPU: this object is for inspection and artifacts
        return CompiledLinear(kernel, layout, arrays, None, plans, lib)
    return CompiledLinear(kernel, layout, arrays, lib["mpgemm"], plans, lib)
