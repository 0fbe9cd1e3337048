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
        layer["schedule"] = "default"
        if patterns is not None:
            layer["pattern"] = patterns[index]
    return layers


def _manifest(model, compiled, target):
    out_features = compiled.layers[-1].N
    return _target_manifest(target, {
        "inputs": [{"name": model.input_name, "shape": ["M", model.in_features], "dtype": "float32"}],
        "outputs": [{"name": model.output_name, "shape": ["M", out_features], "dtype": "float32"}],
        "layers": _layer_entries(compiled),
    })


def _onnx_manifest(imported, compiled, target):
    patterns = [spec.pattern for spec in imported.quantized.values()]
    return _target_manifest(target, {"inputs": imported.inputs, "outputs": imported.outputs,
                                     "layers": _layer_entries(compiled, patterns), "source": "onnx"})


def _target_manifest(target, body):
    return {"target": dict(target.target), "target_tag": target.tag, "cpu": target.cpu_name,
            "required_features": target.required_features(), **body, "entry": "main"}


def is_onnx_model(model):
    """Whether ``model`` is an ONNX model: a path (str / os.PathLike) or an ``onnx.ModelProto``."""
    if isinstance(model, (str, os.PathLike)):
        return True
    cls = type(model)
    return cls.__name__ == "ModelProto" and cls.__module__.startswith("onnx")


def _compile_onnx(model, info, format, kernel, dump_ir, progress):  # noqa: A002
    from lowbit.frontends.onnx import import_onnx

    imported = import_onnx(model, format=format)
    if not imported.quantized:
        hint = "pass format=... (e.g. 'w4g128') to quantize its float MatMul / Gemm weights" if format is None \
            else "it has no MatMul / Gemm with a constant 2-D weight"
        raise ModelError(f"the ONNX model has no quantized MatMul / Gemm lowbit recognises: {hint}")
    compiled = run_relax_pipeline(imported, info, kernel=kernel, dump_ir=dump_ir, progress=progress)
    return CompiledModel(compiled, info, _onnx_manifest(imported, compiled, info))


def compile(model, target="cpu", format=None, kernel="auto", dump_ir=None, progress=False):  # noqa: A001,A002
    """Compile a model into a :class:`CompiledModel`.

    Parameters
    ----------
    model : Sequential, str, os.PathLike or onnx.ModelProto
        A layer sequence (``lowbit.compiler.graph``; float ``Linear`` layers need ``format``), or an ONNX model
        (a path or a ModelProto) whose quantized MatMul / Gemm patterns become lowbit kernels.
    target : "cpu", dict or TargetInfo
        Where the code runs (default: this CPU, features detected).
    format : str or format object, optional
        Quantize float linear layers (ONNX: constant float MatMul / Gemm weights) to this format first
        (``w4g128``, ``ternary``, ``nf4g64``, ...).
    kernel : {"auto", "decode", "a8", "lut"}
    dump_ir : str, optional
        Folder to write the IR after each phase.
    progress : bool
        Show a progress bar over the quantized layers while their kernels are built (ONNX models).
    """
    if is_onnx_model(model):
        return _compile_onnx(model, resolve_target(target), format, kernel, dump_ir, progress)
    if not isinstance(model, Sequential):
        raise WeightError(f"lowbit.compile takes an ONNX model (path or onnx.ModelProto) or a "
                          f"lowbit.compiler.graph.Sequential, got {type(model).__name__}")
    if format is not None:
        model = quantize_sequential(model, format)
    info = resolve_target(target)
    compiled = run_pipeline(model, info, kernel=kernel, dump_ir=dump_ir)
    return CompiledModel(compiled, info, _manifest(model, compiled, info))
