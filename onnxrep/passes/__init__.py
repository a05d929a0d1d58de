"""The pass pipeline: one literal tuple, repeated until nothing changes.

Order matters, and this is the only place it is decided:
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep.passes.base import Context, Pass, PassResult
from onnxrep.passes.fold_batchnorm import FoldBatchNorm

DEFAULT_PIPELINE: tuple[Pass, ...] = (
    # Folding BN first turns every Conv->BN->... into a plain Conv, which is what the branch merge matches.
    FoldBatchNorm(),
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


def eliminate_dead_code(graph: gs.Graph) -> None:
    # Graph inputs are part of the model's interface: never removed, even when nothing reads them.
    graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True).toposort()


def run_pipeline(graph: gs.Graph, ctx: Context, pipeline=DEFAULT_PIPELINE, on_pass=None) -> dict[str, PassResult]:
    """Run `pipeline` to a fixed point. Returns per-pass results summed over rounds.

    Decline notes are taken from the last round only: earlier rounds' declines may have been resolved
    by a later pass (e.g. a BN that becomes foldable once a branch merge removes a second consumer).
    """
    totals = {p.name: PassResult() for p in pipeline}
    for _ in range(_MAX_ROUNDS):
        changed = False
        for p in pipeline:
            if on_pass:
                on_pass(p.name)
            res = p.run(graph, ctx)
            eliminate_dead_code(graph)
            total = totals[p.name]
            total.count += res.count
            total.changed |= res.changed
            total.notes = res.notes
            total.info.update(res.info)
            changed |= res.changed
        if not changed:
            break
    return totals


__all__ = ["DEFAULT_PIPELINE", "Context", "Pass", "PassResult", "run_pipeline", "select", "pass_names"]
