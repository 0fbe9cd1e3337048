"""The peers lowbit's kernels are timed against: NumPy, torch and onnxruntime's ``MatMulNBits``.

Each factory takes ``(x, weight, copies, threads)`` and returns a zero-argument callable that computes
``x @ W^T`` into a preallocated output and returns it, using the next of ``copies`` independent copies
of the weight on every call. With enough copies (the benchmark picks them from the last-level cache
size) every call reads its weight from DRAM: a cold-cache measurement, as a layer in a real model sees.
A factory returns ``None`` when the peer cannot run the weight (torch not installed, a format
onnxruntime has no kernel for); :func:`ort_unsupported_reason` says why for onnxruntime.

onnxruntime's ``com.microsoft.MatMulNBits`` (contrib op schema, as the installed onnxruntime prints it):
``B`` is uint8 ``(N, k_blocks, block_size * bits / 8)``, codes packed LSB-first along K within each block;
``scales`` ``(N * k_blocks)``; optional ``zero_points`` uint8 ``(N, ceil(k_blocks * bits / 8))`` packed the
same way, defaulting to ``2**(bits-1)`` (lowbit's symmetric zero point) when absent;
``block_size`` a power of two >= 16. onnxruntime 1.32's CPU kernel accepts bits 2, 4 and 8 only, and
2-bit blocks of at most 256 (checked by building a one-node session, not assumed).
"""
import functools

import numpy as np

from lowbit.compiler.formats import pack_bits
from lowbit.compiler.references import error_bound
from lowbit.runtime.threads import thread_count as kernel_threads
from lowbit.runtime.timing import check_close, rotate

ORT_DOMAIN = "com.microsoft"
ORT_MIN_BLOCK = 16


def thread_count():
    """Threads lowbit's kernels use (TVM's pool: ``TVM_NUM_THREADS``, else every core this process may run on)."""

    return kernel_threads()


def _float_weight(weight):
    """The (N, K) float32 weight of a float array or a QuantizedWeight (its dequantized value)."""
    if hasattr(weight, "dequantize"):
        return weight.dequantize()
    return np.ascontiguousarray(weight, dtype=np.float32)


def numpy_peer(x, weight, copies, threads=None):
    """NumPy fp32 ``x @ wT`` with ``wT`` a contiguous (K, N) copy (BLAS sgemm; BLAS picks its threads)."""
    w = _float_weight(weight)
    y = np.empty((x.shape[0], w.shape[0]), np.float32)
    transposed = [np.ascontiguousarray(w.T) for _ in range(copies)]
    return rotate([functools.partial(np.matmul, x, wt, out=y) for wt in transposed])


def torch_peer(x, weight, copies, threads=None):
    """torch fp32 ``x @ wT`` on ``threads`` threads; ``None`` where torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads or thread_count())
    w = _float_weight(weight)
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    y = torch.empty((x.shape[0], w.shape[0]), dtype=torch.float32)
    transposed = [torch.from_numpy(np.ascontiguousarray(w.T)) for _ in range(copies)]

    def call(wt):
        torch.matmul(x_t, wt, out=y)
        return y.numpy()

    return rotate([functools.partial(call, wt) for wt in transposed])


# ---- onnxruntime MatMulNBits ---------------------------------------------------------------------------

def ort_block_size(fmt, K):
    """MatMulNBits ``block_size`` for a format: its group size, or K rounded up to a power of two >= 16
    for per-channel formats (the codes past K are padding the kernel never multiplies)."""
    if fmt.group_size is not None:
        return fmt.group_size
    return max(ORT_MIN_BLOCK, 1 << (K - 1).bit_length())


def ort_unsupported_reason(fmt, K):
    """Why onnxruntime's MatMulNBits cannot run ``fmt`` with rows of length ``K``, or ``None`` if it can."""
    if fmt.kind != "uniform":
        return f"{fmt.name}: MatMulNBits has uniform integer formats only (this is {fmt.kind})"
    block = ort_block_size(fmt, K)
    if block < ORT_MIN_BLOCK or block & (block - 1):
        return f"{fmt.name}: MatMulNBits block_size must be a power of two >= {ORT_MIN_BLOCK}, got {block}"
    return _ort_kernel_error(fmt.bits, block)


@functools.lru_cache(maxsize=None)
def _ort_kernel_error(bits, block_size):
    """Build a tiny one-node session; return onnxruntime's error message if it refuses the op, else None."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    codes = np.zeros((1, block_size), np.uint8)
    scales = np.ones((1, 1), np.float32)
    model = _matmulnbits_model(block_size, bits, block_size, _pack_blocks(codes, bits, block_size), scales,
                               None, accuracy_level=0)
    refusals = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.NotImplemented)
    try:
        _session(model.SerializeToString(), thread_count(), quiet=True)
    except refusals as err:
        message = str(err).splitlines()[0]
        message = message.split("was false.", 1)[-1].strip()  # keep the sentence, drop the source location
        return f"w{bits} with block_size {block_size}: onnxruntime {ort_version()} refuses MatMulNBits: {message}"
    return None


def ort_version():
    """The installed onnxruntime's version string."""
    import onnxruntime

    return onnxruntime.__version__


