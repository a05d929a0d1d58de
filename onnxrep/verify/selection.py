"""Outputs chosen by a selection, and the scores the selection chose by.

A TopK, ArgMax/ArgMin or NonMaxSuppression turns floats into indices by comparing them. A correct rewrite
re-rounds those floats by a step, which can swap two candidates whose scores were within a step: whatever
is gathered through the index (RT-DETR's 300 query rows, an embedded NMS's boxes, a class index) then moves
by a whole row, for the original's noisy twin as for an honest rewrite, at places neither can predict. Such
an output is not a function element by element, so each of its elements is held to the loosest of its
slices' levels, not the tightest (a row the twin swapped allows a swap in its column; a column of boxes the
selection does not reach keeps its own level in every row the twin left alone); what protects it is the
comparison of what the selection chose by: each selection's float inputs (TopK's scores, NMS's boxes and
scores), found in both models by the node's name or else by its place among the nodes of its op, are
compared like outputs, element by element, at their own noise levels. A selection not found in the
optimized model fails the verification. Where the twin itself jumped in a selected tensor (its own selection
swapped rows), verify/__init__.py holds that tensor to its whole-output level.
"""

from __future__ import annotations

import onnx

from onnxrep.verify.noise import SELECTIONS

INDEX_OUTPUTS = {"TopK": (1,), "ArgMax": (0,), "ArgMin": (0,), "NonMaxSuppression": (0,)}
SCORED_INPUTS = {"TopK": (0,), "ArgMax": (0,), "ArgMin": (0,), "NonMaxSuppression": (0, 1)}


def _selections(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in SELECTIONS and n.domain in ("", "ai.onnx")]


def selected_tensors(model: onnx.ModelProto) -> set[str]:
    """The tensors computed (in part) from a selection's index: top-level graph, through any op (a second
    selection's scores gathered through a first one's index are among them: RT-DETR's decoder top-k)."""
    reached = {n.output[k] for n in _selections(model) for k in INDEX_OUTPUTS[n.op_type]
               if k < len(n.output) and n.output[k]}
    if not reached:
        return set()
    for node in model.graph.node:   # the graph is topologically sorted (the checker requires it)
        if any(i in reached for i in node.input):
            reached.update(o for o in node.output if o)
    return reached


def scored_inputs(original: onnx.ModelProto, optimized: onnx.ModelProto) -> tuple[list[tuple[str, str, str]], list[str]]:
    """([(tensor in the original, tensor in the optimized model, what it is)], [selections not found]) for
    each float input a selection of the original chooses by. The optimized model's selection is the one of
    the same node name and op, else the k-th of that op where both models have as many (the passes keep
    the nodes' order); one found in neither way is listed, and the verification fails on it."""
    def by_op(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
        out: dict[str, list[onnx.NodeProto]] = {}
        for n in _selections(model):
            out.setdefault(n.op_type, []).append(n)
        return out

    mine, theirs = by_op(original), by_op(optimized)
    by_name = {(n.name, n.op_type): n for nodes in theirs.values() for n in nodes if n.name}
    graph_outputs = {o.name for o in original.graph.output}
    pairs, unmatched = [], []
    for op, nodes in mine.items():
        same_op = theirs.get(op, [])
        for k, node in enumerate(nodes):
            other = by_name.get((node.name, op)) if node.name else None
            if other is None and len(same_op) == len(nodes):
                other = same_op[k]
            if other is None:
                unmatched.append(f"{op} {node.name!r}")
                continue
            for i in SCORED_INPUTS[op]:
                if i < len(node.input) and i < len(other.input) and node.input[i] and node.input[i] not in graph_outputs:
                    pairs.append((node.input[i], other.input[i], f"what {op} {node.name!r} selects by"))
    return pairs, unmatched
