"""Hostile and corrupted artifacts: every bad byte and every bad manifest field is an ArtifactError naming it.

A zip bomb, a member whose size disagrees with the manifest, a library TVM cannot load, a param that is not
.npy, manifest fields of the wrong type or range; then seeded random byte flips and random manifest mutations,
each of which must end in ``ArtifactError`` (or load and run), never another exception or a crash.
"""
import copy
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

import lowbit
import lowbit.runtime
from lowbit.compiler.graph import Activation, Linear, Sequential
from lowbit.errors import ArtifactError, LowbitError
from lowbit.runtime.artifact import read_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    rng = np.random.default_rng(11)
    model = Sequential([Linear(rng.standard_normal((32, 64)).astype(np.float32), None, "fc1"), Activation("relu"),
                        Linear(rng.standard_normal((16, 32)).astype(np.float32), None, "fc2")])
    path = tmp_path_factory.mktemp("fuzz") / "mlp.lowbit"
    lowbit.compile(model, format="w4g32", kernel="decode").save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return {"path": str(path), "manifest": json.loads(members.pop("manifest.json")), "members": members}


def _write(path, manifest, members, compress=None, manifest_bytes=None):
    """An artifact zip of ``manifest`` and ``members`` (name -> bytes); ``compress``: names to deflate."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.json", manifest_bytes if manifest_bytes is not None else json.dumps(manifest))
        for name, data in members.items():
            method = zipfile.ZIP_DEFLATED if compress and name in compress else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return str(path)


def _resealed(manifest, members):
    """The manifest with every part's size and sha256 recomputed from ``members`` (a consistent forgery)."""
    manifest = copy.deepcopy(manifest)
    manifest["parts"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                         for name, data in members.items()}
    return manifest


def test_compressed_lib_bomb_is_refused_before_it_is_decompressed(artifact, tmp_path):
    """Regression: a deflated lib.so that expands to gigabytes was decompressed in full before its size was
    checked. The bomb here claims its real size in the manifest (a consistent forgery), and is still refused."""
    bomb = bytes(256 << 20)  # 256 MiB of zeros deflate to ~250 KiB
    members = dict(artifact["members"], **{"lib.so": bomb})
    path = _write(tmp_path / "bomb.lowbit", _resealed(artifact["manifest"], members), members, compress={"lib.so"})
    with pytest.raises(ArtifactError, match=r"part 'lib\.so' is compressed .* reads no compressed member"):
        read_artifact(path)


def test_compressed_manifest_is_refused(artifact, tmp_path):
    path = tmp_path / "m.lowbit"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(artifact["manifest"]))
    with pytest.raises(ArtifactError, match=r"part 'manifest\.json' is compressed"):
        read_artifact(path)


def test_oversized_manifest_is_refused_by_its_directory_size(artifact, tmp_path):
    padded = json.dumps(dict(artifact["manifest"], padding="x" * (65 << 20)))
    path = _write(tmp_path / "big.lowbit", None, artifact["members"], manifest_bytes=padded)
    with pytest.raises(ArtifactError, match=r"part 'manifest\.json' is \d+ bytes, expected at most 67108864"):
        read_artifact(path)


def test_member_size_differing_from_the_manifest_is_refused(artifact, tmp_path):
    members = dict(artifact["members"], **{"params/0.npy": artifact["members"]["params/0.npy"] + bytes(100)})
    path = _write(tmp_path / "grown.lowbit", artifact["manifest"], members)
    with pytest.raises(ArtifactError, match=r"part 'params/0\.npy' is \d+ bytes, expected \d+ \(the manifest"):
        read_artifact(path)


