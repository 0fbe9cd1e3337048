"""Read and verify a lowbit artifact (the zip :mod:`lowbit.compiler.artifact` writes).

This module owns the artifact schema. It imports neither TVM nor the compiler, so an artifact can be
checked (``lowbit inspect``) where only NumPy is installed.

Checks, in order: the file is a whole zip; it has a manifest, stored (not compressed) and at most
:data:`MAX_MANIFEST_BYTES`; the manifest's ``schema_version`` is one this runtime reads; every field of the
manifest fits its schema (:mod:`lowbit.runtime.manifest`); every part listed in the manifest is present, stored,
with the recorded size (checked against the zip's directory before a byte is read) and sha256.

Nothing is read unbounded: lowbit writes every member stored, so a member's size is its size in the file,
and a compressed member (a zip bomb's way to expand a small file into gigabytes) is refused before reading.
Members are read in chunks of at most :data:`CHUNK` bytes, never past the recorded size.
"""
import hashlib
import io
import json
import os
import zipfile

import numpy as np

from lowbit.errors import ArtifactError
from lowbit.runtime.manifest import check_manifest

SCHEMA_VERSION = 1
MANIFEST_PART = "manifest.json"
LIBRARY_PART = "lib.so"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists parts and layers: megabytes at most, even for an LLM
CHUNK = 16 << 20


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
    data = _read_member(archive, path, MANIFEST_PART, MAX_MANIFEST_BYTES, exact=False)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ArtifactError(f"artifact {path!r}: {MANIFEST_PART} is not valid JSON ({err}); rebuild it") from err
    if not isinstance(manifest, dict):
        raise ArtifactError(f"artifact {path!r}: {MANIFEST_PART} is not a JSON object; rebuild it")
    _check_schema(manifest.get("schema_version"), path)
    check_manifest(manifest, path, manifest["schema_version"])
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
    data = _read_member(archive, path, name, record["size"], exact=True)
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise ArtifactError(f"artifact {path!r}: part {name!r} does not match the sha256 and size in the "
                            "manifest (its sha256 differs): it was "
                            "tampered with or corrupted; copy it again or rebuild it")
    return data


def _read_member(archive, path, name, size, exact):
    """A member's bytes: stored, of ``size`` bytes (``exact``) or at most ``size``, read in bounded chunks."""
    try:
        info = archive.getinfo(name)
    except KeyError as err:
        raise ArtifactError(f"artifact {path!r}: part {name!r} is missing; rebuild the artifact") from err
    if info.compress_type != zipfile.ZIP_STORED:
        raise ArtifactError(f"artifact {path!r}: part {name!r} is compressed (zip method {info.compress_type}), "
                            "but lowbit stores every part uncompressed and reads no compressed member: rebuild "
                            "it with lowbit.compile(...).save(path) instead of re-zipping it")
    if (info.file_size != size) if exact else (info.file_size > size):
        expected = f"{size}" if exact else f"at most {size}"
        raise ArtifactError(f"artifact {path!r}: part {name!r} is {info.file_size} bytes, expected {expected} "
                            "(the manifest's record): it was tampered with or corrupted; copy it again or "
                            "rebuild it")
    chunks, total = [], 0
    try:
        with archive.open(info) as member:
            while total <= info.file_size:
                chunk = member.read(min(CHUNK, info.file_size - total + 1))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # the zip's own CRC-32 caught a changed byte
        raise ArtifactError(f"artifact {path!r}: part {name!r} is corrupted or tampered with ({err}); "
                            "copy it again or rebuild it") from err
    if total != info.file_size:
        raise ArtifactError(f"artifact {path!r}: part {name!r} holds {total} bytes, but the zip records "
                            f"{info.file_size}: the file is truncated or tampered with; copy it again or rebuild it")
    return b"".join(chunks)


def load_params(manifest, parts):
    """Return the artifact's params as ``[(name, numpy.ndarray)]`` in call order, shapes and dtypes checked."""
    params = []
    for entry in manifest["params"]:
        try:
            array = np.load(io.BytesIO(parts[entry["file"]]), allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # not an .npy file
            raise ArtifactError(f"param {entry['name']!r} ({entry['file']}) is not a NumPy .npy array ({err}); "
                                "rebuild the artifact") from err
        if not isinstance(array, np.ndarray):  # an .npz holds several arrays
            raise ArtifactError(f"param {entry['name']!r} ({entry['file']}) is not a NumPy .npy array; "
                                "rebuild the artifact")
        if list(array.shape) != list(entry["shape"]) or str(array.dtype) != entry["dtype"]:
            raise ArtifactError(f"param {entry['name']!r} ({entry['file']}) has shape {array.shape} and dtype "
                                f"{array.dtype}, but the manifest says {tuple(entry['shape'])} and "
                                f"{entry['dtype']}; rebuild the artifact")
        params.append((entry["name"], array))
    return params
