"""``lowbit quantize``: quantize a float ONNX model's MatMul / Gemm weights and write a quantized ONNX model.

The output runs in onnxruntime (QDQ: blocked ``DequantizeLinear``; or ``MatMulNBits``) so lowbit's quantization
can be compared with it, and ``lowbit compile`` reads the same integers back.
"""
import os

HELP = "quantize a float ONNX model (RTN or GPTQ) and write it as a quantized ONNX model (QDQ or MatMulNBits)"


def add_arguments(parser):
    parser.add_argument("model", metavar="FLOAT.onnx", help="the float ONNX model")
    parser.add_argument("--output", "-o", required=True, metavar="Q.onnx", help="quantized ONNX model to write")
    parser.add_argument("--format", required=True, metavar="NAME", help="weight format (w4g128, w8, w4g32s, ...)")
    add_method_arguments(parser)
    parser.add_argument("--style", default="qdq", choices=("qdq", "matmulnbits"),
                        help="how the integers are written: blocked DequantizeLinear (qdq, opset 21) or "
                             "com.microsoft.MatMulNBits")


def add_method_arguments(parser):
    """--method and --calibration (shared with ``lowbit compile``)."""
    parser.add_argument("--method", default="rtn", choices=("rtn", "gptq"),
                        help="rtn: round to nearest (default); gptq: error feedback from --calibration inputs")
    parser.add_argument("--calibration", metavar="DATA.npz",
                        help="calibration inputs for gptq: an .npz whose keys are the model's input names")


def run(args):
    import onnx

    from lowbit.errors import ModelError
    from lowbit.frontends.onnx_quantize import quantize_onnx
    from lowbit.frontends.quantize import check_method, single_format

    fmt = single_format(args.format)
    check_method(args.method, args.calibration)
    if not os.path.isfile(args.model):
        raise ModelError(f"ONNX model {args.model!r} does not exist")
    proto = quantize_onnx(args.model, fmt, args.method, args.calibration, style=args.style)
    temporary = f"{args.output}.tmp{os.getpid()}"
    onnx.save(proto, temporary)
    os.replace(temporary, args.output)  # a failed run leaves no half-written model
    layers = sum(node.op_type in ("DequantizeLinear", "MatMulNBits") for node in proto.graph.node)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB): {layers} layers quantized to "
          f"{fmt.name} ({args.method}, {args.style})")
    return 0
