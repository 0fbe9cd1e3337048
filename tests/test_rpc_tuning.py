"""Tuning through a ``tvm.rpc`` tracker: a tracker and two RPC servers on 127.0.0.1, candidates built here."""
import time

import pytest

from lowbit import cli
from lowbit.compiler.target import host_target
from lowbit.errors import InputError, TargetError
from lowbit.schedules.tuning import records, remote, tuner

HOST = host_target()
KEY = "lowbit-test"


@pytest.fixture(scope="module")
def tracker():
    """A tracker and two servers under KEY, stopped after the module."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    server_tracker = Tracker("127.0.0.1", port=9190, port_end=9290, silent=True)
    servers = [rpc.Server("127.0.0.1", port=9300, port_end=9400, tracker_addr=("127.0.0.1", server_tracker.port),
                          key=KEY, silent=True) for _ in range(2)]
    client = rpc.connect_tracker("127.0.0.1", server_tracker.port)
    deadline = time.monotonic() + 60
    while sum(s["key"].endswith(KEY) for s in client.summary()["server_info"]) < 2:
        assert time.monotonic() < deadline, "the RPC servers did not register with the tracker"
        time.sleep(0.1)
    client.close()
    yield f"127.0.0.1:{server_tracker.port}"
    for server in servers:
        server.terminate()
    server_tracker.terminate()


def test_tune_measures_on_every_registered_device(tracker, tmp_path):
    runner = remote.RPCRunner(tracker, KEY, repeat=3)
    try:
        assert runner.parallel == 2
        (result,) = tuner.tune(tuner.tasks_for([(4, 64, 256)], "w4g128"), trials=5, log=tmp_path, progress=False,
                               runner=runner)
        assert runner.measured[0] > 0 and runner.measured[1] > 0  # both devices timed candidates
        assert sum(runner.measured) == 6  # 5 configs, the default twice
    finally:
        runner.close()
    logged = records.TuningDatabase(tmp_path, HOST.tag).records
    assert len(logged) == 6 and result.measured == 5 and all(r["ms"] > 0 and r["error"] is None for r in logged)


def test_tune_command_with_rpc_resumes_from_the_log(tracker, tmp_path, monkeypatch):
    argv = ["tune", "--shape", "4,64,256", "--format", "w4g128", "--trials", "3", "--repeat", "2", "--log",
            str(tmp_path), "--rpc", tracker, "--key", KEY, "--no-progress"]
    assert cli.main(argv) == 0
    assert len(records.TuningDatabase(tmp_path, HOST.tag).records) == 4

    def measured(*args):
        raise AssertionError("measured a candidate already in the log")

    monkeypatch.setattr(remote.RPCRunner, "measure", measured)
    assert cli.main(argv) == 0


def test_rpc_errors_name_the_fix(tracker, capsys):
    with pytest.raises(TargetError, match="no device under key 'nobody'"):
        remote.RPCRunner(tracker, "nobody")
    with pytest.raises(InputError, match="HOST:PORT"):
        remote.parse_address("localhost")
    assert cli.main(["tune", "--shape", "4,64,256", "--format", "w4g128", "--rpc", tracker]) == 1
    assert "go together" in capsys.readouterr().err
