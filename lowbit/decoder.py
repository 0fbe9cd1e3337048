"""A seeded transformer decoder built with ``onnx.helper``, quantized by onnxruntime, compiled by lowbit.

The model-level demo (``lowbit decoder``, small) and benchmark (``lowbit decoder --hidden 2048 --layers 4``):
1. :func:`decoder_onnx`: pre-norm decoder layers (causal multi-head attention, GELU MLP, residuals) and a
   vocabulary head; float32, batch and sequence symbolic.
2. :func:`quantize_with_onnxruntime`: onnxruntime's ``MatMulNBitsQuantizer`` (4 bits, blocks of 32, zero points)
   turns every constant-weight MatMul into ``MatMulNBits``.
3. lowbit compiles that model; :func:`compare` measures the max error against onnxruntime with graph
   optimizations off, and times both in one process at M = batch * sequence = 1 and 32, onnxruntime at its
   best settings (all graph optimizations, ``accuracy_level=4``: int8 activations, like lowbit's ``a8``),
   in alternating rounds; the ratio is the median of the rounds' ratios.
"""
import time

import numpy as np

OPSET = 21


def _layer_nodes(index, hidden, heads, h, mask, inits, rng):
    """Nodes of decoder layer ``index`` reading ``h`` (B, S, D); returns (nodes, output name)."""
    from onnx import helper, numpy_helper

    p = f"layer{index}"
    head_dim = hidden // heads

    def weight(name, K, N):
        inits.append(numpy_helper.from_array((rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32), name))
        inits.append(numpy_helper.from_array((0.02 * rng.standard_normal(N)).astype(np.float32), f"{name}_bias"))

    for name, K, N in ((f"{p}.qkv", hidden, 3 * hidden), (f"{p}.out", hidden, hidden),
                       (f"{p}.fc1", hidden, 4 * hidden), (f"{p}.fc2", 4 * hidden, hidden)):
        weight(name, K, N)
    for norm in ("norm1", "norm2"):
        inits.append(numpy_helper.from_array(np.ones(hidden, np.float32), f"{p}.{norm}.g"))
        inits.append(numpy_helper.from_array(np.zeros(hidden, np.float32), f"{p}.{norm}.b"))
    inits.append(numpy_helper.from_array(np.array([0, 0, heads, head_dim], np.int64), f"{p}.heads_shape"))
    inits.append(numpy_helper.from_array(np.array([0, 0, hidden], np.int64), f"{p}.merge_shape"))
    inits.append(numpy_helper.from_array(np.array([hidden] * 3, np.int64), f"{p}.split"))
    inits.append(numpy_helper.from_array(np.float32(1 / np.sqrt(head_dim)), f"{p}.scale"))

    def linear(name, x, out):
        return [helper.make_node("MatMul", [x, name], [f"{out}_mm"], name=name),
                helper.make_node("Add", [f"{out}_mm", f"{name}_bias"], [out])]

    n = helper.make_node
    nodes = [n("LayerNormalization", [h, f"{p}.norm1.g", f"{p}.norm1.b"], [f"{p}.ln1"], axis=-1)]
    nodes += linear(f"{p}.qkv", f"{p}.ln1", f"{p}.qkv_out")
    nodes.append(n("Split", [f"{p}.qkv_out", f"{p}.split"], [f"{p}.q", f"{p}.k", f"{p}.v"], axis=-1))
    for t, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [n("Reshape", [f"{p}.{t}", f"{p}.heads_shape"], [f"{p}.{t}_h"]),
                  n("Transpose", [f"{p}.{t}_h"], [f"{p}.{t}_t"], perm=perm)]
    nodes += [n("MatMul", [f"{p}.q_t", f"{p}.k_t"], [f"{p}.scores_raw"]),
              n("Mul", [f"{p}.scores_raw", f"{p}.scale"], [f"{p}.scores_scaled"]),
              n("Add", [f"{p}.scores_scaled", mask], [f"{p}.scores"]),
              n("Softmax", [f"{p}.scores"], [f"{p}.probs"], axis=-1),
              n("MatMul", [f"{p}.probs", f"{p}.v_t"], [f"{p}.attn_h"]),
              n("Transpose", [f"{p}.attn_h"], [f"{p}.attn_t"], perm=[0, 2, 1, 3]),
              n("Reshape", [f"{p}.attn_t", f"{p}.merge_shape"], [f"{p}.attn"])]
    nodes += linear(f"{p}.out", f"{p}.attn", f"{p}.attn_out")
    nodes += [n("Add", [h, f"{p}.attn_out"], [f"{p}.h1"]),
              n("LayerNormalization", [f"{p}.h1", f"{p}.norm2.g", f"{p}.norm2.b"], [f"{p}.ln2"], axis=-1)]
    nodes += linear(f"{p}.fc1", f"{p}.ln2", f"{p}.fc1_out")
    nodes.append(n("Gelu", [f"{p}.fc1_out"], [f"{p}.gelu"]))
    nodes += linear(f"{p}.fc2", f"{p}.gelu", f"{p}.fc2_out")
    nodes.append(n("Add", [f"{p}.h1", f"{p}.fc2_out"], [f"{p}.h2"]))
    return nodes, f"{p}.h2"


