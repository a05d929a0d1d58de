"""Export: an onnx-graphsurgeon graph back into a ModelProto that keeps the original model's identity.

Opsets, IR version, producer, doc strings and metadata come from the original; inputs with default values
(see ir.graph.import_model) get their initializer back; value_info is written for every typed tensor.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxrep.io import copy_fields
from onnxrep.ir.private_api import export_function, export_node, export_value_info, write_initializer


def from_graph(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export `graph`, keeping the original model's identity: opsets, IR version, producer, metadata.

    Unlike gs.export_onnx (which builds the graph, then copies it into a model), each initializer is
    written once, straight into the new model, and the graph's numpy copy is released as soon as it is:
    peak memory stays near one copy of the weights.
    """
    model = onnx.ModelProto()
    copy_fields(original, model, skip={"graph", "functions"})
    model.functions.extend(export_function(f) for f in graph.functions)
    g = model.graph
    g.name, g.doc_string = original.graph.name, original.graph.doc_string
    g.node.extend(export_node(n) for n in graph.nodes)
    g.input.extend(export_value_info(t) for t in graph.inputs)
    g.output.extend(export_value_info(t) for t in graph.outputs)
    interface = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.inputs:  # an input with a default value (see ir.graph.import_model)
        default = getattr(tensor, "default", None)
        if default is not None:
            default.name = tensor.name
            write_initializer(g, default)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            write_initializer(g, tensor)
        elif tensor.name not in interface and (tensor.dtype is not None or tensor.shape is not None):
            g.value_info.append(export_value_info(tensor))
    return model
