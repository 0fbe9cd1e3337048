"""The one compile pipeline, phase by phase: quantized layers -> kernels -> Relax graph -> build.

Models from a frontend (ONNX, torch) go through :func:`run_relax_pipeline` (``dump_ir`` writes the IR after each):
0. ``import``: the frontend's Relax module, quantized weights as ``lowbit_w{i}`` placeholder parameters.
1. ``lower``: ``LowerQuantizedMatmul`` replaces each placeholder matmul by its layer's M-bucket kernel
   (the whole module in ``1-lower.txt``, each scheduled TensorIR kernel in ``1-lower-tir/<function>.txt``).
2. ``float-ops`` (CPU targets): the graph's other operators (attention matmuls, softmax, LayerNorm, GELU,
   adds, transposes) legalized, fused and given CPU schedules (``passes.sequences.float_op_pipeline``; each function
   in ``2-float-ops-tir/``). CUDA targets get dlight's GPU schedules for them inside ``build``.
3. ``build``: ``tvm.compile`` of the Relax module (VM executable) with lowbit's Relax and TIR pipelines.

A :class:`Sequential` goes through :func:`run_pipeline`:
1. ``kernels``: per quantized linear layer, re-lay its weights and build its M-bucket TensorIR kernel.
2. ``graph``: a Relax function ``main(x, *params)`` calling the kernels with ``call_tir`` and the float
   operators (activations) as Relax ops.
3. ``float-ops`` and 4. ``build``: as above.
"""
import dataclasses
import os


from lowbit.compiler.graph import Activation, QuantizedLinear
from lowbit.compiler.cuda_build import build_device_code, cuda_build_context
from lowbit.compiler.linear import LayerPlan, add_linear_functions, check_kernel, prepare_layer, tuning_database
from lowbit.compiler.passes.lower_quantized_matmul import LowerQuantizedMatmul
from lowbit.compiler.passes.schedule_float_ops import is_float_op
from lowbit.compiler.passes.sequences import float_op_pipeline, relax_pipeline, tir_pipeline
from lowbit.compiler.tvm_api import compile_module, tirx
from lowbit.errors import WeightError


@dataclasses.dataclass
class Compiled:
    """Output of the pipeline: the VM executable, its params in call order, and the layer plans."""

    executable: object
    params: list  # [(name, np.ndarray)]
    layers: list  # [LayerPlan]
    device_code: list = dataclasses.field(default_factory=list)  # CUDA: [(source sha256, fatbin)]


def _dump(dump_dir, phase, text):
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        with open(os.path.join(dump_dir, f"{phase}.txt"), "w", encoding="utf-8") as f:
            f.write(text)


def _dump_kernels(dump_dir, phase, mod, float_ops_only=False):
    """One file per TensorIR function of ``mod`` (``float_ops_only``: the model's float operators) under
    ``<dump_dir>/<phase>-tir/``."""
    if not dump_dir:
        return
    for gvar, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and (not float_ops_only or is_float_op(func)):
            _dump(os.path.join(dump_dir, f"{phase}-tir"), gvar.name_hint, func.script())


def build_kernels(model, target, kernel, bb, tuning_log=None):
    """Phase 1: re-lay each quantized layer's weights and add its M-bucket kernel to ``bb`` (schedules from
    ``tuning_log``, see :func:`lowbit.compiler.linear.tuning_database`).

    Returns one (arrays, dispatcher GlobalVar, LayerPlan) per quantized layer.
    """
    check_kernel(kernel)
    database = tuning_database(target, tuning_log)  # opened (and its warnings given) once per compile
    built = []
    for index, layer in enumerate(model.linear_layers()):
        if not isinstance(layer, QuantizedLinear):
            raise WeightError(f"layer {index} ({layer.name or 'linear'}) is not quantized: quantize the model "
                              "first (lowbit.compiler.graph.quantize_sequential) or pass format=...")
        layer_name = layer.name or f"linear{index}"
        chosen, layout, arrays = prepare_layer(layer.weight, layer.bias, target, kernel)
        gvar, plans = add_linear_functions(bb.add_func, layout, arrays, layer.bias is not None, target,
                                           name=f"layer{index}_mpgemm",
                                           tuning_log=False if database is None else database)
        N, K = layer.shape
        plan = LayerPlan(layer_name, layer.weight.format.name, N, K, chosen,
                         {key: plan.as_manifest() for key, plan in plans.items()},
                         [f"{layer_name}.{key}" for key in arrays],
                         float(layer.weight.format.bits_per_weight(K)))
        built.append((arrays, gvar, plan))
    return built


