"""Detection heads: WongKinYiu (Dual)DDetect with in-graph decode, and the MIT per-level layout.

A "half" is one set of per-level branches (cv2/cv3 + dfl for the aux half and for DDetect,
cv4/cv5 + dfl2 for the main half of DualDDetect); in the converted (gelan) graph the main half
is named cv2/cv3/dfl but keyed to cv4/cv5/dfl2 so it draws the yolov9 main weights.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import moments as M
from . import weights as W
from .blocks import T

REG_MAX = 16
STRIDES = (8, 16, 32)


class Half(NamedTuple):
    xs: list        # three T, strides 8/16/32
    box: tuple      # (attr, key attr) of the ModuleList of box branches
    cls: tuple
    dfl: tuple


def widths(ch0, nc):
    """(box width c2, class width c3) of a head half, from the channels of its first input."""
    c2 = math.ceil(max(ch0 // 4, REG_MAX * 4, 16) / 4) * 4
    return c2, max(ch0, min(nc * 2, 128))


def level_convs(net, x: T, sc, half: Half, i, nc):
    """Box: Conv3 -> Conv3(g=4) -> Conv2d(64, g=4, bias 1.0); class: Conv3 -> Conv3 -> Conv2d(nc)."""
    c2, c3 = widths(half.xs[0].c, nc)
    sb = sc.item(half.box[0], i, half.box[1])
    b = net.conv(x, sb.seq(0), c2, 3)
    b = net.conv(b, sb.seq(1), c2, 3, g=4)
    w, _ = W.conv_bias(net.o.seed, sb.seq(2).k, 4 * REG_MAX, c2 // 4, 1)
    bias = W.detect_bias_box(4 * REG_MAX)
    b = b.to(net.conv2d(b.name, sb.seq(2), w, bias, 1, g=4), M.conv(b.st, w, 4, bias))
    scl = sc.item(half.cls[0], i, half.cls[1])
    c = net.conv(x, scl.seq(0), c3, 3)
    c = net.conv(c, scl.seq(1), c3, 3)
    w, _ = W.conv_bias(net.o.seed, scl.seq(2).k, nc, c3, 1)
    bias = W.detect_bias_cls(nc, STRIDES[i])
    c = c.to(net.conv2d(c.name, scl.seq(2), w, bias, 1), M.conv(c.st, w, bias=bias))
    return b, c


def view(net, x, dims, sc, shape=None, known=None):
    """x.view(*dims): dims are ints or ('d', i) = dim i of `shape` (a Shape output; default Shape(x)).

    With shape_chains it is written as TorchScript does (Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape); otherwise as one constant shape, a symbolic batch copied with 0."""
    g = net.g
    where = _where(sc)
    if net.o.shape_chains:
        shape = shape or g.node("Shape", [x], sc.op("Shape"))
        pieces = []
        for d in dims:
            if isinstance(d, tuple):
                v = g.node("Gather", [shape, g.ints(where, d[1])], sc.op("Gather"), axis=0)
                pieces.append(g.node("Unsqueeze", [v, g.ints(where, [0])], sc.op("Unsqueeze")))
            else:
                pieces.append(g.ints(where, [d]))
        target = g.node("Concat", pieces, sc.op("Concat"), axis=0)
    else:
        batch = net.o.batch if isinstance(net.o.batch, int) else 0
        vals = [(batch if d[1] == 0 else known[d[1]]) if isinstance(d, tuple) else d for d in dims]
        target = g.ints(where, vals)
    return g.node("Reshape", [x, target], sc.op("Reshape"))


def anchors(imgsz):
    """Anchor centres (cell + 0.5) as [1, 2, A] and strides as [1, A], levels concatenated."""
    pts, st = [], []
    for s in STRIDES:
        h, w = imgsz[0] // s, imgsz[1] // s
        sy, sx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5,
                             indexing="ij")
        pts.append(np.stack([sx.ravel(), sy.ravel()]))
        st.append(np.full(h * w, s, np.float32))
    return np.concatenate(pts, 1)[None], np.concatenate(st)[None]


def ddetect(net, sc, halves, nc, out_names):
    """(Dual)DDetect in export mode: one [B, 4+nc, A] tensor per half, in `halves` order."""
    g = net.g
    no = nc + 4 * REG_MAX
    shape = g.node("Shape", [halves[0].xs[0].name], sc.op("Shape")) if net.o.shape_chains else None
    d = [[] for _ in halves]
    for i in range(len(STRIDES)):
        for j, h in enumerate(halves):
            box, cls = level_convs(net, h.xs[i], sc, h, i, nc)
            d[j].append(g.node("Concat", [box.name, cls.name], sc.op("Concat"), axis=1))
    anc, strides = anchors(net.o.imgsz)
    A = anc.shape[-1]
    outs = []
    for j, h in enumerate(halves):
        flat = [view(net, di, [("d", 0), no, -1], sc, shape) for di in d[j]]
        cat = g.node("Concat", flat, sc.op("Concat"), axis=2)
        # TorchScript pools the split sizes: both heads' Split read one onnx::Split_<n> initializer
        sizes = g.pooled("Split", [4 * REG_MAX, nc]) if net.o.exporter_names else g.ints(_where(sc), [4 * REG_MAX, nc])
        box, cls = g.node("Split", [cat, sizes], sc.op("Split"), n_out=2, axis=1)
        dist = dfl(net, box, sc.attr(h.dfl[0], h.dfl[1]), A)
        dbox = decode(net, dist, sc, anc, strides)
        sig = g.node("Sigmoid", [cls], sc.op("Sigmoid"))
        outs.append(g.node("Concat", [dbox, sig], sc.op("Concat"), axis=1, out=out_names[j]))
    return outs


def dfl(net, box, sc, A):
    """[B,64,A] -> [B,4,16,A] -> [B,16,4,A] -> Softmax(1) -> Conv(16->1, weights 0..15) -> [B,4,A]."""
    g = net.g
    known = (None, 4 * REG_MAX, A)
    shape = g.node("Shape", [box], sc.op("Shape")) if net.o.shape_chains else None
    x = view(net, box, [("d", 0), 4, REG_MAX, ("d", 2)], sc, shape, known)
    x = g.node("Transpose", [x], sc.op("Transpose"), perm=[0, 2, 1, 3])
    x = g.node("Softmax", [x], sc.op("Softmax"), axis=1)
    x = net.conv2d(x, sc.attr("conv"), W.dfl_weight(REG_MAX), None, 1)
    return view(net, x, [("d", 0), 4, ("d", 2)], sc, shape, known)


def decode(net, dist, sc, anc, strides):
    """dist2bbox(xywh=True) * stride: centre = anchor + (rb - lt) / 2, size = lt + rb."""
    g = net.g
    where = _where(sc)
    lt, rb = g.node("Split", [dist, g.ints(where, [2, 2])], sc.op("Split"), n_out=2, axis=1)
    a = g.const(where, anc)
    x1y1 = g.node("Sub", [a, lt], sc.op("Sub"))
    x2y2 = g.node("Add", [a, rb], sc.op("Add"))
    c = g.node("Add", [x1y1, x2y2], sc.op("Add"))
    c = g.node("Div", [c, g.const(where, np.array(2.0, np.float32))], sc.op("Div"))
    wh = g.node("Sub", [x2y2, x1y1], sc.op("Sub"))
    box = g.node("Concat", [c, wh], sc.op("Concat"), axis=1)
    return g.node("Mul", [box, g.const(where, strides)], sc.op("Mul"))


def mit_detect(net, sc, halves, nc):
    """MultimediaTechLab layout: per half and level (class logits, anchor [B,16,4,H,W], box [B,4,H,W])."""
    g = net.g
    outs = []
    for h in halves:
        for i in range(len(STRIDES)):
            x = h.xs[i]
            box, cls = level_convs(net, x, sc, h, i, nc)
            s = sc.item(h.dfl[0], i, h.dfl[1])
            known = (None, 4 * REG_MAX, x.h, x.w)
            # rearrange "B (P R) h w -> B R P h w", P=4
            r = view(net, box.name, [("d", 0), 4, REG_MAX, ("d", 2), ("d", 3)], s, None, known)
            anchor = g.node("Transpose", [r], s.op("Transpose"), perm=[0, 2, 1, 3, 4])
            v = g.node("Softmax", [anchor], s.op("Softmax"), axis=1)
            v = net.conv2d(v, s.attr("anc2vec"), W.dfl_weight(REG_MAX, 3), None, 1)   # Conv3d
            # [:, 0]; TorchScript pools the index: every level of both heads reads one Constant
            index = g.pooled("Gather", 0, as_node=bool(net.o.constant_nodes)) if net.o.exporter_names \
                else g.ints(_where(s), 0)
            vec = g.node("Gather", [v, index], s.op("Gather"), axis=1)
            outs += [(cls.name, (nc, x.h, x.w)), (anchor, (REG_MAX, 4, x.h, x.w)), (vec, (4, x.h, x.w))]
    return outs


def _where(sc):
    return "/" + "/".join(sc.path)
