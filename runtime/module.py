"""Load a lowbit artifact and run it: TVM's runtime library only, NumPy in, NumPy out.

:func:`load` checks the artifact (see :mod:`lowbit.runtime.artifact`) and that this CPU has the features
its code was compiled for, then loads the library into a Relax virtual machine. :class:`Module` validates
each call's inputs against the manifest before they reach native code.
"""
import contextlib
import os
import sys
import tempfile
import threading

import numpy as np

from lowbit.errors import ArtifactError, InputError, TargetError
from lowbit.runtime.artifact import LIBRARY_PART, load_params, read_artifact
from lowbit.runtime.cuda import cuda_device, device_code, is_cuda_manifest, provide_device_code
from lowbit.runtime.host import host_arch, host_cpu_features
from lowbit.runtime.threads import configure_thread_pool


def _import_tvm():
    """Import TVM in runtime-only mode, without torch; the calling thread's pool gets every core (threads.py)."""
    if "tvm" in sys.modules:  # the compiler (or the user) imported it already: reuse it as it is
        import tvm.runtime.vm  # noqa: F401 (``import tvm`` alone does not import the VM)

        configure_thread_pool()
        return sys.modules["tvm"]
    # apache-tvm-ffi imports torch when it is installed (seconds, and gigabytes mapped) to work around a
    # symbol clash; lowbit passes NumPy arrays, so keep torch out unless the user imported it already.
    block_torch = "torch" not in sys.modules
    if block_torch:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        with _environment(TVM_USE_RUNTIME_LIB="1"):  # read once, by `import tvm`; a user's setting wins
            import tvm
            import tvm.runtime.vm  # noqa: F401
    finally:
        if block_torch and sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
    configure_thread_pool()  # this thread's kernels (lowbit measure times them here) run on every core
    return tvm


@contextlib.contextmanager
def _environment(**defaults):
    """Set environment variables the user has not set, for the ``with`` body only.

    Whatever is in ``os.environ`` is inherited by every child process: a ``TVM_USE_RUNTIME_LIB=1`` left
    there made a child ``lowbit compile`` load TVM without its compiler.
    """
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _artifact_arch(manifest):
    triple = manifest.get("target", {}).get("mtriple", "")
    return triple.split("-", 1)[0] if triple else None


def _check_host(manifest, path):
    if is_cuda_manifest(manifest):  # the host code is generic x86-64; the GPU is checked once TVM is loaded
        if host_arch() != "x86_64":
            raise TargetError(f"artifact {path!r} has x86-64 host code but this machine is {host_arch()}: "
                              "compile the model again on (or for) this machine")
        return
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
    """Load the artifact at ``path`` for running on this CPU, or on this machine's GPU (CUDA artifacts).

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
        This CPU lacks an instruction-set feature (or the architecture) the artifact was compiled for; or,
        for a CUDA artifact, there is no GPU, no CUDA driver, or the GPU is older than the artifact's arch.
    """
    path = os.fspath(path)
    manifest, parts = read_artifact(path)
    _check_host(manifest, path)
    params = load_params(manifest, parts)
    tvm = _import_tvm()
    device = tvm.cpu()
    if is_cuda_manifest(manifest):
        device = cuda_device(tvm, manifest, path)
        provide_device_code(device_code(manifest, parts), path)
    machine = _virtual_machine(tvm, parts[LIBRARY_PART], device, manifest["entry"], path)
    return Module(manifest, machine, [tvm.runtime.tensor(array, device) for _, array in params], tvm, device)


def _virtual_machine(tvm, library_bytes, device, entry, path):
    """The Relax VM of the artifact's ``lib.so``; ArtifactError when it is not a lowbit-built TVM module."""
    with tempfile.TemporaryDirectory(prefix="lowbit-load-") as workdir:
        lib_path = os.path.join(workdir, LIBRARY_PART)
        with open(lib_path, "wb") as f:
            f.write(library_bytes)
        try:  # dlopen'ed: the file may go once loaded
            library = tvm.runtime.load_module(lib_path)
            machine = tvm.runtime.vm.VirtualMachine(library, device)
            machine[entry]  # noqa: B018 (raises when the VM has no such function)
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types (and AttributeError) here
            raise ArtifactError(f"artifact {path!r}: {LIBRARY_PART} is not a TVM Relax VM module with function "
                                f"{entry!r} that this TVM can load ({type(err).__name__}: "
                                f"{str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}); "
                                "rebuild the artifact with this lowbit") from err
    return machine


