"""refresh_value_info: a recorded type or shape that contradicts the graph  =>  the inferred one.

Tensors that no longer exist take their value_info with them (gs exports value_info only for live tensors);
what is left is an entry whose element type, rank or a static dim disagrees with shape inference (a rewrite
that changed a tensor, or an exporter that wrote a fixed batch where the input's batch is symbolic). Such an
entry is replaced by what inference says, or cleared where inference knows nothing, so runtimes that trust
value_info (TensorRT, ORT's planner) never see a stale shape. Graph inputs are the interface: never touched.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxrep.passes.base import PassResult
from onnxrep.ir.shapes import TypeInfo, Types, is_static, elem_type


def refresh_value_info(graph: gs.Graph, types: Types, result: PassResult, stats: dict) -> None:
    symbolic = {d for t in graph.inputs for d in (t.shape or ()) if isinstance(d, str)}
    inputs = {id(t) for t in graph.inputs}
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Variable) or id(tensor) in inputs:
            continue
        if tensor.dtype is None and tensor.shape is None:
            continue
        found = types.inferred(tensor.name)
        if found is None:
            continue
        reason = _conflict(tensor, found, symbolic)
        if reason is None:
            continue
        if found.elem_type:
            tensor.dtype = _np_or_enum(found.elem_type)
        tensor.shape = list(found.dims) if found.dims is not None else None
        stats["value_info"] = stats.get("value_info", 0) + 1
        result.applied()


def _np_or_enum(enum: int):
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(enum)
    except Exception:
        return enum


def _conflict(tensor: gs.Variable, found: TypeInfo, symbolic: set) -> str | None:
    mine = elem_type(tensor.dtype)
    if mine and found.elem_type and mine != found.elem_type:
        return "type"
    if tensor.shape is None or found.dims is None:
        return None
    if len(tensor.shape) != len(found.dims):
        return "rank"
    for a, b in zip(tensor.shape, found.dims):
        if is_static(a) and is_static(b) and int(a) != int(b):
            return "dim"
        if is_static(a) and isinstance(b, str) and b in symbolic:
            return "dim"
    return None
