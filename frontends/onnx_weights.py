"""Turn the integer weights of ONNX quantization operators into lowbit ``QuantizedWeight`` objects, exactly.

Each decoder takes NumPy arrays as stored in the model and returns the (N, K) QuantizedWeight whose
dequantization ``scale * (code - zero)`` is the ONNX operator's, bit for bit: codes, scales and zero points are
copied, never re-quantized. Signed codes become lowbit's unsigned codes by adding ``2**(bits-1)`` to both the
code and the zero point (the difference, hence the weight, is unchanged). A layer whose zero points are all
``2**(bits-1)`` (in unsigned code space) gets the symmetric format (``w4g32s``), which stores none.
"""
import numpy as np

from lowbit.compiler.formats import QuantizedWeight, UniformFormat, unpack_bits
from lowbit.errors import FormatError, ModelError, WeightError

# ONNX integer weight types lowbit's uniform formats hold: numpy dtype name -> (bits, signed)
INTEGER_TYPES = {"int8": (8, True), "uint8": (8, False), "int4": (4, True), "uint4": (4, False),
                 "int2": (2, True), "uint2": (2, False)}


def build_weight(where, bits, group_size, codes, scales, zeros):
    """The QuantizedWeight of unsigned (N, K) ``codes``, (N, G) ``scales`` and (N, G) ``zeros``.

    ``where`` names the node in error messages; format and weight errors become ModelError naming it.
    """
    half = 2 ** (bits - 1)
    symmetric = bits > 1 and bool((zeros == half).all())
    try:
        fmt = UniformFormat(bits, group_size, symmetric)
        return QuantizedWeight(fmt, codes.astype(np.uint8), scales.astype(np.float32),
                               None if symmetric else zeros.astype(np.uint8))
    except (FormatError, WeightError) as err:
        raise ModelError(f"{where}: its weight is not representable in a lowbit format: {err}") from err


def _unsigned(values, bits, signed):
    values = np.asarray(values).astype(np.int32)
    return values + 2 ** (bits - 1) if signed else values


def _integer_type(array, where, role):
    name = np.asarray(array).dtype.name
    if name not in INTEGER_TYPES:
        raise ModelError(f"{where}: its {role} has type {name}; lowbit reads int8, uint8, int4, uint4, int2 and "
                         "uint2 weights")
    return INTEGER_TYPES[name]


def decode_linear_quantized(where, codes, scale, zero, k_axis, axis=1, block_size=0):
    """Decode a ``DequantizeLinear``-style weight (codes, scale, zero point) into an (N, K) QuantizedWeight.

    Parameters
    ----------
    where : str
        Names the node (and tensors) in error messages.
    codes : np.ndarray
        2-D integer weight as stored: (K, N) when ``k_axis`` is 0 (MatMul), (N, K) when 1 (Gemm transB=1).
    scale, zero : np.ndarray
        Per tensor (one value), per axis (1-D along ``axis``) or blocked (``block_size`` > 0: codes' shape with
        ``axis`` divided into blocks). ``zero`` may be None (zero point 0 in the codes' type).
    """
    bits, signed = _integer_type(codes, where, "weight")
    if np.ndim(codes) != 2:
        raise ModelError(f"{where}: the weight has shape {np.shape(codes)}; lowbit compiles 2-D weights")
    if zero is not None and np.asarray(zero).dtype != np.asarray(codes).dtype:
        raise ModelError(f"{where}: zero point type {np.asarray(zero).dtype} differs from the weight type "
                         f"{np.asarray(codes).dtype}")
    scale = np.asarray(scale, np.float32)
    zero = np.zeros(scale.shape, np.int32) if zero is None else np.asarray(zero).astype(np.int32)
    if zero.size == 1 and scale.size > 1:
        zero = np.full(scale.shape, zero.reshape(()), np.int32)
    if zero.shape != scale.shape and not zero.size == scale.size == 1:
        raise ModelError(f"{where}: zero point shape {zero.shape} differs from scale shape {scale.shape}")
    codes_nk = np.asarray(codes).T if k_axis == 0 else np.asarray(codes)
    scales, zeros, group = _grouped(where, codes_nk.shape, scale, zero, k_axis, axis, block_size)
    return build_weight(where, bits, group, _unsigned(codes_nk, bits, signed), scales,
                        _unsigned(zeros, bits, signed))


def _grouped(where, shape_nk, scale, zero, k_axis, axis, block_size):
    """Scales and zeros as (N, G) arrays and the group size (None: per channel)."""
    N, K = shape_nk
    axis = axis + 2 if axis < 0 else axis
    if axis not in (0, 1):
        raise ModelError(f"{where}: axis {axis} is out of range for a 2-D weight")
    n_axis = 1 - k_axis
    if block_size == 0 and scale.size == 1 and scale.ndim <= 1:
        return np.full((N, 1), scale.reshape(()), np.float32), np.full((N, 1), zero.reshape(())), None
    if block_size == 0:
        size = N if axis == n_axis else K
        if scale.shape != (size,):
            raise ModelError(f"{where}: scale has shape {scale.shape}; per-axis quantization along axis {axis} "
                             f"needs shape ({size},)")
        if axis != n_axis:
            raise ModelError(f"{where}: scales vary along K (axis {axis}, the reduction axis): lowbit formats "
                             "have one scale per output channel or per group of K; quantize per output channel")
        return scale.reshape(N, 1), zero.reshape(N, 1), None
    return _blocked(where, N, K, scale, zero, k_axis, axis, block_size)


