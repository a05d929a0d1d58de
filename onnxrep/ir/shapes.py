"""Static types and shapes of activations: the one shape inference every pass and report uses.

After import, onnx-graphsurgeon knows the shapes of graph inputs, constants, and whatever value_info the
exporter wrote, which is often nothing. Folding a ``Shape`` needs more, so this runs ONNX shape
inference (with data propagation, so ``Reshape(x, Concat(Shape(x)[0], ...))`` gets a shape too) on a
*weight-less view* of the graph: big constants are declared as typed inputs instead of copied, small ones
(shape vectors, axes, Resize scales) are kept because inference needs their values.

The view never carries the graph's own intermediate value_info: a stale entry must not poison inference
(it is what the tidy pass compares against). A dimension is static only when inference gives a positive
int; a ``dim_param`` (``"N"``, or an inference-made ``"unk__3"``) stays symbolic and is never folded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import is_std, model_opset, producer, shape_range
from onnxrep.ir.private_api import elem_type, export_dtype, export_function, export_node, export_tensor_proto, \
    export_value_info

# Constants up to this many elements travel with their values (shape arithmetic needs them).
_VALUE_LIMIT = 4096

Dim = int | str | None   # static size, symbolic name, or unknown


@dataclass(frozen=True)
class TypeInfo:
    elem_type: int                      # onnx.TensorProto enum, 0 when unknown
    dims: tuple[Dim, ...] | None        # None when even the rank is unknown

    @property
    def static(self) -> bool:
        return self.dims is not None and all(is_static(d) for d in self.dims)


def is_static(d) -> bool:
    """A dimension that is a known positive size (not a dim_param, not unknown)."""
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0


def _from_proto(vi: onnx.ValueInfoProto) -> TypeInfo | None:
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    dims = None
    if tt.HasField("shape"):
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) if d.HasField("dim_param")
                     else None for d in tt.shape.dim)
    return TypeInfo(tt.elem_type, dims)


def _gs_info(tensor: gs.Tensor) -> TypeInfo:
    if isinstance(tensor, gs.Constant):
        return TypeInfo(elem_type(export_dtype(tensor)), tuple(int(d) for d in tensor.shape))
    shape = tensor.shape
    dims = None if shape is None else tuple(d if isinstance(d, (int, np.integer, str)) else None for d in shape)
    return TypeInfo(elem_type(tensor.dtype), dims)


class Types:
    """Name -> TypeInfo for one graph, from shape inference, falling back to what gs knows."""

    def __init__(self, inferred: dict[str, TypeInfo] | None = None, input_dims: set | None = None):
        self._inferred = inferred or {}
        self.input_dims = input_dims or set()   # the dim_params the graph inputs declare ("N", "batch")

    def info(self, tensor: gs.Tensor) -> TypeInfo:
        if isinstance(tensor, gs.Constant):
            return _gs_info(tensor)
        known = _gs_info(tensor)
        found = self._inferred.get(tensor.name)
        if found is None:
            return known
        return TypeInfo(found.elem_type or known.elem_type, found.dims if found.dims is not None else known.dims)

    def inferred(self, name: str) -> TypeInfo | None:
        return self._inferred.get(name)

    def dims(self, tensor: gs.Tensor) -> tuple[Dim, ...] | None:
        return self.info(tensor).dims

    def elem(self, tensor: gs.Tensor) -> int:
        return self.info(tensor).elem_type


def lift_constant_nodes(graph: onnx.GraphProto) -> None:
    """In an inference view: small ``Constant`` nodes become initializers of the same name.

    ONNX shape inference reads the *values* of initializers (Resize scales, Reshape targets, Split sizes)
    but not of Constant nodes, which TorchScript exports use for all of them; without this, every shape
    after the first Upsample of such an export is unknown (and so are the MACs after it)."""
    keep = []
    for node in graph.node:
        value = _constant_node_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is None:
            keep.append(node)
        else:
            graph.initializer.append(value)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if len(node.output) != 1 or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
        if a.t.data_location == onnx.TensorProto.EXTERNAL or int(np.prod(a.t.dims)) > _VALUE_LIMIT:
            return None
        tensor = onnx.TensorProto()
        tensor.CopyFrom(a.t)
    elif a.name in ("value_float", "value_floats", "value_int", "value_ints"):  # float32 / int64 by the spec
        dtype = np.float32 if "float" in a.name else np.int64
        value = onnx.helper.get_attribute_value(a)
        tensor = onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype))
    else:
        return None
    tensor.name = node.output[0]
    return tensor


class LazyTypes:
    """infer_types(graph), run on first use (most passes never need it)."""

    def __init__(self, graph: gs.Graph):
        self.graph, self._types = graph, None

    def dims(self, tensor: gs.Tensor):
        if self._types is None:
            self._types = infer_types(self.graph)
        return self._types.dims(tensor)


def infer_types(graph: gs.Graph, opset13_as_14: bool = False) -> Types:
    """Shape inference over the top-level graph, on a weight-less view. Never raises.

    opset13_as_14: infer an opset-13 graph as opset 14, whose ops infer alike (14 added types and Reshape's
    allowzero, default off), because ONNX propagates shape *values* (Shape -> Slice/Gather -> Concat ->
    Reshape, what --dynamic-batch writes) only from opset 14: at 13 everything after such a Reshape is
    unknown."""
    input_dims = {d for t in graph.inputs for d in (t.shape or ()) if isinstance(d, str) and d}
    try:
        model = weightless_view(graph)
        if opset13_as_14:
            for o in model.opset_import:
                if o.domain in ("", "ai.onnx") and o.version == 13:
                    o.version = 14
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # an op inference can't handle: fall back to what gs knows
        return Types(input_dims=input_dims)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        info = _from_proto(vi)
        if info is not None:
            out[vi.name] = info
    return Types(out, input_dims)


def weightless_view(graph: gs.Graph) -> onnx.ModelProto:
    nodes = [export_node(n) for n in graph.nodes if n.outputs]   # disconnected: about to go
    inputs = [export_value_info(t) for t in graph.inputs]
    initializers = []
    seen = {t.name for t in graph.inputs}
    for node in graph.nodes:
        for t in node.inputs if node.outputs else ():
            if not isinstance(t, gs.Constant) or t.name in seen or not t.name:
                continue
            seen.add(t.name)
            size = int(np.prod(t.shape)) if t.shape is not None else 0
            if size <= _VALUE_LIMIT:
                initializers.append(export_tensor_proto(t))
            else:  # shape and type are all inference needs from a weight
                inputs.append(onnx.helper.make_tensor_value_info(t.name, elem_type(export_dtype(t)), list(t.shape)))
    outputs = [onnx.helper.make_empty_tensor_value_info(t.name) for t in graph.outputs]
    g = onnx.helper.make_graph(nodes, "view", inputs, outputs, initializer=initializers)
    opsets = [onnx.helper.make_opsetid("", model_opset(graph))]
    for dom in graph.import_domains or []:
        if dom.domain not in ("", "ai.onnx"):
            opsets.append(onnx.helper.make_opsetid(dom.domain, dom.version))
    lift_constant_nodes(g)
    model = onnx.helper.make_model(g, opset_imports=opsets)
    for fn in getattr(graph, "functions", []) or []:
        model.functions.append(export_function(fn))
    return model


# --------------------------------------------------------------------------- shape tensors read symbolically

_SHAPE_ARITH = {"Shape", "Gather", "Slice", "Unsqueeze", "Squeeze", "Concat", "Cast", "Identity"}


def shape_entries(tensor: gs.Tensor, types: Types, depth: int = 0) -> list | None:
    """A 1-D (or scalar) int tensor read symbolically: per element an int, ``(tensor, axis)`` for a symbolic
    dim of that tensor, or None (unknown). None for the whole when even the length is unknown."""
    if isinstance(tensor, gs.Constant):
        v = np.asarray(tensor.values)
        return [int(x) for x in v.reshape(-1)] if v.ndim <= 1 and v.dtype.kind in "iu" else None
    node = producer(tensor)
    if node is None or depth > 16 or not is_std(node, *_SHAPE_ARITH):
        return _unknown_entries(tensor, types)
    if node.op == "Shape":
        dims = types.dims(node.inputs[0])
        if dims is None:
            return _unknown_entries(tensor, types)
        start, end = shape_range(node, len(dims))
        return [int(d) if is_static(d) else (node.inputs[0], k) for k, d in enumerate(dims) if start <= k < end]
    if node.op == "Concat":
        parts = [shape_entries(t, types, depth + 1) for t in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    inner = shape_entries(node.inputs[0], types, depth + 1)
    if inner is None:
        return _unknown_entries(tensor, types)
    if node.op in ("Unsqueeze", "Squeeze", "Identity") or (node.op == "Cast" and int(node.attrs.get("to", 0)) in (
            onnx.TensorProto.INT64, onnx.TensorProto.INT32)):
        return inner
    try:
        if node.op == "Gather" and int(node.attrs.get("axis", 0)) == 0 and isinstance(node.inputs[1], gs.Constant):
            idx = np.asarray(node.inputs[1].values).reshape(-1)
            return [inner[int(i)] for i in idx]
        if node.op == "Slice" and all(isinstance(t, gs.Constant) for t in node.inputs[1:] if t.name):
            args = [np.asarray(t.values).reshape(-1) if t.name else None for t in node.inputs[1:]]
            if len(args) > 2 and args[2] is not None and not np.all((args[2] == 0) | (args[2] == -1)):
                return _unknown_entries(tensor, types)
            step = int(args[3][0]) if len(args) > 3 and args[3] is not None else 1
            return inner[slice(int(args[0][0]), int(min(args[1][0], 2**62)), step)]
    except (IndexError, ValueError, TypeError):
        pass
    return _unknown_entries(tensor, types)


def _unknown_entries(tensor: gs.Tensor, types: Types) -> list | None:
    dims = types.dims(tensor)
    if dims is None or len(dims) > 1 or (len(dims) == 1 and not is_static(dims[0])):
        return None
    return [None] * (int(dims[0]) if dims else 1)
