"""The pass pipeline: one literal tuple, repeated until nothing changes.

Order matters, and this is the only place it is decided (each entry says why it sits where it does).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep.passes.base import Context, Pass, PassResult
from onnxrep.ir.constants import at_opset
from onnxrep.ir.graph import eliminate_dead_code
from onnxrep.passes.batchnorm import FoldBatchNorm
from onnxrep.passes.cleanup import Canonicalize, Tidy
from onnxrep.passes.merge_branches import MergeBranches
from onnxrep.passes.prune import PruneOutputs

DEFAULT_PIPELINE: tuple[Pass, ...] = (
    # Canonical form before matching: no Identity/Constant nodes between a Conv and its BN, static shape
    # chains folded. Before pruning too: exporters' Constant nodes and shape arithmetic (chunk sizes computed
    # with Div, which ONNX shape inference can't propagate) would otherwise hide the shapes the twin-head
    # check and the Shape-read cutting need.
    Canonicalize(),
    # Pruning before the rewrites means they don't waste time on the aux branch (and report only main-branch work).
    PruneOutputs(),
    # Folding BN before merging turns every Conv->BN into a plain Conv, which is what the branch merge matches.
    FoldBatchNorm(),
    # After the fold, RepConv branches are bare Convs summed by Add: merge them into one Conv.
    MergeBranches(),
    # Last, once the structure is final: one copy of each equal initializer/node, value_info that matches.
    Tidy(),
)

_MAX_ROUNDS = 10


def pass_names(pipeline=DEFAULT_PIPELINE) -> list[str]:
    return [p.name for p in pipeline]


def select(names: list[str] | None, pipeline=DEFAULT_PIPELINE) -> tuple[Pass, ...]:
    """The passes of `pipeline` named in `names`, in pipeline order (None: all of them)."""
    if names is None:
        return tuple(pipeline)
    known = {p.name: p for p in pipeline}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown pass {', '.join(unknown)} (known: {', '.join(known)})")
    return tuple(p for p in pipeline if p.name in names)


def run_pipeline(graph: gs.Graph, ctx: Context, pipeline=DEFAULT_PIPELINE, on_pass=None,
                 after_pass=None) -> dict[str, PassResult]:
    """Run `pipeline` to a fixed point. Returns per-pass results summed over rounds. on_pass(name) is called
    before each pass, after_pass(name, graph) after it.

    Decline notes are taken from the last round only: earlier rounds' declines may have been resolved
    by a later pass (e.g. a BN that becomes foldable once a branch merge removes a second consumer).
    """
    totals = {p.name: PassResult() for p in pipeline}
    ctx.facts["pipeline"] = {"rounds": 0, "converged": True}
    changes, seen = 0, {}   # how many passes changed the graph so far; pass -> that count when it last ran
    for rounds in range(1, _MAX_ROUNDS + 1):
        changed = False
        for p in pipeline:
            if seen.get(p.name) == changes:   # nothing changed the graph since this pass left it unchanged,
                continue                      # or at its own fixed point (an idempotent pass): it would not
            seen[p.name] = changes
            if on_pass:
                on_pass(p.name)
            with at_opset(ctx.opset):   # constants are evaluated at the model's own opset
                res = p.run(graph, ctx)
            if rounds == 1 or res.changed:   # an unchanged graph is as clean and sorted as it was
                eliminate_dead_code(graph)
            if res.changed:
                changes += 1
                if res.settled:   # it repeated its own rules until they found nothing
                    seen[p.name] = changes
            if after_pass:
                after_pass(p.name, graph)
            total = totals[p.name]
            total.count += res.count
            total.changed |= res.changed
            total.notes = res.notes
            if res.changed or not total.info:  # facts of the round that acted, not of the idle rounds after it
                total.info.update(res.info)
            changed |= res.changed
        ctx.facts["pipeline"]["rounds"] = rounds
        if not changed:
            break
    else:  # every round changed something: the result is valid (each pass leaves a valid graph), not final
        ctx.facts["pipeline"]["converged"] = False
    return totals


__all__ = ["DEFAULT_PIPELINE", "Context", "Pass", "PassResult", "run_pipeline", "select", "pass_names",
           "eliminate_dead_code"]
