"""A plain numpy NMS with the embedded NMS's semantics (deploy/nms.py): what its outputs must equal.

Greedy and per image: each anchor's best class (the first on equal scores; multi_label: every class of every
anchor), candidates with score > conf,
per-class NMS in descending score order (the lower anchor first on equal scores) suppressing IoU > iou, at
most max_det kept per class, then the max_det best of the image (the earlier in class order first on equal
scores, as TopK does). Everything in float32, with the IoU computed as onnxruntime's NonMaxSuppression
computes it (corners sorted, intersection, then union = area1 + area2 - intersection), so the comparison
can be exact: the same boxes, scores and classes, bit for bit.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def candidates(y: np.ndarray, coding: str, layout: str = "anchors-last") -> tuple[np.ndarray, np.ndarray]:
    """(corners [A, 4], class scores [nc, A]) of one image's head output, with the graph's float32
    arithmetic: y [4+nc, A], or [A, 5+nc] for layout "anchors-first-obj" (score = objectness x class)."""
    y = np.asarray(y, F32)
    if layout == "anchors-first-obj":
        t = np.ascontiguousarray(y[:, :4])
        scores = np.ascontiguousarray((y[:, 5:] * y[:, 4:5]).T)
    elif layout == "anchors-first":
        t = np.ascontiguousarray(y[:, :4])
        scores = np.ascontiguousarray(y[:, 4:].T)
    else:
        t = np.ascontiguousarray(y[:4].T)
        scores = y[4:]
    if coding == "xyxy":
        return t, scores
    half = t[:, 2:4] * F32(0.5)
    return np.concatenate([t[:, 0:2] - half, t[:, 0:2] + half], axis=1), scores


def suppressed(box: np.ndarray, others: np.ndarray, iou: float) -> np.ndarray:
    """Which of `others` [n, 4] a kept `box` [4] suppresses: IoU > iou, computed in float32 like onnxruntime."""
    b = np.asarray(box, F32)
    o = np.asarray(others, F32)
    ax0, ax1 = min(b[0], b[2]), max(b[0], b[2])
    ay0, ay1 = min(b[1], b[3]), max(b[1], b[3])
    ox0, ox1 = np.minimum(o[:, 0], o[:, 2]), np.maximum(o[:, 0], o[:, 2])
    oy0, oy1 = np.minimum(o[:, 1], o[:, 3]), np.maximum(o[:, 1], o[:, 3])
    ix0, ix1 = np.maximum(ax0, ox0), np.minimum(ax1, ox1)
    iy0, iy1 = np.maximum(ay0, oy0), np.minimum(ay1, oy1)
    inter = (ix1 - ix0) * (iy1 - iy0)
    area = (ax1 - ax0) * (ay1 - ay0)
    areas = (ox1 - ox0) * (oy1 - oy0)
    union = (area + areas) - inter
    ok = (ix1 > ix0) & (iy1 > iy0) & (inter > 0) & (area > 0) & (areas > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ok, inter / np.where(ok, union, F32(1)), F32(0)).astype(F32)
    return ok & (ratio > F32(iou))


def greedy(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float, limit: int) -> list[int]:
    """Indices kept by greedy NMS among scores > conf, best first (equal scores: lower index first)."""
    cand = np.flatnonzero(scores > F32(conf))
    order = cand[np.argsort(-scores[cand], kind="stable")]
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[~suppressed(boxes[i], boxes[rest], iou)]
    return keep


def image_detections(y: np.ndarray, coding: str, conf: float, iou: float, max_det: int, agnostic: bool,
                     layout: str = "anchors-last", multi_label: bool = False) -> list[tuple[float, int, int]]:
    """(score, class, anchor) of one image's head output, in output order."""
    boxes, scores = candidates(y, coding, layout)
    best = np.argmax(scores, axis=0)
    top = scores[best, np.arange(scores.shape[1])]
    selected = []
    if multi_label:
        for c in range(scores.shape[0]):
            selected += [(float(scores[c, a]), c, a) for a in greedy(boxes, scores[c], conf, iou, max_det)]
    elif agnostic:
        selected = [(float(top[a]), int(best[a]), a) for a in greedy(boxes, top, conf, iou, max_det)]
    else:
        for c in range(scores.shape[0]):
            mine = np.where(best == c, top, F32(-1)).astype(F32)
            selected += [(float(top[a]), c, a) for a in greedy(boxes, mine, conf, iou, max_det)]
    order = sorted(range(len(selected)), key=lambda k: (-selected[k][0], k))   # TopK: lower index first on ties
    return [selected[k] for k in order[:max_det]]


def reference_nms(y: np.ndarray, coding: str, conf: float, iou: float, max_det: int,
                  agnostic: bool = False, layout: str = "anchors-last", multi_label: bool = False) -> dict[str, np.ndarray]:
    """The four EfficientNMS-style outputs for y [B, 4+nc, A] (or [B, A, 5+nc], see candidates)."""
    batch = y.shape[0]
    out = {"num_dets": np.zeros((batch, 1), np.int32), "det_boxes": np.zeros((batch, max_det, 4), F32),
           "det_scores": np.zeros((batch, max_det), F32), "det_classes": np.zeros((batch, max_det), np.int32)}
    for i in range(batch):
        dets = image_detections(y[i], coding, conf, iou, max_det, agnostic, layout, multi_label)
        boxes, _ = candidates(y[i], coding, layout)
        out["num_dets"][i, 0] = len(dets)
        for k, (score, cls, anchor) in enumerate(dets):
            out["det_boxes"][i, k] = boxes[anchor]
            out["det_scores"][i, k] = score
            out["det_classes"][i, k] = cls
    return out
