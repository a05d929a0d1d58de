"""Find the detection output of a YOLO graph by structure: the tensor deployment adapters attach to.

A YOLOv9 DDetect / DualDDetect main head (and gelan's, and YOLOv9-style heads of other exporters) ends in

    y [B, 4+nc, A] = Concat(axis=1)( Mul(decoded [B, 4, A], strides [.., A]),  Sigmoid(cls) [B, nc, A] )

and the decoded boxes are either centre-size (``Concat(axis=1)(Div(x1y1 + x2y2, 2), x2y2 - x1y1)``, what
DDetect writes, xywh=True) or corners (``Concat(axis=1)(anchor - lt, anchor + rb)``). Casts (a float16
model) are looked through. Anything else is *not* guessed at: the output gets a reason instead, so
`--nms` on an unknown head is a clear error, never NMS on the wrong numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxrep.ir.constants import at_opset, const_value
from onnxrep.ir.graph import import_model, is_std, model_opset, producer
from onnxrep.ir.shapes import Types, infer_types


@dataclass
class DetectionHead:
    output: str            # the graph output's name
    index: int             # its position among the graph outputs
    nc: int                # classes
    box_coding: str        # "xywh" (centre, size) or "xyxy" (corners), pixels of the input image
    batch: int | str | None
    anchors: int | str | None
    strides: list[int]     # the decode's stride values (8, 16, 32), [] when they are not constants
    elem_type: int         # the output's element type (FLOAT, or FLOAT16 without keep_io_types)

    @property
    def stride(self) -> int | None:
        return max(self.strides) if self.strides else None


def _through_casts(tensor: gs.Tensor) -> gs.Node | None:
    node = producer(tensor)
    while node is not None and is_std(node, "Cast", "Identity"):
        node = producer(node.inputs[0])
    return node


def _is_half(node: gs.Node) -> bool:
    """x / 2 or x * 0.5 (the centre of two corners)."""
    if not is_std(node, "Div", "Mul") or len(node.inputs) != 2:
        return False
    value = const_value(node.inputs[1])
    want = 2.0 if node.op == "Div" else 0.5
    return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == want


def _axis1(node: gs.Node, rank: int = 3) -> bool:
    axis = node.attrs.get("axis")
    return axis is not None and axis % rank == 1


def _box_coding(boxes: gs.Node) -> tuple[str | None, list[int], str]:
    """(coding, strides, reason) for the node producing the decoded boxes [B, 4, A]."""
    if not is_std(boxes, "Mul") or len(boxes.inputs) != 2:
        return None, [], f"boxes come from {boxes.op}, not the decode's Mul by the strides"
    strides = const_value(boxes.inputs[1])
    decoded = _through_casts(boxes.inputs[0])
    if strides is None:
        strides, decoded = const_value(boxes.inputs[0]), _through_casts(boxes.inputs[1])
    if strides is None or decoded is None:
        return None, [], "the boxes are not scaled by constant strides"
    values = sorted({int(v) for v in np.unique(strides) if float(v) == int(v) and v > 0})
    if not is_std(decoded, "Concat") or not _axis1(decoded) or len(decoded.inputs) != 2:
        return None, values, "the boxes are not a Concat of two halves on axis 1"
    first, second = (_through_casts(t) for t in decoded.inputs)
    if first is not None and _is_half(first) and second is not None and is_std(second, "Sub"):
        return "xywh", values, ""
    if first is not None and second is not None and is_std(first, "Sub") and is_std(second, "Add"):
        return "xyxy", values, ""
    return None, values, "the box decode is neither centre-size (Div by 2, Sub) nor corners (Sub, Add)"


def _dims(tensor: gs.Tensor) -> list | None:
    return None if tensor.shape is None else [d if isinstance(d, (int, str)) else None for d in tensor.shape]


def _static(*values):
    return next((v for v in values if isinstance(v, (int, np.integer)) and v > 0), None)


def recognise(graph: gs.Graph, tensor: gs.Tensor, index: int, types: Types) -> tuple[DetectionHead | None, str]:
    """The head producing graph output `tensor`, or (None, why not). The sizes come from the output's
    declared shape or, where that is symbolic (TorchScript names every dim of a dynamic-batch export),
    from shape inference on the two halves."""
    dims = _dims(tensor)
    if dims is not None and len(dims) != 3:
        return None, f"rank {len(dims)}, not [B, 4+nc, A]"
    node = _through_casts(tensor)
    if node is None or not is_std(node, "Concat") or not _axis1(node) or len(node.inputs) != 2:
        return None, f"not produced by a Concat of boxes and class scores on axis 1 ({node.op if node else 'input'})"
    boxes, scores = (_through_casts(t) for t in node.inputs)
    if scores is None or not is_std(scores, "Sigmoid"):
        return None, "the class scores are not a Sigmoid"
    if boxes is None:
        return None, "the boxes are not computed"
    coding, strides, reason = _box_coding(boxes)
    if coding is None:
        return None, reason
    box_dims, score_dims = (types.dims(t) or (None,) * 3 for t in node.inputs)
    if len(box_dims) != 3 or len(score_dims) != 3:
        return None, "the boxes or scores are not rank 3"
    nc = _static(score_dims[1], (dims[1] - 4) if dims and isinstance(dims[1], int) else None)
    if _static(box_dims[1]) not in (4, None) or nc is None:
        return None, f"the halves are not 4 box channels and a static number of classes ({box_dims}, {score_dims})"
    anchors = _static(dims[2] if dims else None, score_dims[2], box_dims[2]) or (dims[2] if dims else None)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype)) if tensor.dtype is not None else onnx.TensorProto.FLOAT
    return DetectionHead(tensor.name, index, int(nc), coding, dims[0] if dims else None, anchors, strides, int(elem)), ""


def find_heads(model: onnx.ModelProto) -> tuple[list[DetectionHead], dict[str, str]]:
    """Every graph output recognised as a YOLO detection head, and for the others why not."""
    graph = import_model(model)
    types = infer_types(graph)
    heads, reasons = [], {}
    with at_opset(model_opset(graph)):
        for k, out in enumerate(graph.outputs):
            head, why = recognise(graph, out, k, types)
            if head:
                heads.append(head)
            else:
                reasons[out.name] = why
    return heads, reasons


def the_head(model: onnx.ModelProto, option: str) -> DetectionHead:
    """The one detection head an adapter applies to; a clear error when there is none or more than one."""
    from onnxrep.io import OnnxrepError

    heads, reasons = find_heads(model)
    if not heads:
        why = "; ".join(f"{name}: {text}" for name, text in reasons.items())
        raise OnnxrepError(f"{option}: no YOLO detection head recognised among the outputs ({why}); "
                           f"{option} supports YOLOv9/gelan DDetect-style heads [B, 4+nc, A]")
    if len(heads) > 1:
        raise OnnxrepError(f"{option}: {len(heads)} detection outputs ({', '.join(h.output for h in heads)}): keep one "
                           f"(--aux auto drops a training-only head, or --keep-outputs NAME)")
    return heads[0]
