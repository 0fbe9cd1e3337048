"""``lowbit compile``: compile a quantized ONNX model into one artifact file."""
import os

from lowbit.commands.quantize import add_budget_argument, add_method_arguments, format_list

HELP = "compile a quantized ONNX model into a .lowbit artifact"


def add_arguments(parser):
    parser.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to compile")
    parser.add_argument("--output", "-o", required=True, metavar="OUT.lowbit", help="artifact file to write")
    parser.add_argument("--target", default="cpu", help="where the code runs: 'cpu' (this machine, the default), "
                        "'cuda:sm_80', 'cuda:sm_90' (NVIDIA GPUs; needs nvcc here, not a GPU)")
    parser.add_argument("--kernel", default="auto", choices=("auto", "decode", "a8", "lut"),
                        help="kernel family for the quantized layers (default: auto)")
    parser.add_argument("--format", metavar="NAME[,NAME...]",
                        help="also quantize the float MatMul / Gemm weights to this format (w4g128, w8, ...); with "
                             "--budget-bits, the candidate formats to choose from per layer")
    add_method_arguments(parser)
    add_budget_argument(parser)
    parser.add_argument("--dump-ir", metavar="DIR",
                        help="write the IR after each pipeline phase to DIR (Relax before / after lowering, "
                             "TIR per kernel, the built module)")
    logs = parser.add_mutually_exclusive_group()
    logs.add_argument("--tuning-log", metavar="DIR",
                      help="tuning records to take schedules from (`lowbit tune --log DIR`; default: the records "
                           "shipped with lowbit for this target, tuning_logs/<target tag>/)")
    logs.add_argument("--no-tuning-log", action="store_true",
                      help="use the schedule rules' defaults only, no tuning records")


def run(args):
    import lowbit
    from lowbit.errors import ModelError

    if not os.path.isfile(args.model):
        raise ModelError(f"ONNX model {args.model!r} does not exist")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise ModelError(f"cannot write {args.output!r}: folder {folder!r} does not exist; create it first")
    if args.format is None and args.budget_bits is None and (args.method != "rtn" or args.calibration is not None):
        raise ModelError("--method / --calibration choose how --format quantizes float weights: add --format NAME")
    compiled = lowbit.compile(args.model, target=args.target, format=format_list(args.format, args.budget_bits),
                              kernel=args.kernel, budget_bits=args.budget_bits,
                              dump_ir=args.dump_ir, progress=True, method=args.method,
                              calibration=args.calibration, estimate=args.estimate,
                              tuning_log=False if args.no_tuning_log else args.tuning_log)
    compiled.save(args.output)
    _print_summary(compiled.manifest, args.output)
    return 0


def _shape_text(spec):
    return f"{spec['name']}: {spec['dtype']}({', '.join(str(d) for d in spec['shape'] or ['?'])})"


def _activation_text(layer):
    activation = layer.get("activation", "float32")
    return "" if activation == "float32" else f", on the model's {activation} activation codes"


def _print_summary(manifest, path):
    layers = manifest["layers"]
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB) for {manifest['target_tag']} ({manifest['cpu']})")
    print("inputs:  " + ", ".join(_shape_text(spec) for spec in manifest["inputs"]))
    print("outputs: " + ", ".join(_shape_text(spec) for spec in manifest["outputs"]))
    print(f"{len(layers)} quantized layers:")
    for layer in layers:
        print(f"  {layer['name']:<32} {layer['format']:<10} N={layer['N']:<6} K={layer['K']:<6} "
              f"{layer['kernel']:<7} {layer['bits_per_weight']:.2f} bits/weight "
              f"({layer.get('pattern', '')}{_activation_text(layer)}), "
              f"schedule: {layer.get('schedule', 'default')}{_sqnr_text(layer)}")
    allocation = manifest.get("allocation")
    if allocation is not None:
        print(f"budget {allocation['budget_bits']} bits/weight: chose {allocation['bits_per_weight']:.3f} on average "
              f"from {', '.join(allocation['candidates'])} (sensitivities {allocation['sensitivities']})")


def _sqnr_text(layer):
    if layer.get("weight_sqnr_db") is None:
        return ""
    output = layer.get("output_sqnr_db")
    return f", SQNR weight {layer['weight_sqnr_db']:.1f} dB" + ("" if output is None else f", output {output:.1f} dB")
