"""cleanup: the smallest standard graph. Two pipeline passes, each a driver over one-family modules.

``canonicalize`` (first in the pipeline, so the structural passes match clean graphs):
    noops.remove_noops          Identity, inference Dropout, no-op Reshape/Transpose/Cast/Slice/...
    constants.fold_constants    Constant nodes -> initializers, constant subgraphs, static shape
                                        chains, CastLike
    sequences.split_sequences   SplitToSequence + SequenceAt -> Split
    scatter.scatter_slices      ScatterND writing one contiguous slice -> Concat of slices and updates
    chains.merge_chains         Concat of Concat, Reshape of Reshape, Transpose of Transpose -> one
``tidy`` (last, once the graph has stopped changing shape):
    dedup.dedup_initializers    equal initializers -> one
    dedup.merge_duplicate_nodes equal nodes on equal inputs -> one
    value_info.refresh_value_info  value_info that contradicts the graph -> inferred
Unused initializers and dead value_info need no rule: gs exports only what live nodes reference.

Each family reads static shapes from one shape inference per sweep (ir/shapes.py); a sweep repeats until
nothing changes, so one pipeline round leaves the graph at its fixed point and the next reports 0 changes.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, eliminate_dead_code
from onnxrep.passes.base import Context, PassResult
from onnxrep.passes.cleanup.chains import merge_chains
from onnxrep.passes.cleanup.constants import fold_constants
from onnxrep.passes.cleanup.dedup import dedup_initializers, merge_duplicate_nodes
from onnxrep.passes.cleanup.noops import drop_zero_biases, remove_noops
from onnxrep.passes.cleanup.scatter import scatter_slices
from onnxrep.passes.cleanup.sequences import split_sequences
from onnxrep.passes.cleanup.value_info import refresh_value_info
from onnxrep.ir.shapes import infer_types

_MAX_SWEEPS = 8


class Canonicalize:
    name = "canonicalize"

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult()
        stats: dict[str, int] = {}
        namer = Namer(graph)
        for sweep in range(_MAX_SWEEPS):
            before = result.count
            if sweep:
                eliminate_dead_code(graph)
            types = infer_types(graph)
            result.notes = []   # only the last sweep's declines: earlier ones may have been resolved
            remove_noops(graph, types, result, stats)
            fold_constants(graph, types, namer, result, stats)
            split_sequences(graph, types, namer, result, stats)
            scatter_slices(graph, types, namer, result, stats)
            merge_chains(graph, types, namer, result, stats)
            remove_noops(graph, types, result, stats)
            drop_zero_biases(graph, result, stats)
            if result.count == before:
                result.settled = True   # a sweep that found nothing: the next would find nothing either
                break
        result.info["canonicalize"] = dict(sorted(stats.items()))
        return result


class Tidy:
    name = "tidy"

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult()
        stats: dict[str, int] = {}
        dedup_initializers(graph, result, stats)
        for _ in range(_MAX_SWEEPS):
            before = result.count
            merge_duplicate_nodes(graph, result, stats)
            if result.count == before:
                # merged nodes make no new equal initializers, and value_info is refreshed last: run again, tidy
                # would find nothing
                result.settled = True
                break
            eliminate_dead_code(graph)
        eliminate_dead_code(graph)
        refresh_value_info(graph, infer_types(graph), result, stats)
        result.info["tidy"] = dict(sorted(stats.items()))
        return result
