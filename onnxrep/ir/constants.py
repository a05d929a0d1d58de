"""Constant values: is this tensor known without running the model, and what is it?

A constant is an initializer, a ``Constant`` node, an ``Identity`` alias of one, or a short chain of ops on
constants (raw dynamo's ``Expand(CastLike(0, x), Shape(w))``), evaluated by onnx's reference
implementation at the model's own opset (ops change meaning between opsets: Unsqueeze's axes moved from
an attribute to an input at 13). The pipeline sets that opset for the passes it runs (``at_opset``); code
outside a pipeline gets the newest opset unless it sets one. Graph inputs are never constant.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxrep.ir.private_api import const_bytes, export_attributes, peek  # noqa: F401 (re-exported)
from onnxrep.ir.graph import is_std, producer, shape_range
from onnxrep.ir.ops import NEVER_FOLD

# A chain longer than this is not a "parameter computation" but real work: don't evaluate it here.
_MAX_FOLD_DEPTH = 8
_MAX_FOLD_ELEMENTS = 1 << 26
_OPSET: contextvars.ContextVar[int | None] = contextvars.ContextVar("onnxrep_opset", default=None)


@contextlib.contextmanager
def at_opset(opset: int | None):
    """Evaluate constants at `opset` (the model's) inside this block."""
    token = _OPSET.set(opset)
    try:
        yield
    finally:
        _OPSET.reset(token)


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
    if node.op in NEVER_FOLD:
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
    shape = node.inputs[0].shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    start, end = shape_range(node, len(shape))
    return np.asarray(shape, dtype=np.int64)[start:end]


def _evaluate(node: gs.Node, inputs: list[np.ndarray | None]) -> np.ndarray | None:
    """The single output of `node` on constant inputs, or None (the caller then sees a non-constant)."""
    if len(node.outputs) != 1:
        return None
    outs = evaluate_node(node, inputs, _OPSET.get())
    return None if isinstance(outs, str) else outs[0]


def evaluate_node(node: gs.Node, inputs: list[np.ndarray | None], opset: int | None = None) -> list[np.ndarray] | str:
    """All outputs of `node` on the given constant inputs (None for an absent optional input), run by
    onnx's reference implementation at `opset` (default: the newest). A reason string when it can't."""
    if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return "node has a subgraph"
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if t.name else "" for k, t in enumerate(node.inputs)]
    outs = [f"o{k}" if t.name else "" for k, t in enumerate(node.outputs)]
    proto = onnx.helper.make_node(node.op, names, outs, domain="")
    proto.attribute.extend(export_attributes(node.attrs))
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
