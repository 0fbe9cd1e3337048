"""The second peer: llama.cpp's own CPU kernels (ggml), through the ``ggml-python`` bindings.

ggml has its own block formats, so each lowbit format is paired with the nearest ggml types (the pairing is
part of every benchmark row, ``ggml_type``; where several are near, each is timed and the faster reported):

=================  ==============================  ================================================
lowbit format      ggml types                      why
=================  ==============================  ================================================
8-bit              Q8_0                            blocks of 32, one fp16 scale
5-, 6-bit          Q5_0 / Q5_K, Q6_K               nearest bit width
4-bit uniform      Q4_0, Q4_K                      Q4_0: g32 symmetric; Q4_K: 256-weight super-blocks
3-bit              Q3_K                            the only 3-bit type without an importance matrix
2-bit              Q2_K                            16-weight sub-blocks with 4-bit scales and mins
ternary            TQ2_0                           ternary in 2 bits, one scale per 256 weights
4-bit codebook     IQ4_NL                          a fixed non-uniform 16-level grid, blocks of 32
=================  ==============================  ================================================

ggml quantizes the activations to 8 bits inside its dot products (``vec_dot_type`` Q8_0 / Q8_K), so its
fair opponent is lowbit's ``a8`` or ``lut`` kernel. The weight ggml is given is the lowbit weight's
dequantized value (for ternary and 8-bit that is exactly representable; for the others ggml re-quantizes it,
which is how a user would convert the same model).

``ggml-python`` is an optional extra (``pip install -e .[bench]``; it builds ggml from source with CMake, with
``-march=native``, in about a minute). ggml reads numpy buffers by pointer: every array handed to it is kept
alive by the peer for as long as ggml may read it.
"""
import ctypes
import functools

import numpy as np

from lowbit.peers import rotate

# Sanity bound on ||y - x @ W^T|| / ||x @ W^T||: ggml re-quantizes the weight and quantizes the activations
# to 8 bits, so it is not exact; a transposed or misread weight errs by about 1.4 (sqrt 2), far above it.
MAX_RELATIVE_ERROR = 0.5


def ggml_module():
    """The ``ggml`` bindings, or None where ``ggml-python`` is not installed."""
    try:
        import ggml
    except (ImportError, OSError):  # OSError: the package is there but its shared library does not load
        return None
    return ggml


def candidate_types(fmt):
    """Names of the ggml types nearest to a lowbit format (see the module docstring), maybe empty."""
    if fmt.kind == "ternary":
        return ("TQ2_0",)
    if fmt.kind == "codebook":
        return ("IQ4_NL",) if fmt.bits == 4 else ()
    return {8: ("Q8_0",), 6: ("Q6_K",), 5: ("Q5_0", "Q5_K"), 4: ("Q4_0", "Q4_K"), 3: ("Q3_K",),
            2: ("Q2_K",)}.get(fmt.bits, ())


def unsupported_reason(fmt, K):
    """Why no ggml type can stand in for ``fmt`` at row length ``K``, or None if one can."""
    if ggml_module() is None:
        return "ggml-python is not installed (pip install -e .[bench])"
    names = candidate_types(fmt)
    if not names:
        return f"{fmt.name}: ggml has no {fmt.bits}-bit {fmt.kind} type without an importance matrix"
    if not usable_types(fmt, K):
        blocks = ", ".join(f"{n} ({_block_size(n)})" for n in names)
        return f"K={K} is not a multiple of the block size of {blocks}"
    return None


def usable_types(fmt, K):
    """The candidate types whose block size divides ``K``."""
    return tuple(name for name in candidate_types(fmt) if K % _block_size(name) == 0)


def weight_bytes(type_name, N, K):
    """Bytes of an (N, K) weight in a ggml type (blocks with their scales)."""
    return int(ggml_module().ggml_row_size(_type_id(type_name), K)) * N


