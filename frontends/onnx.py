"""ONNX frontend: a quantized ONNX model -> a Relax module whose quantized matmuls are lowbit layers.

Two steps:

A. Recognise every quantized-weight pattern (``frontends/onnx_patterns.py``: QDQ, MatMulNBits,
   DynamicQuantizeLinear + MatMulInteger, QLinearMatMul; with ``format``, float MatMul / Gemm weights too) and
   decode its integers, scales and zero points exactly into a lowbit ``QuantizedWeight``.
B. Rewrite each into ``MatMul(activation, lowbit_w{i})`` (+ ``Add`` of its bias), where ``lowbit_w{i}`` is a new
   float32 (K, N) graph input standing for the quantized weight; delete what became unused; import the graph
   with TVM's ONNX importer (float initializers become Relax constants; symbolic dims stay symbolic).

The compiler's ``LowerQuantizedMatmul`` pass then replaces each ``R.matmul(x, lowbit_w{i})`` by the layer's
kernel. Every unsupported operator is reported at once, with its node names, before anything is imported.
"""
import dataclasses
import os
import warnings

from lowbit.errors import ModelError
from lowbit.frontends.onnx_graph import OnnxGraph, check_references, name_nodes, subgraph_inputs
from lowbit.frontends.onnx_nan import keep_nan_in_clip

WEIGHT_PREFIX = "lowbit_w"


@dataclasses.dataclass(frozen=True)
class QuantizedLinearSpec:
    """One quantized linear layer found in the model.

    Attributes
    ----------
    name : str
        The ONNX node's name (the layer's name in the manifest).
    weight : QuantizedWeight
        (N, K) codes, scales and zero points, exactly as the model stores them.
    pattern : str
        ``qdq``, ``matmulnbits``, ``matmulinteger``, ``qlinearmatmul`` or ``float`` (quantized by lowbit).
    activation_quantized : bool
        Whether the model quantizes the layer's activation itself (``DynamicQuantizeLinear``, ``QLinearMatMul``,
        or a ``DequantizeLinear`` feeding the MatMul, as static QDQ writes): ``kernel="auto"`` then runs the
        ``a8`` kernel on the model's own codes where it can (one scale and zero point per tensor: exact), else
        keeps the activation in float (``decode``); never the float ``a8``, which rounds the activation a second
        time, per group, and measured 1.5-3e-2 max error against onnxruntime on such models, over the 1e-2 bar.
    """

    name: str
    weight: object = dataclasses.field(repr=False)
    pattern: str = "qdq"
    activation_quantized: bool = False

    @property
    def shape(self):
        """(N, K)."""
        return self.weight.shape


@dataclasses.dataclass
class ImportedModel:
    """What the frontend hands the compiler.

    Attributes
    ----------
    mod : tvm.IRModule
        Relax ``main(*inputs, *lowbit_w) -> output(s)``; float weights are bound constants.
    quantized : dict of str -> QuantizedLinearSpec
        ``lowbit_w{i}`` parameter name -> the layer it stands for, in graph order.
    inputs, outputs : list of dict
        ``{"name", "shape", "dtype"}`` per graph input / output; symbolic dims are strings (``"batch"``).
    """

    mod: object
    quantized: dict
    inputs: list
    outputs: list


def is_onnx_model(model):
    """Whether ``model`` is an ONNX model: a path (str / os.PathLike) or an ``onnx.ModelProto``."""
    if isinstance(model, (str, os.PathLike)):
        return True
    cls = type(model)
    return cls.__name__ == "ModelProto" and cls.__module__.startswith("onnx")


