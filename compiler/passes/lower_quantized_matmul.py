"""LowerQuantizedMatmul: replace each matmul by a quantized weight placeholder with its lowbit kernel.

Takes: a Relax IRModule from a lowbit frontend, whose ``main`` has one float32 (K, N) parameter per quantized
layer (``lowbit_w{i}``), used only as the weight of ``R.matmul(x, lowbit_w{i})``; and the layers
(name -> QuantizedWeight spec) those parameters stand for.
Produces: the same module where each such matmul is ``reshape(x, (-1, K))`` (when x is not 2-D), a ``call_tir``
of the layer's M-bucket kernel dispatcher (built by ``compiler.linear.add_linear_functions`` on the weights
re-laid for the kernel family ``compiler.linear.prepare_layer`` picks), and ``reshape`` back to
``x.shape[:-1] + (N,)``. M, the product of x's leading dims, stays symbolic. The ``lowbit_w{i}`` parameters are
gone; the kernels' arrays are new parameters of ``main`` (``<layer>.W``, ``<layer>.S``, ...), after the model's
inputs, in layer order.
After the pass, ``params`` holds (name, array) in that order and ``layers`` the LayerPlans.
A layer on the model's activation codes takes ``q``, ``scale`` and ``zero`` of the ``dequantize`` instead of x
(the dequantize is then dead, and dead-code elimination removes it).
Leaves alone: every other binding, float matmuls and constants, and every other function.
"""
import dataclasses

import numpy as np

from lowbit.compiler.linear import LayerPlan, activation_dtype, add_linear_functions, check_kernel, \
    model_codes_kernel, prepare_layer
from lowbit.compiler.tvm_api import relax, tirx, tvm
from lowbit.errors import KernelError, LowbitError

_MATMUL = tvm.ir.Op.get("relax.matmul")
_DEQUANTIZE = tvm.ir.Op.get("relax.dequantize")


@dataclasses.dataclass
class _Kernel:
    name: str
    gvar: object
    param_vars: list
    N: int
    K: int
    dtype: str = "float32"  # the kernel's activation dtype (CUDA: float16; cast from and back to float32)
    codes: bool = False  # takes the model's activation codes, scale and zero point (a8 on a dequantize's input)


@relax.expr_functor.mutator
class _MatmulLowerer(relax.expr_functor.PyExprMutator):
    """Rewrites ``R.matmul(x, w)`` for ``w`` a placeholder parameter into the kernel call."""

    def __init__(self, mod, kernels):
        super().__init__(mod)
        self.kernels = kernels  # placeholder name -> _Kernel
        self.lowered = set()

    def visit_call_(self, call):  # noqa: D102 (PyExprMutator hook)
        call = self.visit_expr_post_order(call)
        weight = call.args[1] if call.op.same_as(_MATMUL) else None
        if not isinstance(weight, relax.Var) or weight.name not in self.kernels:
            return call
        self.lowered.add(weight.name)
        return self._lower(call.args[0], self.kernels[weight.name])

    def _lower(self, x, kernel):
        if kernel.codes:
            return self._lower_codes(x, kernel)
        shape = x.ty.shape if isinstance(x.ty, relax.TensorType) else None
        if shape is None or x.ty.ndim < 1 or str(x.ty.dtype) != "float32":
            raise KernelError(f"layer {kernel.name!r}: lowbit kernels take a float32 activation of known rank, got "
                              f"{x.ty}; cast the model to float32")
        dims = list(shape.values)
        x2d = x if len(dims) == 2 else self.builder_.emit(relax.op.reshape(x, (-1, kernel.K)))
        rows = x2d.ty.shape.values[0]
        if kernel.dtype != "float32":
            x2d = self.builder_.emit(relax.op.astype(x2d, kernel.dtype))
        y2d = self.builder_.emit(relax.call_tir(kernel.gvar, [x2d] + kernel.param_vars,
                                                relax.TensorType((rows, kernel.N), kernel.dtype)))
        if kernel.dtype != "float32":
            y2d = self.builder_.emit(relax.op.astype(y2d, "float32"))
        return _unflattened(y2d, dims, kernel.N)

    def _lower_codes(self, x, kernel):
        """``dequantize(q, scale, zero)`` then the matmul: the kernel takes ``q``, ``scale`` and ``zero`` as they are
        (the dequantize is left to dead-code elimination when nothing else reads it)."""
        dequantize = self.lookup_binding(x)
        if _scalar_dequantize(dequantize) is None:
            raise KernelError(f"layer {kernel.name!r}: its activation is no longer a per-tensor dequantize (a lowbit "
                              "bug: the pass saw one before lowering)")
        codes, scale, zero = dequantize.args[:3]
        dims = list(codes.ty.shape.values)
        q2d = codes if len(dims) == 2 else self.builder_.emit(relax.op.reshape(codes, (-1, kernel.K)))
        rows = q2d.ty.shape.values[0]
        scale = self.builder_.emit(relax.op.reshape(scale, (1,)))
        zero = self.builder_.emit(relax.op.reshape(relax.op.astype(zero, "int32"), (1,)))
        y2d = self.builder_.emit(relax.call_tir(kernel.gvar, [q2d, scale, zero] + kernel.param_vars,
                                                relax.TensorType((rows, kernel.N), "float32")))
        return _unflattened(y2d, dims, kernel.N)


