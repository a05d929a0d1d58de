"""verify/detections.py's NMS and matching against the plain algorithms they replace (one class at a time,
every pair compared in Python): the same detections and the same pairs, in the same order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from onnxrep.verify.detections import _overlaps, detect


def _iou(box, boxes):
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    with np.errstate(invalid="ignore"):
        return inter / np.maximum(union, 1e-12)


def _plain_detect(y, conf, iou, max_det):
    """Greedy NMS class by class, all detections sorted by score, cut at max_det."""
    cx, cy, w, h = y[:4]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    out = []
    for c in range(y.shape[0] - 4):
        sel = np.flatnonzero(y[4 + c] >= conf)
        order = sel[np.argsort(-y[4 + c, sel], kind="stable")]
        while order.size:
            i = order[0]
            out.append((float(y[4 + c, i]), c, int(i)))
            rest = order[1:]
            order = rest[_iou(boxes[i], boxes[rest]) <= iou]
    out.sort(key=lambda d: -d[0])
    return out[:max_det]


def _head(seed, anchors, classes, ties, nan):
    rng = np.random.default_rng(seed)
    y = np.empty((4 + classes, anchors))
    y[0:2] = rng.uniform(0, 64, (2, anchors))
    y[2:4] = rng.uniform(1, 24, (2, anchors))
    y[4:] = rng.uniform(0, 1, (classes, anchors))
    if ties:   # equal scores across classes and anchors: the order must still be the plain one's
        y[4:] = np.round(y[4:] * 4) / 4
    if nan:
        y[rng.integers(0, 4), rng.integers(0, anchors)] = np.nan
    return y


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), anchors=st.integers(1, 60), classes=st.integers(1, 5), ties=st.booleans(),
       nan=st.booleans(), conf=st.sampled_from([0.0, 0.25, 0.5, 0.9]), iou=st.sampled_from([0.0, 0.3, 0.45, 0.7]),
       max_det=st.integers(1, 80))
def test_detect_is_nms_class_by_class(seed, anchors, classes, ties, nan, conf, iou, max_det):
    y = _head(seed, anchors, classes, ties, nan)
    got = [(d["score"], d["cls"], d["anchor"]) for d in detect(y, conf, iou, max_det)]
    assert got == _plain_detect(y, conf, iou, max_det)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), anchors=st.integers(1, 40), classes=st.integers(1, 3), nan=st.booleans())
def test_overlaps_are_every_same_class_pair(seed, anchors, classes, nan):
    y = _head(seed, anchors, classes, False, nan)
    z = y.copy()
    z[:4] += np.random.default_rng(seed + 1).normal(0, 2, z[:4].shape)
    a, b = detect(y, 0.3, 0.45, 300), detect(z, 0.3, 0.45, 300)
    want = []
    for i, x in enumerate(a):
        for j, w in enumerate(b):
            o = float(_iou(x["box"], w["box"][None])[0])
            if x["cls"] == w["cls"] and o >= 0.5:
                want.append((o, i, j))
    want.sort(reverse=True)
    got = _overlaps(a, b)
    assert [(i, j) for _, i, j in got] == [(i, j) for _, i, j in want]
    assert np.allclose([o for o, _, _ in got], [o for o, _, _ in want])


def test_max_det_stops_early_on_a_crowded_head():
    """A random head with 8400 anchors and 80 classes above a low conf: the best 300, as the plain NMS gives."""
    y = _head(7, 8400, 80, False, False)
    y[2:4] = 4.0   # small boxes: little suppression, tens of thousands of candidates
    got = [(d["score"], d["cls"], d["anchor"]) for d in detect(y, 0.9, 0.45, 300)]
    assert len(got) == 300 and got == _plain_detect(y, 0.9, 0.45, 300)
