"""The artifact round trip: save, verify, load with the runtime only, refuse bad files and bad inputs."""
import hashlib
import re
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import lowbit
import lowbit.runtime
from lowbit.compiler.graph import Activation, Linear, Sequential
from lowbit.errors import ArtifactError, InputError, TargetError

# Runs in a fresh interpreter: what does loading an artifact pull into the process?
_FRESH = r"""
import json, os, sys
import numpy as np
import lowbit.runtime
tvm_at_import = "tvm" in sys.modules
model = lowbit.runtime.load(sys.argv[1])
np.save(sys.argv[3], model(np.load(sys.argv[2])))
maps = [line.split()[-1] for line in open("/proc/self/maps") if "libtvm" in line]
print(json.dumps({
    "modules": [m for m in ("lowbit.compiler", "lowbit.frontends", "onnx", "torch", "tvm.relax")
                if m in sys.modules],
    "libs": sorted({os.path.basename(path) for path in maps}),
    "tvm_at_import": tvm_at_import,
    "torch_entry_left": "torch" in sys.modules,
    "threads": __import__("tvm_ffi").get_global_func("runtime.NumThreads")(),
    "env_threads": os.environ.get("TVM_NUM_THREADS"),
    "cores": len(os.sched_getaffinity(0)),
}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One compiled MLP (64 -> 96 -> relu -> 48, w4g32), saved once; with an input and its in-process output."""
    rng = np.random.default_rng(7)
    model = Sequential([
        Linear(rng.standard_normal((96, 64)).astype(np.float32), rng.standard_normal(96).astype(np.float32), "fc1"),
        Activation("relu"),
        Linear(rng.standard_normal((48, 96)).astype(np.float32), None, "fc2"),
    ])
    compiled = lowbit.compile(model, target="cpu", format="w4g32")
    folder = tmp_path_factory.mktemp("artifact")
    path = str(folder / "mlp.lowbit")
    compiled.save(path)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    np.save(folder / "x.npy", x)
    return {"path": path, "folder": folder, "compiled": compiled, "x": x, "y": compiled(x)}


@pytest.fixture(scope="module")
def loaded(saved):
    return lowbit.runtime.load(saved["path"])