def _unflattened(y2d, dims, N):
    """The (rows, N) kernel output back in the activation's leading dims: ``dims[:-1] + (N,)``."""
    return y2d if len(dims) == 2 else relax.op.reshape(y2d, relax.ShapeExpr(dims[:-1] + [N]))


def _scalar_dequantize(value):
    """The dtype of the codes if ``value`` is ``R.dequantize`` of int8 / uint8 codes by one float32 scale and
    zero point (onnxruntime's dynamic and static quantization), else None."""
    if not isinstance(value, relax.Call) or not value.op.same_as(_DEQUANTIZE) or len(value.args) < 3:
        return None
    codes, scale, zero = value.args[:3]
    types = [arg.ty for arg in (codes, scale, zero)]
    if not all(isinstance(t, relax.TensorType) and t.shape is not None for t in types + [value.ty]):
        return None
    if str(types[0].dtype) not in ("uint8", "int8") or str(value.ty.dtype) != "float32" or \
            str(types[1].dtype) != "float32" or str(types[2].dtype) != str(types[0].dtype):
        return None
    if not all(_is_one_element(t) for t in types[1:]):
        return None
    return str(types[0].dtype)


def _is_one_element(tensor_type):
    return all(isinstance(dim, tirx.IntImm) and int(dim) == 1 for dim in tensor_type.shape.values)


def dequantized_activations(main, placeholders):
    """Placeholder name -> the dtype of the model's activation codes, for each ``R.matmul(x, placeholder)`` of
    ``main`` whose ``x`` is bound to a per-tensor :func:`_scalar_dequantize`."""
    values, found = {}, {}
    for block in main.body.blocks:
        for binding in block.bindings:
            values[binding.var] = binding.value
            call = binding.value
            if not isinstance(call, relax.Call) or not call.op.same_as(_MATMUL):
                continue
            weight, x = call.args[1], call.args[0]
            if isinstance(weight, relax.Var) and weight.name in placeholders:
                dtype = _scalar_dequantize(values.get(x))
                if dtype is not None:
                    found[weight.name] = dtype
    return found


