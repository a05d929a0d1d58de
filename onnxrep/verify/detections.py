"""Do two detectors find the same objects? Agreement after NMS, tie-aware (the float16 accuracy report).

For a YOLO output ``[B, 4+nc, A]`` (centre x, centre y, width, height, then nc class scores per anchor):
detections are per-class greedy NMS (score >= conf, IoU > iou suppresses, at most max_det per image), as
the official detect scripts do. Two lists are matched greedily, best IoU first: a match is the same class
with IoU >= 0.5. A detection without a match is a *tie*, not a disagreement, when the other model scored
the same anchor and class within the measured score error eps, with a box over it (IoU >= 0.5): then only
a threshold fell between two nearly equal numbers (the conf cut, NMS between two nearly equal boxes, the
max_det cut, two classes' nearly equal scores). Anything else is a disagreement. This matters for
random-weight models, whose scores are all small and nearly equal. Agreement is matched / (matched +
disagreements); ties are reported separately. When the reference finds fewer than ``min_detections`` at
conf (a random-weight model's scores are all small), conf is lowered to the score of its 300th best
candidate, and the report says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def is_yolo_output(shape) -> bool:
    """[B, 4+nc, A] with A the larger axis (anchors), nc >= 1."""
    return len(shape) == 3 and shape[1] >= 5 and shape[2] > shape[1]


def layout_by_shape(shape) -> str | None:
    """anchors-last [B, 4+nc, A] or anchors-first [B, A, 4+nc] (A the larger axis, nc >= 1), else None."""
    if is_yolo_output(shape):
        return "anchors-last"
    return "anchors-first" if len(shape) == 3 and shape[2] >= 5 and shape[1] > shape[2] else None


def head_layouts(model, shapes: dict) -> dict[str, str]:
    """output -> layout for the outputs in `shapes` ({name: shape}) that are YOLO detections: the layout the
    deploy code recognises in the graph (deploy/head.py: YOLOv9 [B, 4+nc, A], YOLOv5/v7 decoded
    [B, A, 5+nc] with objectness), else by shape alone (layout_by_shape)."""
    from onnxrep.deploy.head import find_heads

    try:
        found = {h.output: (h.layout if h.layout != "split" else split_layout(h.scores, h.boxes_first, h.scores_first))
                 for h in find_heads(model)[0]}
    except Exception:  # noqa: BLE001 -- a graph the recogniser can't read: shapes alone decide
        found = {}
    out = {}
    for name, shape in shapes.items():
        layout = found.get(name) or layout_by_shape(shape)
        if layout and (not layout.startswith("split:") or split_parts(layout)[0] in shapes):
            out[name] = layout
    return out


def split_layout(scores: str, boxes_first: bool, scores_first: bool) -> str:
    """The layout of a split head's boxes output: "split:<boxes first><scores first>:<scores output>"."""
    return f"split:{int(boxes_first)}{int(scores_first)}:{scores}"


def split_parts(layout: str) -> tuple[str, bool, bool]:
    """(scores output, boxes first, scores first) of a split_layout string."""
    flags, scores = layout[len("split:"):].split(":", 1)
    return scores, flags[0] == "1", flags[1] == "1"


def join_split(boxes, scores, boxes_first: bool, scores_first: bool) -> np.ndarray:
    """A split head's outputs as one [B, 4+nc, A] array, in their own dtype (what deploy/heads_other.join_split
    computes in the graph: Transpose and Concat, exact)."""
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    return np.concatenate([boxes.transpose(0, 2, 1) if boxes_first else boxes,
                           scores.transpose(0, 2, 1) if scores_first else scores], axis=1)


def detection_view(values: dict, name: str, layout: str, rename: dict | None = None, dtype=None) -> np.ndarray:
    """Output `name` of `values` ({output: array}) as [B, 4+nc, A] float64 (anchors_last); a split head's boxes
    joined with its scores output (its name mapped through `rename`, the other model's names)."""
    cast = (lambda v: np.asarray(v, dtype)) if dtype is not None else np.asarray
    if not layout.startswith("split:"):
        return anchors_last(cast(values[name]), layout)
    scores, boxes_first, scores_first = split_parts(layout)
    return join_split(np.asarray(cast(values[name]), np.float64),
                      np.asarray(cast(values[(rename or {}).get(scores, scores)]), np.float64), boxes_first, scores_first)


