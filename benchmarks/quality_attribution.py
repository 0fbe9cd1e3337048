"""Where the end-to-end error of RTN quantization comes from, on the byte-level transformer (issue 9).

Per layer (each of the 17 ``nn.Linear`` layers quantized alone, the others float): weight SQNR, output SQNR on
the calibration contexts, and the end-to-end logits SQNR, for ``w{b}g64`` and ``higgs{b}g64`` at 2 and 3 bits;
each layer's share of the summed single-layer error power (the errors add: the sum is within 0.5 dB of
quantizing every layer at once). Two measurements explain why HIGGS keeps less of its per-layer margin end to
end than it has layer by layer:

* **rotation draws**: the end-to-end margin of ``higgs{b}g64`` over ``w{b}g64`` with the format's rotation
  signs and with 15 other sign vectors. The format's signs are fixed (``lowbit.compiler.higgs.rotation_signs``);
  the others are a measurement of how much one draw of the rounding errors moves the result, not candidates.
  Quantizing with signs ``s'`` is quantizing the weight with its columns multiplied by ``s * s'`` with the
  format's signs ``s``, then multiplying back, so no lowbit code is patched.
* **coherence**: the energy of each layer's error along the weight's top left singular vector (its dominant
  output direction), as a multiple of what an isotropic error of the same norm puts there (1/N), and for the
  first block's key projection the end-to-end SQNR of that rank-1 part of the error alone.

Uses the model ``benchmarks/quality_transformer.py`` trains (cached in ``build/``; trained here if missing).

    python benchmarks/quality_attribution.py [--init gpt2|torch] [--draws 16] [--out benchmarks/results]
"""
import argparse
import datetime
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BITS = (2, 3)


def formats(bits):
    """The uniform and the HIGGS format of one width."""
    return f"w{bits}g64", f"higgs{bits}g64"


class Harness:
    """The trained model, its held-out logits, and its layers' float weights and calibration inputs."""

    def __init__(self, init):
        import quality_transformer as qt
        from quality_trained import corpus

        torch = qt._require_torch()
        config = qt.Config(init=init)
        stream, held = corpus()
        self.model, _, _ = qt.trained_model(config, stream)
        half = len(held) // 2
        self.inputs = qt.windows(held[half:], 64, config.context, np.random.default_rng(9))[:, :-1]
        calibration = torch.cat([qt.windows(held[:half], 16, config.context, np.random.default_rng(1 + i))[:, :-1]
                                 for i in range(4)])
        self.layers = {name: m for name, m in self.model.named_modules() if isinstance(m, torch.nn.Linear)}
        self.weights = {name: m.weight.detach().numpy().astype(np.float64) for name, m in self.layers.items()}
        self.reference = self.logits({})
        self.calibration_inputs = self._record_inputs(calibration)

    def logits(self, replaced):
        """Logits (float64) with the weights in ``replaced`` ({layer: (N, K) array}) swapped in."""
        import torch

        try:
            for name, weight in replaced.items():
                self.layers[name].weight.data = torch.from_numpy(np.asarray(weight, np.float32))
            with torch.no_grad():
                return self.model(self.inputs).double().numpy()
        finally:
            for name in replaced:
                self.layers[name].weight.data = torch.from_numpy(self.weights[name].astype(np.float32))

    def sqnr(self, replaced):
        """End-to-end logits SQNR (dB) with ``replaced`` swapped in."""
        return sqnr_db(self.reference, self.logits(replaced))

    def _record_inputs(self, contexts):
        import torch

        recorded = {}

        def record(name):
            def hook(module, args):  # returns None: the layer's input is left as it is
                recorded[name] = args[0].reshape(-1, args[0].shape[-1])
            return hook

        hooks = [layer.register_forward_pre_hook(record(name)) for name, layer in self.layers.items()]
        with torch.no_grad():
            self.model(contexts)
        for hook in hooks:
            hook.remove()
        return {name: x.double().numpy() for name, x in recorded.items()}


def sqnr_db(reference, approximation):
    """``20 log10(|reference| / |reference - approximation|)``."""
    return float(20 * np.log10(np.linalg.norm(reference) / np.linalg.norm(reference - approximation)))


