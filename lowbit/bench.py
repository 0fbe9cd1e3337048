"""Cold-cache benchmark of lowbit's mpGEMM kernels against NumPy, torch and onnxruntime, in one run.

For every (shape, format, kernel): quantize a seeded random weight, build lowbit's kernel once, check its
result against ``x @ dequant(W)^T`` (a wrong kernel gets no number), then time it and its peers. Every
timed call reads the next of ``copies`` independent weight copies, with ``copies`` chosen so that they
span twice the last-level cache: the weights come from DRAM, as a layer's weights do in a real model.
The DRAM bandwidth is measured in the same run, so ``bw_fraction`` says how close a kernel gets to the
roofline of a memory-bound GEMV.

The result is ``{"header": {...}, "rows": [...]}`` with the row keys in :data:`ROW_KEYS`.
"""
import concurrent.futures
import datetime
import json
import math
import os
import time

import numpy as np

from lowbit import peers
from lowbit.compiler.formats import parse_format, quantize
from lowbit.compiler.linear import build_linear, check_kernel, check_shapes
from lowbit.compiler.references import kernel_activations, kernel_reference
from lowbit.compiler.target import host_target
from lowbit.compiler.tvm_api import tensor
from lowbit.errors import InputError, KernelError
from lowbit.runtime.atomic import write_atomically
from lowbit.runtime.timing import (COPIES_MEMORY_CAP, FALLBACK_LLC, WARMUP, copies_for,  # noqa: F401 (re-exported)
                                   llc_bytes, median_ms)

DEFAULT_SHAPES = ((1, 4096, 4096), (1, 14336, 4096), (1, 4096, 14336), (16, 4096, 4096), (128, 4096, 4096))
DEFAULT_FORMATS = ("w8", "w4g128", "w3g128", "w2g64", "ternary", "nf4g64")
DEFAULT_KERNELS = ("auto",)
DEFAULT_REPEAT = 20
ROW_KEYS = ("M", "N", "K", "format", "kernel", "lowbit_ms", "numpy_ms", "torch_ms", "ort_acc4_ms", "ort_acc0_ms",
            "ggml_ms", "ggml_type", "weight_bytes", "gbps", "bw_fraction", "speedup_vs_numpy", "speedup_vs_ort",
            "speedup_vs_ggml")
DRAM_BUFFER = 1 << 30