def build_graph(model, kernels, bb, target):
    """Phase 2: the Relax function ``main(x, *params) -> y`` calling the kernels; returns its params."""
    from tvm import relax

    m_var = tirx.Var("M", "int64")
    x = relax.Var(model.input_name, relax.TensorType((m_var, model.in_features), "float32"))
    param_vars, params = [], []
    for arrays, _, plan in kernels:
        for pname, array in zip(plan.param_names, arrays.values()):
            param_vars.append(relax.Var(pname.replace(".", "_"), relax.TensorType(array.shape, str(array.dtype))))
            params.append((pname, array))
    # On a GPU the kernels take float16 activations: the float32 input is cast on the device and the
    # output cast back, so the model's signature stays float32 (what the user passes and gets).
    act = "float16" if target.kind == "cuda" else "float32"
    with bb.function("main", [x] + param_vars):
        with bb.dataflow():
            h = x if act == "float32" else bb.emit(relax.op.astype(x, act))
            cursor, layer_iter = 0, iter(kernels)
            for layer in model.layers:
                if isinstance(layer, Activation):
                    h = bb.emit(getattr(relax.op.nn, layer.kind)(h))
                    continue
                arrays, gvar, plan = next(layer_iter)
                args = [h] + param_vars[cursor:cursor + len(arrays)]
                cursor += len(arrays)
                h = bb.emit(relax.call_tir(gvar, args, relax.TensorType((m_var, plan.N), act)))
            if act != "float32":
                h = bb.emit(relax.op.astype(h, "float32"))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return params


def schedule_float_ops(mod, target, dump_ir=None, phase="2-float-ops"):
    """Phase ``float-ops``: the graph's float operators legalized, fused and scheduled for a CPU target
    (:func:`lowbit.compiler.passes.sequences.float_op_pipeline`); CUDA modules pass through unchanged."""
    if target.kind == "cuda":
        return mod
    mod = float_op_pipeline(target)(mod)
    _dump(dump_ir, phase, mod.script())
    _dump_kernels(dump_ir, phase, mod, float_ops_only=True)
    return mod


def _build(mod, target):
    """Phase ``build``: tvm.compile with lowbit's pipelines (CUDA: GPU schedules for the graph's other
    operators, device code compiled by nvcc)."""
    with cuda_build_context(target):
        return compile_module(mod, target=target.tvm_target(), relax_pipeline=relax_pipeline(target),
                              tir_pipeline=tir_pipeline())


def _device_code(executable, target):
    """Phase ``device``: CUDA targets compile each CUDA module's source with nvcc (none for CPUs)."""
    if target.kind != "cuda":
        return []
    return build_device_code(executable, target.arch)


def run_pipeline(model, target, kernel="auto", dump_ir=None, tuning_log=None):
    """Compile a quantized :class:`Sequential` for ``target`` (a TargetInfo); returns :class:`Compiled`."""
    from tvm import relax

    bb = relax.BlockBuilder()
    kernels = build_kernels(model, target, kernel, bb, tuning_log)
    _dump(dump_ir, "1-kernels", bb.get().script())
    _dump_kernels(dump_ir, "1-kernels", bb.get())
    params = build_graph(model, kernels, bb, target)
    mod = bb.get()
    _dump(dump_ir, "2-graph", mod.script())
    mod = schedule_float_ops(mod, target, dump_ir, phase="3-float-ops")
    executable = _build(mod, target)
    return Compiled(executable, params, [plan for _, _, plan in kernels], _device_code(executable, target))


def run_relax_pipeline(imported, target, kernel="auto", dump_ir=None, progress=False, tuning_log=None):
    """Compile a frontend's :class:`~lowbit.frontends.onnx.ImportedModel` for ``target`` (a TargetInfo).

    Float constants of the model stay bound in the module; the kernels' arrays are returned as params
    (after the model's inputs in ``main``'s signature). Returns :class:`Compiled`.
    """
    check_kernel(kernel)
    database = tuning_database(target, tuning_log)  # opened (and its warnings given) once per compile
    mod = imported.mod
    _dump(dump_ir, "0-import", mod.script())
    lower = LowerQuantizedMatmul(imported.quantized, target, kernel=kernel, progress=progress,
                                 tuning_log=False if database is None else database)
    try:
        mod = lower(mod)
    except Exception:  # noqa: BLE001 (TVM wraps the pass's own error in a RuntimeError: re-raise that one)
        if lower.failure is not None:
            raise lower.failure from None
        raise
    _dump(dump_ir, "1-lower", mod.script())
    _dump_kernels(dump_ir, "1-lower", mod)
    mod = schedule_float_ops(mod, target, dump_ir)
    executable = _build(mod, target)
    _dump(dump_ir, "3-build", executable.as_text())
    return Compiled(executable, list(lower.params), list(lower.plans), _device_code(executable, target))
