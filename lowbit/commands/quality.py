"""``lowbit quality``: quantization error of a float ONNX model's layers in candidate formats.

Per layer and candidate: bits per weight (scales, zero points, codebooks included), weight SQNR and, with
``--calibration``, output SQNR on the layer's calibration inputs; with calibration also the end-to-end output
SQNR of the whole model quantized to each candidate (and to the per-layer choice under ``--budget-bits``).
``--plot`` writes error vs bits per weight as a PNG, ``--json`` the numbers.
"""
import os

HELP = "per-layer and end-to-end quantization error (SQNR) of a float ONNX model in candidate formats"


def add_arguments(parser):
    from lowbit.commands.quantize import add_estimate_argument

    # the defaults are lowbit.compiler.quality.DEFAULT_CANDIDATES, spelled out: every command's arguments are
    # registered in every process, `lowbit measure`'s runtime-only one too, which must not import the compiler
    parser.add_argument("model", metavar="FLOAT.onnx", help="the float ONNX model")
    parser.add_argument("--formats", metavar="NAME[,NAME...]",
                        help="candidate formats (default: w2g64,w3g64,w4g64,higgs2g64,higgs3g64,higgs4g64,nf4g64,"
                             "w5g64,w6g64,w8g64,w2g128,w3g128,w4g128,higgs2g128,higgs3g128,higgs4g128,"
                             "higgs2g64v2,higgs3g64v2,higgs4g64v2,higgs2g128v2,higgs3g128v2,higgs4g128v2)")
    parser.add_argument("--calibration", metavar="DATA.npz",
                        help="sample model inputs (an .npz keyed by input name): output and end-to-end SQNR")
    parser.add_argument("--budget-bits", type=float, metavar="BITS",
                        help="also show the per-layer choice within BITS average bits per weight")
    parser.add_argument("--method", default="rtn", choices=("rtn", "gptq"),
                        help="rtn (default) or gptq (needs --calibration)")
    add_estimate_argument(parser)
    parser.add_argument("--plot", metavar="OUT.png", help="write a plot of SQNR vs bits per weight")
    parser.add_argument("--json", metavar="OUT.json", help="write the table as JSON")


def run(args):
    import json

    import numpy as np

    from lowbit.commands.quantize import split_formats
    from lowbit.compiler import quality
    from lowbit.compiler.formats import parse_format
    from lowbit.errors import ModelError
    from lowbit.frontends.onnx_quantize import onnx_layer_set
    from lowbit.frontends.onnx import load_onnx
    from lowbit.frontends.onnx_graph import OnnxGraph, check_references, name_nodes
    from lowbit.frontends.onnx_quantize import float_layers
    from lowbit.frontends.quantize import allocate_formats, check_estimate, check_method, quantize_weight

    if not os.path.isfile(args.model):
        raise ModelError(f"ONNX model {args.model!r} does not exist")
    check_method(args.method, args.calibration)
    check_estimate(args.estimate, args.budget_bits, args.calibration)
    names = split_formats(args.formats) if args.formats else list(quality.DEFAULT_CANDIDATES)
    candidates = [parse_format(name) for name in names]  # none at all: measure_layers says so
    for path in (args.plot, args.json):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ModelError(f"cannot write {path!r}: its folder does not exist; create it first")
    proto = load_onnx(args.model)
    name_nodes(proto.graph)
    check_references(proto.graph)
    layers = float_layers(OnnxGraph(proto.graph))
    if not layers:
        raise ModelError(f"{args.model} has no float MatMul / Gemm with a constant 2-D weight: `lowbit quality` "
                         "measures a float model (before quantization)")
    layer_set = onnx_layer_set(proto, layers, args.calibration)

    def quantizer(index, w, fmt):
        return quantize_weight(w, fmt, args.method, None if layer_set.hessians is None else layer_set.hessians[index])

    # with a budget, the allocation's own table (every layer in every candidate) is the one to print
    report = None if args.budget_bits is None else allocate_formats(layer_set, candidates, args.budget_bits,
                                                                     args.method, progress=True,
                                                                     estimate=args.estimate)
    table = report.table if report is not None else quality.measure_layers(
        layer_set.weights, [f.name for f in candidates], layer_set.inputs, layer_set.names, quantizer,
        progress=True)
    sizes = np.array([w.size for w in layer_set.weights], np.float64)
    end_to_end = {}
    if layer_set.run is not None:
        for column, fmt in enumerate(candidates):
            dequantized = [quantizer(i, w, fmt).dequantize() for i, w in enumerate(layer_set.weights)]
            bits = float((sizes * [row[column].bits_per_weight for row in table]).sum() / sizes.sum())
            end_to_end[fmt.name] = (bits, quality.end_to_end_sqnr(layer_set.run, layer_set.weights, dequantized))
    if report is not None and layer_set.run is not None:
        chosen = [quantizer(i, w, parse_format(name)).dequantize()
                  for i, (w, name) in enumerate(zip(layer_set.weights, report.formats()))]
        end_to_end[f"budget {args.budget_bits}"] = (
            report.bits_per_weight, quality.end_to_end_sqnr(layer_set.run, layer_set.weights, chosen))
    print(quality.format_table(table, end_to_end))
    if layer_set.run is None:
        print("(no --calibration: output and end-to-end SQNR need sample inputs)")
    if report is not None:
        print(f"budget {args.budget_bits} bits/weight -> {report.bits_per_weight:.3f}: "
              + ", ".join(f"{layer['name']}={layer['format']}" for layer in report.layers))
    if args.plot:
        quality.plot_error_vs_bits(table, args.plot, end_to_end, title=f"{os.path.basename(args.model)}: SQNR vs bits")
        print(f"wrote {args.plot}")
    if args.json:
        rows = [dict(cell.__dict__) for row in table for cell in row]
        data = {"layers": rows,
                "end_to_end": {k: {"bits_per_weight": b, "sqnr_db": s} for k, (b, s) in end_to_end.items()},
                "allocation": None if report is None else report.as_manifest()}
        from lowbit.runtime.atomic import write_atomically

        write_atomically(args.json, json.dumps(data, indent=2, default=lambda v: None).encode("utf-8"))
        print(f"wrote {args.json}")
    return 0