@pytest.mark.parametrize("library", [b"\x7fELF not really", "libz"], ids=["garbage", "elf-not-tvm"])
def test_library_tvm_cannot_load_is_an_artifact_error(artifact, tmp_path, library):
    if library == "libz":
        library = open("/usr/lib/x86_64-linux-gnu/libz.so.1", "rb").read()
    members = dict(artifact["members"], **{"lib.so": library})
    path = _write(tmp_path / "lib.lowbit", _resealed(artifact["manifest"], members), members)
    with pytest.raises(ArtifactError, match=r"lib\.so is not a TVM Relax VM module"):
        lowbit.runtime.load(path)


@pytest.mark.parametrize("data", [b"hello", b"PK\x03\x04junk", b"\x93NUMPY\x01\x00garbage"], ids=str)
def test_param_that_is_not_npy_is_an_artifact_error(artifact, tmp_path, data):
    members = dict(artifact["members"], **{"params/1.npy": data})
    path = _write(tmp_path / "p.lowbit", _resealed(artifact["manifest"], members), members)
    with pytest.raises(ArtifactError, match=r"param .* \(params/1\.npy\) is not a NumPy \.npy array"):
        lowbit.runtime.load(path)


def _set(path_in_manifest, value):
    def edit(manifest):
        node = manifest
        for key in path_in_manifest[:-1]:
            node = node[key]
        node[path_in_manifest[-1]] = value
    return edit


BAD_FIELDS = {
    "schema-bool": (_set(["schema_version"], True), "schema_version"),
    "schema-string": (_set(["schema_version"], "1"), "schema_version"),
    "entry-number": (_set(["entry"], 5), "entry"),
    "entry-empty": (_set(["entry"], ""), "entry"),
    "parts-list": (_set(["parts"], []), "parts"),
    "part-size-string": (_set(["parts", "lib.so", "size"], "82296"), r"parts\['lib\.so'\]\.size"),
    "part-size-negative": (_set(["parts", "lib.so", "size"], -1), r"parts\['lib\.so'\]\.size"),
    "part-size-huge": (_set(["parts", "lib.so", "size"], 1 << 60), r"parts\['lib\.so'\]\.size"),
    "part-sha-short": (_set(["parts", "lib.so", "sha256"], "abc"), r"parts\['lib\.so'\]\.sha256"),
    "params-dict": (_set(["params"], {}), "params"),
    "param-shape-negative": (_set(["params", 0, "shape"], [-1, 4]), r"params\[0\]\.shape\[0\]"),
    "param-shape-float": (_set(["params", 0, "shape"], [1.5]), r"params\[0\]\.shape\[0\]"),
    "param-shape-deep": (_set(["params", 0, "shape"], [1] * 40), r"params\[0\]\.shape"),
    "param-dtype-object": (_set(["params", 0, "dtype"], "object"), r"params\[0\]\.dtype"),
    "param-file-unlisted": (_set(["params", 0, "file"], "../../etc/passwd"), r"params\[0\]\.file"),
    "inputs-empty": (_set(["inputs"], []), "inputs"),
    "input-dim-zero": (_set(["inputs", 0, "shape"], ["M", 0]), r"inputs\[0\]\.shape\[1\]"),
    "input-dim-bool": (_set(["inputs", 0, "shape"], ["M", True]), r"inputs\[0\]\.shape\[1\]"),
    "input-dtype": (_set(["inputs", 0, "dtype"], "float128"), r"inputs\[0\]\.dtype"),
    "output-not-object": (_set(["outputs", 0], "y"), r"outputs\[0\]"),
    "target-string": (_set(["target"], "cpu"), "target"),
    "target-kind": (_set(["target", "kind"], "opencl"), r"target\.kind"),
    "cuda-no-arch": (_set(["target"], {"kind": "cuda"}), r"target\.arch"),
    "cuda-bad-arch": (_set(["target"], {"kind": "cuda", "arch": "sm_x"}), r"target\.arch"),
    "num-cores-zero": (_set(["target", "num-cores"], 0), r"target\.num-cores"),
    "features-string": (_set(["required_features"], "avx2"), "required_features"),
    "feature-number": (_set(["required_features"], [3]), r"required_features\[0\]"),
    "layer-n-string": (_set(["layers", 0, "N"], "big"), r"layers\[0\]\.N"),
    "layer-bits-nan": (_set(["layers", 0, "bits_per_weight"], float("nan")), r"layers\[0\]\.bits_per_weight"),
    "layers-dict": (_set(["layers"], {}), "layers"),
    "device-code-unlisted": (_set(["device_code"], [{"source_sha256": "0" * 64, "file": "x.fatbin"}]),
                             r"device_code\[0\]\.file"),
    "cpu-number": (_set(["cpu"], 7), "cpu"),
}


