"""Rewrite ONNX ``Clip`` into comparisons and ``Where``, which keep NaN, before TVM's importer sees the graph.

TVM imports ``Clip`` as ``maximum`` then ``minimum`` and legalizes those in the importer itself; LLVM lowers a
float max / min to ``a > b ? a : b``, so a NaN input came out as a clip bound, where onnxruntime, NumPy and torch
give NaN. ``Where(Less(x, lo), lo, x)`` then ``Where(Greater(y, hi), hi, y)`` is the same clip for every number,
keeps NaN (every comparison with NaN is false), and treats a NaN bound as no bound, as TVM's converter does.
Only the input form (opset 11 and later: bounds are tensors of x's type) is rewritten; the attribute form of
older opsets has float32 bounds whatever x's type and is left to TVM.
"""


def keep_nan_in_clip(graph):
    """Replace every top-level ``Clip`` node of ``graph`` (a GraphProto) in place; returns how many."""
    nodes, count = [], 0
    for node in graph.node:
        bounds = list(node.input[1:3]) + [""] * (3 - len(node.input))
        if node.op_type != "Clip" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            nodes.append(node)
            continue
        nodes.extend(_clip_nodes(node.name, node.input[0], bounds[0], bounds[1], node.output[0]))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _clip_nodes(name, x, lo, hi, out):
    from onnx import helper

    steps, current = [], x
    for bound, compare, last in ((lo, "Less", not hi), (hi, "Greater", True)):
        if not bound:
            continue
        below = f"{name}/{compare.lower()}"
        result = out if last else f"{name}/lower_clipped"
        steps += [helper.make_node(compare, [current, bound], [below], name=below),
                  helper.make_node("Where", [below, bound, current], [result], name=f"{name}/{compare.lower()}_where")]
        current = result
    return steps or [helper.make_node("Identity", [x], [out], name=name)]
