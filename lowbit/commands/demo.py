"""``lowbit demo``: quantize a small seeded MLP two ways, compile, save, reload in a fresh process, report."""
import json
import os
import subprocess
import sys
import tempfile

HELP = "quantize a small MLP, compile, reload in a fresh process, report error and speed"

# Runs in a fresh interpreter: only the runtime (TVM in runtime-only mode), no compiler, no onnx.
_RUNNER = r"""
import json, sys, time
import numpy as np
import lowbit.runtime as rt
model = rt.load(sys.argv[1])
x = np.load(sys.argv[2])
y = model(x)
times = []
for _ in range(int(sys.argv[4])):
    t0 = time.perf_counter(); model(x); times.append(time.perf_counter() - t0)
np.save(sys.argv[3], y)
heavy = [m for m in ("lowbit.compiler", "lowbit.frontends", "onnx", "torch") if m in sys.modules]
print(json.dumps({"ms": float(np.median(times) * 1e3), "heavy_modules": heavy}))
"""


def add_arguments(parser):
    parser.add_argument("--formats", nargs="+", default=["w4g128", "ternary"], help="weight formats to compare")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden width of the MLP")
    parser.add_argument("--width", type=int, default=1024, help="input / output width of the MLP")
    parser.add_argument("--rows", type=int, default=1, help="rows M of the input batch")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per model")
    parser.add_argument("--kernel", default="auto", choices=("auto", "decode", "a8", "lut"),
                        help="kernel family (auto: int8 activations where the CPU has integer dot products)")
    parser.add_argument("--keep", metavar="DIR", help="keep the artifacts in DIR")


def _float_mlp(width, hidden, seed=0):
    import numpy as np

    from lowbit.compiler.graph import Activation, Linear, Sequential

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((hidden, width)) / np.sqrt(width)).astype(np.float32)
    w2 = (rng.standard_normal((width, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
    return Sequential([Linear(w1, b1, "fc1"), Activation("gelu"), Linear(w2, None, "fc2")])


def _numpy_forward(model, x, weights):
    """Float reference with the given (N, K) weights per linear layer (float64 math)."""
    import numpy as np

    h, it = x.astype(np.float64), iter(weights)
    for layer in model.layers:
        if hasattr(layer, "kind"):
            h = 0.5 * h * (1 + _erf(h / np.sqrt(2)))
        else:
            h = h @ next(it).T + (0 if layer.bias is None else layer.bias)
    return h


def _erf(v):
    from math import erf

    import numpy as np

    return np.vectorize(erf)(v)


def _numpy_ms(model, x, repeat):
    import time

    import numpy as np

    weights = [np.ascontiguousarray(layer.weight.T) for layer in model.linear_layers()]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        h = x
        for w, layer in zip(weights, model.linear_layers()):
            h = h @ w if layer.bias is None else h @ w + layer.bias  # matmuls only: flatters NumPy
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run(args):
    import numpy as np
    from tqdm import tqdm

    import lowbit
    from lowbit.compiler.graph import quantize_sequential

    model = _float_mlp(args.width, args.hidden)
    x = np.random.default_rng(1).standard_normal((args.rows, args.width)).astype(np.float32)
    ref_float = _numpy_forward(model, x, [layer.weight for layer in model.linear_layers()])
    workdir = args.keep or tempfile.mkdtemp(prefix="lowbit-demo-")
    os.makedirs(workdir, exist_ok=True)
    np.save(os.path.join(workdir, "x.npy"), x)
    rows = []
    for fmt in tqdm(args.formats, desc="compile + run", unit="format"):
        qmodel = quantize_sequential(model, fmt)
        path = os.path.join(workdir, f"mlp-{fmt}.lowbit")
        compiled = lowbit.compile(qmodel, target="cpu", kernel=args.kernel)
        compiled.save(path)
        kernels = "/".join(sorted({layer["kernel"] for layer in compiled.manifest["layers"]}))
        out_path = os.path.join(workdir, f"y-{fmt}.npy")
        proc = subprocess.run([sys.executable, "-c", _RUNNER, path, os.path.join(workdir, "x.npy"), out_path,
                               str(args.repeat)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the fresh runtime process failed:\n{proc.stderr}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        y = np.load(out_path)
        ref_deq = _numpy_forward(model, x, [layer.weight.dequantize() for layer in qmodel.linear_layers()])
        rows.append((f"{fmt} ({kernels})", float(np.abs(y - ref_float).max()), float(np.abs(ref_float).max()),
                     float(np.abs(y - ref_deq).max()), report["ms"], report["heavy_modules"]))
    numpy_ms = _numpy_ms(model, x, args.repeat)
    _print_table(rows, numpy_ms, args, workdir)
    return 0


def _print_table(rows, numpy_ms, args, workdir):
    print(f"\nMLP {args.width} -> {args.hidden} -> gelu -> {args.width}, M = {args.rows}; "
          f"reloaded from {workdir} in a fresh process (runtime only)")
    print(f"{'format (kernel)':<18} {'max|err| vs float':>18} {'max|y|':>8} {'max|err| vs dequant':>20} "
          f"{'lowbit ms':>10} {'numpy fp32 ms*':>14} {'speedup':>8}")
    for fmt, err_f, ymax, err_d, ms, heavy in rows:
        print(f"{fmt:<18} {err_f:>18.4f} {ymax:>8.3f} {err_d:>20.2e} {ms:>10.3f} {numpy_ms:>14.3f} "
              f"{numpy_ms / ms:>7.2f}x")
        if heavy:
            print(f"  warning: the runtime process imported {', '.join(heavy)}")
    print("* NumPy float32 matmuls (+ bias) only, weights warm in cache; lowbit's time includes GELU and the "
          "runtime's call overhead.")
    print("a8 quantizes activations to int8 per row and group inside the kernel (as onnxruntime's accuracy_level=4 "
          "and llama.cpp do): its error vs dequant is that rounding; lut also rounds its lookup tables to int8; "
          "--kernel decode keeps float32 activations.")
