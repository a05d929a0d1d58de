"""Detection heads of other families (deploy/head.py's docstring has the layouts): YOLOv6's [B, A, 5+nc] with a
constant-1 objectness and PP-YOLOE's [B, A, 4+nc] (boxes, scores on the last axis), and split heads (boxes and
scores as two outputs: YOLO-NAS, PP-YOLOE), which join_split makes one [B, 4+nc, A] tensor before the adapters."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxrep.deploy.head import DetectionHead, _axis1, _box_coding, _dims, _through_casts
from onnxrep.ir.constants import const_value
from onnxrep.ir.graph import is_std
from onnxrep.ir.shapes import Types


LAYOUT_OPS = ("Transpose", "Reshape", "Concat", "Flatten", "Squeeze", "Unsqueeze")


def _all_sigmoid(tensor: gs.Tensor, depth: int = 0) -> bool:
    """Every value of `tensor` is a Sigmoid's, moved by layout ops only."""
    node = _through_casts(tensor)
    if node is None or depth > 64:
        return False
    if is_std(node, "Sigmoid"):
        return True
    if is_std(node, *LAYOUT_OPS) and node.inputs:
        return all(_all_sigmoid(t, depth + 1) for t in (node.inputs if node.op == "Concat" else node.inputs[:1]))
    return False


def _is_ones(tensor: gs.Tensor) -> bool:
    """A constant 1 everywhere (YOLOv6's objectness column): a constant, ConstantOfShape(1), or an Expand of one."""
    value = const_value(tensor)
    if value is not None:
        return value.size > 0 and bool(np.all(value == 1))
    node = _through_casts(tensor)
    if node is not None and is_std(node, "ConstantOfShape"):
        v = node.attrs.get("value")
        v = getattr(v, "values", v)
        return v is not None and bool(np.all(np.asarray(v) == 1))
    return node is not None and is_std(node, "Expand", "Tile") and _is_ones(node.inputs[0])


def _obj_width(tensor: gs.Tensor, dims) -> int | None:
    """The objectness part's last dim; for a constant expanded to the batch (--dynamic-batch), the constant's."""
    width = _static_dim(dims, 2)
    node = _through_casts(tensor)
    if width is None and node is not None and is_std(node, "Expand", "Tile"):
        value = const_value(node.inputs[0])
        width = int(value.shape[-1]) if value is not None and value.ndim == 3 else None
    return width


def _static_dim(dims, k):
    d = dims[k] if dims and len(dims) > k else None
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else None


def recognise_obj_last(graph: gs.Graph, tensor: gs.Tensor, index: int, types: Types):
    """YOLOv6's [B, A, 5+nc], or PP-YOLOE's [B, A, 4+nc] without objectness (module docstring), or (None, why not)."""
    dims = types.dims(tensor) or _dims(tensor)
    node = _through_casts(tensor)
    if not dims or len(dims) != 3 or node is None or not is_std(node, "Concat") or not _axis1(node, want=2) \
            or len(node.inputs) not in (2, 3):
        return None, "not a Concat of boxes, (objectness) and scores on the last axis"
    boxes, cls = node.inputs[0], node.inputs[-1]
    part = [types.dims(t) or _dims(t) for t in node.inputs]
    nc = _static_dim(part[-1], 2)
    if _static_dim(part[0], 2) != 4 or (len(part) == 3 and _obj_width(node.inputs[1], part[1]) != 1) or nc is None:
        return None, "the parts are not 4 box channels, (1 objectness) and a static number of classes"
    if len(part) == 3 and not (_is_ones(node.inputs[1]) or _all_sigmoid(node.inputs[1])):
        return None, "the objectness is not a constant 1 or a Sigmoid"
    if not _all_sigmoid(cls):
        return None, "the scores are not a Sigmoid's"
    bnode = _through_casts(boxes)
    coding, strides, why = _box_coding(bnode, axis=2) if bnode is not None else (None, [], "no box decode")
    if coding is None:
        return None, why
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype)) if tensor.dtype is not None else onnx.TensorProto.FLOAT
    return DetectionHead(tensor.name, index, nc, coding, dims[0], dims[1], strides, int(elem),
                         layout="anchors-first-obj" if len(part) == 3 else "anchors-first"), ""


