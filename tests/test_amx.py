"""The a8 kernel on AMX-INT8 tiles (schedules/cpu/a8.py DecodeA8Amx, compiler/intrinsics/x86_amx.py).

Code generation is tested everywhere (a target that declares AMX, compiled, never run); numerics where this
process is granted AMX (Linux's arch_prctl, runtime/host.request_amx), against the NumPy reference with the bound
of the a8 kernel on the model's codes (tests/test_a8.py).
"""
import numpy as np
import pytest

from kernel_data import row_scaled_weight
from lowbit.compiler import dispatch
from lowbit.compiler.formats import quantize
from lowbit.compiler.kernels_a8 import code_shift, codes_reference
from lowbit.compiler.linear import build_prepared, default_plan, prepare_layer
from lowbit.compiler.target import host_target, resolve_target
from lowbit.compiler.tvm_api import tensor
from lowbit.runtime.host import AMX_FEATURES, host_cpu_features
from lowbit.schedules.cpu.a8 import DecodeA8Amx

EPS32 = float(np.finfo(np.float32).eps)
HOST = host_target()
AMX_HERE = AMX_FEATURES <= host_cpu_features()
SPR = {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": "sapphirerapids", "num-cores": 2,
       "features": ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni", "amx-tile",
                    "amx-int8"]}
N = 40  # not a multiple of the 16-lane tile


def _layer(K, activation="uint8", fmt="w8s", target=HOST):
    qw = quantize(row_scaled_weight(K, N=N, K=K), fmt)
    return qw, prepare_layer(qw, None, target, "auto", activation=activation)


def test_amx_is_the_default_from_nine_rows_where_it_applies():
    target = resolve_target(SPR)
    _, (_, layout, _) = _layer(256, target=target)
    for bucket in dispatch.DEFAULT_BUCKETS:
        rule, _ = default_plan(layout, bucket, target)
        assert (rule.name == DecodeA8Amx.name) == (bucket.lo >= 9), bucket.key
    no_amx = resolve_target(dict(SPR, features=[f for f in SPR["features"] if not f.startswith("amx")]))
    assert default_plan(layout, dispatch.DEFAULT_BUCKETS[-1], no_amx)[0].name != DecodeA8Amx.name
    _, (_, float_layout, _) = _layer(256, activation="float32", target=target)
    assert not DecodeA8Amx.applies(float_layout, target)  # activation groups of 32: no whole 64-k steps
    _, (_, short_group, _) = _layer(96, target=target)  # 96 = one group of 24 words: no whole 16-word steps
    assert not DecodeA8Amx.applies(short_group, target)


def test_amx_code_is_generated_without_amx_hardware():
    """Built for a Sapphire Rapids target (nothing runs): the tile instructions are in the object code."""
    target = resolve_target(SPR)
    _, (chosen, layout, arrays) = _layer(256, target=target)
    linear = build_prepared(chosen, layout, arrays, target)
    assert linear.plans["m33+"].rule == DecodeA8Amx.name and linear.plans["m1"].rule != DecodeA8Amx.name
    assembly = linear.library.mod.imports[0].inspect_source("asm") if linear.library.mod.imports else \
        linear.library.mod.inspect_source("asm")
    for instruction in ("ldtilecfg", "tilezero", "tileloadd", "tdpbsud", "tilestored"):
        assert instruction in assembly, instruction


@pytest.mark.skipif(not AMX_HERE, reason="this process has no AMX tiles (CPU without AMX, or not granted)")
@pytest.mark.parametrize("activation,K", [("uint8", 256), ("int8", 576), ("uint8", 1024)])
def test_amx_kernel_matches_reference(activation, K):
    qw, (chosen, layout, arrays) = _layer(K, activation)
    linear = build_prepared(chosen, layout, arrays, HOST)
    assert linear.plans["m9-32"].rule == DecodeA8Amx.name
    rng = np.random.default_rng(K)
    weights = [tensor(array) for array in arrays.values()]
    low, high = (0, 256) if activation == "uint8" else (-128, 128)
    scale, zero, shift = np.float32(0.031), (77 if activation == "uint8" else 9), code_shift(activation)
    w_abs = np.abs(qw.dequantize().astype(np.float64))
    for M in (1, 9, 16, 17, 64, 100):
        codes = rng.integers(low, high, (M, K)).astype(activation)
        y = tensor(np.empty((M, N), np.float32))
        linear.func(tensor(codes), tensor(np.array([scale], np.float32)), tensor(np.array([zero], np.int32)),
                    *weights, y)
        ref = codes_reference(qw, codes, scale, zero)
        spread = np.abs(codes.astype(np.float64) - shift) @ w_abs.T + abs(shift - zero) * w_abs.sum(axis=1)
        bound = 5 * EPS32 * scale * spread + EPS32 * np.abs(ref)
        err = np.abs(y.numpy() - ref)
        assert (err <= bound).all(), f"M={M}: max err {err.max():.3e}"


@pytest.mark.skipif(not AMX_HERE, reason="this process has no AMX tiles")
def test_artifact_with_amx_kernels_requires_amx(tmp_path):
    """An artifact whose layers use tiles lists AMX in its required features, so a machine (or process) without
    them refuses it at load, by name, instead of dying of SIGILL in the first call."""
    import subprocess
    import sys

    from test_onnx_frontend import dynamic_quantized_model

    import lowbit

    model = dynamic_quantized_model(np.random.default_rng(0))  # K = 64: one 16-word group
    compiled = lowbit.compile(model)
    assert compiled.manifest["layers"][0]["plans"]["m33+"]["rule"] == DecodeA8Amx.name
    assert AMX_FEATURES <= set(compiled.manifest["required_features"])
    path = tmp_path / "model.lowbit"
    compiled.save(path)
    without = ",".join(sorted(host_cpu_features() - AMX_FEATURES))
    code = f"import lowbit.runtime as r\ntry:\n    r.load({str(path)!r})\nexcept Exception as e:\n    print(e)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"LOWBIT_HOST_FEATURES": without, "PATH": ""}, timeout=120)
    assert "amx-int8" in proc.stdout and "needs CPU features" in proc.stdout, proc.stdout + proc.stderr
