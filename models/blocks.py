"""YOLOv9 building blocks as ONNX nodes (yolov9-graphs.md section 1), in every form.

Each block takes and returns `T`: tensor name, C, H, W (tracked for the head and for CBFuse) and
the estimated channel statistics that set the next BatchNorm's running stats (moments.py).
The form only changes how a Conv module lands in the graph:
  bn        Conv(no bias) -> BatchNormalization            (dynamo, optimize=False)
  folded    Conv(W*s, b) ; RepConvN stays Conv3x3 + Conv1x1 + Add   (TorchScript, dynamo default)
  fused     Conv(W*s, b) ; RepConvN is one 3x3 Conv               (official export script)
  converted fused, main branch only                               (the deployable gelan)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import moments as M
from . import weights as W


class T(NamedTuple):
    """A tensor [B, c, h, w] of the graph and the estimate `st` [2, c] of its channel mean/var."""
    name: str
    c: int
    h: int
    w: int
    st: np.ndarray

    def to(self, name, st=None, h=None, w=None):
        st = self.st if st is None else st
        return T(name, st.shape[1], h or self.h, w or self.w, st)


class Net:
    """Emits blocks into a Graph; one instance per model build."""

    def __init__(self, g):
        self.g = g
        self.o = g.o
        self.unmerged = self.o.form in ("bn", "folded")

    # -- the Conv module and its pieces ---------------------------------------------------------
    def conv2d(self, x, sc, w, b, k, s=1, g=1, p=None, computed=False):
        """One ONNX Conv, named like nn.Conv2d under scope `sc`. computed: the weights were computed at
        export (BN folded), which TorchScript names onnx::Conv_<n> rather than by the state dict."""
        p = k // 2 if p is None else p
        names = (sc.pname("weight"), sc.pname("bias"))
        if computed and self.o.exporter_names:
            names = (self.g.exporter_name("Conv"), self.g.exporter_name("Conv"))
        inputs = [x, self.g.param(names[0], w)]
        if b is not None:
            inputs.append(self.g.param(names[1], b))
        elif self.o.dynamo_bias:
            inputs.append(self._dynamo_zero_bias(sc, x, inputs[1]))
        nd = w.ndim - 2
        return self.g.node("Conv", inputs, sc.op("Conv"), dilations=[1] * nd, group=g,
                           kernel_shape=list(w.shape[2:]), pads=[p] * (2 * nd), strides=[s] * nd)

    def _dynamo_zero_bias(self, sc, x, weight):
        # torchlib's aten_convolution with bias=None: Expand(CastLike(0, x), Expand(Shape(w)[0:1], [1]))
        g, where = self.g, _where(sc)
        dim0 = g.node("Shape", [weight], sc.op("Shape"), start=0, end=1)
        shape = g.node("Expand", [dim0, g.ints(where, [1])], sc.op("Expand"))
        zero = g.node("CastLike", [g.const(where, np.array(0.0, np.float32), keep_float32=True), x],
                      sc.op("CastLike"))
        return g.node("Expand", [zero, shape], sc.op("Expand"))

    def silu(self, x, sc):
        s = self.g.node("Sigmoid", [x], sc.op("Sigmoid"))
        return self.g.node("Mul", [x, s], sc.op("Mul"))

    def params(self, x: T, sc, c2, k, g=1):
        """(weight, BN stats, BN output estimate) of Conv module `sc`; the same in every form."""
        return W.conv_bn(self.o.seed, sc.k, c2, k, g, x.st)

    def conv(self, x: T, sc, c2, k=1, s=1, g=1, act=True) -> T:
        """YOLO Conv module: Conv2d(bias=False) -> BatchNorm2d(eps 1e-3) -> SiLU."""
        w, bn, st = self.params(x, sc, c2, k, g)
        if self.o.form == "bn":
            y = self.conv2d(x.name, sc.attr("conv"), w, None, k, s, g)
            y = self._bn(y, sc.attr("bn"), bn)
        else:
            wf, bf = W.fold(w, bn)
            y = self.conv2d(x.name, sc.attr("conv"), wf, bf, k, s, g, computed=True)
        if act:
            y = self.silu(y, sc.attr("act"))
            st = M.silu(st)
        return x.to(y, st, _down(x.h, s), _down(x.w, s))

    def _bn(self, x, sc, stats):
        gamma, beta, mean, var = stats
        p = self.g.param
        ins = [x, p(sc.pname("weight"), gamma), p(sc.pname("bias"), beta),
               p(sc.pname("running_mean"), mean), p(sc.pname("running_var"), var)]
        return self.g.node("BatchNormalization", ins, sc.op("BatchNormalization"),
                           epsilon=W.BN_EPS, momentum=W.BN_MOMENTUM)

    def repconvn(self, x: T, sc, c2) -> T:
        """SiLU(Conv*3x3(x) + Conv*1x1(x)); merged into one 3x3 Conv once fused."""
        if self.unmerged:
            a = self.conv(x, sc.attr("conv1"), c2, 3, act=False)
            b = self.conv(x, sc.attr("conv2"), c2, 1, act=False)
            y = self.g.node("Add", [a.name, b.name], sc.op("Add"))
            st = a.st + b.st
        else:
            w3, bn3, st3 = self.params(x, sc.attr("conv1"), c2, 3)
            w1, bn1, st1 = self.params(x, sc.attr("conv2"), c2, 1)
            wf, bf = W.fuse_repconv(w3, bn3, w1, bn1)
            y = self.conv2d(x.name, sc.attr("conv"), wf, bf, 3, computed=True)
            st = st3 + st1
        return x.to(self.silu(y, sc.attr("act")), M.silu(st))

    # -- composite blocks -----------------------------------------------------------------------
    def split(self, x: T, sc, parts):
        outs = self.g.node("Split", [x.name, self.g.ints(_where(sc), parts)], sc.op("Split"),
                           n_out=len(parts), axis=1)
        outs = [outs] if len(parts) == 1 else outs
        ends = np.cumsum([0] + list(parts))
        return [x.to(o, x.st[:, i:j]) for o, i, j in zip(outs, ends[:-1], ends[1:])]

    def concat(self, xs, sc):
        y = self.g.node("Concat", [x.name for x in xs], sc.op("Concat"), axis=1)
        return xs[0].to(y, np.concatenate([x.st for x in xs], 1))

    def add(self, a: T, b: T, sc):
        return a.to(self.g.node("Add", [a.name, b.name], sc.op("Add")), a.st + b.st)

    def bottleneck(self, x: T, sc):
        """RepNBottleneck(c, c, shortcut=True, e=1.0): x + Conv3x3(RepConvN(x))."""
        y = self.repconvn(x, sc.attr("cv1"), x.c)
        y = self.conv(y, sc.attr("cv2"), x.c, 3)
        return self.add(x, y, sc)

    def repncsp(self, x: T, sc, c2, n):
        c_ = c2 // 2
        a = self.conv(x, sc.attr("cv1"), c_, 1)
        m = sc.attr("m")
        for i in range(n):
            a = self.bottleneck(a, m.seq(i))
        b = self.conv(x, sc.attr("cv2"), c_, 1)
        return self.conv(self.concat([a, b], sc), sc.attr("cv3"), c2, 1)

    def repncspelan4(self, x: T, sc, c2, c3, c4, n):
        y = self.conv(x, sc.attr("cv1"), c3, 1)
        parts = self.split(y, sc, [c3 // 2, c3 // 2])          # .chunk(2, 1)
        for cv in ("cv2", "cv3"):
            s = sc.attr(cv)
            z = self.repncsp(parts[-1], s.seq(0), c4, n)
            parts.append(self.conv(z, s.seq(1), c4, 3))
        return self.conv(self.concat(parts, sc), sc.attr("cv4"), c2, 1)

    def elan1(self, x: T, sc, c2, c3, c4):
        y = self.conv(x, sc.attr("cv1"), c3, 1)
        parts = self.split(y, sc, [c3 // 2, c3 // 2])
        parts.append(self.conv(parts[-1], sc.attr("cv2"), c4, 3))
        parts.append(self.conv(parts[-1], sc.attr("cv3"), c4, 3))
        return self.conv(self.concat(parts, sc), sc.attr("cv4"), c2, 1)

    def avgpool(self, x: T, sc):
        # F.avg_pool2d(x, 2, 1, 0, False, True): shrinks H and W by one before the stride-2 conv
        y = self.g.node("AveragePool", [x.name], sc.op("AveragePool"), ceil_mode=0, count_include_pad=1,
                        kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[1, 1])
        return x.to(y, M.avgpool2(x.st), h=x.h - 1, w=x.w - 1)

    def maxpool(self, x: T, sc, k, s):
        p = k // 2
        y = self.g.node("MaxPool", [x.name], sc.op("MaxPool"), ceil_mode=0, kernel_shape=[k, k],
                        pads=[p] * 4, strides=[s, s])
        return x.to(y, M.maxpool(x.st, k), h=_down(x.h, s, k, p), w=_down(x.w, s, k, p))

    def adown(self, x: T, sc, c2):
        x1, x2 = self.split(self.avgpool(x, sc), sc, [x.c // 2, x.c // 2])
        x1 = self.conv(x1, sc.attr("cv1"), c2 // 2, 3, 2)
        x2 = self.conv(self.maxpool(x2, sc, 3, 2), sc.attr("cv2"), c2 // 2, 1)
        return self.concat([x1, x2], sc)

    def aconv(self, x: T, sc, c2):
        return self.conv(self.avgpool(x, sc), sc.attr("cv1"), c2, 3, 2)

    def sppelan(self, x: T, sc, c2, c3):
        ys = [self.conv(x, sc.attr("cv1"), c3, 1)]
        for cv in ("cv2", "cv3", "cv4"):
            ys.append(self.maxpool(ys[-1], sc.attr(cv).attr("m"), 5, 1))
        return self.conv(self.concat(ys, sc), sc.attr("cv5"), c2, 1)

    def resize(self, x: T, sc, h, w, sized=False):
        """Nearest Resize as PyTorch exports interpolate/Upsample (asymmetric, floor).

        sized: interpolate(x, size=...), as CBFuse calls it. With a symbolic batch TorchScript writes its
        sizes as Concat(Shape(x)[0:2], [h, w]): the batch of the result is read off x at run time."""
        if sized and self.o.shape_chains and isinstance(self.o.batch, str):
            g, where = self.g, _where(sc)
            lead = g.node("Slice", [g.node("Shape", [x.name], sc.op("Shape")), g.ints(where, [0]), g.ints(where, [2]),
                                    g.ints(where, [0])], sc.op("Slice"))
            sizes = g.node("Concat", [lead, g.ints(where, [h, w])], sc.op("Concat"), axis=0)
            y = g.node("Resize", [x.name, "", "", sizes], sc.op("Resize"), coordinate_transformation_mode="asymmetric",
                       cubic_coeff_a=-0.75, mode="nearest", nearest_mode="floor")
            return x.to(y, h=h, w=w)
        scales = self.g.const(_where(sc), [1.0, 1.0, h / x.h, w / x.w], keep_float32=True,
                              value_floats=self.o.scales_value_floats)
        y = self.g.node("Resize", [x.name, "", scales], sc.op("Resize"),
                        coordinate_transformation_mode="asymmetric", cubic_coeff_a=-0.75,
                        mode="nearest", nearest_mode="floor")
        return x.to(y, h=h, w=w)

    def upsample(self, x: T, sc):
        return self.resize(x, sc, 2 * x.h, 2 * x.w)

    def cblinear(self, x: T, sc, c2s):
        """One biased 1x1 Conv2d to sum(c2s) channels (no BN, no SiLU), split into the parts."""
        s = sc.attr("conv")
        w, b = W.conv_bias(self.o.seed, s.k, sum(c2s), x.c, 1)
        y = self.conv2d(x.name, s, w, b, 1)
        return self.split(x.to(y, M.conv(x.st, w, bias=b)), sc, list(c2s))

    def cbfuse(self, parts, target: T, sc):
        """Sum of the picked CBLinear parts, each resized to the target's H x W, and the target."""
        rs = [self.resize(p, sc, target.h, target.w, sized=True) for p in parts]
        if self.o.cbfuse == "add":
            acc = rs[0]
            for r in rs[1:] + [target]:
                acc = self.add(acc, r, sc)
            return acc
        # torch.sum(torch.stack(res + xs[-1:]), dim=0)
        axes = self.g.ints(_where(sc), [0])
        us = [self.g.node("Unsqueeze", [x.name, axes], sc.op("Unsqueeze")) for x in rs + [target]]
        stack = self.g.node("Concat", us, sc.op("Concat"), axis=0)
        y = self.g.node("ReduceSum", [stack, self.g.ints(_where(sc), [0])], sc.op("ReduceSum"), keepdims=0)
        return target.to(y, sum(r.st for r in rs) + target.st)


def _where(sc):
    return "/" + "/".join(sc.path)


def _down(n, s, k=3, p=None):
    """Output size of a k x k window, stride s, padding k//2 (s=1 keeps the size)."""
    p = k // 2 if p is None else p
    return (n + 2 * p - k) // s + 1 if s != 1 else n