def load_onnx(model):
    """Read an ONNX model from a path (or copy a ModelProto); unreadable files are a ModelError."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ModelError(f"ONNX model {path!r} does not exist")
    try:
        proto = onnx.load(path)
    except Exception as err:  # protobuf's DecodeError, or OSError for missing external data
        raise ModelError(f"cannot read ONNX model {path!r}: {err}. The file is truncated, not an ONNX model, "
                         "or its external data file is missing: re-export it") from err
    if not proto.graph.node or not proto.graph.output:
        raise ModelError(f"ONNX model {path!r} has no nodes or no outputs: the file is truncated or empty")
    return proto


def import_onnx(model, format=None, weights=None):  # noqa: A002 (the option's public name)
    """Import an ONNX model (path or ``onnx.ModelProto``) for lowbit; returns :class:`ImportedModel`.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
    format : str or format object, optional
        Also quantize the constant float weights of MatMul / Gemm to this format (lowbit's RTN).
    weights : dict of str -> QuantizedWeight, optional
        Quantized weights of float MatMul / Gemm nodes, by node name (``onnx_quantize.quantize_onnx_layers``).
    """
    from lowbit.frontends.onnx_patterns import find_matches

    proto = load_onnx(model)
    _warn_newer_opset(proto)
    _name_unnamed_dims(proto.graph.input)
    name_nodes(proto.graph)
    check_references(proto.graph)
    graph = OnnxGraph(proto.graph)
    matches = find_matches(graph, format, weights)
    quantized = _rewrite(proto, graph, matches)
    keep_nan_in_clip(proto.graph)
    check_supported(proto)
    mod = _to_relax(proto)
    inputs = _input_specs(graph)
    mod = _pin_reduction_dims(mod, quantized, inputs)
    return ImportedModel(mod, quantized, inputs, _output_specs(proto, mod))


def _warn_newer_opset(proto):
    from lowbit.compiler.tvm_api import onnx_importer_opset

    opset = max((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), default=0)
    known = onnx_importer_opset()
    if opset > known:
        warnings.warn(f"the model's ONNX opset {opset} is newer than TVM's importer knows ({known}): operators "
                      f"changed since opset {known} convert as their opset-{known} versions; if results differ "
                      f"from onnxruntime, export the model with opset {known} or older", stacklevel=3)


def _name_unnamed_dims(inputs):
    """Give every input dim with neither a value nor a name the name the manifest shows (``x_dim1``).

    TVM's importer gives all unnamed dims of a model one variable, so ``(?, ?)`` became ``(v, v)``: a square
    input only, where the model accepts any (M, K).
    """
    for value in inputs:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if value.type.HasField("tensor_type") and not dim.HasField("dim_value") and not dim.dim_param:
                dim.dim_param = f"{value.name}_dim{axis}"


def _pin_reduction_dims(mod, quantized, inputs):
    """Fix each symbolic dim that is a quantized layer's K to the weight's K, in ``mod`` and in ``inputs``.

    An input declared ``(M, K)`` with a symbolic K compiled, and its artifact then took any K and failed inside
    TVM (``Mismatched X.strides``). The K a weight fixes is pinned instead (``BindSymbolicVars``); a dim that
    two layers need at two values, or a constant K other than the weight's, is a ModelError.
    """
    from lowbit.compiler.tvm_api import relax, tirx

    pins = {}
    for layer, activation_k in _layer_reduction_dims(mod, quantized):
        K = quantized[layer].weight.shape[1]
        if isinstance(activation_k, tirx.Var):
            if pins.setdefault(activation_k.name, (activation_k, K, layer))[1] != K:
                other = pins[activation_k.name]
                raise ModelError(f"dimension {activation_k.name!r} is the K of layer {other[2]!r} ({other[1]}) and of "
                                 f"layer {quantized[layer].name!r} ({K}): the model is inconsistent; re-export it")
        elif isinstance(activation_k, tirx.IntImm) and int(activation_k) != K:
            raise ModelError(f"layer {quantized[layer].name!r}: its activation has K = {int(activation_k)} but its "
                             f"weight has K = {K}: the model is inconsistent; re-export it")
    if not pins:
        return mod
    params = mod["main"].params
    for spec, param in zip(inputs, params):
        for axis, dim in enumerate(param.ty.shape.values if isinstance(param.ty, relax.TensorType) else []):
            if isinstance(dim, tirx.Var) and dim.name in pins:
                spec["shape"][axis] = pins[dim.name][1]
    return relax.transform.BindSymbolicVars({var: K for var, K, _ in pins.values()}, "main")(mod)


def _layer_reduction_dims(mod, quantized):
    """``(weight parameter name, the last dim of its matmul's activation)`` for each quantized layer of main."""
    from lowbit.compiler.tvm_api import relax, tvm

    matmul = tvm.ir.Op.get("relax.matmul")
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not call.op.same_as(matmul):
                continue
            weight, activation = call.args[1], call.args[0]
            if isinstance(weight, relax.Var) and weight.name in quantized and \
                    isinstance(activation.ty, relax.TensorType) and activation.ty.shape is not None:
                yield weight.name, activation.ty.shape.values[-1]


def _rewrite(proto, graph, matches):
    """Replace each match by MatMul(activation, lowbit_w{i}) in ``proto``; returns the layer specs."""
    from onnx import TensorProto, helper

    taken = set(graph.producer) | set(graph.constants) | {value.name for value in proto.graph.input}
    by_anchor, replaced, quantized, new_inputs, layer_names = {}, set(), {}, [], set()
    for match in matches:
        param = _fresh(f"{WEIGHT_PREFIX}{len(quantized)}", taken)
        N, K = match.weight.shape
        new_inputs.append(helper.make_tensor_value_info(param, TensorProto.FLOAT, [K, N]))
        quantized[param] = QuantizedLinearSpec(_fresh(match.node.name, layer_names), match.weight, match.pattern,
                                               _activation_quantized(graph, match))
        last = max(match.replaced, key=graph.nodes.index)
        by_anchor[last.name] = _replacement_nodes(match, param)
        replaced.update(node.name for node in match.replaced)
        proto.graph.initializer.extend(match.initializers)
    nodes = []
    for node in graph.nodes:
        nodes.extend(by_anchor.get(node.name, []) if node.name in replaced else [node])
    _set_nodes(proto, nodes)
    proto.graph.input.extend(new_inputs)
    _eliminate_dead(proto)
    return quantized


def _activation_quantized(graph, match):
    """Whether ``match``'s activation is quantized by the model (see QuantizedLinearSpec)."""
    if match.pattern in ("matmulinteger", "qlinearmatmul"):
        return True
    producer = graph.producer.get(match.activation)
    return producer is not None and producer.op_type == "DequantizeLinear"


def _fresh(name, taken):
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _replacement_nodes(match, param):
    from onnx import helper

    nodes = list(match.pre)
    matmul_out = match.linear_output if match.bias is None else f"{match.node.name}/lowbit_matmul"
    nodes.append(helper.make_node("MatMul", [match.activation, param], [matmul_out],
                                  name=f"{match.node.name}/lowbit"))
    if match.bias is not None:
        nodes.append(helper.make_node("Add", [matmul_out, match.bias], [match.linear_output],
                                      name=f"{match.node.name}/lowbit_bias_add"))
    return nodes + list(match.post)


def _set_nodes(proto, nodes):
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    del proto.graph.value_info[:]  # shapes of rewritten tensors would be stale; nothing downstream needs them


def _eliminate_dead(proto):
    """Drop nodes and initializers no graph output depends on (the consumed quantization operators)."""
    needed = {value.name for value in proto.graph.output}
    live = []
    for node in reversed(proto.graph.node):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(name for name in list(node.input) + subgraph_inputs(node) if name)
    live.reverse()
    kept = [tensor for tensor in proto.graph.initializer if tensor.name in needed]
    dropped = {tensor.name for tensor in proto.graph.initializer} - {tensor.name for tensor in kept}
    # old exporters list initializers among the graph inputs too: those of dropped initializers must go with them
    inputs = [value for value in proto.graph.input if value.name not in dropped]
    del proto.graph.node[:]
    proto.graph.node.extend(live)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)


# Operators TVM's importer converts that lowbit still refuses: blocked (de)quantization it cannot import.
def _blocked(node):
    return node.op_type in ("DequantizeLinear", "QuantizeLinear") and any(
        a.name == "block_size" and a.i != 0 for a in node.attribute)


def check_supported(proto):
    """Raise ModelError listing every operator (with its nodes) TVM's ONNX importer cannot convert."""
    from lowbit.compiler.tvm_api import onnx_supported_ops

    supported = onnx_supported_ops()
    unsupported = {}
    for node in _all_nodes(proto.graph):
        if node.op_type not in supported:
            unsupported.setdefault(node.op_type, []).append(node.name)
        elif _blocked(node):
            unsupported.setdefault(f"{node.op_type} with block_size (not a MatMul/Gemm weight)", []).append(node.name)
    if unsupported:
        listing = "; ".join(f"{op} (nodes: {', '.join(repr(n) for n in names)})" for op, names in unsupported.items())
        raise ModelError(f"the model uses {len(unsupported)} operator type(s) lowbit cannot compile yet: {listing}. "
                         "Quantized MatMul patterns lowbit could not match are listed here too")


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else list(attribute.graphs)):
                yield from _all_nodes(sub)