def dequantized(weight, name, draw=0):
    """RTN-quantized and dequantized float32 weight; ``draw > 0`` rotates with other signs (see module doc)."""
    from lowbit.compiler.formats import parse_format, quantize
    from lowbit.compiler.higgs import rotation_signs

    fmt = parse_format(name)
    if draw == 0 or fmt.kind != "higgs":
        return quantize(weight, fmt).dequantize()
    other = np.where(np.random.default_rng([draw, fmt.group_size]).integers(0, 2, fmt.group_size) == 1, 1.0, -1.0)
    flips = np.tile(other * rotation_signs(fmt.group_size), weight.shape[1] // fmt.group_size)
    return quantize(weight * flips, fmt).dequantize() * flips


def per_layer(harness, bits):
    """[{layer, format: {weight_sqnr_db, output_sqnr_db, end_to_end_sqnr_db, share}}] for one width."""
    rows = {name: {"layer": name} for name in harness.weights}
    for fmt in formats(bits):
        noise = {}
        for name, weight in harness.weights.items():
            approx = dequantized(weight, fmt)
            x = harness.calibration_inputs[name]
            rows[name][fmt] = {"weight_sqnr_db": sqnr_db(weight, approx),
                               "output_sqnr_db": sqnr_db(x @ weight.T, x @ approx.T),
                               "end_to_end_sqnr_db": harness.sqnr({name: approx})}
            noise[name] = 10 ** (-rows[name][fmt]["end_to_end_sqnr_db"] / 10)
        for name in rows:
            rows[name][fmt]["share"] = noise[name] / sum(noise.values())
    return list(rows.values())


def whole_model(harness, name, draw=0):
    """(all layers, lm_head float) end-to-end SQNR of one format."""
    approx = {layer: dequantized(weight, name, draw) for layer, weight in harness.weights.items()}
    return harness.sqnr(approx), harness.sqnr({k: v for k, v in approx.items() if k != "lm_head"})


def draws(harness, bits, count):
    """HIGGS's end-to-end margins over uniform, (all, lm_head float), for ``count`` rotation draws (0: shipped)."""
    uniform, higgs = formats(bits)
    base = np.array(whole_model(harness, uniform))
    return [list(np.array(whole_model(harness, higgs, draw)) - base) for draw in range(count)]


def coherence(harness, bits):
    """{layer: {format: error energy on the top left singular vector / isotropic share}}, and the first
    block's key projection's end-to-end SQNR: whole error vs its rank-1 part on that vector."""
    out, key = {}, {}
    for name, weight in harness.weights.items():
        top = np.linalg.svd(weight, full_matrices=False)[0][:, 0]
        out[name] = {}
        for fmt in formats(bits):
            error = weight - dequantized(weight, fmt)
            out[name][fmt] = float(np.sum((top @ error) ** 2) / np.sum(error ** 2) * weight.shape[0])
    weight = harness.weights["blocks.0.qkv"]
    rows = slice(weight.shape[0] // 3, 2 * weight.shape[0] // 3)  # q, k, v: the key rows
    top = np.linalg.svd(weight[rows], full_matrices=False)[0][:, :1]
    for fmt in formats(bits):
        error = (weight - dequantized(weight, fmt))[rows]
        parts = {"whole error": error, "rank-1 part": top @ (top.T @ error)}
        key[fmt] = {label: harness.sqnr({"blocks.0.qkv": _with_key_error(weight, rows, part)})
                    for label, part in parts.items()}
        key[fmt]["energy multiple"] = float(np.sum((top.T @ error) ** 2) / np.sum(error ** 2) * error.shape[0])
    return out, key


def _with_key_error(weight, rows, error):
    approx = weight.copy()
    approx[rows] -= error
    return approx


def report(results):
    """Print the tables."""
    for bits in BITS:
        uniform, higgs = formats(bits)
        print(f"--- {bits} bits: layer: weight SQNR u / h, output SQNR u / h, single-layer end to end u / h, "
              "share of the error u / h, top-direction error energy u / h (x isotropic)")
        coherent = results["coherence"][bits]
        for row in results["layers"][bits]:
            u, h, c = row[uniform], row[higgs], coherent[row["layer"]]
            print(f"  {row['layer']:<14} {u['weight_sqnr_db']:5.2f} {h['weight_sqnr_db']:5.2f} | "
                  f"{u['output_sqnr_db']:5.2f} {h['output_sqnr_db']:5.2f} | {u['end_to_end_sqnr_db']:5.2f} "
                  f"{h['end_to_end_sqnr_db']:5.2f} | {100 * u['share']:4.1f}% {100 * h['share']:4.1f}% | "
                  f"{c[uniform]:5.2f} {c[higgs]:5.2f}")
        margins = np.array(results["draws"][bits])
        print(f"  {higgs} - {uniform} end to end (all / lm_head float): shipped signs {margins[0, 0]:+.2f} / "
              f"{margins[0, 1]:+.2f}; over {len(margins)} draws mean {margins[:, 0].mean():+.2f} / "
              f"{margins[:, 1].mean():+.2f}, sd {margins[:, 0].std():.2f} / {margins[:, 1].std():.2f}")
        for fmt, key in results["key"][bits].items():
            print(f"  blocks.0 key projection, {fmt}: whole error {key['whole error']:.2f} dB, its rank-1 part on "
                  f"the top output direction {key['rank-1 part']:.2f} dB ({key['energy multiple']:.1f}x isotropic)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", choices=("gpt2", "torch"), default="gpt2")
    parser.add_argument("--draws", type=int, default=16, help="rotation sign draws, the format's own first")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    sys.path.insert(0, HERE)
    harness = Harness(args.init)
    results = {"init": args.init, "layers": {}, "draws": {}, "coherence": {}, "key": {}}
    for bits in BITS:
        results["layers"][bits] = per_layer(harness, bits)
        results["draws"][bits] = draws(harness, bits, args.draws)
        results["coherence"][bits], results["key"][bits] = coherence(harness, bits)
    report(results)
    os.makedirs(args.out, exist_ok=True)
    init = "" if args.init == "gpt2" else f"-{args.init}-init"
    path = os.path.join(args.out, f"quality-attribution{init}-{datetime.date.today().isoformat()}.json")
    from lowbit.runtime.atomic import write_atomically

    write_atomically(path, json.dumps(results, indent=1).encode("utf-8"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
