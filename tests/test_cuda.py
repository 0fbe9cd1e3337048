"""CUDA target without a GPU: templates against the NumPy reference on the CPU, CUDA code generation
and nvcc compilation for sm_80 / sm_90 with structural checks on source and PTX, artifacts holding a fatbin,
and the runtime's no-GPU error. Numerics on a GPU are marked ``gpu`` (tests/test_cuda_gpu.py)."""
import re
import shutil
import zipfile

import numpy as np
import pytest

from lowbit.compiler import kernels_cuda
from lowbit.compiler.cuda_layout import cuda_layout_for, pack_cuda_words, relayout_cuda, unpack_cuda_words
from lowbit.compiler.dispatch import Bucket
from lowbit.compiler.formats import parse_format, quantize
from lowbit.compiler.target import resolve_target
from lowbit.compiler.tvm_api import tensor, tvm
from lowbit.errors import KernelError, TargetError

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None and shutil.which("nvcc", path="/usr/local/cuda/bin")
                                is None, reason="nvcc (CUDA toolkit) not installed")
FORMATS = ["w8", "w8s", "w4g128", "w4g128s", "w3g128", "w2g64", "w1g64", "w5g32", "w6g64", "w7g32",
           "ternary", "ternaryg128", "nf4g64", "fp4g32", "nf4", "cb3g64[-1.0,-0.5,-0.25,-0.1,0.1,0.25,0.5,1.0]"]
N, K = 77, 384  # N not a multiple of 16 (padded rows), K a multiple of every group
EPS16 = float(np.finfo(np.float16).eps)
EPS32 = float(np.finfo(np.float32).eps)
EPS_BF16 = 2.0 ** -7  # bfloat16: 8 significand bits


def _weight(name, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)) * rng.uniform(0.2, 3.0, (N, 1)) + rng.uniform(-0.5, 0.5, (N, 1))
    return quantize(w, parse_format(name))


def _ids(name):
    return name.split("[")[0]


def error_bound(qw, x, ref, weights_rounded, eps=EPS16):
    """|y - ref| bound: rounding of the output to the activation dtype (eps/2 |ref|), float32 accumulation
    over K, and, for the GEMM, rounding of each dequantized weight to that dtype (eps/2 per product)."""
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(qw.dequantize().astype(np.float64)).T
    per_product = eps / 2 if weights_rounded else 0.0
    return eps / 2 * np.abs(ref) + (per_product + 2 * K * EPS32) * magnitude + 1e-6


@pytest.mark.parametrize("name", ["w1g64", "w3g128", "w4g128", "w5g32", "w8", "ternary", "nf4g64"], ids=_ids)
def test_layout_packs_and_unpacks_exactly(name):
    qw = _weight(name)
    layout = cuda_layout_for(qw)
    words = pack_cuda_words(qw.codes, layout)
    assert words.shape == (layout.padded_n, layout.row_words) and words.dtype == np.uint32
    assert layout.row_words % 4 == 0 and (layout.row_words * layout.codes_per_word) % 32 == 0
    np.testing.assert_array_equal(unpack_cuda_words(words, layout), qw.codes)


def test_magic_decode_bit_trick_matches_codes():
    """``(word >> 4p) & 0x000F000F | 0x64006400`` read as two float16 is 1024 + the two codes."""
    qw = _weight("w4g128")
    layout = cuda_layout_for(qw)
    words = pack_cuda_words(qw.codes, layout)[:N, :layout.n_groups * layout.words_per_group]
    pairs = [((words >> np.uint32(4 * p)) & np.uint32(0x000F000F)) | np.uint32(0x64006400) for p in range(4)]
    halves = np.stack(pairs, axis=-1).view(np.float16).astype(np.float32) - 1024  # (N, words, 8) in slot order
    np.testing.assert_array_equal(halves.reshape(N, K).astype(np.uint8), qw.codes)