def _to_relax(proto):
    from lowbit.frontends.onnx_converters import from_onnx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Renaming name")
        try:
            return from_onnx(proto)
        except Exception as err:  # TVM's importer raises ValueError, TVMError, AssertionError, KeyError...
            raise ModelError(f"TVM's ONNX importer could not convert the model: {type(err).__name__}: {err}") from err


def _input_specs(graph):
    specs = [_value_spec(value) for value in graph.inputs]
    for spec in specs:
        bound = _index_bound(graph, spec["name"]) if spec["dtype"] in ("int32", "int64") else None
        if bound is not None:
            spec["index_bound"] = bound
    return specs


_PASS_THROUGH = ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten")


def _index_bound(graph, name):
    """The smallest extent ``E`` of a constant table that input ``name`` indexes with ``Gather`` (reached
    through shape-only ops), or None: the runtime then refuses values outside ``[-E, E)`` before the call (an
    embedding lookup of a token id past the vocabulary)."""
    bounds, frontier, seen = [], [name], set()
    while frontier:
        value = frontier.pop()
        for node in graph.consumers.get(value, []):
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == value:
                table = graph.constants.get(node.input[0])
                if table is not None and len(table.dims):
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    bounds.append(int(table.dims[axis % len(table.dims)]))
            elif node.op_type in _PASS_THROUGH and node.input[0] == value and node.output[0] not in seen:
                seen.add(node.output[0])
                frontier.append(node.output[0])
    return min(bounds) if bounds else None