def ggml_version():
    """The installed ggml-python's version, or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version("ggml-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def _block_size(name):
    ggml = ggml_module()
    return int(ggml.ggml_blck_size(_type_id(name)))


def _type_id(name):
    return getattr(ggml_module(), f"GGML_TYPE_{name}")


class GgmlMatmul:
    """``y = x @ W^T`` by ggml's ``mul_mat`` on one ggml type, with its own context, graph and work buffer.

    Parameters
    ----------
    x : (M, K) float32
    w : (N, K) float32
        Quantized by ggml to ``type_name`` once, here.
    type_name : str
        e.g. ``"Q4_0"``.
    threads : int
    """

    def __init__(self, x, w, type_name, threads):
        ggml = ggml_module()
        self._ggml, self.type_name, self.threads = ggml, type_name, threads
        (M, K), N = x.shape, w.shape[0]
        kind = _type_id(type_name)
        self._x = np.ascontiguousarray(x, dtype=np.float32)
        w = np.ascontiguousarray(w, dtype=np.float32)
        if ggml.ggml_quantize_requires_imatrix(kind):
            raise ValueError(f"ggml type {type_name} needs an importance matrix")
        row = int(ggml.ggml_row_size(kind, K))
        size = row * N + 4 * (M * K + M * N) + ggml.ggml_tensor_overhead() * 8 + ggml.ggml_graph_overhead() + (1 << 20)
        self._ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=size, mem_buffer=None))
        if not self._ctx:
            raise MemoryError(f"ggml_init could not allocate {size} bytes")
        weight = ggml.ggml_new_tensor_2d(self._ctx, kind, K, N)
        ggml.ggml_quantize_init(kind)
        written = ggml.ggml_quantize_chunk(kind, w.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                           weight.contents.data, 0, N, K, None)
        if written != row * N:
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes for {type_name}, expected {row * N}")
        self.weight_bytes = row * N
        xt = ggml.ggml_new_tensor_2d(self._ctx, ggml.GGML_TYPE_F32, K, M)
        ctypes.memmove(xt.contents.data, self._x.ctypes.data, self._x.nbytes)
        out = ggml.ggml_mul_mat(self._ctx, weight, xt)  # ne0 = N, ne1 = M: row-major (M, N)
        self._graph = ggml.ggml_new_graph(self._ctx)
        ggml.ggml_build_forward_expand(self._graph, out)
        self._plan = ggml.ggml_graph_plan(self._graph, threads, None)
        self._work = np.empty(max(1, self._plan.work_size), np.uint8)  # kept alive: ggml writes through it
        self._plan.work_data = self._work.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        self.y = np.ctypeslib.as_array(ctypes.cast(out.contents.data, ctypes.POINTER(ctypes.c_float)),
                                       shape=(M, N))

    def __call__(self):
        status = self._ggml.ggml_graph_compute(self._graph, ctypes.byref(self._plan))
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute failed with status {status} ({self.type_name})")
        return self.y

    def __del__(self):
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx:
            self._ggml.ggml_free(ctx)


def check(run, x, w, type_name):
    """Raise AssertionError when ggml's result is not near ``x @ w^T`` (see MAX_RELATIVE_ERROR)."""
    reference = x.astype(np.float64) @ w.astype(np.float64).T
    error = np.linalg.norm(run().astype(np.float64) - reference) / max(np.linalg.norm(reference), 1e-30)
    if not error <= MAX_RELATIVE_ERROR:
        raise AssertionError(f"ggml {type_name}: relative error {error:.3g} against x @ W^T exceeds "
                             f"{MAX_RELATIVE_ERROR} (a misread weight, not quantization)")


def ggml_peer(x, weight, copies, threads=None, type_name="Q4_0"):
    """ggml ``mul_mat`` on ``copies`` independently quantized copies of ``weight``, rotated per call; the
    first copy's result is checked against ``x @ W^T``. ``None`` without ggml-python."""
    from lowbit.peers import _float_weight, thread_count  # noqa: PLC2701 - the peers' shared helper

    if ggml_module() is None:
        return None
    w = _float_weight(weight)
    runs = [GgmlMatmul(x, w, type_name, threads or thread_count()) for _ in range(copies)]
    check(runs[0], x, w, type_name)
    return rotate(runs)


def peer_factory(type_name):
    """A ``(x, weight, copies, threads)`` factory for one ggml type."""
    return functools.partial(ggml_peer, type_name=type_name)