def _run_template(name, template, dtype):
    """Build the unscheduled template for the CPU (llvm), run it; returns (qw, x as float32, y, ref)."""
    import ml_dtypes

    np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    qw = _weight(name, seed=len(name))
    bias = np.random.default_rng(3).standard_normal(N).astype(np.float32)
    layout, arrays = relayout_cuda(qw, dtype)
    arrays["B"] = bias
    M = 3 if template == "gemv" else 19
    if template == "gemv":
        func = kernels_cuda.gemv_compute(layout, tvm.tirx.Var("M", "int32"), 8, has_bias=True)
    else:
        func = kernels_cuda.gemm_compute(layout, tvm.tirx.Var("M", "int32"), 32, has_bias=True)
    lib = tvm.compile(func, target="llvm")
    x = np.random.default_rng(M).standard_normal((M, K)).astype(np_dtype)
    y = tensor(np.empty((M, N), np_dtype))
    lib(tensor(x), *[tensor(a) for a in arrays.values()], y)
    x32 = x.astype(np.float32)
    ref = x32.astype(np.float64) @ qw.dequantize().astype(np.float64).T + bias
    return qw, x32, y.numpy().astype(np.float64), ref


@pytest.mark.parametrize("template", ["gemv", "gemm"])
@pytest.mark.parametrize("name", FORMATS, ids=_ids)
def test_template_matches_reference_on_cpu(name, template):
    """The unscheduled TensorIR templates, built for the CPU (llvm), against the NumPy reference."""
    qw, x, y, ref = _run_template(name, template, "float16")
    err = np.abs(y - ref)
    bound = error_bound(qw, x, ref, weights_rounded=template == "gemm")
    assert (err <= bound).all(), f"max err {err.max():.3e}, bound there {bound.flat[err.argmax()]:.3e}"


@pytest.mark.parametrize("template", ["gemv", "gemm"])
@pytest.mark.parametrize("name", ["w4g128", "nf4g64"], ids=_ids)
def test_bfloat16_template_matches_reference_on_cpu(name, template):
    qw, x, y, ref = _run_template(name, template, "bfloat16")
    err = np.abs(y - ref)
    bound = error_bound(qw, x, ref, weights_rounded=template == "gemm", eps=EPS_BF16)
    assert (err <= bound).all(), f"max err {err.max():.3e}, bound there {bound.flat[err.argmax()]:.3e}"


def test_cuda_targets_resolve_and_bad_arch_says_which_exist():
    assert resolve_target("cuda").arch == "sm_80"
    info = resolve_target("cuda:sm_90")
    assert (info.tag, info.compute_capability, info.required_features()) == ("cuda-sm_90", (9, 0), [])
    assert resolve_target({"kind": "cuda", "arch": "sm_80"}).tag == "cuda-sm_80"
    with pytest.raises(TargetError, match="sm_70.*sm_80, sm_86, sm_89, sm_90"):
        resolve_target("cuda:sm_70")


def test_cuda_refuses_cpu_kernel_families():
    from lowbit.compiler.linear import prepare_layer

    with pytest.raises(KernelError, match="'a8' is not built for CUDA"):
        prepare_layer(_weight("w4g128"), None, resolve_target("cuda:sm_90"), kernel="a8")


def _kernel_source(name, arch, buckets, n=N, dtype="float16"):
    from lowbit.compiler.linear import build_linear

    qw = quantize(np.random.default_rng(1).standard_normal((n, K)), parse_format(name))
    lin = build_linear(qw, None, target=f"cuda:{arch}", buckets=buckets, dtype=dtype)
    return lin, "\n".join(m.inspect_source("cuda") for m in lin.library.mod.imports
                          if "cuda" in m.kind)


def _ptx(source, arch):
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        return bytes(tvm.support.nvcc.compile_cuda(source, "ptx", arch=arch, compiler="nvcc")).decode()


