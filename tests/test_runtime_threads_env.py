"""The runtime under threads and in processes: one module called from many threads at once, no environment
variable leaked to child processes, and a clear error for compiling where TVM is loaded runtime-only."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
import lowbit.runtime
from lowbit.compiler.graph import Activation, Linear, Sequential


def _mlp(rng, K=64, N=96):
    return Sequential([Linear(rng.standard_normal((N, K)).astype(np.float32), None, "fc1"), Activation("relu"),
                       Linear(rng.standard_normal((N, N)).astype(np.float32), None, "fc2")])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("threads")
    paths = {}
    for kernel in ("decode", "a8"):
        paths[kernel] = str(folder / f"{kernel}.lowbit")
        lowbit.compile(_mlp(rng), format="w4g32", kernel=kernel).save(paths[kernel])
    return folder, paths


@pytest.mark.parametrize("kernel", ["decode", "a8"])
def test_one_module_called_from_many_threads_gives_the_single_thread_results(artifacts, kernel):
    """Regression: four threads calling one loaded module at once crashed the process (SIGSEGV)."""
    module = lowbit.runtime.load(artifacts[1][kernel])
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((rows, 64)).astype(np.float32) for rows in (1, 3, 17, 1, 64, 5)]
    expected = [module(x) for x in inputs]
    failures = []

    def work(offset):
        for call in range(30):
            index = (call + offset) % len(inputs)
            if not np.array_equal(module(inputs[index]), expected[index]):
                failures.append((offset, call))

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


_LOAD_THEN_COMPILE = r"""
import json, os, subprocess, sys
import numpy as np
import lowbit, lowbit.runtime
module = lowbit.runtime.load(sys.argv[1])
module(np.ones((2, 64), np.float32))
import tvm_ffi
report = {"env": {name: os.environ.get(name) for name in ("TVM_USE_RUNTIME_LIB", "TVM_NUM_THREADS")},
          "threads": tvm_ffi.get_global_func("runtime.NumThreads")(), "cores": len(os.sched_getaffinity(0))}
child = subprocess.run([sys.executable, "-m", "lowbit", "compile", sys.argv[2], "-o", sys.argv[3],
                        "--kernel", "decode"], capture_output=True, text=True)
report["child"] = [child.returncode, child.stderr[-2000:]]
try:
    lowbit.compile(sys.argv[2])
    report["in_process"] = "compiled"
except Exception as err:
    report["in_process"] = [type(err).__name__, str(err)]
print(json.dumps(report))
"""


def _onnx_model(path):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (64, 16), dtype=np.uint8)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(np.full(16, 0.01, np.float32), "s"),
             numpy_helper.from_array(np.full(16, 128, np.uint8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w"], axis=1),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 10
    import onnx

    onnx.save(model, path)


def _clean_env():
    env = dict(os.environ)
    for name in ("TVM_USE_RUNTIME_LIB", "TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        env.pop(name, None)
    return env


def test_load_leaks_no_environment_and_a_child_compile_works(artifacts):
    """Regression: load() left TVM_USE_RUNTIME_LIB=1 in os.environ; a child `lowbit compile` then died with a raw
    AttributeError, and compiling in the same process failed the same way."""
    folder, paths = artifacts
    _onnx_model(folder / "m.onnx")
    out = folder / "child.lowbit"
    proc = subprocess.run([sys.executable, "-c", _LOAD_THEN_COMPILE, paths["decode"], str(folder / "m.onnx"),
                           str(out)], capture_output=True, text=True, env=_clean_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["env"] == {"TVM_USE_RUNTIME_LIB": None, "TVM_NUM_THREADS": None}
    assert report["threads"] == report["cores"], "the runtime's pool does not use every core"
    assert report["child"][0] == 0, report["child"][1]
    assert out.is_file()
    name, message = report["in_process"]
    assert name == "CompilerUnavailableError"
    assert "runtime library only" in message and "subprocess" in message


def test_compile_under_runtime_only_tvm_is_a_clear_error(artifacts):
    folder, _ = artifacts
    _onnx_model(folder / "m2.onnx")
    proc = subprocess.run([sys.executable, "-m", "lowbit", "compile", str(folder / "m2.onnx"), "-o",
                           str(folder / "m2.lowbit")], capture_output=True, text=True,
                          env=dict(_clean_env(), TVM_USE_RUNTIME_LIB="1"), timeout=120, check=False)
    assert proc.returncode == 1
    assert "lowbit compile: error:" in proc.stderr and "TVM_USE_RUNTIME_LIB" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (folder / "m2.lowbit").exists()
