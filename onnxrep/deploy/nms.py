"""Embedded NMS after a YOLO detection head, in the EfficientNMS output convention.

    y [B, 4+nc, A] (or YOLOv7's [B, A, 5+nc])  =>  num_dets [B, 1] int32, det_boxes [B, K, 4] (x1, y1, x2, y2), det_scores [B, K],
                        det_classes [B, K] int32, padded with zeros to K = max_det

Semantics are the official YOLOv9 detect script's (`non_max_suppression`, multi_label=False; YOLOv7's is the
same with score = objectness x class score, its objectness cut implied by score > conf): each anchor
keeps its best class (ArgMax, the first on equal scores), a candidate needs score > conf, per-class greedy
NMS suppresses IoU > iou (class_agnostic: across classes), and the K best detections of each image are
kept, best first. The best-class rule is built by masking: every other class's score becomes -1, so
per-class NMS (both runtimes') selects exactly the single-label result without offsetting boxes by class
(the trick that moves coordinates by up to nc x 4096 px and re-rounds their IoU).

multi_label (YOLOv9 val.py's mAP semantics, multi_label=True, and EfficientNMS's own): every (anchor, class)
pair scoring above conf is a candidate, so one box may be kept once per class; per-class NMS on the raw
scores, the K best of the image kept. Suppression across classes would keep one label per box again, so
multi_label with class_agnostic is refused.

kind "ort": standard ops only (NonMaxSuppression, TopK, GatherElements...), for onnxruntime and OpenVINO.
The K best of an image come from TopK over all selected detections with other images' masked to -inf
(TopK keeps the lower index first on equal values: the spec fixes that order, and nms_reference.py
follows it). kind "trt": one EfficientNMS_TRT node (TensorRT's plugin, domain "TRT", as the YOLOv7 and
ultralytics end2end exports write it) on the same masked scores; onnxruntime cannot run it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxrep.deploy.build import Builder, check_free, replace_output
from onnxrep.deploy.head import DetectionHead

OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
MASKED = -1.0      # the score of a class that is not its anchor's best
MAX_DET = 100_000  # padding beyond this is a typo, not a deployment
TRT_DOMAIN = "TRT"


@dataclass(frozen=True)
class NmsSettings:
    kind: str = "ort"             # "ort" | "trt"
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 100
    class_agnostic: bool = False
    multi_label: bool = False

    def check(self) -> None:
        from onnxrep.io import OnnxrepError

        if self.kind not in ("ort", "trt"):
            raise OnnxrepError(f"--nms {self.kind!r}: choose ort or trt")
        if not 0 <= self.conf < 1:
            raise OnnxrepError(f"--conf {self.conf}: must be in [0, 1)")
        if not 0 <= self.iou <= 1:
            raise OnnxrepError(f"--iou {self.iou}: must be in [0, 1]")
        if not 1 <= self.max_det <= MAX_DET:
            raise OnnxrepError(f"--max-det {self.max_det}: must be between 1 and {MAX_DET:,}")
        if self.multi_label and self.class_agnostic:
            raise OnnxrepError("--multi-label keeps a box once per class; --class-agnostic suppresses across classes "
                               "(one label per box): choose one")

    def to_dict(self) -> dict:
        return {"nms": self.kind, "conf": self.conf, "iou": self.iou, "max_det": self.max_det,
                "class_agnostic": self.class_agnostic, "multi_label": self.multi_label}


def _candidates(b: Builder, head: DetectionHead, agnostic: bool, multi_label: bool = False) -> tuple[str, str, str, str]:
    """(boxes xyxy [B, A, 4], NMS scores [B, nc or 1, A], best class [B, 1, A] int64 (None for multi_label),
    scores [B, nc, A])."""
    y = head.output
    if head.elem_type != TensorProto.FLOAT:
        y = b.op("Cast", [y], to=TensorProto.FLOAT)
    if head.layout == "anchors-first-obj":   # [B, A, 5+nc]: scores = objectness x class, as YOLOv7's NMS has them
        boxes = b.slice(y, 0, 4, 2)
        scores = b.op("Transpose", [b.op("Mul", [b.slice(y, 5, 5 + head.nc, 2), b.slice(y, 4, 5, 2)])],
                      perm=[0, 2, 1], base="scores")
    elif head.layout == "anchors-first":     # [B, A, 4+nc]
        boxes = b.slice(y, 0, 4, 2)
        scores = b.op("Transpose", [b.slice(y, 4, 4 + head.nc, 2)], perm=[0, 2, 1], base="scores")
    else:
        boxes = b.op("Transpose", [b.slice(y, 0, 4, 1)], perm=[0, 2, 1], base="boxes")
        scores = b.slice(y, 4, 4 + head.nc, 1)
    if head.box_coding == "xywh":
        xy, wh = b.split(boxes, [2, 2], axis=2)
        half = b.op("Mul", [wh, b.const(np.float32(0.5), base="half")])
        boxes = b.op("Concat", [b.op("Sub", [xy, half]), b.op("Add", [xy, half])], axis=2, base="boxes_xyxy")
    if multi_label:   # every class of every anchor is a candidate: the raw scores
        return boxes, scores, None, scores
    best = b.op("ArgMax", [scores], axis=1, keepdims=1, base="best_class")
    if agnostic:
        nms_scores = b.op("GatherElements", [scores, best], axis=1, base="best_score")
    else:   # every class but the anchor's best scores -1: per-class NMS is then single-label NMS (-1, not 0:
        # never a candidate, whether a runtime keeps scores equal to conf 0 or not)
        classes = b.const(np.arange(head.nc, dtype=np.int64).reshape(1, head.nc, 1), base="classes")
        nms_scores = b.op("Where", [b.op("Equal", [classes, best]), scores, b.const(np.float32(MASKED), base="masked")],
                          base="best_only")
    return boxes, nms_scores, best, scores


def add_ort(model: onnx.ModelProto, head: DetectionHead, s: NmsSettings) -> None:
    b = Builder(model, "onnxrep_nms", "--nms ort")
    check_free(model, list(OUTPUTS), "--nms")
    boxes, nms_scores, best, _ = _candidates(b, head, s.class_agnostic, s.multi_label)
    sel = b.op("NonMaxSuppression", [boxes, nms_scores, b.const([s.max_det], np.int64, "max_per_class"),
                                     b.const([s.iou], np.float32, "iou"), b.const([s.conf], np.float32, "conf")],
               center_point_box=0)                                         # [N, 3]: image, class, anchor
    col = {k: b.op("Gather", [sel, b.const(np.int64(k), base="column")], axis=1) for k in (0, 1, 2)}
    score = b.op("GatherND", [nms_scores, sel], base="selected_score")         # [N]
    cls = b.op("GatherND", [best, sel]) if s.class_agnostic else col[1]
    images = b.op("Range", [b.const(np.int64(0), base="zero_i"),
                            b.op("Squeeze", [b.dim(boxes, 0)], axes=[0]) if b.opset < 13 else
                            b.op("Squeeze", [b.dim(boxes, 0), b.const([0], np.int64, "axes")]),
                            b.const(np.int64(1), base="one_i")])               # [B]
    mine = b.op("Equal", [b.unsqueeze(col[0], [0]), b.unsqueeze(images, [1])], base="per_image")   # [B, N]
    ranked = b.op("Where", [mine, b.unsqueeze(score, [0]), b.const(np.float32(-np.inf), base="minus_inf")])
    k = b.op("Min", [b.dim(sel, 0), b.const([s.max_det], np.int64, "max_det")], base="k")
    top, order = b.op("TopK", [ranked, k], outputs=2, axis=1, largest=1, sorted=1)     # [B, k]
    count = b.reduce_sum(b.op("Cast", [mine], to=TensorProto.INT64), [1])              # [B, 1]
    positions = b.unsqueeze(b.op("Range", [b.const(np.int64(0), base="zero_i"),
                                           b.op("Squeeze", [k], axes=[0]) if b.opset < 13 else
                                           b.op("Squeeze", [k, b.const([0], np.int64, "axes")]),
                                           b.const(np.int64(1), base="one_i")]), [0])  # [1, k]
    valid = b.op("Less", [positions, count], base="valid")                             # [B, k]
    anchor = b.op("Gather", [col[2], order], axis=0)                                   # [B, k]
    classes = b.op("Gather", [cls, order], axis=0)
    index = b.op("Expand", [b.unsqueeze(anchor, [2]),
                            b.op("Concat", [b.op("Shape", [anchor]), b.const([4], np.int64, "four")], axis=0)])
    picked = b.op("GatherElements", [boxes, index], axis=1)                            # [B, k, 4]
    pad = b.op("Sub", [b.const([s.max_det], np.int64, "max_det"), k], base="pad")
    zeros2 = b.const([0, 0, 0], np.int64, "pads_head")
    pads2 = b.op("Concat", [zeros2, pad], axis=0)                                      # [0, 0, 0, K-k]
    pads3 = b.op("Concat", [b.const([0, 0, 0, 0], np.int64, "pads_head"), pad, b.const([0], np.int64, "zero")], axis=0)
    f0, i0 = b.const(np.float32(0), base="zero"), b.const(np.int64(0), base="zero_i")
    b.op("Pad", [b.op("Where", [b.unsqueeze(valid, [2]), picked, f0]), pads3, f0], out_names=["det_boxes"])
    b.op("Pad", [b.op("Where", [valid, top, f0]), pads2, f0], out_names=["det_scores"])
    b.op("Cast", [b.op("Pad", [b.op("Where", [valid, classes, i0]), pads2, i0])], to=TensorProto.INT32,
         out_names=["det_classes"])
    b.op("Cast", [b.op("Min", [count, b.const([[s.max_det]], np.int64, "max_det")])], to=TensorProto.INT32,
         out_names=["num_dets"])
    replace_output(model, head.output, _output_infos(head, s.max_det))


def add_trt(model: onnx.ModelProto, head: DetectionHead, s: NmsSettings) -> None:
    """One EfficientNMS_TRT node (attributes as TensorRT's plugin documents them) on the masked scores."""
    b = Builder(model, "onnxrep_nms", "--nms trt")
    check_free(model, list(OUTPUTS), "--nms")
    # the best-class mask in both modes: with class_agnostic=1 the plugin then suppresses across classes and
    # still reports each anchor's best class; multi_label: the raw scores (the plugin's own semantics)
    boxes, nms_scores, _, _ = _candidates(b, head, False, s.multi_label)
    scores = b.op("Transpose", [nms_scores], perm=[0, 2, 1], base="scores_anchors_first")   # [B, A, nc]
    b.op("EfficientNMS_TRT", [boxes, scores], outputs=4, domain=TRT_DOMAIN, base="EfficientNMS_TRT",
         out_names=list(OUTPUTS), background_class=-1, box_coding=0, iou_threshold=float(s.iou),
         max_output_boxes=int(s.max_det), plugin_version="1", score_activation=0,
         score_threshold=float(s.conf), class_agnostic=int(s.class_agnostic))
    if not any(o.domain == TRT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(TRT_DOMAIN, 1))
    replace_output(model, head.output, _output_infos(head, s.max_det))


def _output_infos(head: DetectionHead, k: int) -> list[onnx.ValueInfoProto]:
    batch = head.batch if head.batch is not None else "batch"
    return [helper.make_tensor_value_info("num_dets", TensorProto.INT32, [batch, 1]),
            helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [batch, k, 4]),
            helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [batch, k]),
            helper.make_tensor_value_info("det_classes", TensorProto.INT32, [batch, k])]


def add_nms(model: onnx.ModelProto, head: DetectionHead, settings: NmsSettings) -> None:
    settings.check()
    (add_ort if settings.kind == "ort" else add_trt)(model, head, settings)