GEMV_BUCKETS = (Bucket(1, 1), Bucket(2, 8))
GEMV_CASES = [("w4g128", "sm_80", "float16"), ("w4g128", "sm_90", "float16"), ("w3g64", "sm_90", "float16"),
              ("ternary", "sm_80", "float16"), ("nf4g64", "sm_90", "float16"), ("w4g128", "sm_90", "bfloat16")]


def _check_gemv(name, arch, dtype="float16"):
    lin, source = _kernel_source(name, arch, GEMV_BUCKETS, dtype=dtype)
    assert set(lin.plans) == {"m1", "m2-8"} and all(plan.rule == "cuda_decode_gemv" for plan in lin.plans.values())
    kernels = re.findall(r"__global__ void __launch_bounds__\(\d+\) \w+\(([^)]*)\)\s*{", source)
    assert kernels, "no kernel in the CUDA source"
    for params in kernels:  # the kernels read packed words, never a float weight matrix
        names = set(re.findall(r"\b(\w+)_ptr\b", params))
        assert names <= {"X", "W", "S", "Z", "LV", "Y"}, names
    assert "*(uint4*)(W_ptr" in source  # 4 packed words per thread per step
    assert "__shfl_down_sync" in source
    ptx = _ptx(source, arch)
    assert re.search(r"ld\.global(\.nc)?\.v4\.u32", ptx), "no 128-bit weight load in the PTX"
    assert "shfl.sync.down" in ptx
    if parse_format(name).kind == "codebook":
        assert "__shared__" in source and "LV_shared" in source  # the codebook in shared memory
    else:
        assert f"lowbit_decode_u{parse_format(name).bits}_magic(" in source and "lop3.b32" in ptx


@needs_nvcc
@pytest.mark.parametrize("name,arch,dtype", GEMV_CASES, ids=["-".join(case) for case in GEMV_CASES])
def test_gemv_kernels_compile_with_nvcc_and_use_wide_loads_decode_and_shuffles(name, arch, dtype):
    _check_gemv(name, arch, dtype)


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", FORMATS, ids=_ids)
def test_gemv_every_format_compiles_with_nvcc(name, arch):
    _check_gemv(name, arch)


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS, ids=_ids)
def test_gemm_every_format_compiles_with_nvcc(name):
    lin, source = _kernel_source(name, "sm_90", (Bucket(1, 1), Bucket(9, 32), Bucket(33, None)))
    assert {lin.plans[key].rule for key in ("m9-32", "m33+")} == {"cuda_decode_gemm_mma"}
    assert "mma.sync.aligned.m16n8k16" in _ptx(source, "sm_90")


GEMM_CASES = [("sm_80", "float16"), ("sm_90", "float16"), ("sm_90", "bfloat16")]


@needs_nvcc
@pytest.mark.parametrize("arch,dtype", GEMM_CASES, ids=["-".join(case) for case in GEMM_CASES])
def test_gemm_kernel_uses_ldmatrix_mma_and_cp_async(arch, dtype):
    lin, source = _kernel_source("w4g128", arch, (Bucket(1, 1), Bucket(9, None)), n=256, dtype=dtype)
    assert lin.plans["m9+"].rule == "cuda_decode_gemm_mma"
    short = {"float16": "f16", "bfloat16": "bf16"}[dtype]
    for marker in ("ldmatrix.sync.aligned.m8n8.x4.shared.b16",
                   f"mma.sync.aligned.m16n8k16.row.col.f32.{short}.{short}.f32", "cp.async.cg.shared.global",
                   "cp.async.commit_group", "cp.async.wait_group"):
        assert marker in source, marker
    ptx = _ptx(source, arch)
    for marker in ("ldmatrix.sync.aligned", f"mma.sync.aligned.m16n8k16.row.col.f32.{short}.{short}.f32", "cp.async"):
        assert marker in ptx, marker


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory):
    """A 2-layer MLP (gelu, bias-free) compiled for sm_90: every bucket, GEMV and tensor-core GEMM."""
    import lowbit
    from lowbit.compiler.graph import Activation, Linear, Sequential

    rng = np.random.default_rng(0)
    model = Sequential([Linear(rng.standard_normal((256, 128)).astype(np.float32), name="fc1"), Activation("gelu"),
                        Linear(rng.standard_normal((64, 256)).astype(np.float32), name="fc2")])
    compiled = lowbit.compile(model, target="cuda:sm_90", format="w4g128")
    path = tmp_path_factory.mktemp("cuda") / "mlp.lowbit"
    compiled.save(path)
    return compiled, path


