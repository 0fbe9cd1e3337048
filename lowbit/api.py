"""``lowbit.compile``: the user-facing entry point of the compiler.

It sits above the frontends and the compiler (docs/architecture.md): it picks the frontend for the model (ONNX or
torch), runs the compiler's pipeline on what the frontend imported, and writes the artifact's manifest.
"""
import dataclasses
import json

import numpy as np

from lowbit.compiler.artifact import write_artifact
from lowbit.compiler.formats import QuantizedWeight, parse_format
from lowbit.compiler.graph import Sequential, quantize_sequential
from lowbit.compiler.pipeline import run_pipeline, run_relax_pipeline
from lowbit.compiler.quality import DEFAULT_CANDIDATES
from lowbit.compiler.target import resolve_target
from lowbit.compiler.tvm_api import tensor, tvm
from lowbit.frontends.onnx import import_onnx, is_onnx_model, load_onnx
from lowbit.frontends.onnx_quantize import ALLOCATION_KEY, quantize_onnx_layers
from lowbit.frontends.quantize import candidate_formats, check_estimate, check_method, is_torch_module
from lowbit.runtime.cuda import cuda_device, provide_device_code
from lowbit.runtime.module import Module
from lowbit.errors import ModelError, WeightError
from lowbit.runtime.host import AMX_FEATURES
from lowbit.schedules.cpu.a8 import DecodeA8Amx


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
            if self.target.kind == "cuda":
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
            "required_features": _required_features(target, body.get("layers", [])), **body, "entry": "main"}


def _required_features(target, layers):
    """The target's required features, and AMX's where a layer's kernel uses tiles (an artifact without them
    runs on AVX-512 machines without AMX, as before)."""
    required = set(target.required_features())
    if any(plan.get("rule") == DecodeA8Amx.name for layer in layers for plan in layer.get("plans", {}).values()):
        required |= AMX_FEATURES
    return sorted(required)


def _import_onnx(model, format, method, calibration, budget_bits, progress=False, estimate="direct"):  # noqa: A002
    """(ImportedModel, allocation summary dict or None) of an ONNX model, quantizing it on the way when asked."""
    if budget_bits is not None:
        candidates = DEFAULT_CANDIDATES if format is None else format
        proto, _, weights, report = quantize_onnx_layers(model, candidates, method, calibration, budget_bits,
                                                         progress, estimate)
        return import_onnx(proto, weights=weights), report.as_manifest()
    if format is not None:
        (format,) = candidate_formats(format)  # several candidates need budget_bits: a clear error
    proto = load_onnx(model)
    stored = {entry.key: entry.value for entry in proto.metadata_props}.get(ALLOCATION_KEY)
    allocation = None if stored is None else json.loads(stored)  # written by `lowbit quantize --budget-bits`
    if format is None or method == "rtn":
        if calibration is not None:
            raise ModelError("calibration data is only used by method='gptq' or with budget_bits (with format=...): "
                             "pass method='gptq' or budget_bits=..., or drop calibration")
        return _narrowed(import_onnx(proto, format=format), allocation), allocation
    proto, _, weights, _ = quantize_onnx_layers(proto, format, method, calibration)
    return import_onnx(proto, weights=weights), None


def _narrowed(imported, allocation):
    """Give each layer the bit width its allocation chose where ONNX stored it wider (2- and 3-bit codes travel
    as uint4 in QDQ / MatMulNBits), when the narrower format holds exactly the same weight."""
    if allocation is None:
        return imported
    chosen = {layer["name"]: layer["format"] for layer in allocation["layers"]}
    for key, spec in imported.quantized.items():
        name, stored = chosen.get(spec.name), spec.weight
        if name is None or name == stored.format.name or stored.zeros is None:
            continue
        fmt = parse_format(name)
        if fmt.kind != stored.format.kind or fmt.group_size != stored.format.group_size or \
                fmt.bits >= stored.format.bits or stored.codes.max() >= 2 ** fmt.bits or \
                stored.zeros.max() >= 2 ** fmt.bits:
            continue
        narrow = QuantizedWeight(fmt, stored.codes, stored.scales, stored.zeros)
        if np.array_equal(narrow.dequantize(), stored.dequantize()):
            imported.quantized[key] = dataclasses.replace(spec, weight=narrow)
    return imported


def _with_allocation(manifest, allocation):
    """Add a budget allocation's summary to the manifest, and each layer's measured SQNR to its entry."""
    if allocation is None:
        return manifest
    by_name = {layer["name"]: layer for layer in allocation["layers"]}
    for layer in manifest["layers"]:
        measured = by_name.get(layer["name"])
        if measured is not None:
            layer["weight_sqnr_db"] = measured["weight_sqnr_db"]
            layer["output_sqnr_db"] = measured["output_sqnr_db"]
    manifest["allocation"] = {key: value for key, value in allocation.items() if key != "layers"}
    return manifest


