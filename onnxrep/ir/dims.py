"""Which symbolic dimensions are provably equal: the one symbolic-dimension engine.

Every dim of every tensor gets a *root*; equal roots mean equal sizes at run time, whatever the inputs.
Used to fold shape computations that a symbolic batch would otherwise keep (cleanup) and to prove that a
kept tensor has the size of one only the dropped outputs need (prune's Shape-read cutting).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.ops import BROADCAST, KEEP_BATCH, SAME_SHAPE
from onnxrep.ir.shapes import Types, shape_entries

class DimRoots:
    """Which symbolic dims are provably equal: every dim gets a root, equal roots mean equal sizes.

    Propagated forward in graph order through ops that provably keep a dim (same-shape ops, broadcasting
    where every input contributing to the dim has the same root, the batch of Conv/pools, non-axis dims of
    Concat/Split/Slice, unit-scale Resize dims, Transpose, Unsqueeze/Squeeze, kept axes of Reduce*), and
    through shape tensors read symbolically (ir.shapes.shape_entries): a Reshape target or Resize ``sizes``
    entry ``0`` or ``Gather(Shape(z), i)`` gives that output dim the root of the input's or z's dim, however
    the Concat that builds the target is cut into pieces. A graph input's named dim is its own root, so two
    inputs sharing a ``dim_param`` share it too, as the ONNX spec says. Anything else starts a fresh root:
    "not provably equal", never a guess.
    """

    def __init__(self, graph: gs.Graph, types: Types):
        self._types = types
        self._roots: dict[tuple[int, int], tuple] = {}
        self._entries: dict[int, list | None] = {}   # per node: its shape-tensor input read symbolically
        for t in graph.inputs:
            for k, d in enumerate(t.shape or ()):
                self._roots[(id(t), k)] = ("param", d) if isinstance(d, str) and d else ("t", id(t), k)
        for node in graph.nodes:
            if not node.outputs:
                continue
            for j, out in enumerate(node.outputs):
                dims = types.dims(out)
                for k in range(len(dims or ())):
                    root = _rule(self, node, j, k) if node.domain in (None, "", "ai.onnx") else None
                    self._roots[(id(out), k)] = root or ("t", id(out), k)

    def root(self, tensor: gs.Tensor, axis: int) -> tuple:
        return self._roots.get((id(tensor), axis)) or ("t", id(tensor), axis)

    def same(self, a: gs.Tensor, i: int, b: gs.Tensor, j: int) -> bool:
        return self.root(a, i) == self.root(b, j)

    def entries(self, node: gs.Node, i: int) -> list | None:
        """Input i of `node` (a shape tensor) read symbolically, once per node."""
        if id(node) not in self._entries:
            self._entries[id(node)] = shape_entries(node.inputs[i], self._types) \
                if len(node.inputs) > i and node.inputs[i].name else None
        return self._entries[id(node)]


def _const_ints(node: gs.Node, i: int):
    if len(node.inputs) <= i or not isinstance(node.inputs[i], gs.Constant):
        return None
    return [int(v) for v in np.asarray(node.inputs[i].values).reshape(-1)]


def _rule(r: DimRoots, node: gs.Node, j: int, k: int):
    op, x = node.op, node.inputs[0] if node.inputs else None
    if x is None:
        return None
    rank_out = len(r._types.dims(node.outputs[j]) or ())
    rank_in = len(r._types.dims(x) or ())
    if op in SAME_SHAPE and j == 0:
        return r.root(x, k)
    if op in BROADCAST:
        roots = set()
        for t in node.inputs:
            dims = r._types.dims(t)
            if dims is None:
                return None
            a = k - (rank_out - len(dims))
            if a < 0 or (isinstance(dims[a], (int, np.integer)) and dims[a] == 1):
                continue  # absent or 1: broadcast, doesn't set the size
            roots.add(r.root(t, a))
        return roots.pop() if len(roots) == 1 else None
    if op in KEEP_BATCH and k == 0:
        return r.root(x, 0)
    if op in ("Concat", "Split"):
        axis = int(node.attrs.get("axis", 0))
        axis = axis + rank_in if axis < 0 else axis
        return r.root(x, k) if k != axis and rank_in == rank_out else None
    if op == "Slice":
        if "starts" in node.attrs:   # opset < 10
            starts, axes = node.attrs["starts"], node.attrs.get("axes")
        else:
            starts, axes = _const_ints(node, 1), _const_ints(node, 3) if len(node.inputs) > 3 and node.inputs[3].name \
                else None
            if starts is None or (axes is None and len(node.inputs) > 3 and node.inputs[3].name):
                return None
        axes = list(range(len(starts))) if axes is None else [a + rank_in if a < 0 else a for a in axes]
        return r.root(x, k) if k not in axes else None
    if op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:   # sizes
        e = _entry(r, node, 3, k)
        return r.root(*e) if isinstance(e, tuple) else None
    if op in ("Resize", "Upsample"):
        scales = _scales(node)
        return r.root(x, k) if scales is not None and k < len(scales) and scales[k] == 1.0 else None
    if op == "Transpose":
        perm = node.attrs.get("perm") or list(range(rank_in))[::-1]
        return r.root(x, int(perm[k])) if k < len(perm) else None
    if op == "Reshape":
        e = _entry(r, node, 1, k)
        if isinstance(e, tuple):
            return r.root(*e)
        return r.root(x, k) if e == 0 and not int(node.attrs.get("allowzero", 0)) else None
    if op in ("Unsqueeze", "Squeeze"):
        axes = _axes(node)
        if axes is None:
            return None
        if op == "Unsqueeze":
            axes = {a + rank_out if a < 0 else a for a in axes}
            return None if k in axes else r.root(x, k - sum(1 for a in axes if a < k))
        kept = [a for a in range(rank_in) if a not in {a + rank_in if a < 0 else a for a in axes}]
        return r.root(x, kept[k]) if k < len(kept) else None
    if op.startswith("Reduce"):
        axes = _axes(node)
        if axes is None:
            return None
        axes = {a + rank_in if a < 0 else a for a in axes}
        if int(node.attrs.get("keepdims", 1)):
            return r.root(x, k) if k not in axes else None
        kept = [a for a in range(rank_in) if a not in axes]
        return r.root(x, kept[k]) if k < len(kept) else None
    return None


def _entry(r: DimRoots, node: gs.Node, i: int, k: int):
    entries = r.entries(node, i)
    return entries[k] if entries is not None and k < len(entries) else None


def _axes(node: gs.Node) -> list[int] | None:
    """Unsqueeze/Squeeze/Reduce axes from the attribute (old opsets) or the constant input 1; None without
    them (Squeeze/Reduce of every axis: which ones depends on run-time sizes)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    return _const_ints(node, 1)


def _scales(node: gs.Node):
    if node.op == "Upsample" and "scales" in node.attrs:
        return [float(s) for s in node.attrs["scales"]]
    i = 2 if node.op == "Resize" and len(node.inputs) > 2 else 1   # Resize-10: (X, scales)
    if len(node.inputs) <= i or not isinstance(node.inputs[i], gs.Constant):
        return None
    if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
        return None   # sizes given: scales unused
    values = np.asarray(node.inputs[i].values).reshape(-1)
    return [float(v) for v in values] if values.size else None
