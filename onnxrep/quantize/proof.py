"""The int8 model against the float one: outputs on held-out images, the errors that matter, and mAP.

    outs = run_images(model, images)                  # per output: [N, ...] (one image per run)
    err = output_error(ref, got, layouts)             # one number, lower is better (chooses the method)
    facts = compare(ref, got, layouts)                # agreement, box/score error, SQNR per output
    m = mean_ap(outs[k], evals)                       # pycocotools: mAP50-95 and mAP50

All runs in onnxruntime with graph optimizations disabled: the Q/DQ model computes what its Q/DQ nodes say
(the simulated int8 a runtime's int8 kernels implement), not what a fusion makes of it.

Detection outputs (verify/detections.py recognises the layout) are compared as detections: agreement after
NMS (at conf 0.25, lowered for a random-weight model as in the float16 proof; a tie is a score within
0.1 x conf of the cut), the largest box
error in pixels and score error on each image's 100 best anchors. A classifier's logits [B, K >= 10] by
top-1 agreement and SQNR (an embedding's argmax agreeing says nothing alone). Anything else by SQNR (signal
to quantization noise, dB) of at least 20 dB.
"""

from __future__ import annotations

import contextlib
import io as _pyio

import numpy as np
import onnx

from onnxrep.io import OnnxrepError
from onnxrep.verify.detections import agreement, anchors_last, detection_view, head_layouts, nms, top_anchor_errors

MIN_SQNR_DB = 20.0
MAX_DB = 300.0   # an exact output's SQNR (infinite) is reported as this
TIE = 0.1   # a detection only one model finds is a tie when the other scored it within 0.1 x conf (a threshold
            # fell between two nearly equal scores); a fixed share, not one measured on the int8 model itself


def run_images(model: onnx.ModelProto, arrays: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    """Every output, the images run one at a time (verify.run_outputs: optimizations off) and stacked:
    output -> [N, ...]."""
    from onnxrep.verify import run_outputs

    names = [o.name for o in model.graph.output]
    per = run_outputs(model, [{input_name: x[None]} for x in arrays], names)
    return {n: np.concatenate([p[n] for p in per]) for n in names}


def layouts(model: onnx.ModelProto, outputs: dict[str, np.ndarray]) -> dict[str, str]:
    return head_layouts(model, {k: v.shape for k, v in outputs.items()})


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref ** 2))
    if not np.isfinite(noise):
        return -np.inf
    return np.inf if noise == 0 else 10 * np.log10(max(signal, 1e-300) / noise)


def _top(ref: np.ndarray, got: np.ndarray, top: int = 100):
    """Per image, the `top` best anchors of ref: (1 - IoU of the two boxes, |score difference|) means."""
    ious, diffs = [], []
    for r, g in zip(ref, got):
        score = r[4:].max(0)
        best = np.argsort(score)[::-1][:top]
        cls = r[4:, best].argmax(0)
        a, b = r[:4, best], g[:4, best]

        def corners(x):
            return x[0] - x[2] / 2, x[1] - x[3] / 2, x[0] + x[2] / 2, x[1] + x[3] / 2

        ax1, ay1, ax2, ay2 = corners(a)
        bx1, by1, bx2, by2 = corners(b)
        inter = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None) * \
            np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
        union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        ious.append(1 - iou)
        diffs.append(np.abs(r[4 + cls, best] - g[4 + cls, best]))
    return float(np.mean(np.concatenate(ious))), float(np.mean(np.concatenate(diffs)))


def output_error(ref: dict, got: dict, kinds: dict[str, str]) -> float:
    """One number per comparison (lower is better), summed over outputs: for a detection output the best
    anchors' mean (1 - IoU) plus mean score error; else the relative RMS error."""
    total = 0.0
    for name, r in ref.items():
        g = got[name]
        if not np.all(np.isfinite(g)):
            return np.inf
        if name in kinds:
            a, b = detection_view(ref, name, kinds[name]), detection_view(got, name, kinds[name])
            box, score = _top(a, b)
            total += box + score
        else:
            r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
            total += float(np.sqrt(np.mean((r64 - g64) ** 2)) / max(np.sqrt(np.mean(r64 ** 2)), 1e-30))
    return total


