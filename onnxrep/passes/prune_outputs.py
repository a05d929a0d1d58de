"""prune_outputs: ``outputs = [aux..., main]``  =>  ``outputs = [main]``, then dead-code elimination.

YOLOv9 trains with Programmable Gradient Information: an auxiliary branch and detection head that
exist only to give better gradients. An export of a training checkpoint still computes them, as an
extra graph output. This pass decides which outputs to keep, sets ``graph.outputs`` to them and lets
the pipeline's dead-code elimination delete every node, initializer and value_info only the dropped
outputs needed. Graph inputs are never removed; metadata is not touched.

Which outputs go (first rule that applies):
  * ``keep_outputs`` / ``drop_outputs`` (names or 0-based indices): exactly what the user said,
    validated (unknown names and dropping every output are errors);
  * ``aux="keep"``: nothing;
  * ``aux="auto"``: a known training-head layout, decided by structure and shape, never by name:
      - WongKinYiu/yolov9 ``DualDDetect`` (2 outputs) / ``TripleDDetect`` (3): every output is
        [B, 4+nc, A], made by ``Concat(box, Sigmoid(cls))`` on axis 1; the main head is the last
        output, the others are auxiliary;
      - MultimediaTechLab YOLO: 2·3·L outputs, L levels × (class [B,nc,H,W], anchor [B,R,4,H,W],
        box [B,4,H,W]); the first half is Main, the second AUX;
    and then only when each dropped output is a *twin* of the kept one at the same place (below).
    Anything else: every output is kept, and the note says why.

Twin heads (checked pair by pair, kept output k vs dropped output d, before anything is dropped):
  * same rank, dtype and static dimensions;
  * neither is computed from the other, and they are not made by the same node (rules out
    Identity copies of one tensor and several outputs of one Split);
  * walking back from k and d in lock step, node pairs agree on op, arity and attributes (weight
    values and channel widths may differ: aux and main heads have different widths) until the walk
    reaches the shared trunk (the same tensor) or the two trunks part; every value path passes
    through at least ``MIN_HEAD_CONVS`` Conv pairs first, i.e. each head is a complete head of its own
    on top of whatever it shares. Constants and Shape-derived values end a path without counting.
By construction (dead-code elimination from the kept outputs) the kept head never needs the *values*
of anything only the dropped head reaches. It may need their *shapes*: TorchScript writes DualDDetect's
``view(shape[0], ...)`` with ``shape = Shape(aux P3 input)`` for both heads, which alone would keep the
whole auxiliary branch alive. Such a ``Shape`` is re-pointed at a kept tensor whose read dimensions
provably have the same size (same axis of the same upstream tensor through size-preserving ops, e.g.
the image's batch axis), preferring the tensor at the same place of the kept head; a fully static shape
may instead become a constant. What can't be proven stays, and the note says so.

The pass is idempotent: on a pruned model (one output, or one MIT group) nothing matches. In the
fixed-point pipeline later rounds repeat the first round's answer instead of deciding again.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.graph import _NEVER_FOLD, Namer, is_std, producer
from onnxrep.io import OnnxrepError
from onnxrep.passes.base import Context, PassResult
from onnxrep.passes.cleanup_infer import infer_types, weightless_view

MAIN_NAME = "output0"      # what the official converted export and most deployment samples expect
MIN_HEAD_CONVS = 2         # a head owns at least this many stacked Convs on every path to the trunk

_LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_SHAPE_OPS = ("Shape", "Size")   # their value depends on shapes only: metadata, not computation
_STATE_KEY = "_prune_outputs_state"


@dataclass
class Plan:
    """Which outputs stay, which go, and why (one sentence)."""

    keep: list                      # gs tensors, in graph order
    drop: list
    reason: str
    layout: str | None = None       # "DualDDetect", "TripleDDetect", "MultimediaTechLab", "explicit"
    main: gs.Tensor | None = None   # the output --rename-outputs renames
    declined: str | None = None     # a layout was recognised but the twin check refused it
    removed: dict = field(default_factory=dict)
    twins: dict = field(default_factory=dict)   # id(dropped-side tensor) -> kept-side twin


# ------------------------------------------------------------------------------------------ the pass


class PruneOutputs:
    name = "prune_outputs"

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        # The pipeline repeats passes to a fixed point; after the first round the dropped outputs
        # are gone (and explicit names with them), so later rounds only repeat the first answer.
        state = vars(ctx).get(_STATE_KEY)
        if state is not None and state[0] == id(graph):
            return PassResult(notes=list(state[1]), info=dict(state[2]))

        result = PassResult()
        plan = plan_outputs(graph, ctx)
        if plan.declined:
            result.decline("outputs", plan.declined)
        if plan.drop:
            shapes = _Shapes(graph)
            cut, left = cut_shape_reads(graph, plan.keep, plan.twins, shapes)
            if cut:
                plan.reason += (f"; {cut} Shape read{'s' * (cut > 1)} of a tensor only the dropped outputs need "
                                f"now read{'s' * (cut == 1)} a kept tensor of provably equal size")
            if left:
                plan.reason += f"; still needed by the kept outputs for their shape only: {', '.join(left)}"
            plan.removed = removed_stats(graph, plan.keep, shapes)
            graph.outputs = list(plan.keep)   # disconnect: dead-code elimination deletes the rest
            result.applied(len(plan.drop))

        info = {"dropped": [t.name for t in plan.drop], "note": plan.reason}
        renamed = self.rename(graph, plan, ctx, info)
        if renamed:
            result.applied()
        info["kept"] = [t.name for t in graph.outputs]
        if renamed:
            info["renamed"] = renamed
        if plan.removed:
            info["removed"] = plan.removed
        result.info = info
        vars(ctx)[_STATE_KEY] = (id(graph), list(result.notes), dict(info))
        return result

    @staticmethod
    def rename(graph: gs.Graph, plan: Plan, ctx: Context, info: dict) -> dict:
        """--rename-outputs: the kept main output becomes `output0`, unless that name is taken."""
        if not ctx.rename_outputs:
            return {}
        main = plan.main if plan.main is not None else (graph.outputs[0] if len(graph.outputs) == 1 else None)
        why = None
        if main is None:
            why = f"{len(graph.outputs)} outputs kept and none is the main head"
        elif main.name == MAIN_NAME:
            return {}
        else:
            live = {id(t): t for t in live_tensors(graph, graph.outputs)}
            clash = next((t for t in live.values() if t.name == MAIN_NAME and t is not main), None)
            if clash is not None:
                what = "another output" if any(o is clash for o in graph.outputs) else "a tensor of the graph"
                why = f"{what} is already called {MAIN_NAME!r}"
        if why:
            info["note"] = f"{info['note']}; not renamed: {why}"
            return {}
        old = main.name
        # A dropped tensor may still carry the name until dead-code elimination: free it first.
        for t in graph.tensors().values():
            if t.name == MAIN_NAME and t is not main:
                t.name = f"{MAIN_NAME}_dropped"
        main.name = MAIN_NAME
        return {old: MAIN_NAME}


# ------------------------------------------------------------------------------------------- planning


def plan_outputs(graph: gs.Graph, ctx: Context) -> Plan:
    """Decide which outputs to keep. Raises OnnxrepError for invalid explicit options."""
    outputs = list(graph.outputs)
    if ctx.keep_outputs or ctx.drop_outputs:
        return _explicit_plan(outputs, ctx)
    if ctx.aux == "keep":
        return Plan(outputs, [], "auxiliary head detection off (--aux keep): every output kept")
    if ctx.aux != "auto":
        raise OnnxrepError(f"--aux {ctx.aux!r}: expected 'auto' or 'keep'")
    if len(outputs) < 2:
        return Plan(outputs, [], f"{len(outputs)} output: no auxiliary head recognised")
    for detect in (_wongkinyiu_layout, _mit_layout):
        found = detect(outputs)
        if found is None:
            continue
        layout, keep, drop, main, describe = found
        pairs = [(k, d) for k, d in zip(keep * (len(drop) // len(keep)), drop)]
        twins: dict = {}
        reason = twin_reason(graph, outputs, pairs, twins)
        if reason:
            return Plan(outputs, [], f"{layout} layout, but every output kept: {reason}", declined=reason)
        return Plan(keep, drop, describe, layout=layout, main=main, twins=twins)
    shapes = ", ".join(f"{t.name} {_fmt_shape(t)}" for t in outputs)
    return Plan(outputs, [], f"no auxiliary head recognised among {len(outputs)} outputs ({shapes}): all kept")


def _explicit_plan(outputs: list, ctx: Context) -> Plan:
    keep = _resolve(outputs, ctx.keep_outputs, "--keep-outputs")
    drop = _resolve(outputs, ctx.drop_outputs, "--drop-outputs")
    both = [outputs[i].name for i in sorted(set(keep) & set(drop))]
    if both:
        raise OnnxrepError(f"--keep-outputs and --drop-outputs both name {', '.join(both)}")
    kept = [i for i in range(len(outputs)) if (not keep or i in keep) and i not in drop]
    if not kept:
        raise OnnxrepError(f"that would drop every output ({', '.join(t.name for t in outputs)}): keep at least one")
    dropped = [i for i in range(len(outputs)) if i not in kept]
    opt = "--keep-outputs" if keep else "--drop-outputs"
    reason = (f"as asked ({opt})" if dropped
              else f"every output kept ({opt})")
    main = outputs[kept[0]] if len(kept) == 1 else None
    return Plan([outputs[i] for i in kept], [outputs[i] for i in dropped], reason,
                layout="explicit" if dropped else None, main=main)


def _resolve(outputs: list, tokens, option: str) -> set[int]:
    """Names or 0-based indices (ints or digit strings, comma separated) -> indices. Names win."""
    names = [t.name for t in outputs]
    picked: set[int] = set()
    for token in tokens or ():
        parts = [token] if isinstance(token, (int, np.integer)) else [p.strip() for p in str(token).split(",")]
        for part in parts:
            if isinstance(part, str) and part in names:
                picked.add(names.index(part))
            elif isinstance(part, (int, np.integer)) or part.lstrip("-").isdigit():
                i = int(part)
                if not 0 <= i < len(outputs):
                    raise OnnxrepError(f"{option}: no output {i} (the model has {len(outputs)}: {', '.join(names)})")
                picked.add(i)
            elif part:
                raise OnnxrepError(f"{option}: unknown output {part!r} (outputs: {', '.join(names)})")
    return picked


# ----------------------------------------------------------------------------------------- layouts


def _wongkinyiu_layout(outputs: list):
    """DualDDetect / TripleDDetect: 2 or 3 outputs [B, 4+nc, A] = Concat(box, Sigmoid(cls)); main last."""
    if len(outputs) not in (2, 3):
        return None
    main = outputs[-1]
    if not all(_rank(t) == 3 and _same_type(t, main) for t in outputs):
        return None
    if not all(_is_detect_concat(t) for t in outputs):
        return None
    layout = "DualDDetect" if len(outputs) == 2 else "TripleDDetect"
    aux = outputs[:-1]
    many = len(aux) > 1
    describe = (f"{layout} layout (WongKinYiu/yolov9): {len(outputs)} outputs {_fmt_shape(main)}; "
                f"output{'s' * many} {', '.join(str(i) for i in range(len(aux)))} "
                f"({', '.join(repr(t.name) for t in aux)}) {'are' if many else 'is the'} auxiliary head{'s' * many}, "
                f"the last ({main.name!r}) the main head; twin heads confirmed")
    return layout, [main], aux, main, describe


def _mit_layout(outputs: list):
    """MultimediaTechLab YOLO: Main then AUX, each L levels × (class, anchor, box)."""
    n = len(outputs)
    if n < 6 or n % 6:
        return None
    half = n // 2
    main, aux = outputs[:half], outputs[half:]
    for k, d in zip(main, aux):
        if not _same_type(k, d):
            return None
    for i in range(0, half, 3):
        cls, anc, box = main[i:i + 3]
        if (_rank(cls), _rank(anc), _rank(box)) != (4, 5, 4):
            return None
        if _dim(box, 1) not in (4, None) or _dim(anc, 2) not in (4, None):
            return None
        if not (_same_dims(cls.shape[2:], box.shape[2:]) and _same_dims(anc.shape[3:], box.shape[2:])):
            return None
    levels = half // 3
    describe = (f"MultimediaTechLab YOLO layout: {n} outputs = Main (outputs 0-{half - 1}) + AUX "
                f"(outputs {half}-{n - 1}), {levels} levels × (class, anchor, box) each; the AUX group is the "
                f"auxiliary head; twin heads confirmed")
    return "MultimediaTechLab", main, aux, None, describe


def _is_detect_concat(t: gs.Tensor) -> bool:
    node = _skip_identity(t)
    if node is None or not is_std(node, "Concat") or len(node.inputs) != 2:
        return False
    if int(node.attrs.get("axis", 0)) not in (1, -2):
        return False
    cls = _skip_identity(node.inputs[1])
    return cls is not None and is_std(cls, "Sigmoid") and _dim(node.inputs[0], 1) in (4, None)


def _skip_identity(t: gs.Tensor) -> gs.Node | None:
    node = producer(t)
    while node is not None and is_std(node, "Identity"):
        node = producer(node.inputs[0])
    return node


# --------------------------------------------------------------------------------------- twin check


def twin_reason(graph: gs.Graph, outputs: list, pairs: list, twins: dict | None = None) -> str | None:
    """None when every (kept, dropped) pair are twin heads, else why not (one line).

    twins: filled with id(dropped-side tensor) -> kept-side tensor at the same place of the twin head."""
    # Across the groups only: within one MIT group, box is computed from anchor by design.
    keep = {id(k): k for k, _ in pairs}
    drop = {id(d): d for _, d in pairs}
    cones = {i: _cone_ids(graph, [t]) for i, t in {**keep, **drop}.items()}
    for side, other_side in ((keep, drop), (drop, keep)):
        for t in side.values():
            p = producer(t)
            for other in other_side.values():
                if other is t or other.name == t.name:
                    return f"output {t.name!r} is listed twice"
                if p is not None and id(p) in cones[id(other)]:
                    return (f"outputs {t.name!r} and {other.name!r} are made by the same node ({p.op})"
                            if p is producer(other) else f"output {other.name!r} is computed from output {t.name!r}")
    walker = _LockStep(static_tensors(graph))
    for k, d in pairs:
        if not _same_type(k, d):
            return f"{k.name!r} {_fmt_shape(k)} and {d.name!r} {_fmt_shape(d)} differ in shape or dtype"
        # PGI heads see the same image; heads on different inputs (a siamese/stereo model) are real outputs
        reads = [sorted(t.name for t in _cone(graph, [o])[1].values() if _is_graph_input(graph, t)) for o in (k, d)]
        if reads[0] != reads[1]:
            return f"{k.name!r} reads graph inputs {reads[0]}, {d.name!r} reads {reads[1]}"
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
        if is_std(pa, *_SHAPE_OPS):
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
        if not is_std(node) or node.op in _NEVER_FOLD or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            continue
        if node.op in ("Constant", *_SHAPE_OPS) or (
                node.inputs and all(id(t) in static for t in node.inputs if t.name)):
            static.update(id(t) for t in node.outputs)
    return static


def _label(t: gs.Tensor) -> str:
    p = producer(t)
    return f"{p.op} {p.name!r}" if p is not None and p.name else (p.op if p is not None else repr(t.name))


# ------------------------------------------------------------------------------------ shape-only reads


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
    nodes, _ = _cone(None, keep, through_shapes=False)
    reads = [n for n in nodes.values() if is_std(n, *_SHAPE_OPS) and n.inputs and not _available(n.inputs[0], nodes)]
    if not reads:
        return 0, []
    shapes = shapes or _Shapes(graph)
    origin = _AxisOrigin(shapes)
    namer = Namer(graph)
    kept_values = [*graph.inputs] + [t for n in graph.nodes if id(n) in nodes for t in n.outputs
                                     if not is_std(n, *_SHAPE_OPS)]
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
    start, end = int(s.attrs.get("start", 0)), s.attrs.get("end")
    start = max(0, start + rank if start < 0 else start)
    end = rank if end is None else max(0, min(rank, int(end) + rank if int(end) < 0 else int(end)))
    span = list(range(start, end))
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
    rank = len(dims)
    start, end = int(s.attrs.get("start", 0)), s.attrs.get("end")
    start = max(0, start + rank if start < 0 else start)
    end = rank if end is None else max(0, min(rank, int(end) + rank if int(end) < 0 else int(end)))
    return np.asarray(dims[start:end], np.int64)


class _Shapes:
    """Dimensions of tensors: the graph's own shapes, else the shared shape inference (cleanup_infer),
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
    from onnxrep.graph import const_value

    value = const_value(t)
    return None if value is None else np.asarray(value)


