"""``lowbit tune`` on a model and on one shape, Ctrl-C, and ``lowbit compile --tuning-log`` / ``inspect``."""
import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowbit import cli
from lowbit.commands import inspect as inspect_command
from lowbit.commands import tune as tune_command
from lowbit.compiler.linear import default_plan
from lowbit.compiler.target import host_target
from lowbit.errors import InputError
from lowbit.runtime.artifact import read_artifact
from lowbit.schedules.tuning import records, tuner

HOST = host_target()
K = 256
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """x (batch, 256) -> MatMul 256x256 -> Relu -> MatMul 256x256 -> MatMul 256x64: two distinct workloads."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((K, n)).astype(np.float32) / 16 for n in (K, K, 64)]
    names = [f"w{i}" for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="fc0"),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu"),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="fc1"),
             helper.make_node("MatMul", ["h1", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
                              [numpy_helper.from_array(w, name) for w, name in zip(weights, names)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    path = tmp_path_factory.mktemp("model") / "mlp.onnx"
    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def model_log(model_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("tune") / "log"
    code = cli.main(["tune", model_path, "--format", "w4g128", "--rows", "4", "--trials", "2", "--repeat", "2",
                     "--log", str(log), "--no-progress"])
    assert code == 0
    return log


def test_tune_model_tunes_each_distinct_layer_shape_once(model_log, capsys):
    database = records.TuningDatabase(model_log, HOST.tag)
    workloads = {(r["workload"]["N"], r["workload"]["K"], r["workload"]["bucket"], r["M"]) for r in database.records}
    assert workloads == {(K, K, "m2-8", 4), (64, K, "m2-8", 4)}
    assert len(database.records) == 6  # two configs each, the default twice; fc0 and fc1 share one workload


def test_model_tasks_takes_one_m_per_row_and_dedups_layers(model_path):
    tasks = tune_command.model_tasks(model_path, "w4g128", (1, 16))
    assert sorted((t.M, t.N, t.K, t.format) for t in tasks) == [(1, 64, K, "w4g128"), (1, K, K, "w4g128"),
                                                                 (16, 64, K, "w4g128"), (16, K, K, "w4g128")]


@pytest.mark.parametrize("argv, message", [
    pytest.param([], "either MODEL.onnx or --shape", id="nothing"),
    pytest.param(["--shape", "4,64,256"], "needs --format", id="shape-without-format"),
    pytest.param(["--shape", "4,64"], "three positive integers", id="bad-shape"),
    pytest.param(["missing.onnx"], "does not exist", id="missing-model"),
    pytest.param(["--shape", "4,64,256", "--format", "w4g128", "--trials", "0"], "at least 1", id="trials"),
])
def test_tune_rejects_bad_arguments(argv, message, capsys):
    assert cli.main(["tune", *argv]) == 1
    assert message in capsys.readouterr().err


def test_rows_must_be_positive_integers():
    assert tune_command.parse_rows("1,16") == (1, 16)
    with pytest.raises(InputError, match="--rows"):
        tune_command.parse_rows("0,a")


def test_ctrl_c_keeps_the_records_and_exits_130(tmp_path, capsys, monkeypatch):
    real = tuner.LocalRunner.measure
    calls = []

    def interrupted(self, job, pairs):
        if calls:
            raise KeyboardInterrupt
        calls.append(pairs)
        return real(self, job, pairs)

    monkeypatch.setattr(tuner.LocalRunner, "measure", interrupted)
    argv = ["tune", "--shape", "4,64,256", "--format", "w4g128", "--trials", "3", "--repeat", "2", "--log",
            str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 130
    assert "interrupted" in capsys.readouterr().out
    assert len(records.TuningDatabase(tmp_path, HOST.tag).records) == 1  # the default, measured before Ctrl-C
    monkeypatch.setattr(tuner.LocalRunner, "measure", real)
    assert cli.main(argv) == 0  # resumes: two more, then the default again
    assert len(records.TuningDatabase(tmp_path, HOST.tag).records) == 4
    assert "speedup" in capsys.readouterr().out


def _expected_source(database, layer, bucket):
    from lowbit.compiler.layout import KernelLayout
    from lowbit.schedules.tuning import space

    plan = layer["plans"][bucket.key]
    layout = KernelLayout(N=layer["N"], K=layer["K"], bits=4, group_size=128, lanes=HOST.vector_lanes,
                          decode="a8" if layer["kernel"] == "a8" else "affine")
    rule, config = default_plan(layout, bucket)
    fitting = [r for r in database.records if space.record_fits(r, layout, bucket)]
    best = records.best_record(fitting, rule.name, dataclasses.asdict(config))
    return ("default", dataclasses.asdict(config)) if best is None else ("record", best["config"]), \
        (plan["source"], plan["config"])


def test_compile_with_the_log_records_each_buckets_source(model_path, model_log, tmp_path, capsys):
    from lowbit.compiler.dispatch import DEFAULT_BUCKETS

    out = tmp_path / "mlp.lowbit"
    assert cli.main(["compile", model_path, "-o", str(out), "--format", "w4g128", "--tuning-log",
                     str(model_log)]) == 0
    manifest, _ = read_artifact(out)
    database = records.TuningDatabase(model_log, HOST.tag)
    for layer in manifest["layers"]:
        for bucket in DEFAULT_BUCKETS:
            expected, got = _expected_source(database, layer, bucket)
            assert got == expected, (layer["name"], bucket.key)
        untuned = {layer["plans"][key]["source"] for key in ("m1", "m9-32", "m33+")}
        assert untuned == {"default"}
    text = "\n".join(inspect_command.describe(manifest, str(out)))
    assert "m2-8" in text and ("record" in text or "default" in text)
    assert json.dumps(manifest["layers"][0]["plans"]["m1"]["source"]) == '"default"'


def test_compile_without_tuning_log_uses_defaults_only(model_path, model_log, tmp_path):
    out = tmp_path / "plain.lowbit"
    assert cli.main(["compile", model_path, "-o", str(out), "--format", "w4g128", "--no-tuning-log"]) == 0
    manifest, _ = read_artifact(out)
    assert {layer["schedule"] for layer in manifest["layers"]} == {"default"}
    assert {p["source"] for layer in manifest["layers"] for p in layer["plans"].values()} == {"default"}


def test_inspect_shows_each_buckets_source():
    manifest = {"schema_version": 1, "inputs": [], "outputs": [], "params": [], "layers": [{
        "name": "fc0", "format": "w4g128", "N": 64, "K": 256, "bits_per_weight": 4.125, "kernel": "a8",
        "schedule": "mixed", "plans": {
            "m1": {"rule": "decode_a8", "config": {"m_tile": 1}, "source": "default"},
            "m2-8": {"rule": "decode_a8", "config": {"m_tile": 2, "n_tile": 2}, "source": "record"}}}]}
    lines = inspect_command._layer_table(manifest["layers"])
    assert "mixed" in lines[1]
    assert lines[2].split()[:3] == ["m1", "default", "decode_a8"]
    assert lines[3].split()[:3] == ["m2-8", "record", "decode_a8"]