def _rewrite(src, dst, manifest=None, members=None):
    """Copy the artifact zip ``src`` to ``dst``, editing the manifest dict and/or member bytes on the way."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as new:
        for name in old.namelist():
            data = old.read(name)
            if name == "manifest.json" and manifest is not None:
                data = json.dumps(manifest(json.loads(data))).encode()
            elif members and name in members:
                data = members[name](data)
            new.writestr(name, data)
    return str(dst)


def _flip_last_byte(data):
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _lowbit_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lowbit", *args], capture_output=True, text=True, check=False,
                          env=dict(os.environ, **(env or {})), timeout=120)


# --- what save writes -------------------------------------------------------------------------------------

def test_manifest_records_versions_params_and_part_hashes(saved):
    with zipfile.ZipFile(saved["path"]) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        parts = {name: archive.read(name) for name in archive.namelist() if name != "manifest.json"}
    assert manifest["schema_version"] == 1
    assert manifest["lowbit_version"] == lowbit.__version__
    assert manifest["tvm_version"].startswith("0.27")
    assert set(parts) == set(manifest["parts"]) == {"lib.so"} | {p["file"] for p in manifest["params"]}
    for name, data in parts.items():
        assert manifest["parts"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    compiled_params = saved["compiled"].compiled.params
    assert [p["name"] for p in manifest["params"]] == [name for name, _ in compiled_params]
    assert [p["shape"] for p in manifest["params"]] == [list(a.shape) for _, a in compiled_params]
    assert [layer["name"] for layer in manifest["layers"]] == ["fc1", "fc2"]


# --- loading and running ----------------------------------------------------------------------------------

def test_fresh_process_output_equals_in_process_and_loads_runtime_only(saved, tmp_path):
    # A fake torch that leaves a mark when imported: apache-tvm-ffi tries `import torch` at import time.
    (tmp_path / "torch").mkdir()
    marker = tmp_path / "torch-was-imported"
    (tmp_path / "torch" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('fake')\n")
    out = tmp_path / "y.npy"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    env.pop("TVM_NUM_THREADS", None)
    env.pop("TVM_USE_RUNTIME_LIB", None)
    proc = subprocess.run([sys.executable, "-c", _FRESH, saved["path"], str(saved["folder"] / "x.npy"), str(out)],
                          capture_output=True, text=True, check=False, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.load(out), saved["y"])
    assert report["modules"] == []
    assert not marker.exists(), "loading an artifact imported torch"
    assert not report["torch_entry_left"], "the torch block was left in sys.modules"
    assert not report["tvm_at_import"], "import lowbit.runtime imported tvm"
    assert "libtvm_runtime.so" in report["libs"]
    assert not {"libtvm_compiler.so", "libtvm.so"} & set(report["libs"]), report["libs"]
    assert report["threads"] == report["cores"]
    assert report["env_threads"] is None, "load() set TVM_NUM_THREADS for every child process"


def test_call_by_name_and_other_row_counts(saved, loaded):
    np.testing.assert_array_equal(loaded(x=saved["x"]), saved["y"])
    for rows in (1, 3, 40):
        x = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
        np.testing.assert_array_equal(loaded(x), saved["compiled"](x))
    assert [spec["name"] for spec in loaded.inputs] == ["x"] and loaded.outputs[0]["shape"] == ["M", 48]
    assert [layer["format"] for layer in loaded.layers] == ["w4g32", "w4g32"]


def test_non_contiguous_input_is_accepted(saved, loaded):
    x = np.asfortranarray(saved["x"])
    np.testing.assert_array_equal(loaded(x), saved["y"])


@pytest.mark.parametrize("make, message", [
    (lambda x: x.astype(np.float64), r"input 'x' has dtype float64, expected float32: cast it with \.astype"),
    (lambda x: x[:, :63], r"input 'x' has shape \(5, 63\), expected \(M, 64\): axis 1 is 63, must be 64"),
    (lambda x: x[None], r"input 'x' has shape \(1, 5, 64\) \(3 dims\), expected \(M, 64\) \(2 dims\)"),
    (lambda x: x[:0], r"axis 0 is 0, must be M >= 1"),
    (lambda x: x.tolist(), r"input 'x' is a list, expected a NumPy array float32\(M, 64\)"),
], ids=["dtype", "wrong-K", "ndim", "zero-rows", "not-an-array"])
def test_bad_input_raises_input_error(saved, loaded, make, message):
    with pytest.raises(InputError, match=message):
        loaded(make(saved["x"]))


def test_bad_input_binding_raises_input_error(saved, loaded):
    with pytest.raises(InputError, match=r"model takes 1 input\(s\) \(x\), got 2"):
        loaded(saved["x"], saved["x"])
    with pytest.raises(InputError, match=r"unknown input name\(s\) z: the model's inputs are x"):
        loaded(z=saved["x"])
    with pytest.raises(InputError, match=r"missing input\(s\) x"):
        loaded()
    with pytest.raises(InputError, match="given both by position and by name"):
        loaded(saved["x"], x=saved["x"])


# --- refusing bad artifacts -------------------------------------------------------------------------------

def test_truncated_file_raises_artifact_error(saved, tmp_path):
    data = open(saved["path"], "rb").read()
    cut = tmp_path / "cut.lowbit"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="is truncated or not a lowbit artifact"):
        lowbit.runtime.load(cut)


def test_not_a_zip_and_missing_file_raise_artifact_error(tmp_path):
    text = tmp_path / "notes.lowbit"
    text.write_text("not an artifact")
    with pytest.raises(ArtifactError, match="is truncated or not a lowbit artifact"):
        lowbit.runtime.load(text)
    with pytest.raises(ArtifactError, match="does not exist"):
        lowbit.runtime.load(tmp_path / "absent.lowbit")


def test_flipped_byte_in_a_param_raises_artifact_error_naming_it(saved, tmp_path):
    data = bytearray(open(saved["path"], "rb").read())
    with zipfile.ZipFile(saved["path"]) as archive:
        info = archive.getinfo("params/1.npy")
    # a stored member's bytes follow its local header: 30 bytes + name + extra field
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.file_size - 1] ^= 0xFF
    bad = tmp_path / "flipped.lowbit"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"part 'params/1\.npy' is corrupted or tampered with"):
        lowbit.runtime.load(bad)


def test_replaced_param_with_valid_zip_raises_artifact_error_naming_it(saved, tmp_path):
    bad = _rewrite(saved["path"], tmp_path / "swapped.lowbit", members={"params/2.npy": _flip_last_byte})
    with pytest.raises(ArtifactError, match=r"part 'params/2\.npy' does not match the sha256 and size"):
        lowbit.runtime.load(bad)


def test_newer_schema_raises_artifact_error_asking_for_upgrade(saved, tmp_path):
    newer = _rewrite(saved["path"], tmp_path / "newer.lowbit", manifest=lambda m: dict(m, schema_version=99))
    with pytest.raises(ArtifactError, match=r"schema_version 99, but this lowbit \(.*\) reads schema_version 1 "
                                            r"and older: upgrade lowbit"):
        lowbit.runtime.load(newer)


def test_missing_manifest_raises_artifact_error(tmp_path):
    path = tmp_path / "bare.lowbit"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("lib.so", b"\x7fELF")
    with pytest.raises(ArtifactError, match="has no manifest.json: it is not a lowbit artifact"):
        lowbit.runtime.load(path)


def test_feature_the_host_lacks_raises_target_error(saved, tmp_path):
    needy = _rewrite(saved["path"], tmp_path / "needy.lowbit",
                     manifest=lambda m: dict(m, required_features=m["required_features"] + ["avx512fp16x"]))
    cpu = saved["compiled"].manifest["cpu"]
    with pytest.raises(TargetError, match=rf"needs CPU features avx512fp16x .*compiled for {re.escape(cpu)}"):
        lowbit.runtime.load(needy)


def test_other_architecture_raises_target_error(saved, tmp_path):
    arm = _rewrite(saved["path"], tmp_path / "arm.lowbit", manifest=lambda m: dict(
        m, target=dict(m["target"], mtriple="aarch64-linux-gnu"), required_features=[]))
    with pytest.raises(TargetError, match="was compiled for aarch64 .* but this machine is"):
        lowbit.runtime.load(arm)


# --- writing atomically -----------------------------------------------------------------------------------

class _FailingLibrary:
    def export_library(self, path):
        raise RuntimeError("linker exploded")


def test_failed_export_leaves_old_file_and_no_temp(saved, tmp_path):
    from lowbit.compiler.artifact import write_artifact

    path = tmp_path / "model.lowbit"
    path.write_bytes(b"old artifact")
    with pytest.raises(RuntimeError, match="linker exploded"):
        write_artifact(path, _FailingLibrary(), saved["compiled"].compiled.params, saved["compiled"].manifest)
    assert path.read_bytes() == b"old artifact"
    assert os.listdir(tmp_path) == ["model.lowbit"]


def test_failed_rename_removes_temp_and_leaves_no_file(saved, tmp_path, monkeypatch):
    from lowbit.compiler import artifact

    def fail_replace(src, dst):
        assert os.path.getsize(src) > 0  # the zip was complete when the rename failed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact.os, "replace", fail_replace)
    with pytest.raises(ArtifactError, match="cannot write artifact .*No space left on device"):
        saved["compiled"].save(tmp_path / "model.lowbit")
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_raises_artifact_error(saved, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist or is not writable"):
        saved["compiled"].save(tmp_path / "no-such-folder" / "model.lowbit")


# --- the command line -------------------------------------------------------------------------------------

def test_cli_inspect_shows_target_layers_and_schedules(saved):
    proc = _lowbit_cli("inspect", saved["path"])
    assert proc.returncode == 0, proc.stderr
    rule = saved["compiled"].manifest["layers"][0]["plans"]["m1"]["rule"]  # decode_accumulate or decode_a8
    for text in ("fc1", "fc2", "w4g32", "default", rule, "m1", "schema 1",
                 saved["compiled"].manifest["target_tag"], "x: float32 (M, 64)", "y: float32 (M, 48)"):
        assert text in proc.stdout, text
    as_json = _lowbit_cli("inspect", "--json", saved["path"])
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["layers"][1]["K"] == 96


def test_cli_run_writes_npy_and_npz(saved, tmp_path):
    x_path = str(saved["folder"] / "x.npy")
    proc = _lowbit_cli("run", saved["path"], x_path, "--output", str(tmp_path / "y.npy"))
    assert proc.returncode == 0, proc.stderr
    assert "y: float32 (5, 48)" in proc.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), saved["y"])
    proc = _lowbit_cli("run", saved["path"], "--input", f"x={x_path}", "-o", str(tmp_path / "y.npz"))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["y"], saved["y"])


def test_cli_run_reports_bad_input_and_missing_features(saved, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((2, 65), np.float32))
    proc = _lowbit_cli("run", saved["path"], str(tmp_path / "wide.npy"))
    assert proc.returncode == 1
    assert "lowbit run: error: input 'x' has shape (2, 65)" in proc.stderr
    if not saved["compiled"].manifest["required_features"]:
        pytest.skip("this artifact requires no CPU features")
    proc = _lowbit_cli("run", saved["path"], str(saved["folder"] / "x.npy"), env={"LOWBIT_HOST_FEATURES": "sse4.2"})
    assert proc.returncode == 1
    assert "needs CPU features" in proc.stderr and saved["compiled"].manifest["required_features"][0] in proc.stderr
