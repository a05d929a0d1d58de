"""Shape-only reads: make the kept outputs independent of tensors they read only the *shape* of.

By construction (dead-code elimination from the kept outputs) the kept head never needs the *values* of
anything only the dropped head reaches. It may need their *shapes*: TorchScript writes DualDDetect's
``view(shape[0], ...)`` with ``shape = Shape(aux P3 input)`` for both heads, which alone would keep the
whole auxiliary branch alive. Such a ``Shape`` is re-pointed at a kept tensor whose read dimensions
provably have the same size, preferring the tensor at the same place of the kept head; a fully static shape
may instead become a constant. What can't be proven stays, and the note says so.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.constants import const_value
from onnxrep.ir.graph import Namer, is_std, producer, shape_range
from onnxrep.ir.ops import SHAPE_READS
from onnxrep.ir.dims import DimRoots
from onnxrep.ir.shapes import Types, infer_types, weightless_view
from onnxrep.passes.prune.stats import cone


def cut_shape_reads(graph: gs.Graph, keep: list, twins: dict | None = None,
                    shapes: _Shapes | None = None) -> tuple[int, list[str]]:
    """Make the kept outputs independent of tensors they read only the *shape* of.

    A TorchScript export of DualDDetect reshapes both heads with ``shape = x[0].shape``: the main head
    reads the batch size from the *auxiliary* head's first input, which would keep the whole aux
    branch alive. Each such ``Shape(x)`` (x needed by no kept value) is rewired to a kept tensor whose
    read dimensions provably equal x's (static and equal, or of one symbolic root in ir.dims, e.g. the
    image's batch axis), preferring x's twin in the kept head; failing
    that, a fully static shape becomes a constant. Returns (reads moved, tensors still read).
    """
    nodes, _ = cone(None, keep, through_shapes=False)
    reads = [n for n in nodes.values() if is_std(n, *SHAPE_READS) and n.inputs and not _available(n.inputs[0], nodes)]
    if not reads:
        return 0, []
    shapes = shapes or _Shapes(graph)
    roots = DimRoots(graph, shapes.types())

    def origin(t: gs.Tensor, axis: int):
        """What the size of axis `axis` of `t` provably is: a static size, else its symbolic root."""
        dims = shapes.dims(t)
        if dims is not None and axis < len(dims) and dims[axis] is not None:
            return ("static", dims[axis])
        return roots.root(t, axis)

    kept_values = [*graph.inputs] + [t for n in graph.nodes if id(n) in nodes for t in n.outputs
                                     if not is_std(n, *SHAPE_READS)]
    return _cut(graph, reads, twins, shapes, origin, Namer(graph), kept_values)


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
        dims = self.types().dims(t)
        return None if dims is None else tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else None
                                               for d in dims)

    def types(self) -> Types:
        if self._types is None:
            self._types = infer_types(self.graph)
        return self._types

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


def _const_array(t: gs.Tensor) -> np.ndarray | None:
    value = const_value(t)
    return None if value is None else np.asarray(value)