@pytest.mark.parametrize("edit, field", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_bad_manifest_field_is_an_artifact_error_naming_the_field(artifact, tmp_path, edit, field):
    manifest = copy.deepcopy(artifact["manifest"])
    edit(manifest)
    path = _write(tmp_path / "bad.lowbit", manifest, artifact["members"])
    with pytest.raises(ArtifactError, match=field):
        read_artifact(path)


def test_deeply_nested_manifest_is_an_artifact_error(artifact, tmp_path):
    path = _write(tmp_path / "deep.lowbit", None, artifact["members"], manifest_bytes="[" * 100000 + "]" * 100000)
    with pytest.raises(ArtifactError, match="not valid JSON|not a JSON object"):
        read_artifact(path)


def test_random_byte_flips_end_in_artifact_error(artifact):
    """Seeded fuzz: 300 single-byte changes anywhere in the file; sha256 and the zip's CRC catch every one
    that reading could notice, and nothing but ArtifactError escapes."""
    data = open(artifact["path"], "rb").read()
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "ok": 0}
    for _ in range(300):
        mutated = bytearray(data)
        mutated[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
        try:
            with zipfile.ZipFile(io.BytesIO(bytes(mutated))):
                pass
        except zipfile.BadZipFile:
            outcomes["error"] += 1
            continue
        outcomes[_read(bytes(mutated))] += 1
    assert outcomes["error"] > 250, outcomes  # the few 'ok' flips hit zip metadata nobody reads (timestamps)


def _read(data):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".lowbit") as f:
        f.write(data)
        f.flush()
        try:
            read_artifact(f.name)
            return "ok"
        except ArtifactError:
            return "error"


_JUNK = [None, True, -1, 0, 2 ** 63, 1e308, "", "x" * 5000, [], {}, [[[]]], {"a": {"b": {}}}, "../lib.so"]


def _leaves(node, trail=()):
    yield trail
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _leaves(child, trail + (key,))


def test_random_manifest_mutations_end_in_artifact_error_or_a_working_load(artifact, tmp_path):
    """Seeded fuzz: 120 manifests with one node replaced by junk; each is refused with ArtifactError, or reads
    (a field the runtime does not use) and then loads and runs with nothing but LowbitError escaping."""
    rng = np.random.default_rng(1)
    trails = [t for t in _leaves(artifact["manifest"]) if t]
    x = np.ones((2, 64), np.float32)
    outcomes = {"refused": 0, "loaded": 0, "load-error": 0}
    for index in range(120):
        manifest = copy.deepcopy(artifact["manifest"])
        trail = trails[int(rng.integers(len(trails)))]
        _set(list(trail), copy.deepcopy(_JUNK[int(rng.integers(len(_JUNK)))]))(manifest)
        path = _write(tmp_path / f"m{index}.lowbit", manifest, artifact["members"])
        try:
            read_artifact(path)
        except ArtifactError:
            outcomes["refused"] += 1
            continue
        try:
            lowbit.runtime.load(path)(x)
            outcomes["loaded"] += 1
        except LowbitError:
            outcomes["load-error"] += 1
    print(outcomes)
    assert outcomes["refused"] > 60 and outcomes["loaded"] > 5, outcomes  # both sides of the schema reached