def _causal_mask_nodes(x):
    """``mask`` (S, S): 0 on and below the diagonal, -1e9 above, from the sequence length of ``x``."""
    from onnx import helper, numpy_helper

    n = helper.make_node
    one = numpy_helper.from_array(np.float32(1.0), "mask_one")
    big = numpy_helper.from_array(np.float32(1e9), "mask_big")
    bounds = [numpy_helper.from_array(np.array([v], np.int64), name) for v, name in ((1, "mask_s0"), (2, "mask_s1"))]
    nodes = [n("Shape", [x], ["x_shape"]), n("Slice", ["x_shape", "mask_s0", "mask_s1"], ["seq_len"]),
             n("Concat", ["seq_len", "seq_len"], ["mask_shape"], axis=0),
             n("ConstantOfShape", ["mask_shape"], ["mask_ones"],
               value=numpy_helper.from_array(np.array([1.0], np.float32))),
             n("Trilu", ["mask_ones"], ["mask_lower"], upper=0), n("Sub", ["mask_lower", "mask_one"], ["mask_neg"]),
             n("Mul", ["mask_neg", "mask_big"], ["mask"])]
    return nodes, [one, big] + bounds, "mask"


def decoder_onnx(hidden=256, layers=2, heads=4, vocab=512, seed=0):
    """The float decoder as an ``onnx.ModelProto``: input ``x`` (batch, seq, hidden), output ``y`` (.., vocab)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, mask = _causal_mask_nodes("x")
    h = "x"
    for index in range(layers):
        layer_nodes, h = _layer_nodes(index, hidden, heads, h, mask, inits, rng)
        nodes += layer_nodes
    inits.append(numpy_helper.from_array((rng.standard_normal((hidden, vocab)) / np.sqrt(hidden)).astype(np.float32),
                                         "head"))
    nodes.append(helper.make_node("MatMul", [h, "head"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "decoder",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10  # onnxruntime reads IR <= 10
    return model


def quantize_with_onnxruntime(model, block_size=32):
    """onnxruntime's MatMulNBitsQuantizer (4 bits, asymmetric) on ``model``; returns the quantized ModelProto."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=False)
    quantizer.process()
    return quantizer.model.model


def with_accuracy_level(model, level):
    """A copy of ``model`` whose MatMulNBits nodes have ``accuracy_level`` = ``level`` (the quantizer leaves 0)."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("accuracy_level", level)])
    return copy


def ort_session(model, optimized):
    """An onnxruntime CPU session: all graph optimizations, or none (each node as written)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def relative_max_error(ours, reference):
    """max |ours - reference| / max |reference| (the issue's measure)."""
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def compare(hidden=256, layers=2, heads=4, vocab=512, rows=(1, 32), repeat=10, kernel="auto", seed=0):
    """Build, quantize (onnxruntime), compile (lowbit); return a report dict (errors, times, sizes)."""
    import lowbit

    quantized = quantize_with_onnxruntime(decoder_onnx(hidden, layers, heads, vocab, seed))
    start = time.perf_counter()
    compiled = lowbit.compile(quantized, kernel=kernel)
    compile_s = time.perf_counter() - start
    reference, fast = ort_session(quantized, False), ort_session(with_accuracy_level(quantized, 4), True)
    rng = np.random.default_rng(seed + 1)
    report = {"hidden": hidden, "layers": layers, "vocab": vocab, "quantized_layers": len(compiled.manifest["layers"]),
              "kernels": sorted({layer["kernel"] for layer in compiled.manifest["layers"]}),
              "compile_s": compile_s, "rows": []}
    for m in rows:
        x = rng.standard_normal((1, m, hidden)).astype(np.float32)
        ours, theirs, peer = compiled(x), reference.run(None, {"x": x})[0], fast.run(None, {"x": x})[0]
        report["rows"].append({
            "M": m, "max_abs_diff_over_max_abs": relative_max_error(ours, theirs),
            "ort_fast_max_abs_diff_over_max_abs": relative_max_error(peer, theirs),
            **_interleaved_times(lambda: compiled(x), lambda: fast.run(None, {"x": x}), repeat)})
    return report


def _interleaved_times(ours, theirs, repeat, rounds=5):
    """Both timed in alternating rounds (a busy spell on a shared machine hits both); medians over rounds."""
    from lowbit.bench import median_ms

    pairs = [(median_ms(ours, repeat), median_ms(theirs, repeat)) for _ in range(rounds)]
    return {"lowbit_ms": float(np.median([a for a, _ in pairs])), "ort_ms": float(np.median([b for _, b in pairs])),
            "ort_over_lowbit": float(np.median([b / a for a, b in pairs]))}
