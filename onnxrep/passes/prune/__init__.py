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

The parts: layouts.py (which outputs: options and known layouts), twins.py (the twin-head check),
shape_reads.py (Shape reads of dropped tensors re-pointed at kept ones), stats.py (what dropping removes).

The pass is idempotent: on a pruned model (one output, or one MIT group) nothing matches. In the
fixed-point pipeline later rounds repeat the first round's answer instead of deciding again.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep.passes.base import Context, PassResult
from onnxrep.passes.prune.layouts import Plan, plan_outputs
from onnxrep.passes.prune.shape_reads import _Shapes, cut_shape_reads
from onnxrep.passes.prune.stats import live_tensors, removed_stats
from onnxrep.passes.prune.twins import twin_reason  # noqa: F401  (part of the pass's interface)

MAIN_NAME = "output0"      # what the official converted export and most deployment samples expect


class PruneOutputs:
    name = "prune_outputs"

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        # The pipeline repeats passes to a fixed point; after the first round the dropped outputs
        # are gone (and explicit names with them), so later rounds only repeat the first answer.
        state = ctx.facts.get(self.name)
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
            plan.removed = removed_stats(graph, plan.keep, shapes.skeleton())
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
        ctx.facts[self.name] = (id(graph), list(result.notes), dict(info))
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
