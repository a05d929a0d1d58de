"""Shape-only reads: make the kept outputs independent of tensors they read only the *shape* of.

By construction (dead-code elimination from the kept outputs) the kept head never needs the *values* of
anything only the dropped head reaches. It may need their *shapes*: TorchScript writes DualDDetect's
``view(shape[0], ...)`` with ``shape = Shape(aux P3 input)`` for both heads, which alone would keep the
whole auxiliary branch alive. Such a ``Shape`` is re-pointed at a kept tensor whose read dimensions
provably have the same size, preferring the tensor at the same place of the kept head; a fully static shape
may instead become a constant. What can't be proven stays, and the note says so.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.constants import const_value
from onnxrep.ir.graph import Namer, is_std, producer, shape_range
from onnxrep.ir.ops import SHAPE_READS
from onnxrep.ir.shapes import infer_types, weightless_view
from onnxrep.passes.prune.stats import cone


def cut_shape_reads(graph: gs.Graph, keep: list, twins: dict | None = None,
                    shapes: _Shapes | None = None) -> tuple[int, list[str]]:
    """Make the kept outputs independent of tensors they read only the *shape* of.

    A TorchScript export of DualDDetect reshapes both heads with ``shape = x[0].shape``: the main head
    reads the batch size from the *auxiliary* head's first input, which would keep the whole aux
    branch alive. Each such ``Shape(x)`` (x needed by no kept value) is rewired to a kept tensor whose
    read dimensions provably equal x's (they come from the same axis of the same tensor, e.g. the
    image's batch axis, through shape-preserving ops), preferring x's twin in the kept head; failing
    that, a fully static shape becomes a constant. Returns (reads moved, tensors still read).
    """
    nodes, _ = cone(None, keep, through_shapes=False)
    reads = [n for n in nodes.values() if is_std(n, *SHAPE_READS) and n.inputs and not _available(n.inputs[0], nodes)]
    if not reads:
        return 0, []
    shapes = shapes or _Shapes(graph)
    origin = _AxisOrigin(shapes)
    namer = Namer(graph)
    kept_values = [*graph.inputs] + [t for n in graph.nodes if id(n) in nodes for t in n.outputs
                                     if not is_std(n, *SHAPE_READS)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))  # axis origins recurse once per residual Add on a path
    try:
        return _cut(graph, reads, twins, shapes, origin, namer, kept_values)
    finally:
        sys.setrecursionlimit(limit)


def _cut(graph, reads, twins, shapes, origin, namer, kept_values) -> tuple[int, list[str]]:
    moved, left = 0, []
    for s in reads:
        x = s.inputs[0]
        axes = _axes_read(s, shapes.rank(x))
        if axes is None:
            left.append(x.name)
            continue
        want = [origin(x, a) for a in axes]
        first = [twins[id(x)]] if twins and id(x) in twins else []
        after = _downstream(s.outputs[0])   # reading one of these would close a cycle through this Shape
        sub = next((y for y in first + kept_values if y is not x and id(y) not in after
                    and shapes.rank(y) == shapes.rank(x)
                    and all(w is not None and origin(y, a) == w for a, w in zip(axes, want))), None)
        if sub is not None:
            s.inputs[0] = sub
            moved += 1
            continue
        value = _static_shape_value(s, shapes.dims(x))
        out = s.outputs[0]
        if value is None or any(o is out for o in graph.outputs):
            left.append(x.name)
            continue
        const = gs.Constant(namer(f"{out.name}_static"), value)
        for consumer in list(out.outputs):
            consumer.inputs[:] = [const if t is out else t for t in consumer.inputs]
        moved += 1
    return moved, sorted(set(left))


def _downstream(t: gs.Tensor) -> set[int]:
    """ids of `t` and every tensor computed from it."""
    seen, stack = {id(t)}, [t]
    while stack:
        for node in stack.pop().outputs:
            for o in node.outputs:
                if id(o) not in seen:
                    seen.add(id(o))
                    stack.append(o)
    return seen


def _available(t: gs.Tensor, nodes: dict) -> bool:
    p = producer(t)
    return isinstance(t, gs.Constant) or p is None or id(p) in nodes


def _axes_read(s: gs.Node, rank: int | None) -> list[int] | None:
    """Axes of Shape(x) whose sizes its consumers actually use (Gather of constant indices), else all."""
    if rank is None:
        return None
    if is_std(s, "Size"):
        return list(range(rank))
    span = list(range(*shape_range(s, rank)))
    out = s.outputs[0]
    picked: set[int] = set()
    for c in out.outputs:
        idx = _const_array(c.inputs[1]) if is_std(c, "Gather") and len(c.inputs) > 1 and c.inputs[0] is out else None
        if idx is None or int(c.attrs.get("axis", 0)) != 0:
            return span
        for i in idx.reshape(-1):
            i = int(i) + len(span) if int(i) < 0 else int(i)
            if not 0 <= i < len(span):
                return span
            picked.add(span[i])
    return sorted(picked) if picked else span


def _static_shape_value(s: gs.Node, dims) -> np.ndarray | None:
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    if is_std(s, "Size"):
        return np.asarray(int(np.prod(dims)), np.int64)
    start, end = shape_range(s, len(dims))
    return np.asarray(dims[start:end], np.int64)


class _Shapes:
    """Dimensions of tensors: the graph's own shapes, else the shared shape inference (ir/shapes.py),
    run once, lazily, on the weight-less view of the graph."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self._types = None
        self._view = None

    def dims(self, t: gs.Tensor):
        if isinstance(t, gs.Constant):
            return tuple(int(d) for d in t.shape)
        if t.shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in t.shape):
            return tuple(int(d) for d in t.shape)
        if self._types is None:
            self._types = infer_types(self.graph)
        dims = self._types.dims(t)
        return None if dims is None else tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else None
                                               for d in dims)

    def rank(self, t: gs.Tensor) -> int | None:
        if not isinstance(t, gs.Constant) and t.shape is not None:
            return len(t.shape)
        d = self.dims(t)
        return None if d is None else len(d)

    def skeleton(self):
        """The graph as exported before any rewrite, large tensors as typed inputs (None if it can't be)."""
        if self._view is None:
            try:
                self._view = weightless_view(self.graph)
            except Exception:  # an exotic graph we can't export here: MACs unknown, not an error
                self._view = False
        return self._view or None


