"""The twin check: a dropped output may go only if it is a twin head of the kept one at the same place.

Twin heads (checked pair by pair, kept output k vs dropped output d, before anything is dropped):
  * same rank, dtype and static dimensions;
  * neither is computed from the other, and they are not made by the same node (rules out
    Identity copies of one tensor and several outputs of one Split);
  * walking back from k and d in lock step, node pairs agree on op, arity and attributes (weight
    values and channel widths may differ: aux and main heads have different widths) until the walk
    reaches the shared trunk (the same tensor) or the two trunks part; every value path passes
    through at least ``MIN_HEAD_CONVS`` Conv pairs first, i.e. each head is a complete head of its own
    on top of whatever it shares. A tensor known without running the model (a constant, a shape, or
    anything computed only from them: pooled split sizes, Identity-aliased weights, anchor grids) ends a
    path without counting, and is never where two heads meet.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import is_std, producer
from onnxrep.ir.ops import NEVER_FOLD, SHAPE_READS
from onnxrep.passes.prune.outputs import _fmt_shape, _same_type
from onnxrep.passes.prune.stats import cone, cone_ids, is_graph_input

MIN_HEAD_CONVS = 2         # a head owns at least this many stacked Convs on every path to the trunk


def _independence_reason(graph: gs.Graph, pairs: list) -> str | None:
    """Why the kept and dropped outputs are not independent heads (listed twice, one computed from the
    other, made by one node), or None. Across the groups only: within one MIT group, box is computed from
    anchor by design."""
    keep = {id(k): k for k, _ in pairs}
    drop = {id(d): d for _, d in pairs}
    cones = {i: cone_ids(graph, [t]) for i, t in {**keep, **drop}.items()}
    for side, other_side in ((keep, drop), (drop, keep)):
        for t in side.values():
            p = producer(t)
            for other in other_side.values():
                if other is t or other.name == t.name:
                    return f"output {t.name!r} is listed twice"
                if p is not None and id(p) in cones[id(other)]:
                    return (f"outputs {t.name!r} and {other.name!r} are made by the same node ({p.op})"
                            if p is producer(other) else f"output {other.name!r} is computed from output {t.name!r}")
    for k, d in pairs:
        if not _same_type(k, d):
            return f"{k.name!r} {_fmt_shape(k)} and {d.name!r} {_fmt_shape(d)} differ in shape or dtype"
        # training heads see the same image; heads on different inputs (a siamese/stereo model) are real outputs
        reads = [sorted(t.name for t in cone(graph, [o])[1].values() if is_graph_input(graph, t)) for o in (k, d)]
        if reads[0] != reads[1]:
            return f"{k.name!r} reads graph inputs {reads[0]}, {d.name!r} reads {reads[1]}"
    return None


def twin_reason(graph: gs.Graph, outputs: list, pairs: list, twins: dict | None = None) -> str | None:
    """None when every (kept, dropped) pair are twin heads, else why not (one line).

    twins: filled with id(dropped-side tensor) -> kept-side tensor at the same place of the twin head."""
    reason = _independence_reason(graph, pairs)
    if reason:
        return reason
    walker = _LockStep(static_tensors(graph))
    for k, d in pairs:
        convs, where = walker.tensors(k, d)
        if convs < MIN_HEAD_CONVS:
            return (f"{k.name!r} and {d.name!r} are not twin heads: {where} after {convs} Conv"
                    f"{'s' * (convs != 1)} of their own (a head needs {MIN_HEAD_CONVS})")
    if twins is not None:
        twins.update(walker.twins)
    return None


class _LockStep:
    """Walk two outputs back in lock step; for a tensor pair, the fewest Conv pairs on any value path
    before the walk reaches shared trunk or the two sides part, and a word on where that happens."""

    def __init__(self, static: set[int]):
        self.static = static   # ids of tensors known without running the model (static_tensors)
        self.memo: dict[tuple[int, int], tuple[float, str]] = {}
        self.twins: dict[int, gs.Tensor] = {}   # id(dropped-side tensor) -> its kept-side twin

    def tensors(self, a: gs.Tensor, b: gs.Tensor) -> tuple[float, str]:
        # Iterative post-order: heads and trunks are hundreds of nodes deep.
        stack = [(a, b, False)]
        while stack:
            ta, tb, expanded = stack.pop()
            key = (id(ta), id(tb))
            if key in self.memo and not expanded:
                continue
            leaf = self._leaf(ta, tb)
            if ta is not tb and not expanded:
                self.twins.setdefault(id(tb), ta)
            if leaf is not None:
                self.memo[key] = leaf
                continue
            pa, pb = producer(ta), producer(tb)
            kids = [(x, y) for x, y in zip(pa.inputs, pb.inputs)]
            if not expanded:
                stack.append((ta, tb, True))
                stack.extend((x, y, False) for x, y in kids if (id(x), id(y)) not in self.memo)
                continue
            best: tuple[float, str] = (math.inf, "")
            for x, y in kids:
                got = self.memo.get((id(x), id(y)), (0, "cycle"))
                if got[0] < best[0]:
                    best = got
            conv = 1 if is_std(pa, "Conv", "ConvTranspose") else 0
            self.memo[key] = (best[0] + conv, best[1])
        return self.memo[(id(a), id(b))]

    def _leaf(self, ta: gs.Tensor, tb: gs.Tensor) -> tuple[float, str] | None:
        """Value of a pair that ends a path, or None to keep walking."""
        if not ta.name and not tb.name:
            return math.inf, ""
        sa, sb = id(ta) in self.static, id(tb) in self.static
        if ta is tb:  # a constant shared by both (exporters de-duplicate them) is not where the heads meet
            return (math.inf, "") if sa else (0, "they share the same tensor")
        if sa and sb:
            return math.inf, ""  # weights, anchors, shapes: may differ in value and width
        pa, pb = producer(ta), producer(tb)
        if sa != sb or pa is None or pb is None:
            return 0, f"they part at {_label(ta)} / {_label(tb)}"
        if pa is pb:
            return 0, "they share the same node"
        if _signature(pa) != _signature(pb) or _out_index(pa, ta) != _out_index(pb, tb):
            return 0, f"they part at {_label(ta)} / {_label(tb)}"
        if is_std(pa, *SHAPE_READS):
            return math.inf, ""
        return None


def _signature(node: gs.Node) -> tuple:
    """What must agree between twin nodes: op, arity and attributes (not tensor values or widths)."""
    attrs = []
    for k, v in sorted(node.attrs.items()):
        if isinstance(v, (gs.Constant, gs.Graph, np.ndarray)):
            continue
        attrs.append((k, tuple(v) if isinstance(v, (list, tuple)) else v))
    return (node.domain or "", node.op, len(node.inputs), len(node.outputs), tuple(attrs))


def _out_index(node: gs.Node, t: gs.Tensor) -> int:
    return next(i for i, o in enumerate(node.outputs) if o is t)


def static_tensors(graph: gs.Graph) -> set[int]:
    """ids of the tensors known without running the model: constants, Constant/Shape/Size outputs, and
    everything computed only from them (anchor grids computed from shapes, split sizes, shape chains),
    however long the chain. Random ops are never static."""
    static = {id(t) for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    for node in graph.nodes:   # topological order
        if not is_std(node) or node.op in NEVER_FOLD or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            continue
        if node.op in ("Constant", *SHAPE_READS) or (
                node.inputs and all(id(t) in static for t in node.inputs if t.name)):
            static.update(id(t) for t in node.outputs)
    return static


def _label(t: gs.Tensor) -> str:
    p = producer(t)
    return f"{p.op} {p.name!r}" if p is not None and p.name else (p.op if p is not None else repr(t.name))


def lead_aux_reason(graph: gs.Graph, pairs: list) -> str | None:
    """None when every (lead, aux) pair is a YOLOv7 IAuxDetect lead/aux head pair, else why not.

    The aux head is not a twin of the lead: it has no implicit Add/Mul and its own layers (a 3x3 Conv, then
    a 1x1 Conv per level) read an *earlier* neck feature map. So instead of a lock-step walk: independent
    outputs of one shape on the same graph inputs; the aux part only it needs holds at least
    ``MIN_HEAD_CONVS`` Convs, the lead's at least one; and the aux part reads a computed (not constant)
    tensor that the lead heads also need, i.e. both heads stand on one trunk (unrelated models don't)."""
    reason = _independence_reason(graph, pairs)
    if reason:
        return reason
    static = static_tensors(graph)
    leads = [k for k, _ in pairs]
    lead_nodes, lead_tensors = cone(graph, leads)
    for k, d in pairs:
        aux_nodes, _ = cone(graph, [d])
        own = [n for i, n in aux_nodes.items() if i not in lead_nodes]
        convs = sum(1 for n in own if is_std(n, "Conv", "ConvTranspose"))
        if convs < MIN_HEAD_CONVS:
            return (f"{d.name!r} has {convs} Conv{'s' * (convs != 1)} of its own beside the lead heads "
                    f"(an aux head needs {MIN_HEAD_CONVS})")
        k_nodes, _ = cone(graph, [k])
        others, _ = cone(graph, [d for _, d in pairs])
        if not any(is_std(n, "Conv", "ConvTranspose") for i, n in k_nodes.items() if i not in others):
            return f"{k.name!r} has no Conv of its own beside the aux heads"
        own_ids = {id(n) for n in own}
        shared = [t for n in own for t in n.inputs   # computed by a node both need: not the image itself
                  if id(t) in lead_tensors and id(t) not in static and producer(t) is not None
                  and id(producer(t)) not in own_ids]
        if not shared:
            return f"{d.name!r} reads nothing the lead heads compute: not one model's heads"
    return None