def _blocked(where, N, K, scale, zero, k_axis, axis, block_size):
    if axis != k_axis:
        raise ModelError(f"{where}: blocks of {block_size} run along the output channels (axis {axis}): lowbit "
                         "groups run along K; quantize with blocks along the reduction axis")
    n_blocks = -(-K // block_size)
    expected = (n_blocks, N) if k_axis == 0 else (N, n_blocks)
    if scale.shape != expected:
        raise ModelError(f"{where}: scale has shape {scale.shape}; blocks of {block_size} along K={K} need "
                         f"shape {expected}")
    if k_axis == 0:
        scale, zero = scale.T, zero.T
    return split_blocks(scale, zero, block_size, K)


def split_blocks(scales, zeros, block_size, K):
    """(N, n_blocks) block scales and zeros as lowbit groups that divide K: ``(scales, zeros, group)``.

    A block size that divides K is the group. Otherwise (K = 64 with blocks of 128, or a partial last block:
    onnxruntime pads K to whole blocks) the group is ``gcd(block_size, K)`` and each block's scale and zero
    are repeated over its groups: the same weights exactly, at more scales per row.
    """
    import math

    if K % block_size == 0:
        return scales, zeros, block_size
    group = math.gcd(block_size, K)
    repeat = block_size // group
    return (np.repeat(scales, repeat, axis=1)[:, :K // group], np.repeat(zeros, repeat, axis=1)[:, :K // group],
            group if group < K else None)


def decode_matmul_nbits(where, packed, scales, zero_points, N, K, bits, block_size):
    """Decode ``com.microsoft.MatMulNBits`` weights into an (N, K) QuantizedWeight.

    Layout (onnxruntime's contrib operator docs): ``B`` uint8 (N, n_blocks, blob) with ``blob = block_size *
    bits / 8``; each block's codes are an LSB-first bit stream. ``scales`` hold N * n_blocks values, row-major.
    Integer ``zero_points`` are uint8, each row packed LSB-first into ``ceil(n_blocks * bits / 8)`` bytes;
    float zero points (same shape as the scales) must be integers here. Absent zero points mean
    ``2**(bits-1)``.
    """
    if bits not in (2, 4, 8):
        raise ModelError(f"{where}: bits={bits}; lowbit reads MatMulNBits with 2, 4 or 8 bits")
    n_blocks, blob = -(-K // block_size), block_size * bits // 8
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.size != N * n_blocks * blob:
        raise ModelError(f"{where}: B has type {packed.dtype} and shape {packed.shape}; K={K}, N={N}, "
                         f"block_size={block_size}, bits={bits} need uint8 ({N}, {n_blocks}, {blob})")
    codes = unpack_bits(packed.reshape(N, n_blocks * blob), bits, K)
    scales = np.asarray(scales)
    if scales.size != N * n_blocks:
        raise ModelError(f"{where}: scales have shape {scales.shape}: expected N * n_blocks = {N} * {n_blocks} "
                         "values")
    scales = scales.astype(np.float32).reshape(N, n_blocks)
    zeros = _nbits_zero_points(where, zero_points, N, n_blocks, bits)
    scales, zeros, group = split_blocks(scales, zeros, block_size, K)
    return build_weight(where, bits, group, codes, scales, zeros)


def _nbits_zero_points(where, zero_points, N, n_blocks, bits):
    if zero_points is None:
        return np.full((N, n_blocks), 2 ** (bits - 1), np.int32)
    zero_points = np.asarray(zero_points)
    if zero_points.dtype == np.uint8:
        row_bytes = -(-n_blocks * bits // 8)
        if zero_points.size != N * row_bytes:
            raise ModelError(f"{where}: zero_points have shape {zero_points.shape}: packed {bits}-bit zero points "
                             f"need N * ceil(n_blocks * bits / 8) = {N * row_bytes} bytes")
        return unpack_bits(zero_points.reshape(N, row_bytes), bits, n_blocks).astype(np.int32)
    if zero_points.size != N * n_blocks:
        raise ModelError(f"{where}: zero_points have shape {zero_points.shape}: expected {N * n_blocks} values")
    values = zero_points.astype(np.float64).reshape(N, n_blocks)
    if not (np.isfinite(values).all() and (values == np.rint(values)).all()
            and values.min() >= 0 and values.max() < 2 ** bits):
        raise ModelError(f"{where}: float zero points must be integers in [0, {2 ** bits}) for lowbit's uniform "
                         "formats (fractional zero points are not supported yet)")
    return values.astype(np.int32)
