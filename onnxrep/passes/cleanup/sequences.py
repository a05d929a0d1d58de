"""split_sequences: ``SplitToSequence(x) -> SequenceAt(i), SequenceAt(j)...``  =>  ``Split(x)`` (plain tensors).

Raw dynamo exports write ``torch.chunk``/``split`` this way; TensorRT has no sequence type, and the plain
``Split`` is what every runtime fuses. Chunk sizes: the constant 1-D ``split`` input as is; a scalar ``split``
s gives ``[s, s, ..., rest]`` over the (static) dim; no ``split`` gives size-1 chunks, squeezed when keepdims=0
(``Squeeze`` after each used chunk). A SequenceAt index may be negative (counted from the end).

Preconditions: every reader of the sequence is a ``SequenceAt`` with a constant in-range index, and the
sequence is not a graph output; the split axis is static when the chunk count depends on it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, is_graph_output, is_std, iter_graphs, make_const, model_opset
from onnxrep.ir.constants import const_value
from onnxrep.passes.base import PassResult
from onnxrep.ir.shapes import Types, is_static


def split_sequences(graph: gs.Graph, types: Types, namer: Namer, result: PassResult, stats: dict) -> None:
    opset = model_opset(graph)
    for g in iter_graphs(graph):
        for node in [n for n in g.nodes if is_std(n, "SplitToSequence")]:
            plan = _check(g, node, types)
            if isinstance(plan, str):
                result.decline(node, plan)
                continue
            _rewrite(g, node, namer, opset, *plan)
            stats["SplitToSequence"] = stats.get("SplitToSequence", 0) + 1
            result.applied()


def _check(graph: gs.Graph, node: gs.Node, types: Types):
    seq = node.outputs[0]
    if is_graph_output(graph, seq):
        return "sequence is a graph output"
    readers = list(seq.outputs)
    if not readers:
        return "sequence is unused"
    dims = types.dims(node.inputs[0])
    axis = int(node.attrs.get("axis", 0))
    if dims is not None:
        axis = axis + len(dims) if axis < 0 else axis
    elif axis < 0:
        return "input rank unknown"
    keepdims = int(node.attrs.get("keepdims", 1))
    squeeze = False
    if len(node.inputs) > 1 and node.inputs[1].name:
        split = const_value(node.inputs[1])
        if split is None:
            return "split sizes are not constant"
        split = np.asarray(split).astype(np.int64)
        if split.ndim == 1:
            sizes = split.tolist()
        else:
            size = int(split)
            dim = dims[axis] if dims is not None and axis < len(dims) else None
            if not is_static(dim) or size <= 0:
                return "chunk count depends on a dim that is not static"
            sizes = [size] * (dim // size) + ([dim % size] if dim % size else [])
    else:
        dim = dims[axis] if dims is not None and axis < len(dims) else None
        if not is_static(dim):
            return "chunk count depends on a dim that is not static"
        sizes = [1] * dim
        squeeze = keepdims == 0
    picks = []
    for reader in readers:
        if not is_std(reader, "SequenceAt") or reader.inputs[0] is not seq:
            return f"sequence is read by {reader.op}"
        index = const_value(reader.inputs[1]) if len(reader.inputs) > 1 else None
        if index is None or np.asarray(index).size != 1:
            return "SequenceAt index is not constant"
        i = int(np.asarray(index).reshape(-1)[0])
        i = i + len(sizes) if i < 0 else i
        if not 0 <= i < len(sizes):
            return f"SequenceAt index {i} out of range ({len(sizes)} chunks)"
        picks.append((reader, i))
    return axis, sizes, squeeze, picks


def _rewrite(graph, node, namer: Namer, opset: int, axis, sizes, squeeze, picks) -> None:
    x = node.inputs[0]
    base = node.name or "split"
    chunk_of: dict[int, gs.Tensor] = {}
    outs = []
    for i in range(len(sizes)):
        users = [r for r, k in picks if k == i]
        if users and not squeeze:
            out = users[0].outputs[0]      # the first SequenceAt's output tensor keeps its name
        else:
            out = gs.Variable(namer(f"{base}_chunk{i}"), dtype=x.dtype)
        chunk_of[i] = out
        outs.append(out)
    attrs = {"axis": axis}
    inputs = [x]
    if opset < 13:
        attrs["split"] = [int(s) for s in sizes]
    else:
        inputs.append(make_const(namer, f"{base}_sizes", np.asarray(sizes, dtype=np.int64)))
    for reader, i in picks:
        reader.inputs.clear()
    node.inputs.clear()
    node.outputs.clear()
    for reader, i in picks:
        target = reader.outputs[0] if reader.outputs else None
        if target is None:
            continue
        reader.outputs.clear()
        if squeeze:
            sq_attrs, sq_inputs = {}, [chunk_of[i]]
            if opset < 13:
                sq_attrs["axes"] = [axis]
            else:
                sq_inputs.append(make_const(namer, f"{base}_axes", np.asarray([axis], dtype=np.int64)))
            graph.nodes.append(gs.Node("Squeeze", name=namer(f"{base}_squeeze{i}"), attrs=sq_attrs,
                                       inputs=sq_inputs, outputs=[target]))
        elif target is not chunk_of[i]:   # a second SequenceAt of the same chunk: its readers take the chunk
            for r in list(target.outputs):
                for j, t in enumerate(r.inputs):
                    if t is target:
                        r.inputs[j] = chunk_of[i]
            if is_graph_output(graph, target):
                graph.nodes.append(gs.Node("Identity", name=namer(f"{base}_chunk{i}_out"),
                                           inputs=[chunk_of[i]], outputs=[target]))
    graph.nodes.append(gs.Node("Split", name=base, attrs=attrs, inputs=inputs, outputs=outs))