def compare(ref: dict, got: dict, kinds: dict[str, str], min_agreement: float) -> dict:
    """Per output: what it is compared by, the figures, and whether the target holds."""
    out = {}
    for name, r in ref.items():
        g = got[name]
        facts: dict = {"sqnr_db": round(min(_sqnr(r, g), MAX_DB), 2)}   # capped: JSON has no Infinity
        if name in kinds:
            a, b = detection_view(ref, name, kinds[name]), detection_view(got, name, kinds[name])
            conf = agreement([a], [b], conf=0.25, min_detections=20, eps=0.0).conf
            agree = agreement([a], [b], conf=conf, min_detections=0, eps=TIE * conf)
            px, rel, checked = top_anchor_errors(a, b, top=100, min_score=0.001)
            facts.update(kind="detections", agreement=round(agree.rate, 4), matched=agree.matched,
                         disagreements=agree.disagreements, ties=agree.ties, conf=agree.conf,
                         conf_lowered=agree.conf_lowered, mean_iou=round(agree.mean_iou, 4),
                         box_px=round(px, 3), score_rel=round(rel, 4), anchors_checked=checked,
                         ok=bool(agree.rate >= min_agreement), line=agree.line())
        elif r.ndim == 2 and r.shape[1] >= 10:   # logits: the class must agree, and the values stay close
            top1 = float(np.mean(r.argmax(1) == g.argmax(1)))
            facts.update(kind="top-1", agreement=round(top1, 4),
                         ok=bool(top1 >= min_agreement and facts["sqnr_db"] >= MIN_SQNR_DB))
        else:
            facts.update(kind="sqnr", ok=bool(facts["sqnr_db"] >= MIN_SQNR_DB))
        out[name] = facts
    return out


def detections_for_map(y: np.ndarray, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> list[list]:
    """Per image of an anchors-last output [B, 4+nc, A]: [x1, y1, x2, y2, score, class] rows, multi-label
    (every class scoring above conf), NMS per class, at most max_det: YOLOv9 val.py's settings for mAP."""
    out = []
    for r in np.asarray(y, np.float64):
        cx, cy, w, h = r[:4]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        rows = []
        for c in range(r.shape[0] - 4):
            s = r[4 + c]
            idx = np.nonzero(s > conf)[0]
            if not idx.size:
                continue
            idx = idx[np.argsort(s[idx])[::-1][:3000]]
            keep = idx[nms(boxes[idx], s[idx], iou)]
            rows.extend([*boxes[k], s[k], c] for k in keep)
        rows.sort(key=lambda x: -x[4])
        out.append(rows[:max_det])
    return out


def mean_ap(y: np.ndarray, layout: str, images) -> dict:
    """mAP50-95 and mAP50 (pycocotools COCOeval) of a detection output on labelled images (data.Images)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise OnnxrepError("--eval needs pycocotools: pip install 'onnxrep[int8]'") from None
    dets = detections_for_map(anchors_last(y, layout))
    nc = anchors_last(y[:1], layout).shape[1] - 4
    gt = {"images": [{"id": i} for i in range(len(dets))], "categories": [{"id": c} for c in range(nc)],
          "annotations": []}
    for k, (box, cls, img) in enumerate(zip(images.boxes, images.classes, images.image_index)):
        w, h = box[2] - box[0], box[3] - box[1]
        gt["annotations"].append({"id": k + 1, "image_id": int(img), "category_id": int(cls), "iscrowd": 0,
                                  "bbox": [float(box[0]), float(box[1]), float(w), float(h)], "area": float(w * h)})
    results = [{"image_id": i, "category_id": int(d[5]), "score": float(d[4]),
                "bbox": [float(d[0]), float(d[1]), float(d[2] - d[0]), float(d[3] - d[1])]}
               for i, rows in enumerate(dets) for d in rows]
    with contextlib.redirect_stdout(_pyio.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        if not results:
            return {"map50_95": 0.0, "map50": 0.0, "detections": 0, "objects": len(images.boxes)}
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50_95": round(float(ev.stats[0]) * 100, 2), "map50": round(float(ev.stats[1]) * 100, 2),
            "detections": len(results), "objects": len(images.boxes)}
