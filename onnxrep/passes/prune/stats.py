"""Reachability: what a set of outputs depends on, and what dropping the others removes (counted as
report.py counts: nodes, Convs, parameters, MACs)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import is_std, producer
from onnxrep.ir.ops import LINEAR, SHAPE_READS
from onnxrep.ir.counts import count_macs
from onnxrep.ir.shapes import weightless_view


def node_inputs(node: gs.Node) -> list:
    """Inputs of a node, including outer-scope tensors its subgraphs read implicitly."""
    found = list(node.inputs)
    for value in node.attrs.values():
        subs = value if isinstance(value, (list, tuple)) else [value]
        for sub in subs:
            if isinstance(sub, gs.Graph):
                inner = {id(t) for t in sub.inputs}
                for n in sub.nodes:
                    inner.update(id(o) for o in n.outputs)
                for n in sub.nodes:
                    found.extend(t for t in node_inputs(n) if id(t) not in inner)
    return found



def cone(graph: gs.Graph | None, tensors, through_shapes: bool = True) -> tuple[dict, dict]:
    """(nodes, tensors) that `tensors` depend on, keyed by id(). through_shapes=False: a Shape/Size
    node's input is not followed (only its dimensions are needed, not its values)."""
    nodes, seen = {}, {}
    stack = list(tensors)
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen[id(t)] = t
        p = producer(t)
        if p is not None and id(p) not in nodes:
            nodes[id(p)] = p
            if through_shapes or not is_std(p, *SHAPE_READS):
                stack.extend(node_inputs(p))
    return nodes, seen



def is_graph_input(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(t is i for i in graph.inputs)



def cone_ids(graph: gs.Graph, tensors) -> set[int]:
    return set(cone(graph, tensors)[0])



def live_tensors(graph: gs.Graph, outputs) -> list:
    _, tensors = cone(graph, outputs)
    return list(tensors.values()) + list(graph.inputs)



def removed_stats(graph: gs.Graph, keep: list, view=None) -> dict:
    """Nodes, Convs, parameters and MACs that only the dropped outputs need (counted as report.py does).
    view: the graph's weight-less export (ir.shapes.weightless_view), made here when not given."""
    all_nodes, _ = cone(graph, graph.outputs)
    kept_nodes, _ = cone(graph, keep)
    gone = [n for i, n in all_nodes.items() if i not in kept_nodes]
    params = 0
    for n in gone:
        if is_std(n, *LINEAR, "BatchNormalization"):
            params += sum(_param_elements(t) for t in n.inputs[1:3])
    return {
        "outputs": len(graph.outputs) - len(keep),
        "nodes": len(gone),
        "conv": sum(1 for n in gone if is_std(n, "Conv", "ConvTranspose")),
        "parameters": params,
        "macs": _macs_of(graph, view, gone),
    }



def _param_elements(t: gs.Tensor) -> int:
    for _ in range(8):  # through Identity aliases, as report.count_parameters does
        if isinstance(t, gs.Constant):
            return int(np.prod(t.shape))
        p = producer(t)
        if p is None:
            return 0
        if is_std(p, "Constant"):
            value = p.attrs.get("value")
            return int(np.prod(value.shape)) if isinstance(value, gs.Constant) else 0
        if not is_std(p, "Identity"):
            return 0
        t = p.inputs[0]
    return 0



def _macs_of(graph: gs.Graph, view, nodes: list) -> int:
    """MACs of `nodes` with report.count_macs' rules, on the weight-less export of the graph."""
    targets = {n.outputs[0].name for n in nodes if is_std(n, *LINEAR) and n.outputs}
    if not targets:
        return 0
    if view is None:
        try:
            view = weightless_view(graph)
        except Exception:  # noqa: BLE001 -- an exotic graph we can't export here: MACs unknown, not an error
            return 0
    return count_macs(view, only=targets)
