"""GPU benchmark of lowbit's CUDA kernels, with only the runtime bundle, NumPy and torch.

Run on the GPU machine from a bundle built with ``--bench``::

    PYTHONPATH=site TVM_USE_RUNTIME_LIB=1 python gpu_bench.py [--json results.json]

Method (issue 8): CUDA events around many back-to-back launches captured in one CUDA graph (TVM launches on
torch's stream), rotating through enough weight copies that every launch reads its weights from HBM, not
the L2; the reference bandwidth is a device-to-device copy measured in the same run; torch float16 matmul
(``x @ W.T``, cuBLAS) at the same shapes, timed the same way, is the peer.
"""
import argparse
import glob
import json
import os
import sys



def _events_time(torch, fn, iters):
    """Mean seconds per call of ``fn`` over ``iters`` calls captured in a CUDA graph, replayed 3 times."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(0)  # warm-up (and module load) outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for i in range(iters):
                fn(i)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / iters)
    return min(times)


def copy_bandwidth(torch, nbytes=1 << 30):
    """Device-to-device copy bandwidth (bytes read + written per second)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = _events_time(torch, lambda i: dst.copy_(src), 10)
    return 2 * nbytes / seconds


def _copies(torch, weight_bytes):
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(2, -(-4 * l2 // weight_bytes))  # 4x the L2 in flight: every launch misses it


class LowbitKernel:
    """One benchmark layer: its library (TVM runtime only), fatbins, and random weights on the GPU."""

    def __init__(self, folder, torch, tvm):
        from lowbit.runtime.cuda import provide_device_code

        with open(os.path.join(folder, "spec.json"), encoding="utf-8") as f:
            self.spec = json.load(f)
        fatbins = {}
        for entry in self.spec["device_code"]:
            with open(os.path.join(folder, entry["file"]), "rb") as f:
                fatbins[entry["source_sha256"]] = f.read()
        provide_device_code(fatbins, folder)
        self.lib = tvm.runtime.load_module(os.path.join(folder, "lib.so"))
        self.func = self.lib["layer0_mpgemm"]
        self.tvm, self.torch = tvm, torch
        self.copies = [self._weights() for _ in range(_copies(torch, self.spec["packed_bytes"]))]

    def _weights(self):
        torch = self.torch
        arrays = []
        for param in self.spec["params"]:
            shape = param["shape"]
            if param["dtype"] == "uint32":
                arrays.append(torch.randint(-2**31, 2**31 - 1, shape, dtype=torch.int32, device="cuda")
                              .view(torch.uint32))
            elif param["name"] == "Z":
                arrays.append(torch.full(shape, 1024.0 + 8.0, device="cuda"))
            else:
                arrays.append(torch.rand(shape, device="cuda") * 0.01)
        return [self.tvm.runtime.from_dlpack(a) for a in arrays]

    def timer(self, M):
        torch, tvm = self.torch, self.tvm
        x = tvm.runtime.from_dlpack(torch.randn(M, self.spec["K"], dtype=torch.float16, device="cuda"))
        y = tvm.runtime.from_dlpack(torch.empty(M, self.spec["N"], dtype=torch.float16, device="cuda"))
        return lambda i: self.func(x, *self.copies[i % len(self.copies)], y)


def torch_timer(torch, N, K, M):
    weight_bytes = N * K * 2
    weights = [torch.randn(N, K, dtype=torch.float16, device="cuda") for _ in range(_copies(torch, weight_bytes))]
    x = torch.randn(M, K, dtype=torch.float16, device="cuda")
    out = torch.empty(M, N, dtype=torch.float16, device="cuda")
    return lambda i: torch.matmul(x, weights[i % len(weights)].T, out=out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))
    parser.add_argument("--rows", default="1,16,64", help="M values (default 1,16,64)")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    import torch

    from lowbit.runtime.cuda import load_cuda_runtime
    from lowbit.runtime.module import _import_tvm

    tvm = _import_tvm()
    load_cuda_runtime(tvm, args.bench)
    tvm.cuda(0).set_raw_stream(torch.cuda.current_stream().cuda_stream)
    bandwidth = copy_bandwidth(torch)
    device = torch.cuda.get_device_name(0)
    print(f"{device}: device-to-device copy {bandwidth / 1e9:.0f} GB/s")
    rows, results = [int(m) for m in args.rows.split(",")], []
    for folder in sorted(glob.glob(os.path.join(args.bench, "*"))):
        kernel = LowbitKernel(folder, torch, tvm)
        N, K, fmt = kernel.spec["N"], kernel.spec["K"], kernel.spec["format"]
        for M in rows:
            stream = torch.cuda.current_stream().cuda_stream
            tvm.cuda(0).set_raw_stream(stream)
            ours = _events_time(torch, kernel.timer(M), args.iters)
            theirs = _events_time(torch, torch_timer(torch, N, K, M), args.iters)
            achieved = kernel.spec["packed_bytes"] / ours
            row = {"format": fmt, "M": M, "N": N, "K": K, "lowbit_us": ours * 1e6, "torch_fp16_us": theirs * 1e6,
                   "speedup": theirs / ours, "weight_GBps": achieved / 1e9,
                   "fraction_of_copy_bw": achieved / bandwidth}
            results.append(row)
            print(f"{fmt:>8} M={M:<3} N={N:<6} K={K:<5} lowbit {ours * 1e6:8.1f} us  "
                  f"torch fp16 {theirs * 1e6:8.1f} us  x{theirs / ours:5.2f}  "
                  f"weights {achieved / 1e9:6.0f} GB/s ({100 * achieved / bandwidth:4.0f}% of copy)")
    if args.json:
        from lowbit.runtime.atomic import write_atomically

        write_atomically(args.json, json.dumps({"device": device, "copy_bandwidth_GBps": bandwidth / 1e9,
                                                "results": results}, indent=2).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
