"""Read and verify a lowbit artifact (the zip :mod:`lowbit.compiler.artifact` writes).

This module owns the artifact schema. It imports neither TVM nor the compiler, so an artifact can be
checked (``lowbit inspect``) where only NumPy is installed.

Checks, in order: the file is a whole zip; it has a manifest; the manifest's ``schema_version`` is one
this runtime reads; every part listed in the manifest is present with the recorded size and sha256.
"""
import hashlib
import io
import json
import os
import zipfile

import numpy as np

from lowbit.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST_PART = "manifest.json"
LIBRARY_PART = "lib.so"
_REQUIRED_KEYS = ("schema_version", "parts", "params", "inputs", "outputs", "entry")


def read_artifact(path):
    """Open and verify the artifact at ``path``.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    manifest : dict
        The parsed ``manifest.json``.
    parts : dict of str to bytes
        Every part the manifest lists (``lib.so``, ``params/<i>.npy``), sizes and hashes verified.

    Raises
    ------
    ArtifactError
        If the file is missing, truncated, not a lowbit artifact, from a newer lowbit, or tampered with.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"artifact {path!r} does not exist or is not a file: check the path")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = _read_manifest(archive, path)
            return manifest, {name: _read_part(archive, path, name, record)
                              for name, record in manifest["parts"].items()}
    except zipfile.BadZipFile as err:
        raise ArtifactError(f"artifact {path!r} is truncated or not a lowbit artifact ({err}): "
                            "copy it again or rebuild it with lowbit.compile(...).save(path)") from err


def _read_manifest(archive, path):
    if MANIFEST_PART not in archive.namelist():
        raise ArtifactError(f"artifact {path!r} has no {MANIFEST_PART}: it is not a lowbit artifact; "
                            "rebuild it with lowbit.compile(...).save(path)")
    try:
        manifest = json.loads(archive.read(MANIFEST_PART).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"artifact {path!r}: {MANIFEST_PART} is not valid JSON ({err}); rebuild it") from err
    if not isinstance(manifest, dict):
        raise ArtifactError(f"artifact {path!r}: {MANIFEST_PART} is not a JSON object; rebuild it")
    _check_schema(manifest.get("schema_version"), path)
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"artifact {path!r}: {MANIFEST_PART} lacks {', '.join(missing)}; rebuild it")
    listed = set(manifest["parts"])
    unlisted = [name for name in [LIBRARY_PART] + [p["file"] for p in manifest["params"]] if name not in listed]
    if unlisted:
        raise ArtifactError(f"artifact {path!r}: parts {', '.join(unlisted)} have no size and sha256 in the "
                            "manifest; rebuild it")
    return manifest


def _check_schema(version, path):
    from lowbit import __version__

    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"artifact {path!r} has schema_version {version!r}, expected an integer in "
                            f"1..{SCHEMA_VERSION}: it is not a lowbit artifact; rebuild it")
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"artifact {path!r} has schema_version {version}, but this lowbit ({__version__}) "
                            f"reads schema_version {SCHEMA_VERSION} and older: upgrade lowbit "
                            "(pip install -U lowbit) or rebuild the artifact with this version")


def _read_part(archive, path, name, record):
    try:
        data = archive.read(name)
    except KeyError as err:
        raise ArtifactError(f"artifact {path!r}: part {name!r} is missing; rebuild the artifact") from err
    except zipfile.BadZipFile as err:  # the zip's own CRC-32 caught a changed byte
        raise ArtifactError(f"artifact {path!r}: part {name!r} is corrupted or tampered with ({err}); "
                            "copy it again or rebuild it") from err
    if len(data) != record.get("size") or hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise ArtifactError(f"artifact {path!r}: part {name!r} does not match the sha256 and size in the "
                            f"manifest (got {len(data)} bytes, expected {record.get('size')}): it was tampered "
                            "with or corrupted; copy it again or rebuild it")
    return data


def load_params(manifest, parts):
    """Return the artifact's params as ``[(name, numpy.ndarray)]`` in call order, shapes and dtypes checked."""
    params = []
    for entry in manifest["params"]:
        array = np.load(io.BytesIO(parts[entry["file"]]), allow_pickle=False)
        if list(array.shape) != list(entry["shape"]) or str(array.dtype) != entry["dtype"]:
            raise ArtifactError(f"param {entry['name']!r} ({entry['file']}) has shape {array.shape} and dtype "
                                f"{array.dtype}, but the manifest says {tuple(entry['shape'])} and "
                                f"{entry['dtype']}; rebuild the artifact")
        params.append((entry["name"], array))
    return params
