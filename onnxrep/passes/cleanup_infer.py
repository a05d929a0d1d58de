"""Static types and shapes of activations, for the cleanup rewrites (not a rewrite itself).

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
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx

from onnxrep.graph import model_opset

# Constants up to this many elements travel with their values (shape arithmetic needs them).
_VALUE_LIMIT = 4096

Dim = int | str | None   # static size, symbolic name, or unknown


@dataclass(frozen=True)
class TypeInfo:
    elem_type: int                      # onnx.TensorProto enum, 0 when unknown
    dims: tuple[Dim, ...] | None        # None when even the rank is unknown

    @property
    def static(self) -> bool:
        return self.dims is not None and all(_is_static(d) for d in self.dims)


def _is_static(d) -> bool:
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0


def elem_type(dtype) -> int:
    """onnx enum for a gs/numpy dtype (0 when unknown)."""
    if dtype is None:
        return 0
    try:
        return int(dtype_to_onnx(dtype))
    except Exception:
        return 0


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
        return TypeInfo(elem_type(tensor.export_dtype), tuple(int(d) for d in tensor.shape))
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


def infer_types(graph: gs.Graph) -> Types:
    """Shape inference over the top-level graph, on a weight-less view. Never raises."""
    input_dims = {d for t in graph.inputs for d in (t.shape or ()) if isinstance(d, str) and d}
    try:
        model = weightless_view(graph)
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
    nodes = [OnnxExporter.export_node(n) for n in graph.nodes if n.outputs]   # disconnected: about to go
    inputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs]
    initializers = []
    seen = {t.name for t in graph.inputs}
    for node in graph.nodes:
        for t in node.inputs if node.outputs else ():
            if not isinstance(t, gs.Constant) or t.name in seen or not t.name:
                continue
            seen.add(t.name)
            size = int(np.prod(t.shape)) if t.shape is not None else 0
            if size <= _VALUE_LIMIT:
                initializers.append(OnnxExporter.export_tensor_proto(t))
            else:  # shape and type are all inference needs from a weight
                inputs.append(onnx.helper.make_tensor_value_info(t.name, elem_type(t.export_dtype), list(t.shape)))
    outputs = [onnx.helper.make_empty_tensor_value_info(t.name) for t in graph.outputs]
    g = onnx.helper.make_graph(nodes, "view", inputs, outputs, initializer=initializers)
    opsets = [onnx.helper.make_opsetid("", model_opset(graph))]
    for dom in graph.import_domains or []:
        if dom.domain not in ("", "ai.onnx"):
            opsets.append(onnx.helper.make_opsetid(dom.domain, dom.version))
    lift_constant_nodes(g)
    model = onnx.helper.make_model(g, opset_imports=opsets)
    for fn in getattr(graph, "functions", []) or []:
        model.functions.append(OnnxExporter.export_function(fn))
    return model


# --------------------------------------------------------------------------- equal symbolic dims

# Ops whose output 0 has exactly the shape of input 0.
_SAME_SHAPE = {"Relu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Erf", "Softmax",
               "LogSoftmax", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Clip", "Cast",
               "CastLike", "Identity", "Floor", "Ceil", "Round", "Sign", "Not", "Dropout", "BatchNormalization",
               "InstanceNormalization", "LayerNormalization", "Mish", "Softplus", "Softsign", "Gelu", "ThresholdedRelu",
               "IsNaN", "IsInf", "Sin", "Cos", "LpNormalization", "LRN", "Shrink", "Hardmax"}
# Elementwise ops with numpy broadcasting.
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Less",
              "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift"}
# Ops whose output keeps the batch (axis 0) of input 0.
_KEEP_BATCH = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
               "GlobalLpPool", "DepthToSpace", "SpaceToDepth"}


class DimRoots:
    """Which symbolic dims are provably equal: every dim gets a root, equal roots mean equal sizes.

    Propagated forward in graph order through ops that provably keep a dim (same-shape ops, broadcasting
    where every input contributing to the dim has the same root, the batch of Conv/pools, non-axis dims of
    Concat/Split/Slice, unit-scale Resize dims, Transpose, Reshape's ``0``). A graph input's named dim is its
    own root, so two inputs sharing a ``dim_param`` share it too, as the ONNX spec says. Anything else starts
    a fresh root: "not provably equal", never a guess.
    """

    def __init__(self, graph: gs.Graph, types: Types):
        self._types = types
        self._roots: dict[tuple[int, int], tuple] = {}
        for t in graph.inputs:
            for k, d in enumerate(t.shape or ()):
                self._roots[(id(t), k)] = ("param", d) if isinstance(d, str) and d else ("t", id(t), k)
        for node in graph.nodes:
            if not node.outputs:
                continue
            for j, out in enumerate(node.outputs):
                dims = types.dims(out)
                for k in range(len(dims or ())):
                    root = _rule(self, node, j, k) if node.domain in (None, "", "ai.onnx") else None
                    self._roots[(id(out), k)] = root or ("t", id(out), k)

    def root(self, tensor: gs.Tensor, axis: int) -> tuple:
        return self._roots.get((id(tensor), axis)) or ("t", id(tensor), axis)

    def same(self, a: gs.Tensor, i: int, b: gs.Tensor, j: int) -> bool:
        return self.root(a, i) == self.root(b, j)


def _const_ints(node: gs.Node, i: int):
    if len(node.inputs) <= i or not isinstance(node.inputs[i], gs.Constant):
        return None
    return [int(v) for v in np.asarray(node.inputs[i].values).reshape(-1)]


def _rule(r: DimRoots, node: gs.Node, j: int, k: int):
    op, x = node.op, node.inputs[0] if node.inputs else None
    if x is None:
        return None
    rank_out = len(r._types.dims(node.outputs[j]) or ())
    rank_in = len(r._types.dims(x) or ())
    if op in _SAME_SHAPE and j == 0:
        return r.root(x, k)
    if op in _BROADCAST:
        roots = set()
        for t in node.inputs:
            dims = r._types.dims(t)
            if dims is None:
                return None
            a = k - (rank_out - len(dims))
            if a < 0 or (isinstance(dims[a], (int, np.integer)) and dims[a] == 1):
                continue  # absent or 1: broadcast, doesn't set the size
            roots.add(r.root(t, a))
        return roots.pop() if len(roots) == 1 else None
    if op in _KEEP_BATCH and k == 0:
        return r.root(x, 0)
    if op in ("Concat", "Split"):
        axis = int(node.attrs.get("axis", 0))
        axis = axis + rank_in if axis < 0 else axis
        return r.root(x, k) if k != axis and rank_in == rank_out else None
    if op == "Slice":
        if "starts" in node.attrs:   # opset < 10
            starts, axes = node.attrs["starts"], node.attrs.get("axes")
        else:
            starts, axes = _const_ints(node, 1), _const_ints(node, 3) if len(node.inputs) > 3 and node.inputs[3].name \
                else None
            if starts is None or (axes is None and len(node.inputs) > 3 and node.inputs[3].name):
                return None
        axes = list(range(len(starts))) if axes is None else [a + rank_in if a < 0 else a for a in axes]
        return r.root(x, k) if k not in axes else None
    if op in ("Resize", "Upsample"):
        scales = _scales(node)
        return r.root(x, k) if scales is not None and k < len(scales) and scales[k] == 1.0 else None
    if op == "Transpose":
        perm = node.attrs.get("perm") or list(range(rank_in))[::-1]
        return r.root(x, int(perm[k])) if k < len(perm) else None
    if op == "Reshape" and not int(node.attrs.get("allowzero", 0)):
        target = _const_ints(node, 1)
        return r.root(x, k) if target is not None and k < len(target) and target[k] == 0 else None
    return None


def _scales(node: gs.Node):
    if node.op == "Upsample" and "scales" in node.attrs:
        return [float(s) for s in node.attrs["scales"]]
    i = 2 if node.op == "Resize" and len(node.inputs) > 2 else 1   # Resize-10: (X, scales)
    if len(node.inputs) <= i or not isinstance(node.inputs[i], gs.Constant):
        return None
    if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
        return None   # sizes given: scales unused
    values = np.asarray(node.inputs[i].values).reshape(-1)
    return [float(v) for v in values] if values.size else None