def _boxes_output(tensor: gs.Tensor, types: Types, why: dict):
    """(coding, strides, anchors, boxes_first) of a decoded-boxes output [B, A, 4] or [B, 4, A], or None
    (and why[tensor name] says why, where it has 4 channels)."""
    dims = types.dims(tensor) or _dims(tensor)
    node = _through_casts(tensor)
    if not dims or len(dims) != 3 or node is None:
        return None
    turned = is_std(node, "Transpose") and list(node.attrs.get("perm") or []) == [0, 2, 1]
    decode = _through_casts(node.inputs[0]) if turned else node
    for axis in (2, 1):
        if _static_dim(dims, axis) == 4 and decode is not None:
            coding, strides, reason = _box_coding(decode, axis=(3 - axis) if turned else axis)
            if coding is not None:
                return coding, strides, dims[3 - axis], axis == 2
            why[tensor.name] = reason
    return None


def recognise_split(graph: gs.Graph, types: Types, taken: set[int], why: dict) -> list[DetectionHead]:
    """Split heads: one decoded-boxes output paired with one all-Sigmoid scores output of the same anchors and
    element type. Not guessed: another output of those anchors beside them (a quality or objectness map, real
    scores that are no Sigmoid's) leaves the pair unrecognised, with the reason."""
    boxes, scores, others = {}, {}, {}
    for k, out in enumerate(graph.outputs):
        if k in taken:
            continue
        found = _boxes_output(out, types, why)
        dims = types.dims(out) or _dims(out) or []
        if found:
            boxes[k] = found
        elif len(dims) == 3 and _all_sigmoid(out):
            scores[k] = dims
        elif len(dims) == 3:
            others[k] = dims
    heads = []
    for k, (coding, strides, anchors, boxes_first) in boxes.items():
        beside = [graph.outputs[j].name for j, d in {**scores, **others}.items()
                  if anchors is not None and anchors in (d[1], d[2])]
        if len(beside) > 1:
            why[graph.outputs[k].name] = (f"outputs {', '.join(beside)} all hold {anchors} anchors: which are the "
                                          f"class scores is not guessed")
            continue
        pairs = []
        for j, sd in scores.items():
            for first, a_axis in ((True, 1), (False, 2)):
                nc = _static_dim(sd, 3 - a_axis)
                if nc and sd[a_axis] == anchors and anchors is not None:
                    pairs.append((j, first, nc))
        if len(pairs) != 1:
            continue
        j, first, nc = pairs[0]
        out = graph.outputs[k]
        if out.dtype is not None and graph.outputs[j].dtype is not None and \
                np.dtype(out.dtype) != np.dtype(graph.outputs[j].dtype):
            why[out.name] = f"the boxes are {np.dtype(out.dtype)}, the scores {np.dtype(graph.outputs[j].dtype)}"
            continue
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(out.dtype)) if out.dtype is not None else onnx.TensorProto.FLOAT
        dims = types.dims(out) or _dims(out)
        heads.append(DetectionHead(out.name, k, nc, coding, dims[0], anchors, strides, int(elem), layout="split",
                                   scores=graph.outputs[j].name, boxes_first=boxes_first, scores_first=first))
        del scores[j]
    return heads


def join_split(model: onnx.ModelProto, head: DetectionHead) -> DetectionHead:
    """A split head's boxes and scores outputs become one [B, 4+nc, A] output in the boxes' place (Transpose
    and Concat: exact), in place; returns that anchors-last head. Other heads are returned as they are."""
    if head.layout != "split":
        return head
    from onnxrep.deploy.build import Builder, replace_output

    b = Builder(model, "onnxrep_head", "--nms")
    boxes = head.output if not head.boxes_first else b.op("Transpose", [head.output], perm=[0, 2, 1], base="boxes")
    scores = head.scores if not head.scores_first else b.op("Transpose", [head.scores], perm=[0, 2, 1], base="scores")
    y = b.op("Concat", [boxes, scores], axis=1, base="y")
    batch = head.batch if head.batch is not None else "batch"
    replace_output(model, head.output, [onnx.helper.make_tensor_value_info(y, head.elem_type,
                                                                           [batch, 4 + head.nc, head.anchors])])
    outputs = [o for o in model.graph.output if o.name != head.scores]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    index = [o.name for o in outputs].index(y)
    return DetectionHead(y, index, head.nc, head.box_coding, head.batch, head.anchors, head.strides, head.elem_type)