@tvm.transform.module_pass(opt_level=0, name="lowbit.LowerQuantizedMatmul")
class LowerQuantizedMatmul:
    """Lower the placeholder matmuls of ``main`` to lowbit kernels (see the module docstring).

    Parameters
    ----------
    layers : dict of str -> spec
        Placeholder parameter name -> an object with ``name`` (layer name), ``weight`` (QuantizedWeight) and
        ``activation_quantized`` (see frontends.onnx.QuantizedLinearSpec). A layer whose activation is
        ``R.dequantize`` of int8 / uint8 codes by one scale and zero point gets the ``a8`` kernel on those codes
        under ``auto`` and ``a8`` where a8 runs its weight (``compiler.linear.model_codes_kernel``); another
        activation-quantized layer gets ``decode`` under ``auto``.
    target : TargetInfo
    kernel : {"auto", "decode", "a8"}
    progress : bool
        Show a progress bar over the layers while their kernels are built.
    tuning_log : None, folder, TuningDatabase or False
        Where the kernels' schedules come from (see :func:`lowbit.compiler.linear.tuning_database`).
    """

    def __init__(self, layers, target, kernel="auto", progress=False, tuning_log=None):
        check_kernel(kernel)
        self.layers, self.target, self.kernel, self.progress = dict(layers), target, kernel, progress
        self.tuning_log = tuning_log
        self.params, self.plans = [], []
        self.failure = None  # the LowbitError that stopped the pass, if any

    def transform_module(self, mod, _ctx):  # noqa: D102 (module pass hook)
        # TVM's pass infrastructure re-raises Python exceptions as RuntimeError: keep ours for the caller
        try:
            return self._transform(mod)
        except LowbitError as err:
            self.failure = err
            raise

    def _transform(self, mod):
        lowerer = _MatmulLowerer(mod, {})
        codes = dequantized_activations(mod["main"], self.layers)
        for index, (placeholder, layer) in enumerate(self._iter_layers()):
            lowerer.kernels[placeholder] = self._add_kernel(lowerer.builder_, index, layer, codes.get(placeholder))
        main_gvar = mod.get_global_var("main")
        main = mod["main"]
        body_func = lowerer.visit_expr(main)
        self._check_all_lowered(main, body_func, lowerer)
        kept = [p for p in body_func.params if p.name not in self.layers]
        new_params = kept + [v for k in lowerer.kernels.values() for v in k.param_vars]
        func = relax.Function(new_params, body_func.body, body_func.ret_ty, body_func.is_pure, body_func.attrs)
        func = func.with_attr("num_input", len(kept))
        lowerer.builder_.update_func(main_gvar, func)
        return lowerer.builder_.get()

    def _iter_layers(self):
        items = list(self.layers.items())
        if not self.progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc="lowbit kernels", unit="layer")

    def _add_kernel(self, builder, index, layer, codes):
        kernel, activation = self.kernel, "float32"
        if codes is not None and model_codes_kernel(layer.weight, self.target, kernel):
            activation = codes  # a8 on the model's own codes: its exact integer product
        elif kernel == "auto" and layer.activation_quantized:
            kernel = "decode"  # the model fixed the activation's rounding: float a8 would round it again
        chosen, layout, arrays = prepare_layer(layer.weight, None, self.target, kernel, activation=activation)
        gvar, plans = add_linear_functions(builder.add_func, layout, arrays, False, self.target,
                                           name=f"layer{index}_mpgemm", tuning_log=self.tuning_log)
        N, K = layer.weight.shape
        names = [f"{layer.name}.{key}" for key in arrays]
        param_vars = [relax.Var(f"layer{index}_{key}", relax.TensorType(array.shape, str(array.dtype)))
                      for key, array in arrays.items()]
        self.params += [(name, np.ascontiguousarray(array)) for name, array in zip(names, arrays.values())]
        fmt = layer.weight.format
        self.plans.append(LayerPlan(layer.name, fmt.name, N, K, chosen,
                                    {key: plan.as_manifest() for key, plan in plans.items()},
                                    names, float(fmt.bits_per_weight(K)), activation))
        return _Kernel(layer.name, gvar, param_vars, N, K, activation_dtype(layout), activation != "float32")

    def _check_all_lowered(self, main, lowered_func, lowerer):
        params = {p.name for p in main.params}
        absent = sorted(set(self.layers) - params)
        if absent:
            raise KernelError(f"main has no parameters {absent} for the quantized layers: the frontend and the "
                              "pipeline disagree (a lowbit bug)")
        unused = sorted(set(self.layers) - lowerer.lowered)
        still_read = {v.name for v in relax.analysis.free_vars(lowered_func.body)} & set(self.layers)
        if unused or still_read:
            names = [self.layers[p].name for p in sorted(set(unused) | still_read)]
            raise KernelError(f"the quantized weights of layers {names} are used other than as the right-hand "
                              "side of one matmul: lowbit cannot lower them")