@needs_nvcc
def test_cuda_artifact_holds_fatbin_built_at_compile_time(cuda_artifact):
    import hashlib
    import json

    from lowbit.compiler.cuda_build import cuda_sources

    compiled, path = cuda_artifact
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        fatbins = {e["source_sha256"]: archive.read(e["file"]) for e in manifest["device_code"]}
    assert manifest["target"]["kind"] == "cuda" and manifest["target_tag"] == "cuda-sm_90"
    assert [spec["dtype"] for spec in manifest["inputs"] + manifest["outputs"]] == ["float32", "float32"]
    sources = cuda_sources(compiled.compiled.executable.mod)
    assert sources and set(fatbins) == {hashlib.sha256(s.encode()).hexdigest() for s in sources}
    for fatbin in fatbins.values():
        assert fatbin[:4] == bytes.fromhex("50ed55ba")  # fatbin magic (0xBA55ED50, little-endian)
    layer = manifest["layers"][0]
    assert layer["plans"]["m1"]["rule"] == "cuda_decode_gemv"
    assert layer["plans"]["m33+"]["rule"] == "cuda_decode_gemm_mma"


def _gpu_present():
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*"))


@needs_nvcc
@pytest.mark.skipif(_gpu_present(), reason="this machine has a GPU: the no-GPU error cannot be provoked")
def test_runtime_load_without_gpu_says_so(cuda_artifact):
    import lowbit.runtime

    _, path = cuda_artifact
    with pytest.raises(TargetError, match=r"NVIDIA GPU.*(libcuda\.so\.1|no CUDA GPU is visible).*compile the model "
                                          "for target 'cpu'"):
        lowbit.runtime.load(path)


def test_older_gpu_than_artifact_arch_raises_target_error_with_the_fix():
    from lowbit.runtime.cuda import check_compute_capability

    manifest = {"target": {"kind": "cuda", "arch": "sm_90"}}
    with pytest.raises(TargetError, match=r"compiled for sm_90 but this GPU \(A100\) is sm_80: .*--target cuda:sm_80"):
        check_compute_capability((8, 0), manifest, "m.lowbit", "A100")
    check_compute_capability((9, 0), manifest, "m.lowbit", "H100")  # same arch: fine
    check_compute_capability((10, 0), manifest, "m.lowbit", "B200")  # newer: the PTX is JIT-compiled


@needs_nvcc
def test_cli_compiles_an_onnx_model_for_cuda(tmp_path, capsys):
    """``lowbit compile MODEL.onnx --target cuda:sm_90``: float32 in and out, float16 kernels between casts."""
    import json

    import onnx

    from lowbit.cli import main
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((128, 64)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [weight])
    model_path, out = tmp_path / "m.onnx", tmp_path / "m.lowbit"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_path)
    # in this process: TVM's CUDA tensor intrinsics take tens of seconds to register, once per process
    assert main(["compile", str(model_path), "-o", str(out), "--target", "cuda:sm_90", "--format", "w4g64"]) == 0
    assert "cuda-sm_90" in capsys.readouterr().out
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert manifest["device_code"] and all(archive.read(e["file"])[:4] == bytes.fromhex("50ed55ba")
                                               for e in manifest["device_code"])
    assert [s["dtype"] for s in manifest["inputs"] + manifest["outputs"]] == ["float32", "float32"]