# ---------------------------------------------------------------------------------------- reachability


def _node_inputs(node: gs.Node) -> list:
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
                    found.extend(t for t in _node_inputs(n) if id(t) not in inner)
    return found


def _cone(graph: gs.Graph | None, tensors, through_shapes: bool = True) -> tuple[dict, dict]:
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
            if through_shapes or not is_std(p, *_SHAPE_OPS):
                stack.extend(_node_inputs(p))
    return nodes, seen


def _is_graph_input(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(t is i for i in graph.inputs)


def _cone_ids(graph: gs.Graph, tensors) -> set[int]:
    return set(_cone(graph, tensors)[0])


def live_tensors(graph: gs.Graph, outputs) -> list:
    _, tensors = _cone(graph, outputs)
    return list(tensors.values()) + list(graph.inputs)


def removed_stats(graph: gs.Graph, keep: list, shapes: _Shapes | None = None) -> dict:
    """Nodes, Convs, parameters and MACs that only the dropped outputs need (counted as report.py does)."""
    all_nodes, _ = _cone(graph, graph.outputs)
    kept_nodes, _ = _cone(graph, keep)
    gone = [n for i, n in all_nodes.items() if i not in kept_nodes]
    params = 0
    for n in gone:
        if is_std(n, *_LINEAR_OPS, "BatchNormalization"):
            params += sum(_param_elements(t) for t in n.inputs[1:3])
    return {
        "outputs": len(graph.outputs) - len(keep),
        "nodes": len(gone),
        "conv": sum(1 for n in gone if is_std(n, "Conv", "ConvTranspose")),
        "parameters": params,
        "macs": _macs_of(shapes or _Shapes(graph), gone),
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


def _macs_of(shapes: _Shapes, nodes: list) -> int:
    """MACs of `nodes` with report.count_macs' rules, on the weight-less export of the graph."""
    targets = {n.outputs[0].name for n in nodes if is_std(n, *_LINEAR_OPS) and n.outputs}
    model = shapes.skeleton() if targets else None
    if model is None:
        return 0
    from onnxrep.report import count_macs

    return count_macs(model, only=targets)


# ------------------------------------------------------------------------------------------- shapes


def _rank(t: gs.Tensor) -> int | None:
    return len(t.shape) if t.shape is not None else None


def _dim(t: gs.Tensor, axis: int):
    """A static dimension, or None when unknown or symbolic."""
    if t.shape is None or len(t.shape) <= axis:
        return None
    d = t.shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None


def _same_dims(a, b) -> bool:
    """Equal where both are static; a symbolic dimension can't be told apart from anything."""
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, (int, np.integer)) and isinstance(y, (int, np.integer))) or x == y
               for x, y in zip(a, b))


def _same_type(a: gs.Tensor, b: gs.Tensor) -> bool:
    if a.shape is None or b.shape is None or not _same_dims(a.shape, b.shape):
        return False
    return a.dtype is None or b.dtype is None or a.dtype == b.dtype


def _fmt_shape(t: gs.Tensor) -> str:
    return "[?]" if t.shape is None else "[" + ", ".join(str(d) for d in t.shape) + "]"