# Ops whose output has the input's shape, axis for axis.
_SAME_SHAPE = ("Identity", "Cast", "CastLike", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt",
               "Reciprocal", "Softmax", "LogSoftmax", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu",
               "Clip", "Erf", "Floor", "Ceil", "Round", "Dropout", "BatchNormalization", "InstanceNormalization",
               "Mish", "Softplus", "Softsign", "Gelu", "PRelu", "Not", "Sign", "LpNormalization")


_BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less",
              "Greater", "And", "Or")


_KEEP_BATCH = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
               "LpPool", "MaxRoiPool", "DepthToSpace", "SpaceToDepth")


class _AxisOrigin:
    """Where the size of axis `a` of a tensor comes from: (tensor, axis) upstream, followed through ops
    that provably copy that size (elementwise ops, Conv on the batch axis, Concat/Split on other axes,
    Resize with scale 1, Reshape copying a dimension...). Two axes with the same origin are equal."""

    def __init__(self, shapes: _Shapes):
        self.shapes = shapes
        self.memo: dict[tuple[int, int], tuple[int, int] | None] = {}

    def __call__(self, t: gs.Tensor, axis: int):
        key = (id(t), axis)
        if key not in self.memo:
            path = []
            cur: tuple | None = (t, axis)
            while cur is not None:
                tt, aa = cur
                if (id(tt), aa) in self.memo:
                    result = self.memo[(id(tt), aa)]
                    break
                path.append((id(tt), aa))
                if len(path) > 100000:
                    result = None
                    break
                nxt = self._through(tt, aa)
                if nxt is None:
                    dims = self.shapes.dims(tt)
                    static = dims is not None and aa < len(dims) and isinstance(dims[aa], int)
                    result = ("static", dims[aa]) if static else (id(tt), aa)
                    break
                cur = nxt
            for k in path:
                self.memo[k] = result
        return self.memo[key]

    def _through(self, t: gs.Tensor, k: int):
        """(input tensor, axis) of the producer whose size axis k of `t` copies, or None."""
        p = producer(t)
        if p is None or not is_std(p) or not p.inputs:
            return None
        x = p.inputs[0]
        rank = self.shapes.rank(t)
        op = p.op
        if op in _SAME_SHAPE:
            return x, k
        if op in _KEEP_BATCH:
            return (x, 0) if k == 0 else None
        if rank is None:
            return None
        if op in _BROADCAST:
            return self._broadcast(p, k, rank)
        if op in ("Concat", "Split"):
            axis = int(p.attrs.get("axis", 0))
            axis = axis + rank if axis < 0 else axis
            return (x, k) if k != axis else None
        if op == "Transpose":
            perm = p.attrs.get("perm")
            return (x, int(perm[k])) if perm is not None else (x, rank - 1 - k)
        if op in ("Unsqueeze", "Squeeze"):
            axes = self._axes(p, 1, "axes")
            if axes is None:
                return None
            if op == "Unsqueeze":
                axes = {a + rank if a < 0 else a for a in axes}
                return None if k in axes else (x, k - sum(1 for a in axes if a < k))
            in_rank = self.shapes.rank(x)
            if in_rank is None:
                return None
            axes = {a + in_rank if a < 0 else a for a in axes}
            kept = [a for a in range(in_rank) if a not in axes]
            return (x, kept[k]) if k < len(kept) else None
        if op.startswith("Reduce"):
            in_rank = self.shapes.rank(x)
            axes = self._axes(p, 1, "axes")
            if axes is None or in_rank is None:
                return None
            axes = {a + in_rank if a < 0 else a for a in axes}
            if int(p.attrs.get("keepdims", 1)):
                return (x, k) if k not in axes else None
            kept = [a for a in range(in_rank) if a not in axes]
            return (x, kept[k]) if k < len(kept) else None
        if op in ("Resize", "Upsample"):
            at = 1 if op == "Upsample" or len(p.inputs) == 2 else 2  # opset 10: Resize(X, scales)
            scales = _const_array(p.inputs[at]) if len(p.inputs) > at and p.inputs[at].name else None
            if scales is not None and scales.size == rank and float(scales[k]) == 1.0:
                return x, k
            return None
        if op == "Slice":
            axes = _const_array(p.inputs[3]) if len(p.inputs) > 3 and p.inputs[3].name else np.arange(rank)
            if axes is None:
                return None
            axes = {int(a) + rank if int(a) < 0 else int(a) for a in axes}
            return (x, k) if k not in axes else None
        if op == "Reshape":
            return self._reshape(p, k)
        return None

    def _broadcast(self, p: gs.Node, k: int, rank: int):
        data = [(t, self.shapes.rank(t)) for t in p.inputs if t.name]
        if any(r is None for _, r in data):
            return None
        full = [t for t, r in data if r == rank and not _is_one(self.shapes.dims(t), k)]
        if not full:
            return None
        first = full[0]
        for t, r in data:
            j = k - (rank - r)
            if t is first or j < 0 or _is_one(self.shapes.dims(t), j) or _same_shape_of(t, first):
                continue
            if self(t, j) != self(first, k):
                return None
        return first, k

    def _reshape(self, p: gs.Node, k: int):
        target = p.inputs[1]
        value = _const_array(target)
        if value is not None:
            if k < value.size and int(value[k]) == 0 and not int(p.attrs.get("allowzero", 0)):
                return p.inputs[0], k
            return None
        src = producer(target)
        if src is not None and is_std(src, "Shape"):
            return src.inputs[0], k + int(src.attrs.get("start", 0))
        if src is None or not is_std(src, "Concat"):
            return None
        piece = src.inputs[k] if k < len(src.inputs) else None  # one element per piece (view() chains)
        node = producer(piece) if piece is not None else None
        if node is not None and is_std(node, "Unsqueeze"):
            node = producer(node.inputs[0])
        if node is None or not is_std(node, "Gather") or int(node.attrs.get("axis", 0)) != 0:
            return None
        shape, idx = node.inputs[0], _const_array(node.inputs[1])
        shp = producer(shape)
        if idx is None or idx.size != 1 or shp is None or not is_std(shp, "Shape") or shp.attrs.get("start", 0):
            return None
        return shp.inputs[0], int(idx.reshape(-1)[0])

    @staticmethod
    def _axes(p: gs.Node, index: int, attr: str):
        if attr in p.attrs:
            return {int(a) for a in p.attrs[attr]}
        if len(p.inputs) > index and p.inputs[index].name:
            value = _const_array(p.inputs[index])
            return None if value is None else {int(a) for a in value.reshape(-1)}
        return None  # no axes: Squeeze drops every 1, Reduce reduces everything: not followed


def _same_shape_of(t: gs.Tensor, other: gs.Tensor) -> bool:
    """t is `other` through a few same-shape ops (SiLU's Mul(x, Sigmoid(x))), without a full walk."""
    for _ in range(4):
        if t is other:
            return True
        p = producer(t)
        if p is None or not is_std(p, *_SAME_SHAPE) or not p.inputs:
            return False
        t = p.inputs[0]
    return t is other


def _is_one(dims, axis: int) -> bool:
    return dims is not None and axis < len(dims) and dims[axis] == 1


def _const_array(t: gs.Tensor) -> np.ndarray | None:
    value = const_value(t)
    return None if value is None else np.asarray(value)
