"""scatter_slices: ``ScatterND(data, I, updates)`` writing one contiguous slice  =>  ``Concat(data[:a], updates, data[b:])``.

PyTorch writes an in-place slice assignment (``y[..., 0:2] = f(y[..., 0:2])``, YOLOv7's grid decode) as a
ScatterND whose indices enumerate every position of the slice: TorchScript as full element indices
``I [d0, ..., dk-1, b-a, r]`` over data of rank r, dynamo (after moving the axis first) as ``I [[a], ..., [b-1]]``.
TensorRT users trip on ScatterND, and no runtime fuses it; the Concat of the untouched parts and the
updates is the same tensor, exactly (a copy, no arithmetic).

Preconditions: a live node (fold_constants, earlier in the same sweep, disconnects a ScatterND it folds, e.g.
a table built in place from constants, and the node stays in ``graph.nodes`` until dead-code elimination);
in the top-level graph (where shape inference runs); reduction none; the indices are a
constant box ``I[u] = (lo_0 + u_0, ..., lo_q-1 + u_q-1)`` over the first q axes, in C order, full on every
axis but at most one (which must then be the slice ``a:b``); the dims of those q axes static (a full range
must be the whole axis); updates of the matching shape.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.constants import const_value
from onnxrep.ir.graph import Namer, is_std, make_const
from onnxrep.ir.shapes import Types, is_static
from onnxrep.passes.base import PassResult


def scatter_slices(graph: gs.Graph, types: Types, namer: Namer, result: PassResult, stats: dict) -> None:
    # the top-level graph only: shape inference runs there; inside an If/Loop body the dims would come from
    # the body's own value_info, which nothing checks (a stale entry would make a full range look full)
    # a node another rule of this sweep disconnected (its inputs and outputs cleared) is gone: skip it
    for node in [n for n in graph.nodes if is_std(n, "ScatterND") and n.outputs]:
        plan = _check(node, types)
        if isinstance(plan, str):
            result.decline(node, plan)
            continue
        _rewrite(graph, node, namer, *plan)
        stats["ScatterND"] = stats.get("ScatterND", 0) + 1
        result.applied()


def _check(node: gs.Node, types: Types):
    if node.attrs.get("reduction", "none") != "none":
        return f"reduction {node.attrs['reduction']}"
    indices = const_value(node.inputs[1])
    if indices is None:
        return "indices are not constant"
    dims = types.dims(node.inputs[0])
    if dims is None or indices.ndim < 2:
        return "data rank unknown" if dims is None else "indices are not a box"
    q = indices.shape[-1]
    box = indices.shape[:-1]
    if len(box) != q or q > len(dims):
        return "indices are not a box over the leading axes"
    if any(n == 0 for n in box):
        return "empty update"
    lo = indices.reshape(-1, q)[0]
    grid = np.stack(np.meshgrid(*[np.arange(lo[j], lo[j] + box[j]) for j in range(q)], indexing="ij"), -1)
    if grid.shape != indices.shape or not np.array_equal(grid, indices):
        return "indices are not one contiguous slice in order"
    partial = []
    for j in range(q):
        if not is_static(dims[j]):
            return f"data dim {j} is not static"
        if lo[j] < 0 or lo[j] + box[j] > dims[j]:
            return "indices out of range"
        if (lo[j], box[j]) != (0, dims[j]):
            partial.append(j)
    if len(partial) > 1:
        return "the slice is partial on more than one axis"
    axis = partial[0] if partial else 0
    return axis, int(lo[axis]), int(lo[axis] + box[axis]), int(dims[axis])


def _rewrite(graph: gs.Graph, node: gs.Node, namer: Namer, axis: int, a: int, b: int, n: int) -> None:
    data, _, updates = node.inputs
    out = node.outputs[0]
    parts = []

    def piece(start: int, end: int) -> gs.Variable:
        t = gs.Variable(namer(f"{out.name}_part"), dtype=data.dtype)
        consts = [make_const(namer, f"{node.name}_{k}", np.array([v], np.int64))
                  for k, v in (("starts", start), ("ends", end), ("axes", axis))]
        graph.nodes.append(gs.Node("Slice", namer(f"{node.name}/Slice"), inputs=[data, *consts], outputs=[t]))
        return t

    if a > 0:
        parts.append(piece(0, a))
    parts.append(updates)
    if b < n:
        parts.append(piece(b, n))
    node.outputs.clear()
    graph.nodes.append(gs.Node("Concat", namer(f"{node.name}/Concat"), attrs={"axis": axis}, inputs=parts,
                               outputs=[out]))
