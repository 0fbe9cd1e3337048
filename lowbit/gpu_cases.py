"""What a GPU session runs, compiled here (no GPU needed): numerics cases and benchmark kernels.

- :func:`write_cases`: per weight format, a one-layer model (with bias) compiled for a CUDA arch, and a
  ``.npz`` with inputs for every M bucket, the float64 reference and the error bound derived from the
  format (``lowbit/gpu_scripts/run_gpu_tests.py`` checks them with only the runtime bundle).
- :func:`write_bench_kernels`: the W4A16 g128 (and W2, ternary) layer kernels at the benchmark shapes, as
  a library plus fatbins and a spec of their weight arrays, without weights: ``lowbit/gpu_scripts/gpu_bench.py``
  fills them with random packed words on the GPU (numerics do not change the time).
"""
import json
import os
import types

import numpy as np

from lowbit.runtime.atomic import atomic_file, write_atomically

CASE_FORMATS = ["w8", "w8s", "w4g128", "w4g128s", "w3g128", "w2g64", "w1g64", "w5g32", "w6g64", "w7g32",
                "ternary", "ternaryg128", "nf4g64", "fp4g32", "nf4", "cb3g64[-1.0,-0.5,-0.25,-0.1,0.1,0.25,0.5,1.0]"]
CASE_ROWS = [1, 5, 19, 70]  # one M per bucket: m1, m2-8 (GEMV), m9-32, m33+ (tensor cores)
CASE_N, CASE_K = 200, 512
BENCH_SHAPES = [("w4g128", 8192, 8192), ("w4g128", 28672, 8192), ("w2g128", 8192, 8192), ("ternary", 8192, 8192)]
EPS16 = float(np.finfo(np.float16).eps)
EPS32 = float(np.finfo(np.float32).eps)


def error_bound(x16, weight, ref, K):
    """Bound on |y - ref| of a CUDA layer: float16 output rounding, float16 rounding of the weights in the
    tensor-core path, float32 accumulation (the activations are rounded to float16 in ``x16`` already)."""
    magnitude = np.abs(x16.astype(np.float64)) @ np.abs(weight).T
    return EPS16 / 2 * np.abs(ref) + (EPS16 / 2 + 2 * K * EPS32) * magnitude + 1e-6


def _case_name(fmt):
    return fmt.split("[")[0]


def write_cases(folder, arch="sm_90", formats=CASE_FORMATS):
    """Compile one case per format into ``folder`` (``<name>.lowbit`` + ``<name>.npz``); returns the names."""
    import lowbit
    from lowbit.compiler.formats import parse_format, quantize
    from lowbit.compiler.graph import QuantizedLinear, Sequential

    os.makedirs(folder, exist_ok=True)
    names = []
    for index, fmt in enumerate(formats):
        rng = np.random.default_rng(index)
        w = rng.standard_normal((CASE_N, CASE_K)) * rng.uniform(0.2, 3.0, (CASE_N, 1)) \
            + rng.uniform(-0.5, 0.5, (CASE_N, 1))
        qw = quantize(w, parse_format(fmt))
        bias = rng.standard_normal(CASE_N).astype(np.float32)
        model = Sequential([QuantizedLinear(qw, bias, name="layer")])
        name = _case_name(fmt)
        lowbit.compile(model, target=f"cuda:{arch}").save(os.path.join(folder, f"{name}.lowbit"))
        weight = qw.dequantize().astype(np.float64)
        arrays = {}
        for M in CASE_ROWS:
            x = rng.standard_normal((M, CASE_K)).astype(np.float32)
            x16 = x.astype(np.float16)
            ref = x16.astype(np.float64) @ weight.T + bias
            arrays.update({f"x{M}": x, f"ref{M}": ref, f"bound{M}": error_bound(x16, weight, ref, CASE_K)})
        with atomic_file(os.path.join(folder, f"{name}.npz")) as f:
            np.savez(f, **arrays)
        names.append(name)
    return names


def _array_spec(shape, dtype):
    return types.SimpleNamespace(shape=tuple(shape), dtype=np.dtype(dtype))


def bench_kernel_module(fmt_name, N, K, target):
    """A Relax module ``main(x, W, S, Z|LV) -> y`` around one layer's M-bucket kernels (no weights)."""
    from tvm import relax

    from lowbit.compiler.cuda_layout import CudaLayout
    from lowbit.compiler.formats import parse_format
    from lowbit.compiler.linear import add_linear_functions
    from lowbit.compiler.tvm_api import tirx

    fmt = parse_format(fmt_name)
    layout = CudaLayout(N=N, K=K, bits=fmt.bits, group_size=fmt.group_size or K,
                        decode="codebook" if fmt.kind == "codebook" else "affine")
    rows, groups = layout.padded_n, layout.n_groups
    specs = {"W": _array_spec((rows, layout.row_words), "uint32"), "S": _array_spec((rows, groups), "float32")}
    if layout.decode == "affine":
        specs["Z"] = _array_spec((rows, groups), "float32")
    else:
        specs["LV"] = _array_spec((1 << fmt.bits,), "float32")
    bb = relax.BlockBuilder()
    gvar, plans = add_linear_functions(bb.add_func, layout, specs, False, target, name="layer0_mpgemm")
    m_var = tirx.Var("M", "int64")
    x = relax.Var("x", relax.TensorType((m_var, K), "float16"))
    params = [relax.Var(name, relax.TensorType(spec.shape, str(spec.dtype))) for name, spec in specs.items()]
    with bb.function("main", [x] + params):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.call_tir(gvar, [x] + params, relax.TensorType((m_var, N), "float16"))))
        bb.emit_func_output(y)
    return bb.get(), specs, plans, layout


def write_bench_kernels(folder, arch="sm_90", shapes=BENCH_SHAPES):
    """Compile the benchmark layers into ``folder/<fmt>_<N>x<K>/`` (lib.so, fatbins, spec.json)."""
    from lowbit.compiler.pipeline import _build, _device_code
    from lowbit.compiler.target import cuda_target

    target = cuda_target(arch)
    written = []
    for fmt_name, N, K in shapes:
        mod, specs, plans, layout = bench_kernel_module(fmt_name, N, K, target)
        executable = _build(mod, target)
        out = os.path.join(folder, f"{_case_name(fmt_name)}_{N}x{K}")
        os.makedirs(os.path.join(out, "device"), exist_ok=True)
        executable.export_library(os.path.join(out, "lib.so"))
        code = []
        for index, (sha, fatbin) in enumerate(_device_code(executable, target)):
            write_atomically(os.path.join(out, "device", f"{index}.fatbin"), fatbin)
            code.append({"source_sha256": sha, "file": f"device/{index}.fatbin"})
        spec = {"format": fmt_name, "N": N, "K": K, "target": target.target, "packed_bytes": layout.packed_bytes,
                "params": [{"name": n, "shape": list(s.shape), "dtype": str(s.dtype)} for n, s in specs.items()],
                "plans": {k: plan.rule for k, plan in plans.items()}, "device_code": code}
        write_atomically(os.path.join(out, "spec.json"), json.dumps(spec, indent=2).encode("utf-8"))
        written.append(out)
    return written