def _pack_blocks(codes, bits, block_size):
    """(N, K) codes -> uint8 (N, k_blocks, block_size * bits / 8), LSB-first within each block."""

    N, K = codes.shape
    blocks = -(-K // block_size)
    padded = np.zeros((N, blocks * block_size), np.uint8)
    padded[:, :K] = codes
    packed = pack_bits(padded.reshape(N * blocks, block_size), bits)
    return packed.reshape(N, blocks, block_size * bits // 8)


def matmulnbits_inputs(qw):
    """The MatMulNBits initializers of a uniform QuantizedWeight.

    Returns
    -------
    (block_size, B, scales, zero_points) : (int, uint8 array, float32 array, uint8 array or None)
        ``zero_points`` is ``None`` for symmetric formats (onnxruntime's default is ``2**(bits-1)``,
        lowbit's symmetric zero point).
    """

    fmt = qw.format
    N, K = qw.codes.shape
    block = ort_block_size(fmt, K)
    packed = _pack_blocks(qw.codes, fmt.bits, block)
    zeros = None if qw.zeros is None else pack_bits(qw.zeros, fmt.bits)
    return block, packed, qw.scales.reshape(-1).copy(), zeros


def matmulnbits_bytes(qw):
    """Bytes of onnxruntime's weight initializers for ``qw`` (codes, scales, packed zero points)."""
    N, K = qw.codes.shape
    fmt = qw.format
    blocks = -(-K // ort_block_size(fmt, K))
    zero_bytes = N * -(-blocks * fmt.bits // 8) if qw.zeros is not None else 0
    return N * blocks * ort_block_size(fmt, K) * fmt.bits // 8 + N * blocks * 4 + zero_bytes


def matmulnbits_model(qw, accuracy_level):
    """A one-node ONNX model ``Y = A @ dequant(B)^T`` with the weight as initializers (not graph inputs)."""
    N, K = qw.codes.shape
    block, packed, scales, zeros = matmulnbits_inputs(qw)
    return _matmulnbits_model(K, qw.format.bits, block, packed, scales, zeros, accuracy_level)


def _matmulnbits_model(K, bits, block_size, packed, scales, zeros, accuracy_level):
    from onnx import TensorProto, helper, numpy_helper

    N = packed.shape[0]
    initializers = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1), "scales")]
    inputs = ["A", "B", "scales"]
    if zeros is not None:
        initializers.append(numpy_helper.from_array(zeros, "zero_points"))
        inputs.append("zero_points")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain=ORT_DOMAIN, K=K, N=N, bits=bits,
                            block_size=block_size, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "matmulnbits",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ORT_DOMAIN, 1)])


_ORT_POOL = {}
# The process-wide pool is a one-way switch for the whole process (every later session must opt in), so only
# the ``lowbit bench`` command, which owns its process, turns it on; library and test callers get a pool
# per session with spinning off, which avoids the same interference without touching global state.
SHARED_POOL = False


def _session(model_bytes, threads, quiet=False):
    """An InferenceSession for the benchmark.

    The benchmark rotates through many sessions; with a spinning pool per session, the idle workers of the
    session that just ran keep spinning on the cores the next session needs (measured here: 44 ms instead of
    4 ms for a 4096x4096 w4g128 layer at M=16). One shared pool behaves like a single session.
    """
    import onnxruntime as ort

    if not SHARED_POOL:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if quiet:
            options.log_severity_level = 4
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    if not _ORT_POOL:
        ort.set_global_thread_pool_sizes(threads, 1)
        _ORT_POOL["threads"] = threads
    elif _ORT_POOL["threads"] != threads:
        raise RuntimeError(f"onnxruntime's thread pool was sized once for {_ORT_POOL['threads']} threads in "
                           f"this process; {threads} were asked for: use one thread count per process")
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    if quiet:
        options.log_severity_level = 4  # fatal only: a refused probe is an answer, not an error to print
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_peer(x, qw, copies, threads=None, accuracy_level=4):
    """onnxruntime ``MatMulNBits`` on ``copies`` sessions (each with its own weight), rotated per call.

    ``accuracy_level`` 4 lets onnxruntime quantize A to int8 per block (its fast path); 0 computes in fp32.
    Returns ``None`` where MatMulNBits cannot represent the format (see :func:`ort_unsupported_reason`).
    """
    if not hasattr(qw, "format") or ort_unsupported_reason(qw.format, qw.shape[1]) is not None:
        return None
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty((x.shape[0], qw.shape[0]), np.float32)
    model_bytes = matmulnbits_model(qw, accuracy_level).SerializeToString()
    calls = []
    for _ in range(copies):
        # Every session deserializes and pre-packs its own copy of the initializers.
        session = _session(model_bytes, threads or thread_count())
        binding = session.io_binding()
        binding.bind_cpu_input("A", x)
        binding.bind_output("Y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
        calls.append(functools.partial(_run_bound, session, binding, y))
    return rotate(calls)


def _run_bound(session, binding, y):
    session.run_with_iobinding(binding)
    return y


PEERS = {
    "numpy": numpy_peer,
    "torch": torch_peer,
    "ort_acc4": functools.partial(ort_peer, accuracy_level=4),
    "ort_acc0": functools.partial(ort_peer, accuracy_level=0),
}


# ---- checking results ----------------------------------------------------------------------------------

def check_result(name, y, x, qw, reference=None):
    """Raise AssertionError naming ``name`` when ``y`` is off ``x @ dequant(W)^T`` by more than :func:`error_bound`."""
    if reference is None:
        reference = x.astype(np.float64) @ qw.dequantize().T.astype(np.float64)
    check_close(name, y, reference, error_bound(x, qw))