class Module:
    """A loaded artifact: call it with NumPy arrays, get NumPy arrays back.

    ``module(x)``, ``module(x=x)`` or, for several inputs, positions and names in the manifest's order.
    Each input's dtype must match exactly and its shape must be ``(M, K)`` with any ``M >= 1``.
    A module may be called from many threads at once: calls run one at a time (a Relax VM is not
    re-entrant), each on every core (see docs/runtime.md for why one VM with a lock, not a VM per thread).
    On a GPU, inputs may also be DLPack tensors already on the device (torch CUDA tensors): they are passed
    without a copy, and the outputs are then returned as device tensors (``torch.from_dlpack(y)``, no copy).
    """

    def __init__(self, manifest, machine, params, tvm, device=None):
        self._manifest = manifest
        self._entry = machine[manifest["entry"]]
        self._machine = machine  # the entry function is owned by the VM: keep the VM alive with it
        self._params = params
        self._device = device if device is not None else tvm.cpu()
        self._tvm = tvm
        self._lock = threading.Lock()  # the VM's registers and memory pool are shared: one call at a time

    def _tensor(self, array, spec):
        """An input on the model's device: DLPack tensors and, on the CPU, writeable NumPy arrays that are
        64-byte aligned are wrapped without a copy (the call reads them before it returns); others are copied
        (on the CPU into a 64-byte aligned NumPy buffer, then wrapped)."""
        if not isinstance(array, np.ndarray) and hasattr(array, "__dlpack__"):
            return _checked_dlpack(self._tvm.runtime.from_dlpack(array), spec, self._device)
        array = _checked(array, spec)
        if self._device.dlpack_device_type() == 1 and array.ndim:
            # wrapped, not copied by TVM (0.4 us, against 19 us for tvm.runtime.tensor of a small input)
            return self._tvm.runtime.from_dlpack(_aligned(array))
        return self._tvm.runtime.tensor(array, self._device)

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
        given = self._bind(inputs, named)
        keep = any(not isinstance(array, np.ndarray) and hasattr(array, "__dlpack__") for array in given)
        arrays = [self._tensor(array, spec) for array, spec in zip(given, self.inputs)]
        configure_thread_pool()  # once per calling thread, before its first kernel
        with self._lock:
            result = self._entry(*arrays, *self._params)
            items = [result] if len(self.outputs) == 1 else list(result)
            items = items if keep else [item.numpy() for item in items]
        return items[0] if len(self.outputs) == 1 else tuple(items)

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


_ALIGNMENT = 64  # TVM's kernels assume 64-byte aligned buffers; other arrays are copied into aligned ones


def _aligned(array):
    """``array`` itself when writeable and 64-byte aligned (it is C-contiguous already), else an aligned copy."""
    if array.flags.writeable and array.ctypes.data % _ALIGNMENT == 0:
        return array
    raw = np.empty(array.nbytes + _ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % _ALIGNMENT
    copy = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    np.copyto(copy, array)
    return copy


def _checked_dlpack(tensor, spec, device):
    """Check a DLPack tensor's dtype, shape and device against ``spec``; return it (no copy)."""
    name, expected = spec["name"], _shape_text(spec["shape"])
    if str(tensor.dtype) != spec["dtype"]:
        raise InputError(f"input {name!r} has dtype {tensor.dtype}, expected {spec['dtype']}: cast it first")
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != len(spec["shape"]) or any(
            (got < 1) if isinstance(want, str) else (got != want) for got, want in zip(shape, spec["shape"])):
        raise InputError(f"input {name!r} has shape {shape}, expected {expected}: pass a tensor of that shape")
    if (tensor.device.dlpack_device_type(), tensor.device.index) != (device.dlpack_device_type(), device.index):
        raise InputError(f"input {name!r} is on {tensor.device}, but the model runs on {device}: move it there "
                         "first (e.g. tensor.to('cuda:0'))")
    return tensor


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
    bound = spec.get("index_bound")
    if bound is not None and array.size:
        low, high = int(array.min()), int(array.max())
        if low < -bound or high >= bound:
            bad = low if low < -bound else high
            raise InputError(f"input {name!r} holds {bad}, but it indexes a table of {bound} rows (the model's "
                             f"embedding, say): its values must be in [{-bound}, {bound - 1}]")
    return np.ascontiguousarray(array) if array.ndim else array  # ascontiguousarray makes 0-d arrays 1-d
