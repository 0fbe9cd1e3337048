"""lowbit: a compiler for low-bit neural-network kernels (mixed-precision GEMM) built on TVM.

``import lowbit`` stays light: the compiler (and TVM's compiler library) is imported only when a
compiling function is first used, so that ``lowbit.runtime`` runs where only the runtime is installed.
"""

__version__ = "0.1.0"

_LAZY = {
    "compile": ("lowbit.api", "compile"),
    "quantize": ("lowbit.compiler.formats", "quantize"),
    "parse_format": ("lowbit.compiler.formats", "parse_format"),
    "quantize_model": ("lowbit.frontends.quantize_model", "quantize_model"),
    "export_onnx": ("lowbit.frontends.torch_onnx", "export_onnx"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
