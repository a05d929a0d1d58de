"""Find the detection output of a YOLO graph by structure: the tensor deployment adapters attach to.

Two layouts (``DetectionHead.layout``):

"anchors-last", a YOLOv9 DDetect / DualDDetect main head (and gelan's, and YOLOv9-style heads of other
exporters), ends in

    y [B, 4+nc, A] = Concat(axis=1)( Mul(decoded [B, 4, A], strides [.., A]),  Sigmoid(cls) [B, nc, A] )

and the decoded boxes are either centre-size (``Concat(axis=1)(Div(x1y1 + x2y2, 2), x2y2 - x1y1)``, what
DDetect writes, xywh=True) or corners (``Concat(axis=1)(anchor - lt, anchor + rb)``).

"anchors-first-obj", YOLOv7's (and YOLOv5's) decoded head in eval mode, ends in
``y [B, A, 5+nc] = Concat(axis=1)(Reshape(level_i [B, na, ny, nx, 5+nc]) ...)`` with centre-size boxes in
pixels, then objectness and class scores; channels 4.. of every level must be a Sigmoid's own channels,
passed on unchanged (followed through Concat, Split, Slice, Transpose: the in-place grid decode as TorchScript
and dynamo write it, and the fused model's Split form), while channels 0..3 hold the decoded boxes. Scores are objectness x class, as the
official NMS computes them.

The same head with anchors first and the objectness a constant 1, YOLOv6's
``Concat(axis=-1)(Mul(decoded [B, A, 4], strides), ones [B, A, 1], Transpose(Sigmoid(cls)) [B, A, nc])``, is
"anchors-first-obj" too (its NMS multiplies by the ones: exact); without the objectness column,
``Concat(axis=-1)(boxes [B, A, 4], scores [B, A, nc])`` (PP-YOLOE's export without NMS), "anchors-first".

"split", boxes and scores as two graph outputs (YOLO-NAS: boxes [B, A, 4] and scores [B, A, nc];
PP-YOLOE: scores [B, nc, A]): the boxes are a decode as above (``Mul(Concat(halves, axis=-1), strides)``,
centre-size or corners, ``-lt + anchor`` included) and every value of the scores a Sigmoid's, passed on
through layout ops only (Transpose, Reshape, Concat, Flatten, Squeeze, Unsqueeze). The adapters first join
them into the anchors-last tensor (``heads_other.join_split``: Transpose and Concat, exact), then work as on YOLOv9's.

Casts (a float16 model) are looked through. Anything else is *not* guessed at: the output gets a reason
instead, so `--nms` on an unknown head is a clear error, never NMS on the wrong numbers.
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
    layout: str = "anchors-last"   # [B, 4+nc, A]; "anchors-first-obj": [B, A, 5+nc] (YOLOv7/v5, v6);
    #                                "anchors-first": [B, A, 4+nc] (PP-YOLOE); "split" (two outputs)
    scores: str | None = None      # split: the scores output (`output` is the boxes)
    boxes_first: bool = True       # split: boxes [B, A, 4] (False: [B, 4, A])
    scores_first: bool = True      # split: scores [B, A, nc] (False: [B, nc, A])

    @property
    def stride(self) -> int | None:
        return max(self.strides) if self.strides else None


FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _passes_values(node: gs.Node) -> bool:
    """Identity, or a Cast to a float type (a float16 model's boundary); a Cast to int or bool is not."""
    return is_std(node, "Identity") or (is_std(node, "Cast") and node.attrs.get("to") in FLOATS)


def _through_casts(tensor: gs.Tensor) -> gs.Node | None:
    node = producer(tensor)
    while node is not None and _passes_values(node):
        node = producer(node.inputs[0])
    return node


def _is_half(node: gs.Node) -> bool:
    """x / 2 or x * 0.5 (the centre of two corners)."""
    if not is_std(node, "Div", "Mul") or len(node.inputs) != 2:
        return False
    value = const_value(node.inputs[1])
    want = 2.0 if node.op == "Div" else 0.5
    return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == want


def _axis1(node: gs.Node, rank: int = 3, want: int = 1) -> bool:
    axis = node.attrs.get("axis")
    return axis is not None and axis % rank == want


def _negates(node: gs.Node | None) -> bool:
    """Neg(x), or Mul by a constant -1 (PP-YOLOE's paddle2onnx export)."""
    if node is None:
        return False
    if is_std(node, "Neg"):
        return True
    if is_std(node, "Mul") and len(node.inputs) == 2:
        return any((v := const_value(t)) is not None and v.size == 1 and float(v.reshape(-1)[0]) == -1.0
                   for t in node.inputs)
    return False


def _is_negated(node: gs.Node | None) -> bool:
    """Add(Neg(lt), anchor) or Add(anchor, Neg(lt)): `-lt + points`, as YOLO-NAS and PP-YOLOE write x1y1."""
    return node is not None and is_std(node, "Add") and any(_negates(_through_casts(t)) for t in node.inputs)


def _through_unsqueeze(tensor: gs.Tensor) -> gs.Node | None:
    node = _through_casts(tensor)
    while node is not None and is_std(node, "Unsqueeze", "Reshape"):
        node = _through_casts(node.inputs[0])
    return node


def _box_coding(boxes: gs.Node, axis: int = 1) -> tuple[str | None, list[int], str]:
    """(coding, strides, reason) for the node producing the decoded boxes ([B, 4, A]: axis 1; [B, A, 4]: 2)."""
    if not is_std(boxes, "Mul") or len(boxes.inputs) != 2:
        return None, [], f"boxes come from {boxes.op}, not the decode's Mul by the strides"
    strides = const_value(boxes.inputs[1])
    decoded = _through_casts(boxes.inputs[0])
    if strides is None:
        strides, decoded = const_value(boxes.inputs[0]), _through_casts(boxes.inputs[1])
    if strides is None or decoded is None:
        return None, [], "the boxes are not scaled by constant strides"
    values = sorted({int(v) for v in np.unique(strides) if float(v) == int(v) and v > 0})
    if is_std(decoded, "Concat") and _axis1(decoded, want=axis) and len(decoded.inputs) == 4:
        # four coordinates apart (YOLO-NAS): x1 = ax - l, y1 = ay - t, x2 = ax + r, y2 = ay + b
        parts = [_through_unsqueeze(t) for t in decoded.inputs]
        if all(p is not None for p in parts) and all(is_std(p, "Sub") or _is_negated(p) for p in parts[:2]) \
                and all(is_std(p, "Add") and not _is_negated(p) for p in parts[2:]):
            return "xyxy", values, ""
        return None, values, "the four box coordinates are not anchor - distance, anchor + distance"
    if not is_std(decoded, "Concat") or not _axis1(decoded, want=axis) or len(decoded.inputs) != 2:
        return None, values, f"the boxes are not a Concat of two halves on axis {axis}"
    first, second = (_through_casts(t) for t in decoded.inputs)
    if first is not None and _is_half(first) and second is not None and is_std(second, "Sub"):
        return "xywh", values, ""
    if first is not None and second is not None and (is_std(first, "Sub") or _is_negated(first)) \
            and is_std(second, "Add"):
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


def _channel_source(tensor: gs.Tensor, lo: int, hi: int, order: list, types: Types, depth: int = 0):
    """(node, lo, hi, order): the node whose output holds channels [lo, hi) of the level tensor unchanged,
    followed through Concat, Split, Slice (step 1, on the channel axis only), Transpose, Identity and float
    Casts; it stops at the first other op (that op's output holds them). `order[k]` is the level axis that
    axis k of `tensor` is (the channel axis is the one holding level axis 4); the caller requires the
    identity at the end, so every score stays at its own anchor. None where sizes are unknown."""
    node = producer(tensor)
    dims = types.dims(tensor)
    if node is None or depth > 64 or not dims or len(dims) != len(order):
        return None
    axis = order.index(len(order) - 1)
    if _passes_values(node):
        return _channel_source(node.inputs[0], lo, hi, order, types, depth + 1)
    if is_std(node, "Transpose"):
        perm = list(node.attrs.get("perm") or list(range(len(dims)))[::-1])
        inner = [None] * len(perm)
        for k, p in enumerate(perm):      # output axis k is input axis p
            inner[p] = order[k]
        return _channel_source(node.inputs[0], lo, hi, inner, types, depth + 1)
    if is_std(node, "Concat") and node.attrs.get("axis", 0) % len(dims) == axis:
        start = 0
        for t in node.inputs:
            size = (types.dims(t) or [None] * len(dims))[axis]
            if not isinstance(size, (int, np.integer)):
                return None
            if start <= lo and hi <= start + size:
                return _channel_source(t, lo - start, hi - start, order, types, depth + 1)
            start += int(size)
        return None
    if is_std(node, "Split") and node.attrs.get("axis", 0) % len(dims) == axis:
        sizes = node.attrs.get("split") or (const_value(node.inputs[1]) if len(node.inputs) > 1 and
                                             node.inputs[1].name else None)
        if sizes is None:
            return None
        begin = int(sum(list(np.asarray(sizes).reshape(-1))[:node.outputs.index(tensor)]))
        return _channel_source(node.inputs[0], lo + begin, hi + begin, order, types, depth + 1)
    if is_std(node, "Slice") and len(node.inputs) >= 4:
        starts, axes = const_value(node.inputs[1]), const_value(node.inputs[3])
        steps = const_value(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else None
        in_dims = types.dims(node.inputs[0])
        if starts is None or axes is None or not in_dims or starts.size != 1:
            return None
        if int(axes.reshape(-1)[0]) % len(in_dims) != axis or (steps is not None and int(steps.reshape(-1)[0]) != 1):
            return None
        begin = int(starts.reshape(-1)[0])
        size = in_dims[axis]
        if begin < 0:
            if not isinstance(size, (int, np.integer)):
                return None
            begin += int(size)
        return _channel_source(node.inputs[0], lo + begin, hi + begin, order, types, depth + 1)
    return node, lo, hi, order


def _recognise_objectness(graph: gs.Graph, tensor: gs.Tensor, index: int, types: Types):
    """The YOLOv7/v5 decoded head [B, A, 5+nc] (module docstring), or (None, why not)."""
    dims = types.dims(tensor) or _dims(tensor)
    node = _through_casts(tensor)
    if not dims or len(dims) != 3 or node is None or not is_std(node, "Concat") or not _axis1(node):
        return None, "not a Concat of levels on axis 1"
    no = dims[2] if isinstance(dims[2], (int, np.integer)) else None
    levels = []
    for t in node.inputs:
        reshape = _through_casts(t)
        level = reshape.inputs[0] if reshape is not None and is_std(reshape, "Reshape") else None
        ldims = types.dims(level) if level is not None else None
        if not ldims or len(ldims) != 5 or not all(isinstance(d, (int, np.integer)) for d in ldims[1:]):
            return None, "a level is not a Reshape of a static [B, na, ny, nx, 5+nc] tensor"
        no = no or int(ldims[4])
        found = _channel_source(level, 4, no, list(range(5)), types) if int(ldims[4]) == no else None
        if found is None or not is_std(found[0], "Sigmoid") or found[1:] != (4, no, list(range(5))):
            return None, "a level's objectness and class channels are not a Sigmoid's, unchanged"
        levels.append(ldims)
    if no is None or no < 6:
        return None, "fewer than 5 + 1 channels"
    image = graph.inputs[0].shape if graph.inputs else None
    height = image[2] if image and len(image) == 4 and isinstance(image[2], int) else None
    strides = sorted({height // int(d[2]) for d in levels}) if height else []
    anchors = sum(int(d[1] * d[2] * d[3]) for d in levels)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype)) if tensor.dtype is not None else onnx.TensorProto.FLOAT
    return DetectionHead(tensor.name, index, int(no) - 5, "xywh", dims[0], anchors, strides, int(elem),
                         layout="anchors-first-obj"), ""


def find_heads(model: onnx.ModelProto) -> tuple[list[DetectionHead], dict[str, str]]:
    """Every graph output recognised as a YOLO detection head, and for the others why not."""
    from onnxrep.deploy.heads_other import recognise_obj_last, recognise_split

    graph = import_model(model)
    types = infer_types(graph, opset13_as_14=True)
    heads, reasons = [], {}
    with at_opset(model_opset(graph)):
        for k, out in enumerate(graph.outputs):
            head, why = recognise(graph, out, k, types)
            if head is None:
                head, why_v7 = _recognise_objectness(graph, out, k, types)
                why = f"{why}; as a YOLOv7 head: {why_v7}"
            if head is None:
                head, why_v6 = recognise_obj_last(graph, out, k, types)
                why = f"{why}; as a YOLOv6/PP-YOLOE head: {why_v6}"
            if head:
                heads.append(head)
            else:
                reasons[out.name] = why
        why_split: dict = {}
        split = recognise_split(graph, types, {h.index for h in heads}, why_split)
    for name, why in why_split.items():
        if name in reasons:
            reasons[name] += f"; as split boxes: {why}"
    for head in split:
        reasons.pop(head.output, None)
        reasons.pop(head.scores, None)
    return sorted(heads + split, key=lambda h: h.index), reasons


def the_head(model: onnx.ModelProto, option: str) -> DetectionHead:
    """The one detection head an adapter applies to; a clear error when there is none or more than one."""
    from onnxrep.io import OnnxrepError

    heads, reasons = find_heads(model)
    if not heads:
        why = "; ".join(f"{name}: {text}" for name, text in reasons.items())
        raise OnnxrepError(f"{option}: no YOLO detection head recognised among the outputs ({why}); "
                           f"{option} supports YOLOv9/gelan/ultralytics heads [B, 4+nc, A], YOLOv7/v5/v6 [B, A, 5+nc] "
                           f"and split boxes [B, A, 4] + scores (YOLO-NAS, PP-YOLOE)")
    if len(heads) > 1:
        raise OnnxrepError(f"{option}: {len(heads)} detection outputs ({', '.join(h.output for h in heads)}): keep one "
                           f"(--aux auto drops a training-only head, or --keep-outputs NAME)")
    return heads[0]
