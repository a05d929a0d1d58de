"""Counting a model: parameters (what PyTorch counts) and multiply-accumulates of its linear ops.

"parameters": weights and biases of Conv, ConvTranspose, Gemm and MatMul (a MatMul's bias being the constant
of the Add after it), plus the learnable scale and bias of BatchNormalization (not its running statistics).
MACs: Conv/ConvTranspose/Gemm/MatMul at the model's static shapes, from shape inference on a weight-less
view (a symbolic dimension counts as 1).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxrep.ir.ops import LINEAR
from onnxrep.ir.shapes import lift_constant_nodes


def walk_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from walk_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from walk_graphs(g)


def _const_shapes(graph: onnx.GraphProto) -> dict[str, tuple]:
    """Shapes of constants (initializers, Constant nodes) and of Identity aliases of them (and of their
    DequantizeLinear: an int8 weight is a parameter as its float one was)."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(a.t.dims)
        elif node.op_type in ("Identity", "DequantizeLinear") and node.input and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
    return shapes


def count_parameters(graph: onnx.GraphProto) -> int:
    total = 0
    for g in walk_graphs(graph):
        shapes = _const_shapes(g)
        matmuls = {n.output[0] for n in g.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in shapes}
        for node in g.node:
            if node.op_type in LINEAR or node.op_type == "BatchNormalization":
                names = node.input[1:3]
            elif node.op_type == "Add" and any(i in matmuls for i in node.input):
                names = node.input  # a Linear exported as MatMul + Add: the Add's constant is its bias
            else:
                continue
            total += sum(int(np.prod(shapes[n])) for n in names if n in shapes)
    return total


def _dims(vi: onnx.ValueInfoProto) -> list[int] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]


def _inferred(view: onnx.ModelProto) -> tuple[onnx.GraphProto, dict, int]:
    """(graph, name -> dims with symbolic dims as 1, how many linear ops have an output size inference
    could not tell beyond the batch axis)."""
    inferred = onnx.shape_inference.infer_shapes(view, check_type=False, strict_mode=False, data_prop=True)
    g = inferred.graph
    values = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    unknown = 0
    for node in g.node:
        if node.op_type in LINEAR:
            vi = values.get(node.output[0])
            dims = vi.type.tensor_type.shape.dim if vi is not None and vi.type.tensor_type.HasField("shape") else None
            unknown += dims is None or any(not (d.HasField("dim_value") and d.dim_value > 0) for d in list(dims)[1:])
    return g, {name: _dims(vi) for name, vi in values.items()}, unknown


def count_macs(model: onnx.ModelProto, only: set[str] | None = None, refine=None,
               prefer: onnx.ModelProto | None = None) -> int:
    """MACs of the top-level graph's linear ops, using shape inference on a weight-less view.

    only: count just the nodes whose first output is named in it (e.g. the part a pass removes).
    refine: view -> view, tried when inference can't size a linear op (report.py passes the canonicalize
    pass, which folds the shape arithmetic ONNX data propagation can't follow). prefer: that refined view
    already made (run.py keeps the canonicalize pass's own): inferred first, and the model's own view only
    when it leaves a linear op unsized."""
    from onnxrep.io import structure_view

    try:  # shape inference needs dims, not bytes: large weights become typed inputs in a light copy
        first = _inferred(prefer) if prefer is not None else None
        if first is not None and not first[2]:
            g, shapes, unknown = first
        else:
            view = structure_view(model)
            lift_constant_nodes(view.graph)
            g, shapes, unknown = _inferred(view)
            if unknown and (first is not None or refine is not None):   # with the shape arithmetic folded:
                better = first or _inferred(refine(view))               # keep whichever knows more
                if better[2] < unknown:
                    g, shapes, unknown = better
    except Exception:
        return 0
    shapes = {k: v for k, v in shapes.items() if v is not None}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    shapes.update({k: list(v) for k, v in _const_shapes(model.graph).items()})
    total = 0
    for node in g.node:
        if node.op_type not in LINEAR or (only is not None and node.output[0] not in only):
            continue
        ins = [shapes.get(n) for n in node.input[:2]]
        out = shapes.get(node.output[0])
        if any(s is None for s in ins) or out is None:
            continue
        x, w = ins
        if node.op_type == "Conv" and len(w) >= 2:
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose" and len(w) >= 2:
            total += int(np.prod(x)) * int(np.prod(w[1:]))  # each input pixel meets M/g kernels
        elif node.op_type == "Gemm" and len(x) == 2:
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            total += int(np.prod(out)) * (x[0] if trans_a else x[1])
        elif node.op_type == "MatMul" and x:
            total += int(np.prod(out)) * x[-1]
    return total