def dram_gbps(threads, size=DRAM_BUFFER, trials=5):
    """DRAM read bandwidth in GB/s: ``threads`` threads each reduce their slice of a buffer far larger than
    the LLC; best of ``trials``. ``np.max`` is used because it runs at more than DRAM speed from L2
    (measured ~50 GB/s per core here), while ``np.sum``'s pairwise summation is compute-bound (~12 GB/s).
    """
    buffer = np.ones(size // 4, np.float32)  # np.ones touches every page: no page faults while timing
    slices = np.array_split(buffer, threads)
    best = math.inf
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL in reductions
        for _ in range(trials):
            start = time.perf_counter()
            list(pool.map(np.max, slices))
            best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best / 1e9


def lowbit_runner(linear, x, copies):
    """Zero-argument callable running ``linear.func`` on the next of ``copies`` copies of its weights."""

    x_t = tensor(np.ascontiguousarray(x, dtype=np.float32))
    y_t = tensor(np.empty((x.shape[0], linear.layout.N), np.float32))
    # tensor() copies each array into its own TVM buffer: the copies share no memory.
    weight_sets = [[tensor(a) for a in linear.weight_arrays()] for _ in range(copies)]
    calls = [lambda weights=weights: (linear.func(x_t, *weights, y_t), y_t)[1] for weights in weight_sets]
    return peers.rotate(calls)


def _seeded_weight(N, K):
    rng = np.random.default_rng([N, K])
    return (rng.standard_normal((N, K)) / math.sqrt(K)).astype(np.float32)


def _seeded_activations(M, K):
    return np.random.default_rng([M, K, 1]).standard_normal((M, K)).astype(np.float32)


class _Measurements:
    """Everything timed in one benchmark run, with what can be shared between combos cached.

    NumPy and torch depend only on the shape, onnxruntime only on (shape, format); the quantized weights
    of one (N, K) are kept while consecutive shapes share it.
    """

    def __init__(self, target, llc, repeat, notes):
        self.target, self.llc, self.repeat, self.notes = target, llc, repeat, notes
        self.threads = target.num_cores
        self._float_peers, self._ort, self._ggml, self._weights = {}, {}, {}, {}
        self._weights_key, self._dequantized = None, (None, None)

    def copies(self, name, weight_bytes):
        copies = copies_for(weight_bytes, self.llc)
        if copies * weight_bytes < 2 * self.llc:
            self.notes.append(f"{name}: {copies} weight copies of {weight_bytes} bytes span less than twice the "
                              "LLC (memory cap): its times are partly warm-cache")
        return copies

    def float_weight(self, N, K):
        """The seeded float32 (N, K) weight (kept, with its quantized forms, while N and K stay the same)."""
        if self._weights_key != (N, K):
            self._weights, self._weights_key = {"float": _seeded_weight(N, K)}, (N, K)
        return self._weights["float"]

    def quantized(self, N, K, fmt):
        """(QuantizedWeight, its dequantized float32 value) for the seeded weight in ``fmt``.

        The dequantized weight (4 bytes per weight) is kept for the latest format only.
        """

        weight = self.float_weight(N, K)
        if fmt.name not in self._weights:
            self._weights[fmt.name] = quantize(weight, fmt)
        qw = self._weights[fmt.name]
        if self._dequantized[0] is not qw:
            self._dequantized = (qw, qw.dequantize())
        return self._dequantized

    def time_peer(self, name, x, weight, weight_bytes, check=None):
        """Median ms of peer ``name`` (None where it cannot run this weight)."""
        run = peers.PEERS[name](x, weight, self.copies(name, weight_bytes), threads=self.threads)
        if run is None:
            return None
        if check is not None:
            check(name, run())
        return median_ms(run, self.repeat)

    def float_peers(self, M, N, K, x):
        """(numpy_ms, torch_ms) for a shape, measured once."""
        if (M, N, K) not in self._float_peers:
            weight = self.float_weight(N, K)
            self._float_peers[M, N, K] = tuple(self.time_peer(name, x, weight, 4 * N * K)
                                               for name in ("numpy", "torch"))
        return self._float_peers[M, N, K]

    def ort(self, M, N, K, x, qw, check):
        """(ort_acc4_ms, ort_acc0_ms) for a shape and format, measured once; None where unsupported."""
        key = (M, N, K, qw.format.name)
        if key not in self._ort:
            reason = peers.ort_unsupported_reason(qw.format, K)
            if reason is not None:
                if not any(reason in note for note in self.notes):
                    self.notes.append(f"onnxruntime: {reason}")
                self._ort[key] = (None, None)
            else:
                size = peers.matmulnbits_bytes(qw)
                self._ort[key] = (self.time_peer("ort_acc4", x, qw, size),
                                  self.time_peer("ort_acc0", x, qw, size, check))
        return self._ort[key]

    def ggml(self, M, N, K, x, qw, dequantized):
        """(ggml_ms, ggml_type) of the fastest nearest ggml type for a shape and format, measured once;
        (None, None) where ggml cannot stand in (the reason goes to the notes)."""
        from lowbit import peers_ggml

        key = (M, N, K, qw.format.name)
        if key not in self._ggml:
            reason = peers_ggml.unsupported_reason(qw.format, K)
            if reason is not None:
                note = f"ggml: {reason}"
                if note not in self.notes:
                    self.notes.append(note)
                self._ggml[key] = (None, None)
            else:
                times = {}
                for name in peers_ggml.usable_types(qw.format, K):
                    size = peers_ggml.weight_bytes(name, N, K)
                    run = peers_ggml.ggml_peer(x, dequantized, self.copies(f"ggml {name}", size),
                                               threads=self.threads, type_name=name)
                    times[name] = median_ms(run, self.repeat)
                    del run  # its weight copies are freed before the next type makes its own
                best = min(times, key=times.get)
                self._ggml[key] = (times[best], best)
        return self._ggml[key]

    def build(self, qw, kernel):
        """lowbit's compiled layer for ``qw`` (KernelError where ``kernel`` declines it)."""

        return build_linear(qw, target=self.target, kernel=kernel)

    def lowbit(self, linear, x, check):
        """(weight bytes, median ms) of a compiled layer, its result checked before it is timed."""
        weight_bytes = int(linear.layout.packed_bytes)
        run = lowbit_runner(linear, x, self.copies(f"lowbit {linear.kernel}", weight_bytes))
        check(f"lowbit {linear.kernel}", run().numpy(), linear.kernel)
        return weight_bytes, median_ms(run, self.repeat)


def _checker(x, qw, dequantized, where):
    """check(name, y, kernel): raise KernelError naming the combo when ``y`` is off ``x' @ dequant(W)^T``
    (``x'`` = :func:`kernel_activations`) by more than fp32 arithmetic can explain."""

    def check(name, y, kernel="decode"):
        x_used = kernel_activations(kernel, x, qw)
        try:
            reference = kernel_reference(kernel, x_used, qw, dequantized)
            peers.check_result(name, y, x_used, qw, reference)
        except AssertionError as err:
            raise KernelError(f"{where}: wrong result, so no benchmark number is reported: {err}") from None

    return check


def _significant(value, digits=4):
    """``value`` rounded to ``digits`` significant digits (None stays None): JSON without false precision."""
    if value is None or value == 0:
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _ratio(numerator, denominator):
    return None if numerator is None or denominator is None else _significant(numerator / denominator)


def _row(M, N, K, fmt, kernel, lowbit, float_ms, ort_ms, ggml, dram):
    """One result row with exactly the keys of :data:`ROW_KEYS`."""
    weight_bytes, lowbit_ms = lowbit
    gbps = (weight_bytes + 4 * M * K + 4 * M * N) / (lowbit_ms * 1e-3) / 1e9
    ort_best = min((t for t in ort_ms if t is not None), default=None)
    times = [_significant(t) for t in (lowbit_ms, *float_ms, *ort_ms, ggml[0])]
    values = (M, N, K, fmt.name, kernel, *times, ggml[1], weight_bytes, _significant(gbps), _ratio(gbps, dram),
              _ratio(float_ms[0], lowbit_ms), _ratio(ort_best, lowbit_ms), _ratio(ggml[0], lowbit_ms))
    return dict(zip(ROW_KEYS, values))


def _versions():
    import onnxruntime
    import tvm

    import lowbit

    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    from lowbit.peers_ggml import ggml_version

    return {"lowbit": lowbit.__version__, "tvm": tvm.__version__, "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "torch": torch_version, "ggml_python": ggml_version()}


def make_header(target, repeat, llc, dram):
    """The run's header: machine, versions, cache size, measured DRAM bandwidth and the method."""
    return {
        "cpu": target.cpu_name, "target_tag": target.tag, "features": sorted(target.features),
        "threads": target.num_cores, "versions": _versions(), "llc_bytes": llc, "dram_gbps": _significant(dram),
        "repeat": repeat, "warmup": WARMUP,
        "method": "median wall time (time.perf_counter) per call; every call reads the next of ceil(2 * LLC / "
                  "weight bytes) + 1 weight copies (cold cache); gbps = (weight bytes + 4*M*K + 4*M*N) / time",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "notes": [],
    }


def write_json(path, result):
    """Write ``result`` to ``path`` atomically (temp file in the same folder, then rename)."""

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, (json.dumps(result, indent=1) + "\n").encode("utf-8"))


def run_bench(shapes=DEFAULT_SHAPES, formats=DEFAULT_FORMATS, kernels=DEFAULT_KERNELS, repeat=DEFAULT_REPEAT,
              json_path=None, progress=True, llc=None):
    """Benchmark every (shape, format, kernel) combination; return ``{"header": ..., "rows": [...]}``.

    Parameters
    ----------
    shapes : iterable of (M, N, K)
    formats : iterable of format names (``w4g128``, ``ternary``, ...)
    kernels : iterable of kernel names (``auto``, ``decode``); one lowbit cannot build at all is an error,
        one that declines a single combination skips it with a note.
    repeat : int
        Timed calls per implementation (median reported), after :data:`WARMUP` untimed ones.
    json_path : str, optional
        Where to write the result (atomically).
    llc : int, optional
        Last-level cache bytes the weight copies must exceed (default: read from sysfs).
    """
    from tqdm import tqdm


    shapes, formats = check_shapes(shapes), [parse_format(name) for name in formats]
    for kernel in kernels:
        check_kernel(kernel)
    if not isinstance(repeat, int) or repeat < 1:
        raise InputError(f"repeat={repeat!r}: the number of timed calls must be a positive integer (e.g. 20)")
    target = host_target()
    header = _start_header(target, repeat, llc)
    measure = _Measurements(target, header["llc_bytes"], repeat, header["notes"])
    combos = [(shape, fmt, kernel) for shape in shapes for fmt in formats for kernel in kernels]
    rows = []
    with tqdm(combos, disable=not progress, unit="combo", dynamic_ncols=True) as bar:
        for (M, N, K), fmt, kernel in bar:
            bar.set_description(f"{M}x{N}x{K} {fmt.name} {kernel}")
            row = _bench_combo(measure, M, N, K, fmt, kernel, header["dram_gbps"])
            if isinstance(row, str):
                header["notes"].append(row)
                bar.write(f"skipped: {row}")
            else:
                rows.append(row)
    if not rows:
        raise KernelError("no combination could be benchmarked: " + "; ".join(header["notes"]))
    result = {"header": header, "rows": rows}
    if json_path is not None:
        write_json(json_path, result)
    return result


def _start_header(target, repeat, llc):
    notes = []
    if llc is None:
        llc = llc_bytes()
        if llc is None:
            llc = FALLBACK_LLC
            notes.append(f"LLC size unknown (no /sys/devices/system/cpu/cpu0/cache): assumed {llc >> 20} MiB")
    dram = dram_gbps(target.num_cores, size=max(DRAM_BUFFER, 4 * llc))
    header = make_header(target, repeat, llc, dram)
    header["notes"].extend(notes)
    return header


def _bench_combo(measure, M, N, K, fmt, kernel, dram):
    """One row, or a one-line reason why lowbit's ``kernel`` does not handle this combination."""
    where = f"{M}x{N}x{K} {fmt.name} kernel={kernel}"
    qw, dequantized = measure.quantized(N, K, fmt)
    x = _seeded_activations(M, K)
    check = _checker(x, qw, dequantized, where)
    try:
        linear = measure.build(qw, kernel)
    except KernelError as err:
        return f"{where}: {err}"
    kernel_name = linear.kernel
    lowbit = measure.lowbit(linear, x, check)
    del linear  # its weight copies are freed before the peers make theirs
    float_ms = measure.float_peers(M, N, K, x)
    ort_ms = measure.ort(M, N, K, x, qw, check)
    ggml = measure.ggml(M, N, K, x, qw, dequantized)
    return _row(M, N, K, fmt, kernel_name, lowbit, float_ms, ort_ms, ggml, dram)


# ---- reporting -------------------------------------------------------------------------------------------

_COLUMNS = (  # (title, row key, format); a None value prints as "-"
    ("M,N,K", None, None), ("format", "format", "{}"), ("kernel", "kernel", "{}"),
    ("lowbit_ms", "lowbit_ms", "{:.3f}"), ("numpy_ms", "numpy_ms", "{:.3f}"), ("torch_ms", "torch_ms", "{:.3f}"),
    ("ort_acc4", "ort_acc4_ms", "{:.3f}"), ("ort_acc0", "ort_acc0_ms", "{:.3f}"),
    ("ggml", "ggml_ms", "{:.3f}"), ("ggml_type", "ggml_type", "{}"),
    ("x_numpy", "speedup_vs_numpy", "{:.2f}"), ("x_ort", "speedup_vs_ort", "{:.2f}"),
    ("x_ggml", "speedup_vs_ggml", "{:.2f}"),
    ("GB/s", "gbps", "{:.1f}"), ("%bw", "bw_fraction", "{:.0%}"),
)


def _cells(row, columns):
    cells = []
    for title, key, fmt in columns:
        if key is None:
            cells.append(f"{row['M']},{row['N']},{row['K']}")
        else:
            cells.append("-" if row[key] is None else fmt.format(row[key]))
    return cells


def format_table(result, markdown=False):
    """The rows as an aligned text table, or a Markdown table (``markdown=True``) for the README.

    The torch and ggml columns appear only when some row has a time for them.
    """
    optional = {"torch_ms": "torch_ms", "ggml_ms": "ggml_ms", "ggml_type": "ggml_ms", "speedup_vs_ggml": "ggml_ms"}
    columns = [c for c in _COLUMNS
               if c[1] not in optional or any(r[optional[c[1]]] is not None for r in result["rows"])]
    titles = [c[0] for c in columns]
    body = [_cells(row, columns) for row in result["rows"]]
    if markdown:
        align = ["---" if c[2] in (None, "{}") else "---:" for c in columns]
        lines = [titles, align] + body
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[i]) for line in [titles] + body) for i in range(len(titles))]
    return "\n".join("  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in
                               enumerate(zip(line, widths))).rstrip() for line in [titles] + body)