def _value_spec(value):
    from onnx import helper

    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        raise ModelError(f"graph input {value.name!r} declares no tensor shape: lowbit needs each input's rank "
                         "(dims may be symbolic, e.g. 'batch'); set it when exporting the model")
    dims = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or f"{value.name}_dim{i}")
            for i, dim in enumerate(tensor_type.shape.dim)]
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    return {"name": value.name, "shape": dims, "dtype": dtype}


def _output_specs(proto, mod):
    """Output names from the graph; shapes and dtypes from the imported Relax function (always known there)."""
    from lowbit.compiler.tvm_api import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    if len(fields) != len(proto.graph.output):
        raise ModelError(f"the imported model returns {len(fields)} values for {len(proto.graph.output)} graph outputs")
    return [{"name": value.name, "shape": _dims(field), "dtype": str(field.dtype)}
            for value, field in zip(proto.graph.output, fields)]


def _dims(tensor_type):
    from lowbit.compiler.tvm_api import tirx

    if tensor_type.shape is None:
        return None
    dims = []
    for dim in tensor_type.shape.values:
        dims.append(int(dim) if isinstance(dim, tirx.IntImm) else (dim.name if isinstance(dim, tirx.Var) else str(dim)))
    return dims


__all__ = ["ImportedModel", "QuantizedLinearSpec", "import_onnx", "load_onnx", "check_supported"]
