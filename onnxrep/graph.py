"""Small helpers over onnx-graphsurgeon shared by every pass.

The passes ask three kinds of question, answered here once:
  * is this tensor a constant, and what is its value? (initializer, Constant node, Identity alias,
    or a short constant-foldable chain such as raw dynamo's ``Expand(CastLike(0, x), Shape(w))``);
  * who else reads this tensor? (consumers, graph outputs, subgraph references);
  * what is this attribute, with the ONNX spec default when it is absent?
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

# gs warns on stdout about things we handle (e.g. bfloat16 casts); our report says what matters.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL

# A chain longer than this is not a "parameter computation" but real work: don't evaluate it here.
_MAX_FOLD_DEPTH = 8
_MAX_FOLD_ELEMENTS = 1 << 26
# Quantization boundaries are the point of a QDQ model, and random ops differ run to run: never "constant".
_NEVER_FOLD = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
               "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


# --------------------------------------------------------------------------------------------- names


class Namer:
    """Fresh, graph-unique tensor and node names (new tensors never reuse an existing name)."""

    def __init__(self, graph: gs.Graph):
        self._taken = {t for t in graph.tensors().keys()}
        for g in iter_graphs(graph):
            self._taken.update(n.name for n in g.nodes if n.name)
            self._taken.update(g.tensors().keys())
        self._counter = itertools.count()

    def __call__(self, base: str) -> str:
        base = base or "onnxrep"
        name = base
        while name in self._taken:
            name = f"{base}_{next(self._counter)}"
        self._taken.add(name)
        return name


# -------------------------------------------------------------------------------------- graph walks


def import_model(model: onnx.ModelProto) -> gs.Graph:
    """gs.import_onnx, keeping initializers that are also graph inputs as what they are: inputs.

    The user may feed those, so their initializer is only a default. gs would import them as constants
    (and drop them from the inputs); here each becomes a graph-input Variable whose ``default`` holds the
    constant, so no pass can fold, merge or de-duplicate it, and from_graph writes the default back.
    """
    init_names = {t.name for t in model.graph.initializer}
    overridable = [vi.name for vi in model.graph.input if vi.name in init_names]
    graph = gs.import_onnx(model)
    if overridable:
        tensors = graph.tensors()
        position = {vi.name: k for k, vi in enumerate(model.graph.input)}
        for name in overridable:
            const = tensors[name]
            var = gs.Variable(name, dtype=const.dtype, shape=list(const.shape))
            var.default = const
            for g in iter_graphs(graph):  # readers, including subgraphs reading it from the outer scope
                for node in g.nodes:
                    for i, t in enumerate(node.inputs):
                        if t is const:
                            node.inputs[i] = var
            graph.outputs = [var if t is const else t for t in graph.outputs]
            graph.inputs.append(var)
        graph.inputs.sort(key=lambda t: position.get(t.name, len(position)))
    return graph



def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph itself, then every If/Loop/Scan body nested in it (depth first)."""
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            subs = value if isinstance(value, (list, tuple)) else [value]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    yield from iter_graphs(sub)


