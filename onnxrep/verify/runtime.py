"""Running a model in onnxruntime for a proof: graph optimizations off, only what the compared outputs need.

ORT computes every node of a graph whatever outputs a run asks for, so a model is cut to the cone of the
outputs compared before its session is made: a YOLOv9 original's auxiliary head, which the optimizer drops,
is half its MACs and would otherwise be computed for nothing. The cut model is streamed to a temporary file
one initializer at a time (io._write_model) and the session reads it from there, so no second copy of the
weights is ever held in this process (a session made from bytes keeps them for its whole life), and a
transform (the noisy twin's perturbation, verify/noise.py) is applied tensor by tensor on the way.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Callable

import onnx

from onnxrep.io import EXTERNAL_DATA_THRESHOLD, _write_model, copy_fields

# (tensor, its value's name when not the tensor's own: a Constant node's) -> a new tensor, or None: as it is
Transform = Callable[..., "onnx.TensorProto | None"]


def _all_nodes(graph: onnx.GraphProto):
    """Every node of a graph and of its subgraphs, at any depth (in no particular order)."""
    from onnxrep.ir.counts import walk_graphs

    return (node for g in walk_graphs(graph) for node in g.node)


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every name a node reads, its subgraphs' outer-scope reads included (over-approximated: every name
    a nested node reads)."""
    names = set(node.input)
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                  list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            for inner in _all_nodes(g):
                names |= set(inner.input)
    names.discard("")
    return names


class Cut:
    """A model cut to the cone of some of its outputs (every graph input kept, so the same feeds run it),
    as a head without initializers and the initializers it needs, both read from the model (not copied)."""

    def __init__(self, model: onnx.ModelProto, outputs: list[str] | None = None, inputs: dict | None = None,
                 whole: bool = False):
        """outputs: graph outputs or any tensors (default: the graph outputs); inputs: {tensor: ValueInfoProto}
        that become graph inputs, the nodes that computed them cut away (a model's tail); whole: keep every
        node, even those no output needs (what onnxruntime must load is the whole file)."""
        g = model.graph
        self.model = model
        self.outputs = [o.name for o in g.output] if outputs is None else list(outputs)
        self.inputs = dict(inputs or {})
        need = set(self.outputs)
        keep = [False] * len(g.node)
        for k in range(len(g.node) - 1, -1, -1):   # nodes are topologically sorted (onnx.checker requires it)
            node = g.node[k]
            if whole or any(o in need and o not in self.inputs for o in node.output):
                keep[k] = True
                need |= _reads(node)
        if not self.inputs:   # every input kept, and an initializer listed as an input (a default value)
            need |= {i.name for i in g.input}
        self.keep, self.need = keep, need

    def head(self, transform: Transform | None = None) -> onnx.ModelProto:
        """The cut model without its initializers (Constant nodes transformed too)."""
        g = self.model.graph
        head = onnx.ModelProto()
        copy_fields(self.model, head, skip={"graph"})
        copy_fields(g, head.graph, skip={"node", "initializer", "sparse_initializer", "output", "value_info"})
        for n, k in zip(g.node, self.keep):
            if k:
                head.graph.node.append(n)
                if self.inputs and any(o in self.inputs for o in n.output):   # a tail: one output of a kept
                    node = head.graph.node[-1]                                # node may be its input now
                    node.output[:] = ["" if o in self.inputs else o for o in node.output]
        if self.inputs:   # a tail is fed only what it reads
            kept_inputs = [i for i in head.graph.input if i.name in self.need]
            del head.graph.input[:]
            head.graph.input.extend(kept_inputs)
        head.graph.input.extend(self.inputs.values())
        head.graph.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in self.need)
        by_name = {o.name: o for o in g.output}
        head.graph.output.extend(by_name[o] if o in by_name else onnx.helper.make_empty_tensor_value_info(o)
                                 for o in self.outputs)
        head.graph.value_info.extend(v for v in g.value_info if v.name in self.need and v.name not in self.inputs
                                     and v.name not in self.outputs)
        used = {n.domain for n in _all_nodes(head.graph)} | {"", "ai.onnx"}
        kept = [o for o in head.opset_import if o.domain in used]   # a domain only a cut node used (a TensorRT plugin's)
        del head.opset_import[:]
        head.opset_import.extend(kept)
        if transform is not None:
            for node in head.graph.node:
                if node.op_type == "Constant" and node.output:
                    for attr in node.attribute:
                        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                            new = transform(attr.t, node.output[0])
                            if new is not None:
                                new.name = attr.t.name
                                attr.t.CopyFrom(new)
        return head

    def initializers(self):
        return (t for t in self.model.graph.initializer if t.name in self.need)

    def model_proto(self) -> onnx.ModelProto:
        """The cut as one ModelProto (a copy of the initializers it needs)."""
        m = self.head()
        m.graph.initializer.extend(self.initializers())
        return m


def _options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.enable_mem_pattern = False   # its planned block grows again on the second run of a large model
    so.enable_cpu_mem_arena = False  # the arena grows by powers of two: 1.9 GB peak against 1.3 GB on yolov9-e
    # Kahn's order (the default) runs a probe or a twin's factor long after the value it reads, keeping whole
    # activations alive: measure_ranges peaked 1.5 GB higher on yolov9-c at 640; the same for plain models
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    so.log_severity_level = 3
    return so


def session(model: onnx.ModelProto | str | os.PathLike, outputs: list[str] | None = None,
            transform: Transform | None = None, whole: bool = False):
    """An onnxruntime CPU session with graph optimizations disabled (their fusions on both sides would hide a
    wrong rewrite), of `model` cut to `outputs` (default: all), its initializers passed through `transform`;
    whole: every node kept (Cut)."""
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        if outputs is None and transform is None:
            return ort.InferenceSession(str(model), _options(), providers=["CPUExecutionProvider"])
        model = onnx.load(str(model))
    cut = Cut(model, outputs, whole=whole)
    head = cut.head(transform)
    extra = transform.rewrite(head) if hasattr(transform, "rewrite") else []   # the noisy twin's factors
    initializers = (transform(t) or t for t in cut.initializers()) if transform else cut.initializers()
    initializers = itertools.chain(initializers, extra)
    with tempfile.TemporaryDirectory(prefix="onnxrep-verify-") as work:
        path = Path(work) / "m.onnx"
        large = sum(len(t.raw_data) for t in cut.initializers()) >= EXTERNAL_DATA_THRESHOLD
        with open(path, "wb") as fh:
            if large:   # past protobuf's 2 GB: the weights in a file beside it
                with open(path.with_suffix(".data"), "wb") as data_fh:
                    _write_model(fh, head, data_fh, "m.data", initializers=initializers)
            else:
                _write_model(fh, head, initializers=initializers)
        return ort.InferenceSession(str(path), _options(), providers=["CPUExecutionProvider"])


def short(exc: Exception) -> str:
    """An exception in one line of at most 300 characters (onnxruntime's messages span several)."""
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")
