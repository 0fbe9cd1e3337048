"""``lowbit inspect``: show an artifact's manifest (target, CPU features, versions, layers) after verifying it."""
import os

HELP = "show an artifact's manifest: target, layers, formats, kernels"


def add_arguments(parser):
    parser.add_argument("artifact", help="a .lowbit file written by lowbit.compile(...).save(path)")
    parser.add_argument("--json", action="store_true", help="print the whole manifest as JSON")


def run(args):
    import json

    from lowbit.runtime.artifact import read_artifact  # verifies sizes and hashes; imports no TVM

    manifest, _ = read_artifact(args.artifact)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    for line in describe(manifest, args.artifact):
        print(line)
    return 0


def describe(manifest, path):
    """Return the human-readable report on one artifact as a list of lines."""
    from lowbit.runtime.host import host_cpu_features

    target = manifest.get("target", {})
    required = manifest.get("required_features", [])
    missing = sorted(set(required) - host_cpu_features())
    lines = [
        f"artifact  {path} ({os.path.getsize(path):,} bytes)",
        f"target    {manifest.get('target_tag', '?')}  ({', '.join(f'{k}={v}' for k, v in target.items())})",
        f"cpu       {manifest.get('cpu', '?')}",
        f"requires  {', '.join(required) or 'nothing beyond x86-64'}  "
        f"({'this CPU has them all' if not missing else 'this CPU lacks ' + ', '.join(missing)})",
        f"versions  schema {manifest['schema_version']}, lowbit {manifest.get('lowbit_version', '?')}, "
        f"tvm {manifest.get('tvm_version', '?')}",
    ]
    lines += [f"input     {_spec(spec)}" for spec in manifest["inputs"]]
    lines += [f"output    {_spec(spec)}" for spec in manifest["outputs"]]
    lines += ["", *_layer_table(manifest.get("layers", [])), "", *_weight_summary(manifest)]
    return lines


def _spec(spec):
    return f"{spec['name']}: {spec['dtype']} ({', '.join(str(d) for d in spec['shape'])})"


def _layer_table(layers):
    header = ("layer", "format", "N", "K", "bits/weight", "kernel", "schedule", "SQNR weight/output dB")
    rows = [(layer["name"], layer["format"], str(layer["N"]), str(layer["K"]), f"{layer['bits_per_weight']:.3f}",
             layer["kernel"], layer.get("schedule", "default"), _sqnr(layer)) for layer in layers]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip()]
    for layer, row in zip(layers, rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        for bucket, plan in layer.get("plans", {}).items():
            config = " ".join(f"{k}={v}" for k, v in plan.get("config", {}).items())
            lines.append(f"    {bucket:<8} {plan.get('source', 'default'):<8} {plan.get('rule', '?'):<22} {config}")
    return lines


def _sqnr(layer):
    """``weight / output`` SQNR of a layer whose format was chosen under a budget (measured then), else ``-``."""
    def text(value):
        return "-" if value is None else f"{value:.1f}"
    if "weight_sqnr_db" not in layer:
        return "-"
    return f"{text(layer['weight_sqnr_db'])} / {text(layer.get('output_sqnr_db'))}"


def _weight_summary(manifest):
    import numpy as np

    packed = sum(int(np.prod(p["shape"], dtype=np.int64)) * np.dtype(p["dtype"]).itemsize for p in manifest["params"])
    float32 = sum(4 * layer["N"] * layer["K"] for layer in manifest.get("layers", []))
    ratio = f"; float32 weights would take {float32:,} bytes ({float32 / packed:.1f}x)" if packed and float32 else ""
    layers = manifest.get("layers", [])
    count = sum(layer["N"] * layer["K"] for layer in layers)
    average = sum(layer["bits_per_weight"] * layer["N"] * layer["K"] for layer in layers) / count if count else 0.0
    lines = [f"weights   {packed:,} bytes in {len(manifest['params'])} params{ratio}"]
    if count:
        lines.append(f"          {count:,} quantized weights at {average:.3f} bits/weight on average (scales included)")
    allocation = manifest.get("allocation")
    if allocation is not None:
        lines.append(f"budget    {allocation['budget_bits']} bits/weight, formats chosen per layer from "
                     f"{', '.join(allocation['candidates'])} (sensitivities {allocation['sensitivities']})")
    return lines
