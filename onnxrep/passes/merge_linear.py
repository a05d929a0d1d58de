"""merge_linear_branches: ``Add(Gemm_a(x), Gemm_b(x))``  =>  ``Gemm(x)`` (also with MatMul branches).

Two fully connected layers on one input, summed, are one: with B the [K, M] weight (transB applied),
    alpha_a x B_a + beta_a C_a + alpha_b x B_b + beta_b C_b  =  x (alpha_a B_a + alpha_b B_b) + (beta_a C_a + beta_b C_b)
RepViT's distillation head computes ``(head(x) + head_dist(x)) / 2``; after this merge, fold_batchnorm folds the
``/ 2`` into the merged Gemm (a Div by a constant is an affine node), as timm's reparameterize_model() does.

Preconditions (each failure is a reason in the notes): both branches read the same tensor as their first
input, Gemm has transA=0, weights and biases are constants, the weights have the same [K, M], each branch's
output feeds only the Add and is not a graph output, the biases broadcast along the features only.
The merged weight and bias are new tensors with fresh names; the Add's output keeps its name.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.constants import const_value
from onnxrep.ir.graph import Namer, is_std, iter_graphs, make_const, np_dtype, producer
from onnxrep.passes.base import PassResult
from onnxrep.passes.batchnorm.common import private_link


def merge_linear_branches(graph: gs.Graph, namer: Namer, result: PassResult) -> None:
    for g in iter_graphs(graph):
        for add in [n for n in g.nodes if is_std(n, "Add") and len(n.inputs) == 2 and "broadcast" not in n.attrs]:
            branches = [producer(t) for t in add.inputs]
            if any(b is None or not is_std(b, "Gemm", "MatMul") for b in branches) or branches[0] is branches[1]:
                continue
            if branches[0].inputs[0] is not branches[1].inputs[0]:
                continue   # not parallel branches of one input
            checked = _check(g, add, branches)
            if isinstance(checked, str):
                result.decline(add, f"Gemm/MatMul branches: {checked}")
                continue
            _rewrite(g, namer, add, branches, *checked)
            result.applied()


def _params(node: gs.Node):
    """(B [K, M] float64 scaled by alpha, C float64 scaled by beta or None, dtype) or a reason."""
    w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim != 2:
        return f"{node.name or node.op}: weight is not a constant matrix"
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return f"{node.name or node.op}: transA=1"
    b = w.astype(np.float64)
    if node.op == "Gemm" and int(node.attrs.get("transB", 0)):
        b = b.T
    c = None
    if node.op == "Gemm":
        b = b * float(node.attrs.get("alpha", 1.0))
        if len(node.inputs) > 2 and node.inputs[2].name:
            c = const_value(node.inputs[2])
            if c is None:
                return f"{node.name or node.op}: bias is not constant"
            c = np.asarray(c, np.float64) * float(node.attrs.get("beta", 1.0))
    return b, c, np_dtype(node.inputs[1]) or w.dtype


def _check(graph, add, branches):
    for node in branches:
        reason = private_link(graph, node.outputs[0], node.op)
        if reason:
            return reason
    params = [_params(n) for n in branches]
    for p in params:
        if isinstance(p, str):
            return p
    (ba, ca, da), (bb, cb, db) = params
    if ba.shape != bb.shape:
        return f"weights of different shapes {list(ba.shape)} and {list(bb.shape)}"
    if np.dtype(da) != np.dtype(db):
        return f"weights of different dtypes ({da}, {db})"
    m = ba.shape[1]
    biases = [c for c in (ca, cb) if c is not None]
    c = sum(biases) if biases else None
    if c is not None and (c.ndim > 2 or any(d != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, m))):
        return f"bias of shape {list(c.shape)} does not broadcast along the features only"
    return ba + bb, c, da


def _rewrite(graph, namer, add, branches, weight, bias, dtype) -> None:
    x, out = branches[0].inputs[0], add.outputs[0]
    base = branches[0].name or "linear"
    w = make_const(namer, f"{base}.weight_merged", weight.astype(dtype))
    add.inputs.clear()
    add.outputs.clear()
    if all(b.op == "Gemm" for b in branches):
        inputs = [x, w] + ([make_const(namer, f"{base}.bias_merged", np.asarray(bias).astype(dtype))]
                           if bias is not None else [])
        graph.nodes.append(gs.Node("Gemm", name=namer(f"{base}_merged"), inputs=inputs, outputs=[out]))
        return
    if bias is None:
        graph.nodes.append(gs.Node("MatMul", name=namer(f"{base}_merged"), inputs=[x, w], outputs=[out]))
        return
    mid = gs.Variable(namer(f"{base}_merged_out"), dtype=out.dtype)
    graph.nodes.append(gs.Node("MatMul", name=namer(f"{base}_merged"), inputs=[x, w], outputs=[mid]))
    graph.nodes.append(gs.Node("Add", name=namer(f"{base}_merged/Add"), outputs=[out],
                               inputs=[mid, make_const(namer, f"{base}.bias_merged", np.asarray(bias).astype(dtype))]))
