"""merge_chains: two data-movement nodes in a row  =>  one.

  * ``Concat(axis a)(..., Concat(axis a)(p, q), ...)``  ⇒  ``Concat(axis a)(..., p, q, ...)``
    (YOLOv9's ADown ends in a Concat that the neck concatenates again: same axis, same bytes);
  * ``Reshape(Reshape(x, s1), s2)``  ⇒  ``Reshape(x, s2)`` when s2 is constant and has no ``0`` copying a dim
    of the intermediate (with allowzero=1 a 0 is a literal size and is fine); a reshape only depends on the
    element order, which the first reshape doesn't change;
  * ``Transpose(Transpose(x, p), q)``  ⇒  ``Transpose(x, p∘q)`` with ``(p∘q)[i] = p[q[i]]`` (remove_noops then
    drops it when that is the identity);
  * ``Squeeze(BatchNormalization(Unsqueeze(x, a)), a)``  ⇒  ``BatchNormalization(x)`` when every axis in a is
    >= 2: the legacy exporter's BatchNorm1d on [N, C] (a BN on [N, C, 1]); the channel axis is axis 1 either
    way and BN is defined on [N, C], so the fold rules then see the BN on the Gemm's feature axis.

Precondition for all: the inner node's output feeds only the outer node and is not a graph output (otherwise
the inner node stays and nothing gets smaller). Negative Concat axes are compared after normalising by rank.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, is_std, iter_graphs, producer, sole_consumer
from onnxrep.ir.constants import const_value
from onnxrep.passes.base import PassResult
from onnxrep.ir.shapes import Types


def merge_chains(graph: gs.Graph, types: Types, namer: Namer, result: PassResult, stats: dict) -> None:
    for g in iter_graphs(graph):
        for node in list(g.nodes):
            if not node.outputs or not is_std(node, *_RULES):
                continue
            rule = _RULES[node.op]
            if rule(g, node, types, namer):
                stats[node.op] = stats.get(node.op, 0) + 1
                result.applied()


def _inner(graph: gs.Graph, node: gs.Node, i: int, op: str) -> gs.Node | None:
    if len(node.inputs) <= i:
        return None
    t = node.inputs[i]
    inner = producer(t)
    if inner is None or not is_std(inner, op) or len(inner.outputs) != 1 or sole_consumer(graph, t) is not node:
        return None
    return inner


def _axis(node: gs.Node, types: Types) -> int | None:
    axis = int(node.attrs.get("axis", 0))
    if axis >= 0:
        return axis
    dims = types.dims(node.outputs[0])
    return None if dims is None else axis + len(dims)


def _concat(graph, node, types, namer) -> bool:
    axis = _axis(node, types)
    if axis is None:
        return False
    flat, merged = [], []
    for i, t in enumerate(node.inputs):
        inner = _inner(graph, node, i, "Concat")
        if inner is not None and _axis(inner, types) == axis:
            flat.extend(inner.inputs)
            merged.append(inner)
        else:
            flat.append(t)
    if not merged:
        return False
    node.inputs.clear()
    node.inputs.extend(flat)
    for inner in merged:
        _disconnect(inner)
    return True


def _disconnect(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


def _reshape(graph, node, types, namer) -> bool:
    inner = _inner(graph, node, 0, "Reshape")
    target = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if inner is None or target is None:
        return False
    if not int(node.attrs.get("allowzero", 0)) and np.any(np.asarray(target) == 0):
        return False
    node.inputs[0] = inner.inputs[0]
    _disconnect(inner)
    return True


def _transpose(graph, node, types, namer) -> bool:
    inner = _inner(graph, node, 0, "Transpose")
    if inner is None:
        return False
    p, q = inner.attrs.get("perm"), node.attrs.get("perm")
    if p is None or q is None or len(p) != len(q):
        return False
    node.attrs["perm"] = [int(p[int(i)]) for i in q]
    node.inputs[0] = inner.inputs[0]
    _disconnect(inner)
    return True


def _axes_of(node: gs.Node, rank: int | None) -> set[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = const_value(node.inputs[1])
    if axes is None or rank is None:
        return None
    return {int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)}


def _squeeze_around_batchnorm(graph, node, types, namer) -> bool:
    bn = _inner(graph, node, 0, "BatchNormalization")
    unsqueeze = _inner(graph, bn, 0, "Unsqueeze") if bn is not None and len(bn.outputs) == 1 else None
    if unsqueeze is None:
        return False
    dims = types.dims(unsqueeze.outputs[0])
    rank = len(dims) if dims is not None else None
    added, removed = _axes_of(unsqueeze, rank), _axes_of(node, rank)
    if not added or added != removed or min(added) < 2:
        return False
    out = node.outputs[0]
    bn.inputs[0] = unsqueeze.inputs[0]
    _disconnect(node)
    _disconnect(unsqueeze)
    bn.outputs[0] = out
    return True


_RULES = {"Concat": _concat, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze_around_batchnorm}
