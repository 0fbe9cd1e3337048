"""``lowbit.compile``: the user-facing entry point of the compiler."""
import dataclasses
import os

from lowbit.compiler.graph import Sequential, quantize_sequential
from lowbit.compiler.pipeline import run_pipeline, run_relax_pipeline
from lowbit.compiler.target import resolve_target
from lowbit.errors import ModelError, WeightError


@dataclasses.dataclass
class CompiledModel:
    """A compiled model: runs NumPy arrays in this process and saves one artifact file.

    Attributes
    ----------
    manifest : dict
        What ``save`` writes beside the library and params (target, inputs, outputs, layers).
    """

    compiled: object
    target: object
    manifest: dict
    _vm: object = None

    def _module(self):
        if self._vm is None:
            from lowbit.compiler.tvm_api import tensor, tvm
            from lowbit.runtime.module import Module

            if self.target.kind == "cuda":
                from lowbit.runtime.cuda import cuda_device, provide_device_code

                device = cuda_device(tvm, self.manifest, "<in-memory model>")
                provide_device_code(dict(self.compiled.device_code), "<in-memory model>")
            else:
                device = tvm.cpu()
            machine = tvm.runtime.vm.VirtualMachine(self.compiled.executable, device)
            params = [tensor(array, device) for _, array in self.compiled.params]
            self._vm = Module(self.manifest, machine, params, tvm, device)
        return self._vm

    def __call__(self, *inputs, **named):
        """Run on NumPy arrays, by position or by input name (``manifest["inputs"]`` gives the order).

        Each input's dtype must match exactly, its rank too, and its static dims; symbolic dims take any size
        >= 1. Returns one array, or a tuple of arrays when the model has several outputs. The same checks as
        :class:`lowbit.runtime.Module` (this *is* one, on the in-memory executable).
        """
        return self._module()(*inputs, **named)

    def save(self, path):
        """Write the artifact (library, packed weights, manifest) to ``path`` atomically."""
        from lowbit.compiler.artifact import write_artifact

        write_artifact(path, library=self.compiled.executable, params=list(self.compiled.params),
                       manifest=dict(self.manifest), device_code=list(self.compiled.device_code))
        return path


def _layer_entries(compiled, patterns=None):
    layers = [dataclasses.asdict(plan) for plan in compiled.layers]
    for index, layer in enumerate(layers):
        layer["schedule"] = schedule_source(layer["plans"])
        if patterns is not None:
            layer["pattern"] = patterns[index]
    return layers


def schedule_source(plans):
    """One word for a layer's schedules: ``record`` (every M bucket from a tuning record), ``default`` (none),
    or ``mixed`` (the manifest's ``plans`` say which bucket came from where)."""
    sources = {plan["source"] for plan in plans.values()}
    return sources.pop() if len(sources) == 1 else "mixed"


def _manifest(model, compiled, target):
    out_features = compiled.layers[-1].N
    return _target_manifest(target, {
        "inputs": [{"name": model.input_name, "shape": ["M", model.in_features], "dtype": "float32"}],
        "outputs": [{"name": model.output_name, "shape": ["M", out_features], "dtype": "float32"}],
        "layers": _layer_entries(compiled),
    })


def _imported_manifest(imported, compiled, target, source):
    patterns = [spec.pattern for spec in imported.quantized.values()]
    return _target_manifest(target, {"inputs": imported.inputs, "outputs": imported.outputs,
                                     "layers": _layer_entries(compiled, patterns), "source": source})


def _target_manifest(target, body):
    return {"target": dict(target.target), "target_tag": target.tag, "cpu": target.cpu_name,
            "required_features": target.required_features(), **body, "entry": "main"}


def is_onnx_model(model):
    """Whether ``model`` is an ONNX model: a path (str / os.PathLike) or an ``onnx.ModelProto``."""
    if isinstance(model, (str, os.PathLike)):
        return True
    cls = type(model)
    return cls.__name__ == "ModelProto" and cls.__module__.startswith("onnx")


def _import_onnx(model, format, method, calibration):  # noqa: A002
    from lowbit.frontends.onnx import import_onnx

    if format is None or method == "rtn":
        if calibration is not None:
            raise ModelError("calibration data is only used by method='gptq' (with format=...): pass "
                             "method='gptq', or drop calibration")
        return import_onnx(model, format=format)
    from lowbit.frontends.onnx_quantize import quantize_onnx_layers

    proto, _, weights = quantize_onnx_layers(model, format, method, calibration)
    return import_onnx(proto, weights=weights)


