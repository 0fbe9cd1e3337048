"""Load a lowbit artifact and run it: TVM's runtime library only, NumPy in, NumPy out.

:func:`load` checks the artifact (see :mod:`lowbit.runtime.artifact`) and that this CPU has the features
its code was compiled for, then loads the library into a Relax virtual machine. :class:`Module` validates
each call's inputs against the manifest before they reach native code.
"""
import os
import sys
import tempfile

import numpy as np

from lowbit.errors import InputError, TargetError
from lowbit.runtime.artifact import LIBRARY_PART, load_params, read_artifact
from lowbit.runtime.host import host_arch, host_cpu_features


def _import_tvm():
    """Import TVM in runtime-only mode, without torch, with one thread per core this process may use."""
    if "tvm" in sys.modules:  # the compiler (or the user) imported it already: reuse it as it is
        return sys.modules["tvm"]
    # A user's setting wins. TVM's pool otherwise starts half the logical CPUs (it assumes hyper-threading).
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    # apache-tvm-ffi imports torch when it is installed (seconds, and gigabytes mapped) to work around a
    # symbol clash; lowbit passes NumPy arrays, so keep torch out unless the user imported it already.
    block_torch = "torch" not in sys.modules
    if block_torch:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        import tvm
        import tvm.runtime.vm  # noqa: F401
    finally:
        if block_torch and sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
    return tvm


def _artifact_arch(manifest):
    triple = manifest.get("target", {}).get("mtriple", "")
    return triple.split("-", 1)[0] if triple else None


def _check_host(manifest, path):
    cpu = manifest.get("cpu", "unknown CPU")
    arch = _artifact_arch(manifest)
    if arch and arch != host_arch():
        raise TargetError(f"artifact {path!r} was compiled for {arch} ({cpu}) but this machine is {host_arch()}: "
                          "compile the model again on (or for) this machine")
    missing = sorted(set(manifest.get("required_features", [])) - host_cpu_features())
    if missing:
        raise TargetError(f"artifact {path!r} needs CPU features {', '.join(missing)} that this CPU lacks "
                          f"(it was compiled for {cpu}, target {manifest.get('target_tag', '?')}): compile the "
                          "model again on this machine, or for a target without those features")


def load(path):
    """Load the artifact at ``path`` for running on this CPU.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``lowbit.compile(...).save(path)``.

    Returns
    -------
    Module

    Raises
    ------
    ArtifactError
        The file is truncated, tampered with, or from a newer lowbit.
    TargetError
        This CPU lacks an instruction-set feature (or the architecture) the artifact was compiled for.
    """
    path = os.fspath(path)
    manifest, parts = read_artifact(path)
    _check_host(manifest, path)
    params = load_params(manifest, parts)
    tvm = _import_tvm()
    with tempfile.TemporaryDirectory(prefix="lowbit-load-") as workdir:
        lib_path = os.path.join(workdir, LIBRARY_PART)
        with open(lib_path, "wb") as f:
            f.write(parts[LIBRARY_PART])
        library = tvm.runtime.load_module(lib_path)  # dlopen'ed: the file may go once loaded
    machine = tvm.runtime.vm.VirtualMachine(library, tvm.cpu())
    return Module(manifest, machine, [tvm.runtime.tensor(array) for _, array in params], tvm)


class Module:
    """A loaded artifact: call it with NumPy arrays, get NumPy arrays back.

    ``module(x)``, ``module(x=x)`` or, for several inputs, positions and names in the manifest's order.
    Each input's dtype must match exactly and its shape must be ``(M, K)`` with any ``M >= 1``.
    """

    def __init__(self, manifest, machine, params, tvm):
        self._manifest = manifest
        self._entry = machine[manifest["entry"]]
        self._machine = machine  # the entry function is owned by the VM: keep the VM alive with it
        self._params = params
        self._tensor = tvm.runtime.tensor

    @property
    def manifest(self):
        """The artifact's manifest (dict)."""
        return self._manifest

    @property
    def inputs(self):
        """Input specs: ``[{"name", "shape", "dtype"}]``; ``"M"`` in a shape means any size >= 1."""
        return self._manifest["inputs"]

    @property
    def outputs(self):
        """Output specs, as :attr:`inputs`."""
        return self._manifest["outputs"]

    @property
    def layers(self):
        """Compiled layers: name, format, N, K, kernel, schedules per M bucket."""
        return self._manifest.get("layers", [])

    def __call__(self, *inputs, **named):
        """Run the model; returns one NumPy array (or a tuple of them when the model has several outputs)."""
        arrays = [self._tensor(_checked(array, spec)) for array, spec in zip(self._bind(inputs, named), self.inputs)]
        result = self._entry(*arrays, *self._params)
        if len(self.outputs) == 1:
            return result.numpy()
        return tuple(item.numpy() for item in result)

    def _bind(self, inputs, named):
        names = [spec["name"] for spec in self.inputs]
        if len(inputs) > len(names):
            raise InputError(f"model takes {len(names)} input(s) ({', '.join(names)}), got {len(inputs)} "
                             "positional arrays: pass one array per input")
        unknown = sorted(set(named) - set(names))
        if unknown:
            raise InputError(f"unknown input name(s) {', '.join(unknown)}: the model's inputs are {', '.join(names)}")
        bound = dict(zip(names, inputs))
        twice = sorted(set(bound) & set(named))
        if twice:
            raise InputError(f"input(s) {', '.join(twice)} given both by position and by name: pass each once")
        bound.update(named)
        missing = [name for name in names if name not in bound]
        if missing:
            raise InputError(f"missing input(s) {', '.join(missing)}: the model's inputs are {', '.join(names)}")
        return [bound[name] for name in names]

    def __repr__(self):
        specs = ", ".join(f"{s['name']}: {s['dtype']}{_shape_text(s['shape'])}" for s in self.inputs)
        return f"<lowbit.runtime.Module ({specs}) {self._manifest.get('target_tag', '')}, {len(self.layers)} layers>"


def _shape_text(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _checked(array, spec):
    """Return ``array`` as a contiguous ndarray if its dtype and shape fit ``spec``; else raise InputError."""
    name, expected = spec["name"], _shape_text(spec["shape"])
    if isinstance(array, np.generic):  # a NumPy scalar (np.float32(0.5)) is a 0-d array of its dtype
        array = np.asarray(array)
    if not isinstance(array, np.ndarray):
        raise InputError(f"input {name!r} is a {type(array).__name__}, expected a NumPy array "
                         f"{spec['dtype']}{expected}: convert it with np.asarray(..., dtype=np.{spec['dtype']})")
    if array.dtype != np.dtype(spec["dtype"]):
        raise InputError(f"input {name!r} has dtype {array.dtype}, expected {spec['dtype']}: "
                         f"cast it with .astype(np.{spec['dtype']})")
    if array.ndim != len(spec["shape"]):
        raise InputError(f"input {name!r} has shape {array.shape} ({array.ndim} dims), expected {expected} "
                         f"({len(spec['shape'])} dims): reshape it to {expected}")
    for axis, (got, want) in enumerate(zip(array.shape, spec["shape"])):
        if isinstance(want, str) and got < 1 or not isinstance(want, str) and got != want:
            limit = f"{want} >= 1" if isinstance(want, str) else str(want)
            raise InputError(f"input {name!r} has shape {array.shape}, expected {expected}: axis {axis} is {got}, "
                             f"must be {limit}; pass an array of shape {expected}")
    return np.ascontiguousarray(array) if array.ndim else array  # ascontiguousarray makes 0-d arrays 1-d