def describe(header):
    """One paragraph naming the machine, the versions and the method, to print above the table."""
    v = header["versions"]
    lines = [
        f"CPU: {header['cpu']} ({header['target_tag']}), {header['threads']} threads, "
        f"LLC {header['llc_bytes'] / (1 << 20):.0f} MiB, DRAM {header['dram_gbps']:.1f} GB/s (measured)",
        f"lowbit {v['lowbit']}, TVM {v['tvm']}, NumPy {v['numpy']}, onnxruntime {v['onnxruntime']}, "
        f"torch {v['torch'] or 'not installed'}, ggml-python {v.get('ggml_python') or 'not installed'}",
        f"median of {header['repeat']} cold-cache calls after {header['warmup']} warm-up calls; "
        "x_numpy / x_ort: lowbit's speedup (x_ort against the faster of onnxruntime's MatMulNBits "
        "accuracy levels 4 (int8 activations) and 0 (fp32)); x_ggml: against llama.cpp's ggml mul_mat on the nearest "
        "ggml type (ggml_type; int8 activations inside); kernel: the one lowbit ran (decode: fp32 "
        "activations; a8: int8 activations per row and K-group, like accuracy level 4)",
    ]
    lines += [f"note: {note}" for note in header["notes"]]
    return "\n".join(lines)