def _compile_onnx(model, info, format, kernel, dump_ir, progress, method, calibration, tuning_log,  # noqa: A002
                  budget_bits=None, estimate="direct"):
    imported, allocation = _import_onnx(model, format, method, calibration, budget_bits, progress, estimate)
    if not imported.quantized:
        hint = "pass format=... (e.g. 'w4g128') to quantize its float MatMul / Gemm weights" if format is None \
            else "it has no MatMul / Gemm with a constant 2-D weight"
        raise ModelError(f"the ONNX model has no quantized MatMul / Gemm lowbit recognises: {hint}")
    compiled = run_relax_pipeline(imported, info, kernel=kernel, dump_ir=dump_ir, progress=progress,
                                  tuning_log=tuning_log)
    manifest = _imported_manifest(imported, compiled, info, "onnx")
    return CompiledModel(compiled, info, _with_allocation(manifest, allocation))


def _compile_torch(model, example_inputs, info, kernel, dump_ir, progress, dynamic_shapes, tuning_log):
    from lowbit.frontends.torch_export import import_torch

    if example_inputs is None:
        raise ModelError("compiling a torch module needs example_inputs (a tensor or a tuple of tensors, as "
                         "torch.export takes them): lowbit.compile(model, (x,), target='cpu')")
    imported = import_torch(model, example_inputs, dynamic_shapes)
    compiled = run_relax_pipeline(imported, info, kernel=kernel, dump_ir=dump_ir, progress=progress,
                                  tuning_log=tuning_log)
    report = getattr(model, "lowbit_allocation", None)  # set by quantize_model(..., budget_bits=...)
    manifest = _imported_manifest(imported, compiled, info, "torch")
    return CompiledModel(compiled, info, _with_allocation(manifest, None if report is None else report.as_manifest()))


def compile(model, example_inputs=None, target="cpu", format=None, kernel="auto", dump_ir=None,  # noqa: A001,A002
            progress=False, method="rtn", calibration=None, dynamic_shapes=None, tuning_log=None,
            budget_bits=None, estimate="direct"):
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
        Show a progress bar over the quantized layers while their kernels are built (ONNX / torch models), and
        with ``budget_bits`` over the (layer, format) measurements of the per-layer choice (ONNX).
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
    budget_bits : float, optional
        Float ONNX models: choose each layer's format among ``format`` (a list of candidates; default
        :data:`lowbit.compiler.quality.DEFAULT_CANDIDATES`) so the average bits per weight stay within this
        budget (see :func:`lowbit.quantize_model`); the manifest records the choice and each layer's SQNR.
    estimate : {"direct", "probed"}
        With ``budget_bits`` and ``calibration``: how each (layer, format)'s end-to-end error is found (see
        :func:`lowbit.quantize_model`).
    """
    if is_torch_module(model):
        if format is not None or method != "rtn" or calibration is not None or budget_bits is not None or \
                estimate != "direct":
            raise ModelError("format / method / calibration / budget_bits / estimate quantize ONNX and Sequential "
                             "models on the way; a torch module is quantized first, in place: "
                             "lowbit.quantize_model(model, formats=..., method=..., calibration=..., budget_bits=..., "
                             "estimate=...), then lowbit.compile(model, example_inputs)")
        return _compile_torch(model, example_inputs, resolve_target(target), kernel, dump_ir, progress,
                              dynamic_shapes, tuning_log)
    if example_inputs is not None:
        raise ModelError(f"example_inputs are for torch modules, not {type(model).__name__}; pass the target by "
                         "keyword: lowbit.compile(model, target='cpu')")
    if format is not None or budget_bits is not None:
        check_method(method, calibration)
    check_estimate(estimate, budget_bits, calibration)
    if is_onnx_model(model):
        return _compile_onnx(model, resolve_target(target), format, kernel, dump_ir, progress, method,
                             calibration, tuning_log, budget_bits, estimate)
    if budget_bits is not None:
        raise ModelError("budget_bits chooses per-layer formats for float ONNX models (and torch modules through "
                         f"lowbit.quantize_model), not for a {type(model).__name__}")
    if not isinstance(model, Sequential):
        raise WeightError(f"lowbit.compile takes an ONNX model (path or onnx.ModelProto), a torch module or a "
                          f"lowbit.compiler.graph.Sequential, got {type(model).__name__}")
    if format is not None:
        model = quantize_sequential(model, format)
    info = resolve_target(target)
    compiled = run_pipeline(model, info, kernel=kernel, dump_ir=dump_ir, tuning_log=tuning_log)
    return CompiledModel(compiled, info, _manifest(model, compiled, info))
