"""The pass protocol: every rewrite is a small object with a name and a ``run(graph, ctx)``.

Match, check and rewrite are separate steps inside each pass: the match finds structure, the check
returns a *reason* when it declines (collected into ``PassResult.notes`` so the report can say why a
candidate was left alone), and the rewrite only builds new tensors and re-wires outputs. Dead nodes are
never deleted by hand: the pipeline runs dead-code elimination after every pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import onnx_graphsurgeon as gs


@dataclass
class PassResult:
    changed: bool = False
    count: int = 0                                  # rewrites applied
    notes: list[str] = field(default_factory=list)  # one line per declined candidate: "<node>: <reason>"
    info: dict = field(default_factory=dict)        # pass-specific facts for the report (e.g. dropped outputs)
    settled: bool = False                           # the pass ran its rules until they found nothing more: run
                                                    # again on the graph it left, it would change nothing

    def decline(self, node: gs.Node | str, reason: str) -> None:
        name = node if isinstance(node, str) else (node.name or node.op)
        self.notes.append(f"{name}: {reason}")

    def applied(self, n: int = 1) -> None:
        self.count += n
        self.changed = True


@dataclass
class Context:
    """Options shared by all passes of one optimize() call."""

    opset: int = 17
    aux: str = "auto"                 # "auto" | "keep"
    keep_outputs: tuple = ()          # names or indices (as strings/ints)
    drop_outputs: tuple = ()
    rename_outputs: bool = False
    facts: dict = field(default_factory=dict)   # what a pass remembers across rounds, keyed by its name


class Pass(Protocol):
    name: str

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult: ...
