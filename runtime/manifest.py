"""The artifact manifest's schema, checked in one place before any field is used.

The manifest is the one part of an artifact without a sha256 of its own (it holds the others'), so every
field the runtime, ``lowbit inspect`` or ``lowbit run`` reads is type- and range-checked here; a field that
does not fit is an :class:`~lowbit.errors.ArtifactError` naming the field, its value and what it must be.
Fields this runtime does not read may be added by newer writers of the same schema version and are kept.
"""
import math
import re

from lowbit.errors import ArtifactError

MAX_NAME = 1024  # characters in a name, a symbolic dimension, a target string
MAX_ITEMS = 1 << 20  # entries in a list (params, layers, features)
MAX_DIMS = 8
MAX_EXTENT = 1 << 40  # a dimension or a byte size
DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32",
          "float64")
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*", re.ASCII)
_CUDA_ARCH = re.compile(r"sm_[0-9]{2,3}[a-z]?", re.ASCII)
_TARGET_KINDS = ("llvm", "cuda")


class _Checker:
    def __init__(self, path):
        self.path = path

    def fail(self, where, value, expected):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ArtifactError(f"artifact {self.path!r}: manifest field {where} is {shown}, expected {expected}: the "
                            "artifact is corrupt or was not written by lowbit; rebuild it with "
                            "lowbit.compile(...).save(path)")

    def object(self, value, where, required=()):
        if not isinstance(value, dict):
            self.fail(where, value, "a JSON object")
        missing = [key for key in required if key not in value]
        if missing:
            self.fail(where, sorted(value)[:8], f"an object with the keys {', '.join(required)} "
                                                f"(missing {', '.join(missing)})")
        return value

    def array(self, value, where, most=MAX_ITEMS, least=0):
        if not isinstance(value, list) or not least <= len(value) <= most:
            self.fail(where, value, f"a list of {least} to {most} items")
        return value

    def text(self, value, where, pattern=None, most=MAX_NAME, choices=None):
        if not isinstance(value, str) or not 0 < len(value) <= most or \
                (pattern is not None and not pattern.fullmatch(value)) or (choices and value not in choices):
            expected = f"one of {', '.join(choices)}" if choices else \
                f"a string matching {pattern.pattern}" if pattern is not None else f"a string of 1 to {most} characters"
            self.fail(where, value, expected)
        return value

    def integer(self, value, where, least=0, most=MAX_EXTENT):
        if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
            self.fail(where, value, f"an integer in {least}..{most}")
        return value

    def number(self, value, where, optional=False):
        if optional and value is None:
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            self.fail(where, value, "a finite number" + (" or null" if optional else ""))
        return value


def check_manifest(manifest, path, schema_version):
    """Check every field lowbit reads of a parsed manifest; returns it unchanged or raises ArtifactError.

    ``schema_version`` must already have been checked (it decides which schema applies).
    """
    check = _Checker(path)
    check.object(manifest, "(the manifest)", ("schema_version", "parts", "params", "inputs", "outputs", "entry"))
    check.text(manifest["entry"], "entry", _SYMBOL)
    parts = check.object(manifest["parts"], "parts")
    for name, record in parts.items():
        check.text(name, f"parts key {name!r}")
        check.object(record, f"parts[{name!r}]", ("sha256", "size"))
        check.text(record["sha256"], f"parts[{name!r}].sha256", _SHA256)
        check.integer(record["size"], f"parts[{name!r}].size")
    _check_params(check, manifest["params"], parts)
    for key in ("inputs", "outputs"):
        _check_specs(check, manifest[key], key)
    _check_target(check, manifest)
    for key in ("target_tag", "cpu", "lowbit_version", "tvm_version"):
        if key in manifest:
            check.text(manifest[key], key)
    for index, feature in enumerate(check.array(manifest.get("required_features", []), "required_features")):
        check.text(feature, f"required_features[{index}]", _SYMBOL)
    _check_layers(check, manifest.get("layers", []))
    if "allocation" in manifest:
        allocation = check.object(manifest["allocation"], "allocation", ("budget_bits", "candidates"))
        check.number(allocation["budget_bits"], "allocation.budget_bits")
        for index, name in enumerate(check.array(allocation["candidates"], "allocation.candidates")):
            check.text(name, f"allocation.candidates[{index}]")
    for index, entry in enumerate(check.array(manifest.get("device_code", []), "device_code")):
        where = f"device_code[{index}]"
        check.object(entry, where, ("source_sha256", "file"))
        check.text(entry["source_sha256"], f"{where}.source_sha256", _SHA256)
        check.text(entry["file"], f"{where}.file")
        if entry["file"] not in parts:
            check.fail(f"{where}.file", entry["file"], "a part listed in parts")
    return manifest


def _check_params(check, params, parts):
    for index, entry in enumerate(check.array(params, "params")):
        where = f"params[{index}]"
        check.object(entry, where, ("name", "file", "shape", "dtype"))
        check.text(entry["name"], f"{where}.name")
        check.text(entry["file"], f"{where}.file")
        if entry["file"] not in parts:
            check.fail(f"{where}.file", entry["file"], "a part listed in parts")
        for axis, extent in enumerate(check.array(entry["shape"], f"{where}.shape", MAX_DIMS)):
            check.integer(extent, f"{where}.shape[{axis}]")
        check.text(entry["dtype"], f"{where}.dtype", choices=DTYPES)


def _check_specs(check, specs, key):
    for index, spec in enumerate(check.array(specs, key, least=1)):
        where = f"{key}[{index}]"
        check.object(spec, where, ("name", "shape", "dtype"))
        check.text(spec["name"], f"{where}.name")
        check.text(spec["dtype"], f"{where}.dtype", choices=DTYPES)
        for axis, extent in enumerate(check.array(spec["shape"], f"{where}.shape", MAX_DIMS)):
            if isinstance(extent, str):  # a symbolic dimension: ONNX dim_params are free text
                check.text(extent, f"{where}.shape[{axis}]")
            else:
                check.integer(extent, f"{where}.shape[{axis}]", 1)
        if "index_bound" in spec:  # an integer input that indexes a table: values in [-bound, bound)
            check.integer(spec["index_bound"], f"{where}.index_bound", 1)


def _check_target(check, manifest):
    target = check.object(manifest.get("target", {"kind": "llvm"}), "target", ("kind",))
    check.text(target["kind"], "target.kind", choices=_TARGET_KINDS)
    if target["kind"] == "cuda":
        check.text(target.get("arch"), "target.arch", _CUDA_ARCH)
    for key in ("mtriple", "mcpu"):
        if key in target:
            check.text(target[key], f"target.{key}")
    if "num-cores" in target:
        check.integer(target["num-cores"], "target.num-cores", 1, 1 << 16)


def _check_layers(check, layers):
    for index, layer in enumerate(check.array(layers, "layers")):
        where = f"layers[{index}]"
        check.object(layer, where, ("name", "format", "N", "K", "kernel", "bits_per_weight"))
        for key in ("name", "format", "kernel"):
            check.text(layer[key], f"{where}.{key}")
        for key in ("N", "K"):
            check.integer(layer[key], f"{where}.{key}", 1)
        check.number(layer["bits_per_weight"], f"{where}.bits_per_weight")
        for key in ("weight_sqnr_db", "output_sqnr_db"):
            if key in layer:
                check.number(layer[key], f"{where}.{key}", optional=True)
        for bucket, plan in check.object(layer.get("plans", {}), f"{where}.plans").items():
            check.object(plan, f"{where}.plans[{bucket!r}]")
            check.object(plan.get("config", {}), f"{where}.plans[{bucket!r}].config")
