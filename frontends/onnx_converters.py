"""lowbit's converters for ONNX operators TVM's importer mis-converts on real exports, and the importer that
uses them (TVM's ``ONNXGraphImporter`` with these tried first; each may decline and leave the node to TVM).

- ``Range`` with integer bounds known as shape expressions (``arange(seq)`` in every transformers attention
  mask): TVM turns the length into a fresh variable ``range_len`` that it cannot relate to ``seq``, so the
  mask's broadcast with the attention scores loses its shape, and a later ``Reshape`` fails (dynamo exports);
  or the variable is never computed and the VM build fails (legacy exports after shape folding). Here the
  range is ``relax.op.arange(start, limit, delta)`` on the shape expressions, whose length is symbolic in them.
- ``ConstantOfShape`` of an empty shape (a scalar, the legacy exporter's ``ConstantOfShape(shape=[])``): TVM
  broadcasts the value to rank 0 and fails (``broadcast_to ... ndim 0``). Here it is the scalar constant;
  every constant shape becomes a constant.
- ``Gather``: TVM's converter (negative indices normalized) emits ``take`` in its ``fast`` mode, which reads out
  of bounds on a bad index (a token id past the vocabulary segfaults the process). Here the same ``take`` runs in
  ``nan`` mode for float data (an out-of-range row is NaN, visible) and ``clip`` for integer data; the runtime
  also refuses a model input that indexes a Gather out of range before calling the model (see
  ``frontends/onnx.py``, ``_index_bound``).
"""
import numpy as np

from lowbit.compiler.tvm_api import onnx_frontend, relax, tirx, tvm


def _prim_dtype(value):
    return str(getattr(value, "dtype", None) or value.ty)  # TVM 0.27's tirx.Var has .ty, constants .dtype


def _integer_scalar(value, params):
    """``value`` (a converter input) as a PrimExpr / int when it is an integer scalar known at import, else None."""
    value = onnx_frontend().get_constant(value, params)
    if tvm.ir.is_prim_expr(value):
        return value if "int" in _prim_dtype(value) else None
    if isinstance(value, tvm.ir.GenericConst):
        array = value.value.numpy()
        return int(array.reshape(-1)[0]) if array.size == 1 and array.dtype.kind in "iu" else None
    return None


def convert_range(bb, inputs, attr, params):
    """``Range(start, limit, delta)`` with integer scalars known at import: arange with a symbolic length."""
    scalars = [_integer_scalar(value, params) for value in inputs[:3]]
    if any(value is None for value in scalars) or not all(isinstance(v, int) for v in scalars[2:]):
        return None  # a run-time tensor bound, or a symbolic step: TVM's converter
    dtype = str(inputs[0].ty.dtype) if isinstance(inputs[0], relax.Expr) and \
        isinstance(inputs[0].ty, relax.TensorType) else "int64"
    start, limit, delta = (tirx.Cast("int64", v) if tvm.ir.is_prim_expr(v) and _prim_dtype(v) != "int64" else v
                           for v in scalars)
    return relax.op.arange(start, limit, delta, dtype)


def convert_constant_of_shape(bb, inputs, attr, params):
    """``ConstantOfShape`` of a constant shape, the empty one (a scalar) included: a constant."""
    shape = onnx_frontend().get_constant(inputs[0], params)
    if isinstance(shape, tvm.ir.GenericConst):
        dims = [int(d) for d in shape.value.numpy().reshape(-1)]
    elif isinstance(shape, relax.ShapeExpr) and all(isinstance(d, tirx.IntImm) for d in shape.values):
        dims = [int(d) for d in shape.values]
    else:
        return None
    value = attr.get("value")
    fill = onnx_frontend().get_numpy(value) if value is not None else np.zeros(1, np.float32)
    return relax.const(np.full(dims, fill.reshape(-1)[0], fill.dtype), str(fill.dtype))


CONVERTERS = {"Range": convert_range, "ConstantOfShape": convert_constant_of_shape}


def bounded_take(converted):
    """``converted`` with a ``fast``-mode ``take`` (TVM's Gather) re-made in ``nan`` / ``clip`` mode."""
    if not (isinstance(converted, relax.Call) and getattr(converted.op, "name", "") == "relax.take"
            and converted.attrs.mode == "fast"):
        return converted
    data, indices = converted.args
    dtype = str(data.ty.dtype) if isinstance(data.ty, relax.TensorType) else ""
    axis = converted.attrs.axis
    return relax.op.take(data, indices, None if axis is None else int(axis),
                         mode="nan" if dtype.startswith(("float", "bfloat")) else "clip")


POST_CONVERTERS = {"Gather": bounded_take}


def importer_class():
    """TVM's ``ONNXGraphImporter`` with :data:`CONVERTERS` tried before its own converter of the op, and
    :data:`POST_CONVERTERS` applied to what its own converter made."""
    base = onnx_frontend().ONNXGraphImporter

    class LowbitOnnxImporter(base):
        def _convert_operator(self, op_name, inputs, attrs, opset):
            convert = CONVERTERS.get(op_name)
            converted = convert(self.bb, inputs, attrs, [self._nodes, self._params]) if convert else None
            if converted is None:
                converted = super()._convert_operator(op_name, inputs, attrs, opset)
                post = POST_CONVERTERS.get(op_name)
                return self.bb.normalize(post(converted)) if post else converted
            return self.bb.normalize(converted)

    return LowbitOnnxImporter


def from_onnx(proto):
    """Relax module of an ONNX model: ``tvm.relax.frontend.onnx.from_onnx`` with :data:`CONVERTERS` first.

    The same steps as TVM's ``from_onnx`` (the onnx checker's complaints as warnings, the default-domain
    opset), with lowbit's importer class; float initializers become constants.
    """
    import warnings

    import onnx

    try:
        onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - TVM treats the checker's complaints as warnings too
        warnings.warn(str(err), stacklevel=2)
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 1)
    importer = importer_class()(None, "float32", keep_params_in_input=False, sanitize=True)
    return importer.from_onnx(proto.graph, opset)
