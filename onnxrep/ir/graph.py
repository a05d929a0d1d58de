"""Graph helpers over onnx-graphsurgeon shared by every pass: structure, not values.

  * fresh names (Namer); import that keeps initializer-backed inputs as inputs (import_model);
  * walks: subgraphs, producers, readers, graph outputs, re-pointing readers, dead-code elimination;
  * attributes with the ONNX spec's defaults (attr, conv_attrs, shape_range);
  * small constructors (make_const) and the model's opset.
Constant values live in ir/constants.py, shapes in ir/shapes.py, symbolic dims in ir/dims.py.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

import onnxrep.ir.private_api  # noqa: F401  (silences gs's logger before any gs work)


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


def shape_range(node: gs.Node, rank: int) -> tuple[int, int]:
    """[start, end) of the axes a ``Shape`` node reads, its start/end attributes clamped as the spec says."""
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    start = min(max(0, start + rank if start < 0 else start), rank)
    end = rank if end is None else int(end)
    end = min(max(0, end + rank if end < 0 else end), rank)
    return start, end


def eliminate_dead_code(graph: gs.Graph) -> None:
    """Delete what no graph output needs. Graph inputs are the model's interface: never removed."""
    graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True).toposort()


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
