"""An index over one ONNX graph: who produces and who consumes each tensor, and which tensors are constant.

The ONNX frontend's pattern matchers read the graph through this index; they never change it. Only
``onnx.helper`` / ``onnx.numpy_helper`` are used: no shape inference, no onnxruntime.
"""
import numpy as np
from onnx import helper, numpy_helper

from lowbit.errors import ModelError


def node_label(node):
    """``'name' (OpType)``: how error messages name a node."""
    return f"{node.name!r} ({node.op_type})"


def subgraph_inputs(node):
    """Names a node's subgraphs (If / Loop bodies) read from the enclosing scope (over-approximated)."""
    names = []
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.extend(name for name in inner.input if name)
                names.extend(subgraph_inputs(inner))
    return names


class OnnxGraph:
    """Read-only index over an ONNX ``GraphProto``.

    Attributes
    ----------
    nodes : list of NodeProto
        In graph order; every node has a non-empty, unique name (``name_nodes`` gives them one).
    constants : dict of str -> TensorProto
        Initializers and the values of ``Constant`` nodes.
    producer : dict of str -> NodeProto
    consumers : dict of str -> list of NodeProto
    """

    def __init__(self, graph):
        self.graph = graph
        self.nodes = list(graph.node)
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.constants = dict(self.initializers)
        self.producer, self.consumers = {}, {}
        for node in self.nodes:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in list(node.input) + subgraph_inputs(node):
                if name:
                    self.consumers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
                if value is not None:
                    self.constants[node.output[0]] = value
        self.outputs = {value.name for value in graph.output}
        self.inputs = [value for value in graph.input if value.name not in self.initializers]

    def array(self, name, node, role):
        """The NumPy value of constant tensor ``name`` (input ``role`` of ``node``), or None if not constant."""
        tensor = self.constants.get(name)
        if tensor is None:
            return None
        try:
            return numpy_helper.to_array(tensor)
        except Exception as err:  # onnx raises bare ValueError / TypeError / KeyError for bad tensors
            raise ModelError(f"node {node_label(node)}: cannot read its {role} tensor {name!r}: {err}; the model "
                             "file is truncated or its external data is missing") from err

    def require(self, name, node, role):
        """Like :meth:`array`, but a tensor that is not constant is an error naming the node and tensor."""
        value = self.array(name, node, role)
        if value is None:
            raise ModelError(f"node {node_label(node)}: its {role} {name!r} must be a constant (an initializer "
                             "or a Constant node), but it is computed at run time: lowbit compiles weights and "
                             "their scales / zero points ahead of time")
        return value

    def single_consumer(self, name):
        """The only node reading ``name`` (None if several read it or it is a graph output)."""
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or name in self.outputs:
            return None
        return readers[0]


def input_at(node, index):
    """Name of input ``index`` of ``node``, or None when absent (missing or empty: an omitted optional)."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


def attribute(node, name, default=None):
    """Value of attribute ``name`` of ``node`` (``helper.get_attribute_value``), or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def name_nodes(graph):
    """Give every unnamed node of ``graph`` a unique name ``<OpType>_<index>`` (layer names need one)."""
    taken = {node.name for node in graph.node if node.name}
    for index, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def check_references(graph):
    """Raise ModelError listing every node input that nothing defines (missing initializers and the like)."""
    defined = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    missing = []
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                missing.append(f"node {node_label(node)} reads {name!r}")
        defined.update(name for name in node.output if name)
    for value in graph.output:
        if value.name not in defined:
            missing.append(f"graph output {value.name!r}")
    if missing:
        raise ModelError("the ONNX model refers to tensors that are neither graph inputs, initializers nor "
                         "outputs of an earlier node: " + "; ".join(missing) + ". The file is incomplete "
                         "(truncated, or its external data file is missing) or its nodes are out of order")


def float_array(value, node, role):
    """``value`` as float32, checking it is a finite float array."""
    if not np.issubdtype(np.asarray(value).dtype, np.floating) and np.asarray(value).dtype.kind != "V":
        raise ModelError(f"node {node_label(node)}: its {role} has dtype {np.asarray(value).dtype}, expected a "
                         "float type")
    out = np.asarray(value).astype(np.float32)
    if not np.isfinite(out).all():
        raise ModelError(f"node {node_label(node)}: its {role} contains NaN or Inf")
    return out
