"""The ``lowbit`` command line: one subcommand per module in ``lowbit.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``lowbit --help`` and ``lowbit run`` stay light.
"""
import argparse
import importlib
import sys

from lowbit.errors import LowbitError

# name -> (module, one-line help). Kept here rather than imported so --help needs no heavy imports.
COMMANDS = {
    "compile": ("lowbit.commands.compile", "compile a quantized ONNX model into a .lowbit artifact"),
    "demo": ("lowbit.commands.demo",
             "quantize a small MLP, compile, reload in a fresh process, report error and speed"),
    "bench": ("lowbit.commands.bench", "benchmark mpGEMM kernels against NumPy, torch and onnxruntime (cold cache)"),
    "inspect": ("lowbit.commands.inspect", "show an artifact's manifest: target, layers, formats, kernels"),
    "run": ("lowbit.commands.run", "run an artifact on .npy inputs"),
    "measure": ("lowbit.commands.measure", "time exported tuning candidates on this machine (runtime only)"),
    "tune": ("lowbit.commands.tune", "autotune the mpGEMM kernels of a model (or one shape) into a tuning log"),
    "decoder": ("lowbit.commands.decoder", "model demo / benchmark: an onnxruntime-quantized decoder vs onnxruntime"),
    "quantize": ("lowbit.commands.quantize", "quantize a float ONNX model and write it as quantized ONNX"),
    "quality": ("lowbit.commands.quality", "per-layer and end-to-end quantization error (SQNR) in candidate formats"),
    "bundle-runtime": ("lowbit.commands.bundle_runtime",
                       "gather what lowbit.runtime needs into a folder for a GPU machine (plus GPU tests, bench)"),
}


def build_parser():
    """Return the top-level argument parser with every subcommand's arguments registered."""
    parser = argparse.ArgumentParser(prog="lowbit", description="lowbit: low-bit mpGEMM compiler on TVM")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None):
    """Entry point of the ``lowbit`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except LowbitError as err:
        print(f"lowbit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lowbit {args.command}: interrupted", file=sys.stderr)
        return 130