def _compile_onnx(model, info, format, kernel, dump_ir, progress, method, calibration, tuning_log):  # noqa: A002
    imported = _import_onnx(model, format, method, calibration)
    if not imported.quantized:
        hint = "pass format=... (e.g. 'w4g128') to quantize its float MatMul / Gemm weights" if format is None \
            else "it has no MatMul / Gemm with a constant 2-D weight"
        raise ModelError(f"the ONNX model has no quantized MatMul / Gemm lowbit recognises: {hint}")
    compiled = run_relax_pipeline(imported, info, kernel=kernel, dump_ir=dump_ir, progress=progress,
                                  tuning_log=tuning_log)
    return CompiledModel(compiled, info, _imported_manifest(imported, compiled, info, "onnx"))


def _compile_torch(model, example_inputs, info, kernel, dump_ir, progress, dynamic_shapes, tuning_log):
    from lowbit.frontends.torch_export import import_torch

    if example_inputs is None:
        raise ModelError("compiling a torch module needs example_inputs (a tensor or a tuple of tensors, as "
                         "torch.export takes them): lowbit.compile(model, (x,), target='cpu')")
    imported = import_torch(model, example_inputs, dynamic_shapes)
    compiled = run_relax_pipeline(imported, info, kernel=kernel, dump_ir=dump_ir, progress=progress,
                                  tuning_log=tuning_log)
    return CompiledModel(compiled, info, _imported_manifest(imported, compiled, info, "torch"))


def compile(model, example_inputs=None, target="cpu", format=None, kernel="auto", dump_ir=None,  # noqa: A001,A002
            progress=False, method="rtn", calibration=None, dynamic_shapes=None, tuning_log=None):
    """Compile a model into a :class:`CompiledModel`.

    Parameters
    ----------
    model : Sequential, str, os.PathLike, onnx.ModelProto or torch.nn.Module
        A layer sequence (``lowbit.compiler.graph``; float ``Linear`` layers need ``format``), an ONNX model
        (a path or a ModelProto) whose quantized MatMul / Gemm patterns become lowbit kernels, or a torch module
        whose ``nn.Linear`` layers were quantized by ``lowbit.quantize_model`` (through ``torch.export``).
    example_inputs : torch.Tensor or tuple of torch.Tensor
        torch modules only: inputs to trace with (dim 0 becomes symbolic where torch.export allows).
    target : "cpu", dict or TargetInfo
        Where the code runs (default: this CPU, features detected).
    format : str or format object, optional
        Quantize float linear layers (ONNX: constant float MatMul / Gemm weights) to this format first
        (``w4g128``, ``ternary``, ``nf4g64``, ...).
    kernel : {"auto", "decode", "a8", "lut"}
    dump_ir : str, optional
        Folder to write the IR after each phase.
    progress : bool
        Show a progress bar over the quantized layers while their kernels are built (ONNX / torch models).
    tuning_log : None, str, os.PathLike or False
        Tuning records to take each M bucket's schedule from (``lowbit tune --log DIR``'s folder); None: the
        records shipped with lowbit for the target (``lowbit/tuning_logs/<target tag>/``); False: the rules'
        default schedules only. A bucket without a record faster than its default keeps the default; the
        manifest's ``plans`` say which (``source``: ``record`` or ``default``).
    method : {"rtn", "gptq"}
        How ``format`` quantizes float ONNX weights; ``gptq`` needs ``calibration``.
    calibration : dict, list of dicts or .npz path, optional
        ONNX calibration batches ``{input name: array}`` for ``method="gptq"``.
    dynamic_shapes : optional
        torch modules only: ``torch.export``'s ``dynamic_shapes`` for the example inputs.
    """
    from lowbit.frontends.quantize import check_method, is_torch_module

    if is_torch_module(model):
        if format is not None or method != "rtn" or calibration is not None:
            raise ModelError("format / method / calibration quantize ONNX and Sequential models on the way; a torch "
                             "module is quantized first, in place: lowbit.quantize_model(model, formats=..., "
                             "method=..., calibration=...), then lowbit.compile(model, example_inputs)")
        return _compile_torch(model, example_inputs, resolve_target(target), kernel, dump_ir, progress,
                              dynamic_shapes, tuning_log)
    if example_inputs is not None:
        raise ModelError(f"example_inputs are for torch modules, not {type(model).__name__}; pass the target by "
                         "keyword: lowbit.compile(model, target='cpu')")
    if format is not None:
        check_method(method, calibration)
    if is_onnx_model(model):
        return _compile_onnx(model, resolve_target(target), format, kernel, dump_ir, progress, method,
                             calibration, tuning_log)
    if not isinstance(model, Sequential):
        raise WeightError(f"lowbit.compile takes an ONNX model (path or onnx.ModelProto), a torch module or a "
                          f"lowbit.compiler.graph.Sequential, got {type(model).__name__}")
    if format is not None:
        model = quantize_sequential(model, format)
    info = resolve_target(target)
    compiled = run_pipeline(model, info, kernel=kernel, dump_ir=dump_ir, tuning_log=tuning_log)
    return CompiledModel(compiled, info, _manifest(model, compiled, info))
