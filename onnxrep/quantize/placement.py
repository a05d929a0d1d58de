"""Where INT8 goes, read from the graph: the float islands, the tensors that must share one scale, and the
TensorRT residual rule.

Float islands (`float_islands`): the post-processing tail of every output, everything between the last
matrix layers (Conv, Gemm, MatMul) and the outputs: a YOLO head's box/score Concat (boxes in pixels and
scores in 0..1 in one tensor: one int8 scale would round every score to 0), its DFL Softmax and the
expectation Conv after it, the box decode, the class Sigmoid. Found by walking back from each head output
and stopping at a matrix layer, except a Conv fed by a Softmax (the DFL expectation, a fixed arange
kernel); from an output that is no detection head only through single-input nodes (a skip connection's
Add would lead back into the backbone). Each node gets its reason, for the report.

Shared scales (`scale_groups`): every input and output of a Concat, and both sides of the ops that only move
values (MaxPool, Resize, Slice, Split, Reshape, Transpose, Squeeze, Unsqueeze, Flatten), form one group;
TensorRT requires one scale per group or inserts re-quantizations (slower than float16). Groups are unions
over the graph, so an ELAN Concat that feeds a MaxPool that feeds another Concat is one group.

Residual rule (`conv_fed`): an Add whose input comes from a Conv (directly or through its activation)
fuses with that Conv in TensorRT only when that input has no Q/DQ pair; the residual input keeps its own.
"""

from __future__ import annotations

import onnx

MATRIX = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
MOVERS = {"MaxPool", "Resize", "Slice", "Split", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
               "Softplus", "Mish", "Gelu"}
_SHAPE_ONLY = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _through(prod, tensor: str, ops: set[str]) -> onnx.NodeProto | None:
    """The first producer of `tensor` that is not one of `ops` (walking their first inputs)."""
    node = prod.get(tensor)
    while node is not None and node.op_type in ops:
        node = prod.get(node.input[0])
    return node


def _reason(node: onnx.NodeProto, outputs: set[str], head: bool) -> str:
    if not head:
        return "the output's own tail (after its last matrix layer; the output is no recognised detection head)"
    if node.op_type == "Softmax":
        return "DFL softmax (a distribution over box distances: int8 flattens it)"
    if node.op_type in MATRIX:
        return "DFL expectation (the fixed kernel that turns the softmax into a distance)"
    if node.op_type == "Sigmoid":
        return "class sigmoid (scores near 0 and 1 need float resolution)"
    if any(o in outputs for o in node.output):
        return "the output (boxes in pixels and scores 0..1 in one tensor: one scale would zero the scores)"
    return "box decode and head reshaping (after the last matrix layer)"


def detection_outputs(model: onnx.ModelProto) -> set[str]:
    """The graph outputs recognised as YOLO detection heads (verify/detections.py: the deploy recogniser, else
    the shape), read from the declared shapes."""
    from onnxrep.verify.detections import head_layouts

    shapes = {o.name: [d.dim_value or 1 for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    return set(head_layouts(model, shapes))


def float_islands(model: onnx.ModelProto, heads: set[str] | None = None) -> dict[str, str]:
    """node name -> why it stays float: the tail of every graph output after its last matrix layer.

    From a detection head's output (`heads`, recognised when not given) the walk goes back through everything
    but matrix layers (the DFL's expectation Conv, fed by a Softmax, included): the whole head tail. From any
    other output it follows only nodes with one non-constant input and stops at a join (an Add of a skip
    connection, a Concat of branches): walking through a join would reach back into the backbone."""
    g = model.graph
    prod, consts = producers(g), _constants(g)
    outputs = {o.name for o in g.output}
    heads = detection_outputs(model) if heads is None else heads
    found: dict[str, str] = {}
    stack = [(o, o in heads) for o in outputs]
    while stack:
        tensor, head = stack.pop()
        node = prod.get(tensor)
        if node is None or node.name in found or node.op_type == "Constant":
            continue
        data = list(dict.fromkeys(i for i in node.input if i and i not in consts))
        if node.op_type in MATRIX:
            feeder = _through(prod, node.input[0], _SHAPE_ONLY)
            if not head or feeder is None or feeder.op_type != "Softmax":
                continue
        elif not head and len(data) > 1:
            continue
        found[node.name] = _reason(node, outputs, head)
        stack.extend((i, head) for i in data)
    return found


class _Union:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def scale_groups(model: onnx.ModelProto, skip: set[str] = frozenset()) -> list[set[str]]:
    """Groups (of two or more float tensors) that must share one scale; nodes in `skip` (float islands) join
    nothing. Only activation tensors: constants and shape tensors never join."""
    g = model.graph
    consts = _constants(g)
    u = _Union()
    for node in g.node:
        if node.name in skip or node.op_type not in MOVERS | {"Concat"}:
            continue
        data = [node.input[0]] if node.op_type in MOVERS else [i for i in node.input if i]
        tensors = [t for t in data + [o for o in node.output if o] if t not in consts]
        for t in tensors[1:]:
            u.join(tensors[0], t)
    groups: dict[str, set[str]] = {}
    for t in list(u.parent):
        groups.setdefault(u.find(t), set()).add(t)
    return [s for s in groups.values() if len(s) > 1]


def conv_fed(prod: dict, tensor: str) -> bool:
    """Does `tensor` come from a Conv, directly or through its activation (Relu..., SiLU as x*Sigmoid(x))?
    prod: tensor -> producing node (producers(graph))."""
    node = prod.get(tensor)
    if node is not None and node.op_type == "Mul" and len(node.input) == 2:   # SiLU: x * Sigmoid(x)
        a, b = (prod.get(t) for t in node.input)
        for x, s in ((node.input[0], b), (node.input[1], a)):
            if s is not None and s.op_type == "Sigmoid" and s.input[0] == x:
                node = prod.get(x)
                break
    elif node is not None and node.op_type in ACTIVATIONS:
        node = prod.get(node.input[0])
    return node is not None and node.op_type in ("Conv", "ConvTranspose")
