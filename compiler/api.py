"""``lowbit.compile``: the user-facing entry point of the compiler."""
import dataclasses

import numpy as np

from lowbit.compiler.graph import Sequential, quantize_sequential
from lowbit.compiler.pipeline import run_pipeline
from lowbit.compiler.target import resolve_target
from lowbit.errors import InputError, WeightError


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

    def _machine(self):
        if self._vm is None:
            from lowbit.compiler.tvm_api import tensor, tvm

            self._vm = tvm.runtime.vm.VirtualMachine(self.compiled.executable, tvm.cpu())
            self._params = [tensor(array) for _, array in self.compiled.params]
        return self._vm

    def __call__(self, x):
        """Run on one float32 array ``(M, K)``; returns the output array ``(M, N)``."""
        from lowbit.compiler.tvm_api import tensor

        spec = self.manifest["inputs"][0]
        x = np.asarray(x)
        if x.dtype != np.float32:
            raise InputError(f"input {spec['name']!r} has dtype {x.dtype}, expected float32: cast with .astype(np.float32)")
        if x.ndim != 2 or x.shape[1] != spec["shape"][1] or x.shape[0] < 1:
            raise InputError(f"input {spec['name']!r} has shape {x.shape}, expected (M >= 1, {spec['shape'][1]})")
        vm = self._machine()
        return vm["main"](tensor(np.ascontiguousarray(x)), *self._params).numpy()

    def save(self, path):
        """Write the artifact (library, packed weights, manifest) to ``path`` atomically."""
        from lowbit.compiler.artifact import write_artifact

        write_artifact(path, library=self.compiled.executable, params=list(self.compiled.params),
                       manifest=dict(self.manifest))
        return path


def _manifest(model, compiled, target):
    layers = [dataclasses.asdict(plan) for plan in compiled.layers]
    for layer in layers:
        layer["schedule"] = "default"
    out_features = compiled.layers[-1].N
    return {
        "target": dict(target.target),
        "target_tag": target.tag,
        "cpu": target.cpu_name,
        "required_features": target.required_features(),
        "inputs": [{"name": model.input_name, "shape": ["M", model.in_features], "dtype": "float32"}],
        "outputs": [{"name": model.output_name, "shape": ["M", out_features], "dtype": "float32"}],
        "layers": layers,
        "entry": "main",
    }


def compile(model, target="cpu", format=None, kernel="auto", dump_ir=None):  # noqa: A001 (the API's name)
    """Compile a model into a :class:`CompiledModel`.

    Parameters
    ----------
    model : Sequential
        A layer sequence (``lowbit.compiler.graph``); float ``Linear`` layers need ``format``.
    target : "cpu", dict or TargetInfo
        Where the code runs (default: this CPU, features detected).
    format : str or format object, optional
        Quantize float linear layers to this format first (``w4g128``, ``ternary``, ``nf4g64``, ...).
    kernel : {"auto", "decode", "a8", "lut"}
    dump_ir : str, optional
        Folder to write the IR after each phase.
    """
    if not isinstance(model, Sequential):
        raise WeightError(f"lowbit.compile takes a lowbit.compiler.graph.Sequential, got {type(model).__name__}; "
                          "ONNX and torch models come through lowbit's frontends")
    if format is not None:
        model = quantize_sequential(model, format)
    info = resolve_target(target)
    compiled = run_pipeline(model, info, kernel=kernel, dump_ir=dump_ir)
    return CompiledModel(compiled, info, _manifest(model, compiled, info))
