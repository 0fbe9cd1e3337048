"""``lowbit quantize``: quantize a float ONNX model's MatMul / Gemm weights and write a quantized ONNX model.

The output runs in onnxruntime (QDQ: blocked ``DequantizeLinear``; or ``MatMulNBits``) so lowbit's quantization
can be compared with it, and ``lowbit compile`` reads the same integers back.
"""
import os

HELP = "quantize a float ONNX model (RTN or GPTQ) and write it as a quantized ONNX model (QDQ or MatMulNBits)"


def add_arguments(parser):
    parser.add_argument("model", metavar="FLOAT.onnx", help="the float ONNX model")
    parser.add_argument("--output", "-o", required=True, metavar="Q.onnx", help="quantized ONNX model to write")
    parser.add_argument("--format", required=True, metavar="NAME[,NAME...]",
                        help="weight format (w4g128, w8, w4g32s, ...); with --budget-bits, the candidates per layer")
    add_method_arguments(parser)
    add_budget_argument(parser)
    parser.add_argument("--style", default="qdq", choices=("qdq", "matmulnbits"),
                        help="how the integers are written: blocked DequantizeLinear (qdq, opset 21) or "
                             "com.microsoft.MatMulNBits")


def add_method_arguments(parser):
    """--method and --calibration (shared with ``lowbit compile``)."""
    parser.add_argument("--method", default="rtn", choices=("rtn", "gptq"),
                        help="rtn: round to nearest (default); gptq: error feedback from --calibration inputs")
    parser.add_argument("--calibration", metavar="DATA.npz",
                        help="calibration inputs for gptq (and for output errors and measured sensitivities with "
                             "--budget-bits): an .npz whose keys are the model's input names")


def add_budget_argument(parser):
    """--budget-bits (shared with ``lowbit compile``)."""
    parser.add_argument("--budget-bits", type=float, metavar="BITS",  # defaults spelled out: see commands/quality
                        help="choose each layer's format among the --format candidates (default for compile: "
                             "w2g64,w3g64,w4g64,higgs2g64,higgs3g64,higgs4g64,nf4g64,w5g64,w6g64,w8g64,w2g128,"
                             "w3g128,w4g128,higgs2g128,higgs3g128,higgs4g128,higgs2g64v2,higgs3g64v2,higgs4g64v2,"
                             "higgs2g128v2,higgs3g128v2,higgs4g128v2) so the "
                             "average bits per weight, scales and zero points included, stay within BITS")
    add_estimate_argument(parser)


def add_estimate_argument(parser):
    """--estimate (shared by ``lowbit compile``, ``quantize`` and ``quality``)."""
    parser.add_argument("--estimate", default="direct", choices=("direct", "probed"),
                        help="with --budget-bits and --calibration, how each (layer, format)'s end-to-end error is "
                             "found: direct (default) runs the model once per layer and candidate; probed "
                             "multiplies the layer's output error by a noise-probed sensitivity, 4 runs per layer "
                             "(for big models)")


def split_formats(text):
    """``"w2g64, higgs3g64"`` -> ``["w2g64", "higgs3g64"]`` (a comma-separated --format / --formats value)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def format_list(text, budget_bits=None):
    """``--format`` as the API takes it: None, one name, or (comma-separated) a list of candidates."""
    if text is None:
        return None
    names = split_formats(text)
    return names if budget_bits is not None or len(names) != 1 else names[0]


def run(args):
    import onnx

    from lowbit.errors import ModelError
    from lowbit.frontends.onnx_quantize import quantize_onnx
    from lowbit.frontends.quantize import candidate_formats, check_estimate, check_method

    candidates = candidate_formats(format_list(args.format, args.budget_bits), args.budget_bits)
    check_method(args.method, args.calibration)
    check_estimate(args.estimate, args.budget_bits, args.calibration)
    if args.calibration is not None and args.method == "rtn" and args.budget_bits is None:
        raise ModelError("--calibration is used by --method gptq or with --budget-bits: add one, or drop it")
    if not os.path.isfile(args.model):
        raise ModelError(f"ONNX model {args.model!r} does not exist")
    proto = quantize_onnx(args.model, candidates, args.method, args.calibration, style=args.style,
                          budget_bits=args.budget_bits, progress=True, estimate=args.estimate)
    from lowbit.runtime.atomic import atomic_path

    with atomic_path(args.output) as temporary:  # a failed run leaves no half-written model
        onnx.save(proto, temporary)
    layers = sum(node.op_type in ("DequantizeLinear", "MatMulNBits") for node in proto.graph.node)
    what = candidates[0].name if args.budget_bits is None else \
        f"formats chosen per layer within {args.budget_bits} bits/weight"
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB): {layers} layers quantized to "
          f"{what} ({args.method}, {args.style})")
    return 0
