"""Which ONNX graph cleaner makes torch's exports importable: each of the small corpus' BERT and Llama exports
(dynamo, legacy opset 17), quantized by onnxruntime's MatMulNBitsQuantizer, cleaned by onnxscript's optimizer,
onnxslim or onnxsim (or not at all), then compiled by lowbit with TVM's ONNX converters alone or with lowbit's
(frontends/onnx_converters.py); each result is checked against onnxruntime.

    python benchmarks/onnx_cleaners.py      # onnxslim / onnxsim rows are skipped where they are not installed

docs/corpus.md has the measured table and the decision it led to (no cleaner is a dependency).
"""
import importlib.util
import os
import sys
import warnings

import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

CLEANERS = ("none", "onnxscript", "onnxslim", "onnxsim")
MODULES = {"onnxscript": "onnxscript", "onnxslim": "onnxslim", "onnxsim": "onnxsim"}


def clean(name, model):
    """``model`` after the cleaner ``name``."""
    if name == "onnxscript":
        import onnxscript.optimizer

        return onnxscript.optimizer.optimize(model)
    if name == "onnxslim":
        import onnxslim

        return onnxslim.slim(model)
    if name == "onnxsim":
        import onnxsim

        return onnxsim.simplify(model)[0]
    return model


def main(folder="build/cleaners"):
    import lowbit
    from lowbit.frontends import onnx_converters as converters

    os.makedirs(folder, exist_ok=True)
    warnings.simplefilter("ignore")
    print("| model | exporter | cleaner | TVM's converters only | with lowbit's converters |\n|---|---|---|---|---|")
    for arch, exporter in (("bert", "dynamo"), ("bert", "legacy17"), ("llama", "dynamo"), ("llama", "legacy17")):
        model, example, names = corpus.build_model(arch)
        path = corpus.export(model, example, names, exporter, os.path.join(folder, f"{arch}-{exporter}.onnx"))
        quantized = corpus.quantize(path, "nbits4-b32", os.path.join(folder, f"{arch}-{exporter}-q.onnx"), None)
        feeds = corpus.feeds_for(arch, names, 2, seed=7)
        reference = corpus.ort_session(quantized, False, 2).run(None, feeds)[0]
        for cleaner in CLEANERS:
            if cleaner in MODULES and importlib.util.find_spec(MODULES[cleaner]) is None:
                continue
            results = []
            for with_lowbit in (False, True):
                saved = dict(converters.CONVERTERS), dict(converters.POST_CONVERTERS)
                if not with_lowbit:
                    converters.CONVERTERS.clear()
                    converters.POST_CONVERTERS.clear()
                try:
                    compiled = lowbit.compile(clean(cleaner, onnx.load(quantized)))
                    results.append(f"compiles, max rel diff {corpus.compare(compiled(**feeds), reference)[1]:.1e}")
                except Exception as err:  # noqa: BLE001 - each failure is a table cell
                    results.append(f"fails: {type(err).__name__}: {str(err).splitlines()[0][:70]}")
                finally:
                    converters.CONVERTERS.update(saved[0])
                    converters.POST_CONVERTERS.update(saved[1])
            print(f"| {arch} | {exporter} | {cleaner} | {results[0]} | {results[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
