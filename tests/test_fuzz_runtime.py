"""Runtime inputs and environment: whatever a caller passes, a loaded module answers with its output or an
InputError naming the input; odd thread settings in the environment never crash a load or a call."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit
import lowbit.runtime
from lowbit.compiler.graph import Linear, Sequential
from lowbit.errors import InputError

K = 64


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    rng = np.random.default_rng(4)
    path = tmp_path_factory.mktemp("inputs") / "m.lowbit"
    lowbit.compile(Sequential([Linear(rng.standard_normal((32, K)).astype(np.float32), None, "fc")]),
                   format="w4g32", kernel="decode").save(path)
    return lowbit.runtime.load(path), str(path)


def _junk(rng):
    """One random thing a caller might pass as the input."""
    choice = int(rng.integers(16))
    M = int(rng.integers(0, 4))
    if choice >= 12:  # a valid input a quarter of the time, so both answers are reached
        return rng.standard_normal((M + 1, K)).astype(np.float32)
    dtype = [np.float32, np.float64, np.float16, np.int32, np.int8, np.uint8, np.complex64, np.bool_, object][
        int(rng.integers(9))]
    if choice < 6:
        shape = [[M, K], [M, K + int(rng.integers(1, 5))], [K], [M, 1, K], [], [M, 0]][choice]
        return np.zeros(shape, dtype=dtype)
    return [None, "x", 3.5, [[0.0] * K], {"x": 1}, np.float32(1.0)][choice - 6]


def test_random_inputs_give_the_output_or_an_input_error(module):
    """Seeded fuzz: 400 calls with random dtypes, ranks, shapes, empty axes, non-arrays, strided views."""
    loaded, _ = module
    rng = np.random.default_rng(0)
    outcomes = {"ran": 0, "refused": 0}
    for _ in range(400):
        value = _junk(rng)
        if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[0] > 1 and rng.random() < 0.3:
            value = np.repeat(value, 2, axis=0)[::2]  # a strided view
        try:
            y = loaded(value)
        except InputError:
            outcomes["refused"] += 1
            continue
        assert y.shape == (value.shape[0], 32) and y.dtype == np.float32
        outcomes["ran"] += 1
    assert outcomes["ran"] > 10 and outcomes["refused"] > 200, outcomes


def test_empty_rows_and_bad_names_are_input_errors(module):
    loaded, _ = module
    with pytest.raises(InputError, match="axis 0 is 0, must be M >= 1"):
        loaded(np.zeros((0, K), np.float32))
    with pytest.raises(InputError, match="unknown input name"):
        loaded(**{"\u00e9": np.zeros((1, K), np.float32)})
    with pytest.raises(InputError, match="given both by position and by name"):
        loaded(np.zeros((1, K), np.float32), x=np.zeros((1, K), np.float32))


_CALL = r"""
import json, os, sys, warnings
import numpy as np
import lowbit.runtime
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = lowbit.runtime.load(sys.argv[1])(np.ones((3, 64), np.float32))
import tvm_ffi
print(json.dumps({"finite": bool(np.isfinite(y).all()), "threads": tvm_ffi.get_global_func("runtime.NumThreads")(),
                  "cores": len(os.sched_getaffinity(0)), "warnings": [str(w.message) for w in caught]}))
"""


@pytest.mark.parametrize("value, threads", [("1", 1), ("abc", None), ("0", None), ("-3", None), ("99999999", None),
                                            ("\u0664", None)], ids=["one", "letters", "zero", "negative", "huge",
                                                                    "arabic-digit"])
def test_odd_thread_settings_never_crash_a_load_or_a_call(module, value, threads):
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS",
                                                            "TVM_USE_RUNTIME_LIB")}
    env["TVM_NUM_THREADS"] = value
    proc = subprocess.run([sys.executable, "-c", _CALL, module[1]], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["finite"]
    assert report["threads"] == (threads or report["cores"])
    assert bool(report["warnings"]) == (threads is None)


def test_aligned_inputs_are_read_in_place_and_others_copied_with_the_same_result(module):
    """An aligned, writeable array is passed without a copy; a misaligned view, a read-only array and a strided
    one are copied into aligned buffers; all give the same output, and no input is written to."""
    m, _ = module
    rng = np.random.default_rng(9)
    raw_x = np.zeros(3 * K * 4 + 64, np.uint8)
    x = raw_x[(-raw_x.ctypes.data) % 64:][:3 * K * 4].view(np.float32).reshape(3, K)
    x[...] = rng.standard_normal((3, K))
    assert x.ctypes.data % 64 == 0
    expected = m(x.copy())
    raw = np.zeros(3 * K * 4 + 64 + 4, np.uint8)
    start = (-raw.ctypes.data) % 64 + 4  # 4 bytes past a 64-byte boundary
    misaligned = raw[start:start + 3 * K * 4].view(np.float32).reshape(3, K)
    misaligned[...] = x
    read_only = x.copy()
    read_only.flags.writeable = False
    strided = np.repeat(x, 2, axis=1)[:, ::2]
    before = [a.copy() for a in (x, misaligned, read_only, strided)]
    for array in (x, misaligned, read_only, strided):
        np.testing.assert_array_equal(m(array), expected)
    for array, copy in zip((x, misaligned, read_only, strided), before):
        np.testing.assert_array_equal(array, copy)
