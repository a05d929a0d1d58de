"""dedup_initializers and merge_duplicate_nodes: the same value computed or stored twice  =>  once.

  * Initializers with the same type, shape and bytes  ⇒  one (the first in node order); readers re-pointed.
    Exporters de-duplicate through ``Identity`` nodes, which remove_noops drops, and folding makes many equal
    scalars and shape vectors; the bias tensors of YOLOv9's detect levels are equal too.
  * Two deterministic default-domain nodes with the same op, attributes and input tensors  ⇒  the first
    one; the second's readers read the first's outputs (a TorchScript export computes ``Shape(x)`` once per
    use). Not when an output of the second is a graph output (its name is part of the interface).

Both stay within one graph (a subgraph never reads a constant it doesn't own through this rewrite), never
modify a tensor (they only re-point readers), and find nothing to do on their own output.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import is_graph_output, is_std, iter_graphs, redirect_readers
from onnxrep.ir.constants import const_bytes
from onnxrep.passes.base import PassResult

_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


def dedup_initializers(graph: gs.Graph, result: PassResult, stats: dict) -> None:
    for g in iter_graphs(graph):
        groups: dict[tuple, list[gs.Constant]] = {}
        seen: set[int] = set()
        for node in g.nodes:
            for t in node.inputs:
                if isinstance(t, gs.Constant) and id(t) not in seen:
                    seen.add(id(t))
                    groups.setdefault((str(t.export_dtype), tuple(t.shape)), []).append(t)
        for group in groups.values():
            if len(group) < 2:
                continue
            canon: dict[bytes, list[gs.Constant]] = {}
            for t in group:
                if t.export_dtype is not None and np.dtype(t.dtype).hasobject:  # strings: rare, not worth the care
                    continue
                data = const_bytes(t)
                seen_like = canon.setdefault(_fingerprint(data), [])
                first = next((c for c in seen_like if const_bytes(c) == data), None)
                if first is None:
                    seen_like.append(t)
                    continue
                redirect_readers(t, first, [r for r in t.outputs if any(n is r for n in g.nodes)])
                stats["initializers"] = stats.get("initializers", 0) + 1
                result.applied()


def _fingerprint(data: bytes) -> bytes:
    """Equal bytes have equal fingerprints; unequal weights almost never do (then the bytes are compared).
    256 bytes spread over the data, not a hash of all of it: a model's weights are read once, not hashed."""
    if len(data) <= 512:
        return data
    view = np.frombuffer(data, np.uint8)
    return view[np.linspace(0, len(data) - 1, 256).astype(np.int64)].tobytes()


def _attr_key(value):
    if isinstance(value, gs.Constant):
        v = np.asarray(value.values, order="C")
        return ("T", str(value.export_dtype), v.shape, v.tobytes())
    if isinstance(value, np.ndarray):
        return ("A", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return (type(value).__name__, value)


def merge_duplicate_nodes(graph: gs.Graph, result: PassResult, stats: dict) -> None:
    for g in iter_graphs(graph):
        first: dict[tuple, gs.Node] = {}
        for node in list(g.nodes):
            if not node.outputs or not is_std(node) or node.op in _NONDETERMINISTIC or node.op == "Constant":
                continue
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                continue
            key = (node.op, tuple(id(t) if t.name else None for t in node.inputs), len(node.outputs),
                   tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items())))
            kept = first.setdefault(key, node)
            if kept is node:
                continue
            if any(is_graph_output(g, o) for o in node.outputs) or \
                    any(bool(a.name) != bool(b.name) for a, b in zip(kept.outputs, node.outputs)):
                continue
            for mine, theirs in zip(node.outputs, kept.outputs):
                redirect_readers(mine, theirs)
            node.inputs.clear()
            node.outputs.clear()
            stats["nodes"] = stats.get("nodes", 0) + 1
            result.applied()