def is_std(node: gs.Node, *ops: str) -> bool:
    """Node is in the default ONNX domain (and, if given, one of `ops`)."""
    return node.domain in (None, "", "ai.onnx") and (not ops or node.op in ops)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def replace_input(reader: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """`reader` reads `new` wherever it read `old`."""
    for i, t in enumerate(reader.inputs):
        if t is old:
            reader.inputs[i] = new


def redirect_readers(old: gs.Tensor, new: gs.Tensor, readers=None) -> None:
    """Every reader of `old` (or just `readers`) reads `new` instead."""
    for reader in list(old.outputs if readers is None else readers):
        replace_input(reader, old, new)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def sole_consumer(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The only node reading `tensor`, or None if it has several readers or is a graph output."""
    if is_graph_output(graph, tensor) or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def is_private(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True when `tensor` feeds exactly one node and is not visible from outside the graph."""
    return sole_consumer(graph, tensor) is not None


# ------------------------------------------------------------------------------------ attributes


def attr(node: gs.Node, name: str, default=None, opset: int | None = None):
    """Attribute value, else the ONNX spec default for this op, else `default`."""
    if name in node.attrs:
        return node.attrs[name]
    try:
        schema = onnx.defs.get_schema(node.op, opset or onnx.defs.onnx_opset_version(), node.domain or "")
        proto = schema.attributes[name].default_value
        if proto is not None and proto.type != 0:
            return onnx.helper.get_attribute_value(proto)
    except Exception:  # unknown op or attribute: the caller's default is the answer
        pass
    return default


def conv_attrs(node: gs.Node, spatial: int) -> dict:
    """Conv/ConvTranspose attributes with the spec's (partly implicit) defaults filled in."""
    def ints(name, fill):
        value = node.attrs.get(name)
        return [int(v) for v in value] if value is not None else [fill] * spatial

    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    return {
        "group": int(node.attrs.get("group", 1)),
        "strides": ints("strides", 1),
        "dilations": ints("dilations", 1),
        "pads": ints("pads", 0) if "pads" in node.attrs else [0] * (2 * spatial),
        "auto_pad": auto_pad,
        "kernel_shape": [int(v) for v in node.attrs["kernel_shape"]] if "kernel_shape" in node.attrs else None,
    }


# ------------------------------------------------------------------------------------- constants


def const_value(tensor: gs.Tensor | None, _depth: int = 0) -> np.ndarray | None:
    """The value of `tensor` if it is a compile-time constant, else None.

    Graph inputs are never constant, even when they have an initializer (import_model makes those
    Variables, so they fall out here like any other input).
    """
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return peek(tensor)
    node = producer(tensor)
    if node is None or _depth > _MAX_FOLD_DEPTH or not is_std(node):
        return None
    if node.op == "Constant":
        return _constant_node_value(node)
    if node.op == "Identity":
        return const_value(node.inputs[0], _depth + 1)
    if node.op == "CastLike":  # only the *dtype* of the second input matters, and that is static
        value = const_value(node.inputs[0], _depth + 1)
        target = node.inputs[1].dtype if len(node.inputs) > 1 else None
        if value is None or target is None:
            return None
        return value.astype(onnx.helper.tensor_dtype_to_np_dtype(target) if isinstance(target, int) else target)
    if node.op == "Shape":  # static when the input's shape is fully known
        return _static_shape(node)
    if node.op in _NEVER_FOLD:
        return None
    inputs = []
    for t in node.inputs:
        value = const_value(t, _depth + 1) if t.name else None
        if t.name and (value is None or value.size > _MAX_FOLD_ELEMENTS):
            return None  # stop at the first non-constant input: no need to look at the others
        inputs.append(value)
    return _evaluate(node, inputs)


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return value.values if isinstance(value, gs.Constant) else np.asarray(value)
    # list attributes are float32 / int64 by the spec (never float64)
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None


def _static_shape(node: gs.Node) -> np.ndarray | None:
    source = node.inputs[0]
    shape = source.shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    shape = np.asarray(shape, dtype=np.int64)
    rank = len(shape)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    start = max(0, start + rank if start < 0 else start)
    end = rank if end is None else (int(end) + rank if int(end) < 0 else int(end))
    return shape[start:min(end, rank)]


def _evaluate(node: gs.Node, inputs: list[np.ndarray | None]) -> np.ndarray | None:
    """The single output of `node` on constant inputs, or None (the caller then sees a non-constant)."""
    if len(node.outputs) != 1:
        return None
    outs = evaluate_node(node, inputs)
    return None if isinstance(outs, str) else outs[0]


def evaluate_node(node: gs.Node, inputs: list[np.ndarray | None], opset: int | None = None) -> list[np.ndarray] | str:
    """All outputs of `node` on the given constant inputs (None for an absent optional input), run by
    onnx's reference implementation at `opset` (default: the newest). A reason string when it can't."""
    if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return "node has a subgraph"
    from onnx.reference import ReferenceEvaluator
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    names = [f"i{k}" if t.name else "" for k, t in enumerate(node.inputs)]
    outs = [f"o{k}" if t.name else "" for k, t in enumerate(node.outputs)]
    proto = onnx.helper.make_node(node.op, names, outs, domain="")
    proto.attribute.extend(OnnxExporter.export_attributes(node.attrs))
    feeds = {n: np.asarray(v) for n, v in zip(names, inputs) if n}
    graph_inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                    for n, v in feeds.items()]
    graph_outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in outs if o]
    model = onnx.helper.make_model(onnx.helper.make_graph([proto], "fold", graph_inputs, graph_outputs),
                                   opset_imports=[onnx.helper.make_opsetid("", opset or onnx.defs.onnx_opset_version())])
    try:
        values = iter(ReferenceEvaluator(model).run(None, feeds))
    except Exception as exc:  # an op or case the reference implementation can't run
        return f"reference evaluation failed ({type(exc).__name__})"
    result = []
    for o in node.outputs:
        value = next(values) if o.name else np.zeros(0)
        if not isinstance(value, np.ndarray) and not np.isscalar(value):
            return "result is not a tensor"
        result.append(np.asarray(value))
    return result


def peek(tensor: gs.Constant) -> np.ndarray:
    """A constant's values *without* caching them on the tensor (gs's ``.values`` keeps a numpy copy of
    every weight it ever loads; for a 280 MB model that is a second copy of the weights)."""
    values = tensor._values
    return values.load() if isinstance(values, LazyValues) else tensor.values


def const_bytes(tensor: gs.Constant) -> bytes:
    """The raw little-endian bytes of a constant, straight from its TensorProto when it has them."""
    values = tensor._values
    if isinstance(values, LazyValues) and values.tensor.HasField("raw_data"):
        return values.tensor.raw_data
    return np.ascontiguousarray(peek(tensor)).tobytes()


def all_const(tensors: Iterable[gs.Tensor]) -> bool:
    return all(const_value(t) is not None for t in tensors)


def np_dtype(tensor: gs.Tensor):
    """numpy dtype of a tensor (gs stores either numpy dtypes or onnx enums)."""
    dtype = tensor.dtype
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, np.dtype):
        return onnx.helper.tensor_dtype_to_np_dtype(int(dtype))
    return np.dtype(dtype)


def make_const(namer: Namer, base: str, value: np.ndarray) -> gs.Constant:
    # np.asarray keeps a scalar a scalar (ascontiguousarray would make it shape [1])
    return gs.Constant(namer(base), np.asarray(value, order="C"))


def model_opset(graph: gs.Graph) -> int:
    return int(graph.opset or onnx.defs.onnx_opset_version())
