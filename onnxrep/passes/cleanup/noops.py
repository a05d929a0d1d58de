"""remove_noops: a node that passes its input through unchanged  =>  nothing (its readers read the input).

Before ⇒ after: ``x -> Identity -> y -> ...``  ⇒  ``x -> ...``. A node is a pass-through when:
  * Identity; Dropout in inference form (no training_mode, or a constant false one; mask unused);
    Concat/Sum/Max/Min/Mean of a single input; Split into a single output (the whole tensor);
  * Reshape to the input's own shape (constant target equal dim by dim, ``0`` copying a dim when
    allowzero=0, one ``-1`` standing for the only dim not matched exactly), or static in and out shapes equal;
  * Transpose with the identity permutation; Cast to the input's own type;
  * Slice whose every axis is start 0, step 1, end >= the dim; Pad/Tile with all-zero pads / all-one repeats;
  * Expand whose target shape broadcasts to the input's own shape (works with a symbolic batch: 1s and equal
    static dims only);
  * Add/Sub of zeros, Mul/Div of ones, when the constant's broadcast changes neither shape nor type
    (the only difference is -0.0 + 0.0 = +0.0); likewise an all-zero Conv/ConvTranspose/Gemm bias input
    is dropped (drop_zero_biases).

Graph outputs keep their names: when ``y`` is a graph output, ``x``'s producer is re-pointed to write ``y``
and ``x``'s other readers read ``y``; when ``x`` is a graph input, a graph output or a constant, the node stays.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import is_graph_output, is_std, iter_graphs, model_opset, producer, redirect_readers, replace_input
from onnxrep.ir.constants import const_value
from onnxrep.passes.base import PassResult
from onnxrep.ir.shapes import Types, is_static

_BIG = 1 << 62   # "to the end" in Slice is written as INT64_MAX or INT32_MAX by exporters; anything huge


def bypass(graph: gs.Graph, node: gs.Node, src: gs.Tensor, dst: gs.Tensor) -> str | None:
    """Make every reader of `dst` (node's output) read `src` instead, then disconnect `node`.

    Returns None on success, else why the node must stay.
    """
    if is_graph_output(graph, dst):
        if isinstance(src, gs.Constant) or any(t is src for t in graph.inputs) or is_graph_output(graph, src):
            return "passes a graph input, graph output or constant to a graph output"
        src_node = producer(src)
        if src_node is None or not any(n is src_node for n in graph.nodes):
            return "input is not produced by a node of this graph"
        if any(n is not graph and _in_outer_scope(n, src) for n in iter_graphs(graph)):
            return "input is read by a subgraph"
        for reader in list(src.outputs):
            if reader is not node:
                replace_input(reader, src, dst)
        node.inputs.clear()
        node.outputs.clear()
        src_node.outputs[src_node.outputs.index(src)] = dst
        return None
    redirect_readers(dst, src)
    node.inputs.clear()
    node.outputs.clear()
    return None


def _in_outer_scope(g: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for n in g.nodes for t in n.inputs)


def remove_noops(graph: gs.Graph, types: Types, result: PassResult, stats: dict) -> None:
    opset = model_opset(graph)
    for g in iter_graphs(graph):
        for node in list(g.nodes):
            if not is_std(node) or not node.outputs:
                continue
            if any(o.outputs or is_graph_output(g, o) for o in node.outputs[1:]):
                continue  # e.g. a Dropout mask that is read
            src = passthrough_input(node, types, opset)
            if src is None:
                continue
            reason = bypass(g, node, src, node.outputs[0])
            if reason:
                result.decline(node, f"{node.op} is a no-op but stays: {reason}")
                continue
            stats[node.op] = stats.get(node.op, 0) + 1
            result.applied()


def drop_zero_biases(graph: gs.Graph, result: PassResult, stats: dict) -> None:
    """Conv/ConvTranspose/Gemm with an all-zero constant bias  =>  the same node without it (raw dynamo
    exports feed bias-less Convs a computed zero bias; left in, it is one more tensor than the deploy form)."""
    for g in iter_graphs(graph):
        for node in g.nodes:
            if not is_std(node, "Conv", "ConvTranspose", "Gemm") or len(node.inputs) < 3 or not node.inputs[2].name:
                continue
            bias = _const(node, 2)
            if bias is None or bias.size == 0 or np.any(bias != 0):
                continue
            node.inputs.pop(2)
            stats["zero bias"] = stats.get("zero bias", 0) + 1
            result.applied()


def passthrough_input(node: gs.Node, types: Types, opset: int) -> gs.Tensor | None:
    """The input tensor that `node` returns unchanged, or None if it computes something.

    A rule answers True (input 0 passes through), an input index, or False/None.
    """
    check = _RULES.get(node.op)
    if check is None or not node.inputs or not node.inputs[0].name:
        return None
    found = check(node, types, opset)
    if found is None or found is False:
        return None
    return node.inputs[0 if found is True else found]


def _const(node: gs.Node, i: int):
    if len(node.inputs) <= i or not node.inputs[i].name:
        return None
    value = const_value(node.inputs[i])
    return None if value is None else np.asarray(value)


def _identity(node, types, opset):
    return True


def _dropout(node, types, opset):
    if opset < 7:
        return int(node.attrs.get("is_test", 0)) == 1
    if len(node.inputs) > 2 and node.inputs[2].name:
        mode = _const(node, 2)
        return mode is not None and not bool(mode.reshape(-1)[0])
    return True


def _single_input(node, types, opset):
    return sum(1 for t in node.inputs if t.name) == 1


def _single_output(node, types, opset):
    return len(node.outputs) == 1


def _same_static_shape(node, types) -> bool:
    a, b = types.info(node.inputs[0]), types.info(node.outputs[0])
    return a.static and b.static and tuple(a.dims) == tuple(b.dims)


def _reshape(node, types, opset):
    dims = types.dims(node.inputs[0])
    target = _const(node, 1)
    allowzero = int(node.attrs.get("allowzero", 0))
    if target is not None and dims is not None and target.ndim == 1 and len(target) == len(dims):
        free = []
        for i, (s, d) in enumerate(zip(target.tolist(), dims)):
            if s == 0 and not allowzero:
                continue
            if is_static(d) and s == d:
                continue
            free.append((i, s))
        if not free:
            return True
        if len(free) == 1 and free[0][1] == -1:
            return True   # -1 is what's left once every other dim matched: the dim itself
    return _same_static_shape(node, types)


def _transpose(node, types, opset):
    perm = node.attrs.get("perm")
    if perm is None:
        dims = types.dims(node.inputs[0])
        return dims is not None and len(dims) <= 1
    return list(perm) == list(range(len(perm)))


def _cast(node, types, opset):
    src = types.elem(node.inputs[0])
    return src != 0 and src == int(node.attrs.get("to", -1))


def _slice(node, types, opset):
    dims = types.dims(node.inputs[0])
    if dims is None:
        return False
    if opset < 10:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        axes, steps = node.attrs.get("axes"), None
    else:
        starts, ends, axes, steps = (_const(node, i) for i in (1, 2, 3, 4))
        if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3].name and axes is None) \
                or (len(node.inputs) > 4 and node.inputs[4].name and steps is None):
            return False
    starts = [int(v) for v in np.asarray(starts).reshape(-1)]
    ends = [int(v) for v in np.asarray(ends).reshape(-1)]
    axes = list(range(len(starts))) if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
    steps = [1] * len(starts) if steps is None else [int(v) for v in np.asarray(steps).reshape(-1)]
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + len(dims) if axis < 0 else axis
        if not 0 <= axis < len(dims) or step != 1 or start != 0:
            return False
        if end >= _BIG or end >= 2**31 - 1:
            continue
        if not (is_static(dims[axis]) and end >= dims[axis]):
            return False
    return True


def _broadcast_keeps(dims, shape) -> bool:
    """Broadcasting a tensor of `dims` against `shape` gives `dims` back (same rank or higher)."""
    if dims is None or len(shape) > len(dims):
        return False
    for s, d in zip(reversed(list(shape)), reversed(list(dims))):
        if s != 1 and not (is_static(d) and s == d):
            return False
    return True


def _expand(node, types, opset):
    target = _const(node, 1)
    return target is not None and target.ndim == 1 and _broadcast_keeps(types.dims(node.inputs[0]),
                                                                         target.tolist())


def _pad(node, types, opset):
    pads = node.attrs.get("pads") if opset < 11 else _const(node, 1)
    return pads is not None and not np.any(np.asarray(pads))


def _tile(node, types, opset):
    repeats = _const(node, 1)
    return repeats is not None and bool(np.all(repeats == 1))


_NEUTRAL = {"Add": (0, True), "Sub": (0, False), "Mul": (1, True), "Div": (1, False)}


def _arith(node, types, opset):
    """x + 0, x - 0, x * 1, x / 1 (also 0 + x and 1 * x): the constant must change neither shape nor type."""
    if len(node.inputs) != 2:
        return False
    neutral, commutes = _NEUTRAL[node.op]
    orders = [(0, 1), (1, 0)] if commutes else [(0, 1)]
    for xi, ci in orders:
        c = _const(node, ci)
        x = node.inputs[xi]
        if c is None or isinstance(x, gs.Constant) or c.dtype.kind not in "fiu" or not np.all(c == neutral):
            continue
        info = types.info(x)
        if info.elem_type and types.elem(node.inputs[ci]) not in (0, info.elem_type):
            continue
        if _broadcast_keeps(info.dims, c.shape):
            return xi
    return False


_RULES = {
    "Identity": _identity, "Dropout": _dropout,
    "Concat": _single_input, "Sum": _single_input, "Max": _single_input, "Min": _single_input,
    "Mean": _single_input, "Split": _single_output,
    "Reshape": _reshape, "Transpose": _transpose, "Cast": _cast, "Slice": _slice, "Expand": _expand,
    "Pad": _pad, "Tile": _tile,
    "Add": _arith, "Sub": _arith, "Mul": _arith, "Div": _arith,
}
