"""Before/after figures of a model, and the report as a text table or JSON.

"parameters" counts what PyTorch would call parameters: weights and biases of Conv, ConvTranspose, Gemm
and MatMul (a MatMul's bias being the constant of the Add after it), plus the learnable scale and bias of
BatchNormalization (not its running statistics). For
a folded YOLOv9 model this equals the Conv weight+bias count of yolov9-graphs.md section 3.
MACs are multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul at the model's static shapes (a
symbolic dimension counts as 1).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

_LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Stats:
    nodes: int = 0
    conv: int = 0
    batchnorm: int = 0
    parameters: int = 0
    macs: int = 0
    file_bytes: int | None = None
    ops: dict = field(default_factory=dict)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def _const_shapes(graph: onnx.GraphProto) -> dict[str, tuple]:
    """Shapes of constants (initializers, Constant nodes) and of Identity aliases of them."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(a.t.dims)
        elif node.op_type == "Identity" and node.input and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
    return shapes


def count_parameters(graph: onnx.GraphProto) -> int:
    total = 0
    for g in _graphs(graph):
        shapes = _const_shapes(g)
        matmuls = {n.output[0] for n in g.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in shapes}
        for node in g.node:
            if node.op_type in _LINEAR_OPS or node.op_type == "BatchNormalization":
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
        if node.op_type in _LINEAR_OPS:
            vi = values.get(node.output[0])
            dims = vi.type.tensor_type.shape.dim if vi is not None and vi.type.tensor_type.HasField("shape") else None
            unknown += dims is None or any(not (d.HasField("dim_value") and d.dim_value > 0) for d in list(dims)[1:])
    return g, {name: _dims(vi) for name, vi in values.items()}, unknown


def _canonical_view(view: onnx.ModelProto) -> onnx.ModelProto:
    """The weight-less view after the canonicalize pass: shape arithmetic that ONNX data propagation can't
    follow (a chunk size computed with Div, TorchScript's dynamic-batch exports) folded where it is static."""
    import onnx_graphsurgeon as gs

    from onnxrep.ir.graph import eliminate_dead_code, model_opset
    from onnxrep.passes.base import Context
    from onnxrep.passes.cleanup import Canonicalize
    from onnxrep.ir.shapes import weightless_view

    graph = gs.import_onnx(view)
    Canonicalize().run(graph, Context(opset=model_opset(graph)))
    eliminate_dead_code(graph)
    return weightless_view(graph)


def count_macs(model: onnx.ModelProto, only: set[str] | None = None) -> int:
    """MACs of the top-level graph's linear ops, using shape inference on a weight-less view.

    only: count just the nodes whose first output is named in it (e.g. the part a pass removes)."""
    from onnxrep.io import structure_view
    from onnxrep.ir.shapes import lift_constant_nodes

    try:  # shape inference needs dims, not bytes: large weights become typed inputs in a light copy
        view = structure_view(model)
        lift_constant_nodes(view.graph)
        g, shapes, unknown = _inferred(view)
        if unknown:   # try again with the shape arithmetic folded; keep whichever knows more
            better = _inferred(_canonical_view(view))
            if better[2] < unknown:
                g, shapes, unknown = better
    except Exception:
        return 0
    shapes = {k: v for k, v in shapes.items() if v is not None}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    shapes.update({k: list(v) for k, v in _const_shapes(model.graph).items()})
    total = 0
    for node in g.node:
        if node.op_type not in _LINEAR_OPS or (only is not None and node.output[0] not in only):
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


def model_stats(model: onnx.ModelProto, file_bytes: int | None = None, macs: bool = True) -> Stats:
    ops: Counter = Counter()
    for g in _graphs(model.graph):
        ops.update(n.op_type for n in g.node)
    return Stats(
        nodes=sum(ops.values()),
        conv=ops.get("Conv", 0) + ops.get("ConvTranspose", 0),
        batchnorm=ops.get("BatchNormalization", 0),
        parameters=count_parameters(model.graph),
        macs=count_macs(model) if macs else 0,
        file_bytes=file_bytes,
        ops=dict(sorted(ops.items())),
    )


@dataclass
class Report:
    input: str
    output: str | None
    before: Stats
    after: Stats
    passes: dict = field(default_factory=dict)         # name -> {"count": n, "declined": [...]}
    outputs: dict = field(default_factory=dict)        # kept / dropped / renamed
    verification: dict | None = None
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)         # one line each, about the run as a whole

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, verbose: bool = False) -> str:
        lines = [f"onnxrep: {self.input} -> {self.output or '(not written)'}", ""]
        lines.append(f"{'':<20}{'before':>16}{'after':>16}{'change':>10}")
        rows = [("nodes", "nodes"), ("Conv nodes", "conv"), ("BatchNormalization", "batchnorm"),
                ("parameters", "parameters"), ("MACs", "macs"), ("file size", "file_bytes")]
        for label, key in rows:
            a, b = getattr(self.before, key), getattr(self.after, key)
            if a is None and b is None:
                continue
            fmt = _size if key == "file_bytes" else _num
            lines.append(f"{label:<20}{fmt(a):>16}{fmt(b):>16}{_change(a, b):>10}")
        lines.append("")
        for name, info in self.passes.items():
            declined = info.get("declined", [])
            text = f"pass {name}: {info.get('count', 0)} rewritten"
            if declined:
                text += f", {len(declined)} declined"
                summary = Counter(d.split(": ", 1)[-1] for d in declined)
                text += " (" + "; ".join(f"{n}× {r}" for r, n in summary.most_common(3)) + ")"
            lines.append(text)
            if verbose:
                lines.extend(f"    declined {d}" for d in declined)
        for key in ("dropped", "kept", "renamed", "note"):
            if self.outputs.get(key):
                lines.append(f"outputs {key}: {self.outputs[key]}")
        if self.outputs.get("removed"):  # what the dropped outputs alone needed
            r = self.outputs["removed"]
            lines.append(f"removed by pruning: {_num(r.get('parameters'))} parameters, {_num(r.get('macs'))} MACs, "
                         f"{_num(r.get('nodes'))} nodes ({_num(r.get('conv'))} Conv)")
        lines.extend(f"note: {n}" for n in self.notes)
        if self.verification is not None:
            from onnxrep.verify import OutputCheck, Verification

            v = dict(self.verification)
            v.pop("status", None)
            v["outputs"] = [OutputCheck(**o) for o in v.get("outputs", [])]
            lines.extend(Verification(**v).lines())
        return "\n".join(lines)


def _num(v) -> str:
    return "-" if v is None else f"{v:,}"


def _size(v) -> str:
    if v is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v:.1f} {unit}" if unit != "B" else f"{v} B"
        v /= 1000
    return str(v)


def _change(a, b) -> str:
    if not a or b is None:
        return ""
    return f"{(b - a) / a * 100:+.1f}%"
