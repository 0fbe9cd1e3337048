"""Write a lowbit artifact: one uncompressed zip with the manifest, the library and the params.

Layout (read back by :mod:`lowbit.runtime.artifact`, which owns the schema version)::

    manifest.json     what the model takes and returns, its layers, versions, and a sha256 per part
    lib.so            the Relax VM executable (``export_library``)
    params/<i>.npy    the packed weights, in the order the entry function takes them
    device/<i>.fatbin CUDA artifacts: the device code, compiled by nvcc at compile time

The zip is stored, not deflated: weights are packed bits already, and the runtime reads the parts
without spending time on decompression. Writing is atomic: the zip is built in a temporary file in the
destination folder, flushed to disk, then renamed over ``path``; a failure leaves ``path`` untouched.
"""
import hashlib
import io
import json
import os
import tempfile
import zipfile

import numpy as np

import lowbit
from lowbit.errors import ArtifactError
from lowbit.runtime.artifact import LIBRARY_PART, MANIFEST_PART, SCHEMA_VERSION
from lowbit.runtime.atomic import atomic_file


def write_artifact(path, library, params, manifest, device_code=()):
    """Write the artifact file ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (conventionally ``*.lowbit``); its folder must exist and be writable.
    library : tvm.runtime.Executable
        The Relax VM executable from ``tvm.compile``; exported as a shared library.
    params : list of (str, numpy.ndarray)
        The entry function's parameters after its inputs, in call order.
    manifest : dict
        Target, inputs, outputs, layers and entry name; this function adds versions, params and parts.
    device_code : list of (str, bytes)
        CUDA artifacts: (sha256 of a CUDA module's source, the fatbin nvcc built from it), stored as
        ``device/<i>.fatbin`` and listed in ``manifest["device_code"]``.

    Returns
    -------
    str
        ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ArtifactError(f"cannot write artifact {path!r}: folder {folder!r} does not exist or is not "
                            "writable; create it or choose another path")
    with tempfile.TemporaryDirectory(prefix="lowbit-export-") as workdir:
        lib_path = os.path.join(workdir, LIBRARY_PART)
        library.export_library(lib_path)
        with open(lib_path, "rb") as f:
            parts = {LIBRARY_PART: f.read()}
    param_entries = []
    for index, (name, array) in enumerate(params):
        part = f"params/{index}.npy"
        parts[part] = _npy_bytes(array)
        param_entries.append({"name": name, "file": part, "shape": list(array.shape), "dtype": str(array.dtype),
                              "sha256": hashlib.sha256(parts[part]).hexdigest()})
    code_entries = []
    for index, (source_sha, fatbin) in enumerate(device_code):
        part = f"device/{index}.fatbin"
        parts[part] = bytes(fatbin)
        code_entries.append({"source_sha256": source_sha, "file": part})
    if code_entries:
        manifest = dict(manifest, device_code=code_entries)
    full = dict(manifest, **_versions(), params=param_entries,
                parts={name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                       for name, data in parts.items()})
    _write_zip_atomically(path, folder, full, parts)
    return path


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _versions():
    import tvm

    return {"schema_version": SCHEMA_VERSION, "lowbit_version": lowbit.__version__, "tvm_version": tvm.__version__}


def _write_zip_atomically(path, folder, manifest, parts):
    try:
        with atomic_file(path) as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
                archive.writestr(MANIFEST_PART, json.dumps(manifest, indent=2))
                for name, data in parts.items():
                    archive.writestr(name, data)
    except OSError as err:
        raise ArtifactError(f"cannot write artifact {path!r}: {err}; check the path and free disk space") from err