def anchors_last(y, layout: str) -> np.ndarray:
    """A detection output as [B, 4+nc, A] float64 (box, then one score per class): anchors-first transposed;
    with objectness ([B, A, 5+nc], anchors-first-obj) each class score is objectness x class, as YOLOv5/v7's
    NMS scores it."""
    y = np.asarray(y, np.float64)
    if layout == "anchors-last":
        return y
    y = y.transpose(0, 2, 1)
    if layout == "anchors-first-obj":
        return np.concatenate([y[:, :4], y[:, 4:5] * y[:, 5:]], axis=1)
    return y


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS: indices kept, best score first (ties: lower index first, as a stable sort gives)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[_iou(boxes[i], boxes[rest]) <= iou]
    return keep


def detect(y: np.ndarray, conf: float, iou: float, max_det: int) -> list[dict]:
    """Detections of one image from y [4+nc, A]: per-class NMS, the best max_det. Each: box (x1, y1, x2, y2),
    score, cls.

    One greedy pass over every (class, anchor) above conf in score order (ties: class, then anchor), a
    candidate suppressed only by a kept one of its own class: the same detections as NMS class by class
    then sorted, stopped at max_det (nothing later can change what was kept before)."""
    y = np.asarray(y, np.float64)
    boxes = _boxes(y)
    scores = y[4:]
    cls, anchor = np.nonzero(scores >= conf)   # class-major, anchors ascending
    if not cls.size:
        return []
    order = np.argsort(-scores[cls, anchor], kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        same = np.flatnonzero(cls[rest] == cls[i])
        if same.size:
            drop = ~(_iou(boxes[anchor[i]], boxes[anchor[rest[same]]]) <= iou)   # NaN overlaps suppress too
            rest = np.delete(rest, same[drop])
        order = rest
    return [{"box": boxes[anchor[k]], "score": float(scores[cls[k], anchor[k]]), "cls": int(cls[k]),
             "anchor": int(anchor[k])} for k in keep]


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [N, 4] with every box of b [M, 4] (x1, y1, x2, y2): [N, M]."""
    a, b = a[:, None, :], b[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    areas = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    with np.errstate(invalid="ignore", over="ignore"):
        return inter / np.maximum(areas - inter, 1e-12)


@dataclass
class Agreement:
    matched: int = 0
    disagreements: int = 0
    ties: int = 0
    mean_iou: float = 1.0
    max_score_diff: float = 0.0
    eps: float = 0.0
    conf: float = 0.25
    conf_lowered: bool = False
    worst: str = ""                  # the worst offender, in words
    details: list = field(default_factory=list)

    @property
    def rate(self) -> float:
        total = self.matched + self.disagreements
        return 1.0 if total == 0 else self.matched / total

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rate"] = self.rate
        return d

    def line(self) -> str:
        conf = f"conf {self.conf:.3g}" + (" (lowered: too few scores reach it on these inputs)" if self.conf_lowered else "")
        text = (f"detections: {self.rate:.2%} agree ({self.matched} matched, {self.disagreements} disagree, "
                f"{self.ties} ties within the score error {self.eps:.2g}); mean IoU of matches {self.mean_iou:.4f}, "
                f"max score difference {self.max_score_diff:.3g} [{conf}]")
        return text + (f"; worst: {self.worst}" if self.worst else "")


def _boxes(y: np.ndarray) -> np.ndarray:
    cx, cy, w, h = np.asarray(y[:4], np.float64)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def _overlaps(a: list[dict], b: list[dict]) -> list[tuple[float, int, int]]:
    """(IoU, i, j) of every pair of detections a[i], b[j] of one class that overlap at least 0.5 (a NaN box
    overlaps nothing), largest IoU first (ties: larger i, then larger j first)."""
    if not a or not b:
        return []
    m = _iou_matrix(np.array([x["box"] for x in a]), np.array([y["box"] for y in b]))
    same = np.array([x["cls"] for x in a])[:, None] == np.array([y["cls"] for y in b])[None, :]
    i, j = np.nonzero(same & (m >= 0.5))
    order = np.lexsort((-j, -i, -m[i, j]))
    return [(float(m[i[k], j[k]]), int(i[k]), int(j[k])) for k in order]


def _unexplained(d: dict, other: np.ndarray, eps: float) -> bool:
    """Is a detection's absence from the other list a real difference? Not when the other model scored the
    same anchor and class within eps with a box over it (IoU >= 0.5): a threshold (conf, NMS, max_det) fell
    between two nearly equal numbers."""
    score = float(other[4 + d["cls"], d["anchor"]])
    box = _boxes(other[:, d["anchor"]:d["anchor"] + 1])
    return abs(score - d["score"]) > eps or float(_iou(d["box"], box)[0]) < 0.5


def agreement(refs: list[np.ndarray], news: list[np.ndarray], *, conf: float = 0.25, iou: float = 0.45,
              max_det: int = 300, min_detections: int = 20, eps: float | None = None,
              cache: dict | None = None) -> Agreement:
    """refs/news: YOLO outputs [B, 4+nc, A] of the reference and the other model, sample by sample.

    eps: the score error that makes a tie. verify() passes the one it measured with the float32 model's
    noisy twin (scores moved by float16 rounding alone). Without it, the 99th percentile of the differences
    of the scores that matter (at least half the cut in either model) stands in: a broken model that moves
    a few scores far cannot widen it (the largest difference would; that is why it is not used)."""
    images = [(r[i], n[i]) for r, n in zip(refs, news) for i in range(r.shape[0])]
    cache = {} if cache is None else cache   # the reference's detections, by (sample, item, conf): each found once

    def found(k: int, conf: float) -> list[dict]:
        key = (id(refs[0]), k, conf, iou, max_det)
        if key not in cache:
            cache[key] = detect(images[k][0], conf, iou, max_det)
        return cache[key]

    lowered = False
    if sum(len(found(k, conf)) for k in range(len(images))) < min_detections:
        best = np.sort(np.concatenate([np.asarray(r[4:], np.float64).max(0) for r, _ in images]))[::-1]
        conf = float(best[min(299, best.size - 1)])
        lowered = True
    if eps is None:
        pairs = [(np.asarray(r[4:], np.float64), np.asarray(n[4:], np.float64)) for r, n in images]
        near = np.concatenate([np.abs(a - b)[np.maximum(a, b) >= conf / 2] for a, b in pairs])
        eps = float(np.quantile(near, 0.99)) if near.size else 0.0
    result = Agreement(eps=eps, conf=conf, conf_lowered=lowered)
    ious, score_diffs = [], []
    worst_gap = -1.0
    for k, (r, n) in enumerate(images):
        a, b = found(k, conf), detect(n, conf, iou, max_det)
        used_a, used_b = set(), set()
        for overlap, i, j in _overlaps(a, b):   # best overlap first
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            ious.append(overlap)
            score_diffs.append(abs(a[i]["score"] - b[j]["score"]))
        for side, mine, used in (("only the reference", a, used_a), ("only the other", b, used_b)):
            for i, d in enumerate(mine):
                if i in used:
                    continue
                if _unexplained(d, n if side == "only the reference" else r, eps):
                    result.disagreements += 1
                    gap = d["score"] - conf
                    if gap > worst_gap:
                        worst_gap = gap
                        theirs = float((n if side == "only the reference" else r)[4 + d["cls"], d["anchor"]])
                        result.worst = (f"image {k}: class {d['cls']} score {d['score']:.4g} at anchor {d['anchor']} "
                                        f"found by {side} model (the other scored it {theirs:.4g})")
                else:
                    result.ties += 1
    result.matched = len(ious)
    result.mean_iou = float(np.mean(ious)) if ious else 1.0
    result.max_score_diff = float(max(score_diffs)) if score_diffs else 0.0
    return result


def top_anchor_errors(ref: np.ndarray, got: np.ndarray, top: int = 100,
                      min_score: float = 0.0) -> tuple[float, float, int]:
    """(largest box error in pixels, largest score error relative to the score, anchors checked) over the
    `top` best anchors of each image.

    ref, got: [B, 4+nc, A]. Per image, the anchors with the highest class score in ref, at most `top` of
    them and only those scoring at least `min_score` (YOLO's mAP evaluation drops anchors below its conf,
    0.001 in YOLOv9's val.py); at each, the largest difference of the four box values, and of ref's best
    class score relative to that score. A NaN or infinite difference, or a change of a zero score, is inf.
    """
    px = rel = 0.0
    checked = 0
    for r, g in zip(np.asarray(ref, np.float64), np.asarray(got, np.float64)):
        score = r[4:].max(0)
        best = np.argsort(score)[::-1][:top]
        best = best[score[best] >= min_score]
        if not best.size:
            continue
        checked += best.size
        cls = r[4:].argmax(0)[best]
        box = np.abs(r[:4, best] - g[:4, best])
        diff, size = np.abs(r[4 + cls, best] - g[4 + cls, best]), np.abs(r[4 + cls, best])
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(diff == 0, 0.0, diff / size)
        px = max(px, float(np.max(np.where(np.isfinite(box), box, np.inf))))
        rel = max(rel, float(np.max(np.where(np.isfinite(relative), relative, np.inf))))
    return px, rel, checked
