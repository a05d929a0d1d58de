"""YOLOv7 presets (yolov7-tiny, yolov7, yolov7-w6): models/arch7.py's official layer tables as ONNX.

Forms, as for YOLOv9 (the same weights in every form, drawn per module from (seed, layer index)):
  bn         Conv -> BatchNormalization -> act; RepConv = BN(3x3) + BN(1x1) [+ BN(x)]; the head's implicit
             knowledge as ops, ``Conv1x1(x + a) * m`` (ImplicitA, ImplicitM); IAuxDetect's aux head
  folded     BN folded into each Conv (TorchScript, dynamo); RepConv branches, implicit ops and aux kept
  fused      the official ``model.fuse()``: RepConv merged, implicit folded into the head Convs
             (W' = W * m, b' = (b + W a) * m); the aux head kept
  converted  the deploy model (cfg/deploy): fused, without the aux head
Outputs are the raw per-level heads ``[B, na, ny, nx, nc + 5]`` (``Detect.export = True``): lead levels,
then (IAuxDetect, not converted) the aux levels; grid=True: eval mode, the decoded detections
``[B, A, nc + 5]`` (centre-size pixels, objectness, classes) first, then the lead levels, as the fused
model's export writes them (Split, no ScatterND). Implicit a ~ N(0, 0.5) and m ~ U(0.5, 1.5): far from the
identity, as trained models have them, so a fold that drops one shows.
"""
from __future__ import annotations

import numpy as np

from . import moments as M
from . import weights as W
from .arch7 import v7_cfg
from .blocks import Net, T, _where
from .graph import Graph, Options, Scope

NA = 3        # anchors per level
LEAKY = 0.1


def options(form, imgsz, nc, seed, batch, opset, dtype) -> Options:
    return Options(form=form, imgsz=imgsz, nc=nc, seed=seed, batch=batch, opset=opset, dtype=dtype,
                   identity_dedup=False, constant_nodes=False, shape_chains=False, dynamo_bias=False,
                   cbfuse="add", naming="default", layout="ultralytics")


class _V7:
    def __init__(self, name: str, o: Options, grid: bool = False):
        self.o = o
        self.grid = grid
        self.cfg = v7_cfg(name, o.nc)
        self.g = Graph(o)
        self.net = Net(self.g)
        self.leaky = any(len(r[3]) > 3 for r in self.cfg["backbone"] if r[2] == "Conv")

    # -- modules ----------------------------------------------------------------------------------
    def act(self, y: str, st, sc):
        if self.leaky:
            return self.g.node("LeakyRelu", [y], sc.op("LeakyRelu"), alpha=LEAKY), M.leaky(st, LEAKY)
        return self.net.silu(y, sc), M.silu(st)

    def conv(self, x: T, sc, c2, k=1, s=1) -> T:
        """Conv module: Conv2d(bias=False) -> BatchNorm2d -> act (folded unless form bn)."""
        net = self.net
        w, bn, st = net.params(x, sc, c2, k)
        if self.o.form == "bn":
            y = net._bn(net.conv2d(x.name, sc.attr("conv"), w, None, k, s), sc.attr("bn"), bn)
        else:
            wf, bf = W.fold(w, bn)
            y = net.conv2d(x.name, sc.attr("conv"), wf, bf, k, s)
        y, st = self.act(y, st, sc.attr("act"))
        return x.to(y, st, -(-x.h // s), -(-x.w // s))

    def repconv(self, x: T, sc, c2) -> T:
        """RepConv(c1, c2, 3, 1): act(BN(conv3 x) + BN(conv1 x) [+ BN(x) when c1 == c2]), merged once fused."""
        net, o = self.net, self.o
        w3, bn3, st3 = net.params(x, sc.attr("rbr_dense").seq(0), c2, 3)
        w1, bn1, st1 = net.params(x, sc.attr("rbr_1x1").seq(0), c2, 1)
        assert x.c != c2, "the identity branch does not occur in these configurations"
        st = st3 + st1
        if o.form in ("fused", "converted"):
            wf, bf = W.fuse_repconv(w3, bn3, w1, bn1)
            y = net.conv2d(x.name, sc.attr("rbr_reparam"), wf, bf, 3)
        else:
            ys = []
            for branch, w, bn, k in (("rbr_dense", w3, bn3, 3), ("rbr_1x1", w1, bn1, 1)):
                b = sc.attr(branch)
                if o.form == "bn":
                    ys.append(net._bn(net.conv2d(x.name, b.seq(0), w, None, k), b.seq(1), bn))
                else:
                    wf, bf = W.fold(w, bn)
                    ys.append(net.conv2d(x.name, b.seq(0), wf, bf, k))
            y = self.g.node("Add", ys, sc.op("Add"))
        y, st = self.act(y, st, sc.attr("act"))
        return x.to(y, st)

    def pool(self, x: T, sc, k, s) -> T:
        p = (k - 1) // 2 if s == 1 else 0
        y = self.g.node("MaxPool", [x.name], sc.op("MaxPool"), ceil_mode=0, kernel_shape=[k, k], pads=[p] * 4,
                        strides=[s, s])
        return x.to(y, M.maxpool(x.st, k), h=(x.h + 2 * p - k) // s + 1, w=(x.w + 2 * p - k) // s + 1)

    def sppcspc(self, x: T, sc, c2) -> T:
        c_ = c2   # int(2 * c2 * e), e = 0.5
        x1 = self.conv(self.conv(self.conv(x, sc.attr("cv1"), c_, 1), sc.attr("cv3"), c_, 3), sc.attr("cv4"), c_, 1)
        pools = [self.pool(x1, sc.item("m", i), k, 1) for i, k in enumerate((5, 9, 13))]
        y1 = self.conv(self.conv(self.net.concat([x1] + pools, sc), sc.attr("cv5"), c_, 1), sc.attr("cv6"), c_, 3)
        y2 = self.conv(x, sc.attr("cv2"), c_, 1)
        return self.conv(self.net.concat([y1, y2], sc.attr("cat")), sc.attr("cv7"), c2, 1)

    def reorg(self, x: T, sc) -> T:
        """Space to depth: cat(x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])."""
        g, parts = self.g, []
        for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1)):
            parts.append(g.node("Slice", [x.name, g.ints(_where(sc), [dy, dx]), g.ints(_where(sc), [x.h, x.w]),
                                          g.ints(_where(sc), [2, 3]), g.ints(_where(sc), [2, 2])], sc.op("Slice")))
        y = g.node("Concat", parts, sc.op("Concat"), axis=1)
        return T(y, 4 * x.c, x.h // 2, x.w // 2, np.concatenate([x.st] * 4, 1))

    # -- the head ---------------------------------------------------------------------------------
    def _level(self, x: T, sc, i, implicit: bool):
        """One raw level: [Add(a) ->] Conv1x1(bias) [-> Mul(m)] -> view(B, na, no, ny, nx) -> permute."""
        o, g, net = self.o, self.g, self.net
        no = o.nc + 5
        m = sc.item("m" if implicit else "m2", i)
        w, b = W.conv_bias(o.seed, m.k, NA * no, x.c, 1)
        name = x.name
        if implicit:
            a = W.rng(o.seed, sc.item("ia", i).k).normal(0.0, 0.5, x.c).astype(np.float32)
            mm = W.rng(o.seed, sc.item("im", i).k).uniform(0.5, 1.5, NA * no).astype(np.float32)
            if o.form in ("fused", "converted"):      # IDetect.fuse(): the implicit knowledge into the Conv
                w64 = w.astype(np.float64)
                b = (b + np.einsum("oihw,i->o", w64, a.astype(np.float64))) * mm
                w = w64 * mm[:, None, None, None]
            else:
                name = g.node("Add", [name, g.param(sc.item("ia", i).pname("implicit"), a.reshape(1, -1, 1, 1))],
                              sc.item("ia", i).op("Add"))
        y = net.conv2d(name, m, w, b, 1)
        if implicit and o.form not in ("fused", "converted"):
            y = g.node("Mul", [y, g.param(sc.item("im", i).pname("implicit"), mm.reshape(1, -1, 1, 1))],
                       sc.item("im", i).op("Mul"))
        batch = o.batch if isinstance(o.batch, int) else 0
        y = g.node("Reshape", [y, g.ints(_where(sc), [batch, NA, no, x.h, x.w])], sc.op("Reshape"))
        y = g.node("Transpose", [y], sc.op("Transpose"), perm=[0, 1, 3, 4, 2])
        return y, (NA, x.h, x.w, no)

    def head(self, sc, ins, aux: bool):
        nl = len(self.cfg["anchors"])
        outs = [self._level(x, sc, i, True) for i, x in enumerate(ins[:nl])]
        if self.grid:      # eval mode: the decoded detections first, then the lead levels (no aux)
            return [self._decode(sc, outs, ins[:nl])] + outs
        if aux and self.o.form != "converted":
            outs += [self._level(x, sc, i, False) for i, x in enumerate(ins[nl:])]
        return outs

    def _decode(self, sc, levels, ins):
        """The fused model's export-time decode (IDetect.fuseforward): per level sigmoid, then
        xy * 2s + s (grid - 0.5), wh^2 * 4 anchor, Concat, view(B, -1, no); the levels concatenated."""
        g, o = self.g, self.o
        no, zs = o.nc + 5, []
        for i, ((t, (na, ny, nx, _)), x) in enumerate(zip(levels, ins)):
            s = o.imgsz[0] // ny
            y = g.node("Sigmoid", [t], sc.op("Sigmoid"))
            xy, wh, conf = g.node("Split", [y, g.ints(_where(sc), [2, 2, no - 4])], sc.op("Split"), n_out=3, axis=4)
            yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
            grid = np.stack((xv, yv), 2).reshape(1, 1, ny, nx, 2).astype(np.float32)
            xy = g.node("Add", [g.node("Mul", [xy, g.const(_where(sc), np.float32(2.0 * s))], sc.op("Mul")),
                               g.const(_where(sc), (s * (grid - 0.5)).astype(np.float32))], sc.op("Add"))
            anchors = np.asarray(self.cfg["anchors"][i], np.float32).reshape(1, na, 1, 1, 2)
            wh = g.node("Mul", [g.node("Pow", [wh, g.const(_where(sc), np.float32(2.0))], sc.op("Pow")),
                                g.const(_where(sc), 4 * anchors)], sc.op("Mul"))
            y = g.node("Concat", [xy, wh, conf], sc.op("Concat"), axis=4)
            batch = o.batch if isinstance(o.batch, int) else 0
            zs.append(g.node("Reshape", [y, g.ints(_where(sc), [batch, -1, no])], sc.op("Reshape")))
        total = sum(na * ny * nx for _, (na, ny, nx, _) in levels)
        return g.node("Concat", zs, sc.op("Concat"), axis=1), (total, no)

    # -- the table --------------------------------------------------------------------------------
    def model(self):
        o, g = self.o, self.g
        rows = self.cfg["backbone"]
        x = T("images", 3, *o.imgsz, M.image(3))
        outs = []
        aux_inputs = set()
        det = rows[-1]
        if det[2] == "IAuxDetect":
            aux_inputs = set(det[0][len(det[0]) // 2:])
        for idx, (src, _, module, args) in enumerate(rows):
            ins = [outs[idx + s] if s < 0 else outs[s] for s in (src if isinstance(src, list) else [src])] if idx else [x]
            sc = Scope.row(idx, idx)
            if module in ("IDetect", "IAuxDetect"):
                heads = self.head(sc, ins, module == "IAuxDetect")
                break
            if idx in aux_inputs and o.form == "converted":
                outs.append(None)      # the deploy model has no aux layers
                continue
            outs.append(self._module(module, args, ins, sc))
        b = o.batch
        return g.model([("images", g.fdtype, (b, 3, *o.imgsz))], self._named(heads, b))

    def _named(self, heads, b):
        """Graph outputs output0, output1, ...: the Transpose outputs renamed."""
        res = []
        for k, (t, shape) in enumerate(heads):
            new = f"output{k}"
            for nd in self.g.nodes:
                for io in (nd.input, nd.output):
                    for i, v in enumerate(io):
                        if v == t:
                            io[i] = new
            res.append((new, self.g.fdtype, (b, *shape)))
        return res

    def _module(self, module, args, ins, sc) -> T:
        x = ins[0]
        if module == "Conv":
            return self.conv(x, sc, args[0], args[1], args[2])
        if module == "RepConv":
            return self.repconv(x, sc, args[0])
        if module == "MP":
            return self.pool(x, sc, 2, 2)
        if module == "SP":
            return self.pool(x, sc, args[0], 1)
        if module == "Concat":
            return self.net.concat(ins, sc)
        if module == "nn.Upsample":
            return self.net.upsample(x, sc)
        if module == "SPPCSPC":
            return self.sppcspc(x, sc, args[0])
        if module == "ReOrg":
            return self.reorg(x, sc)
        raise AssertionError(module)


def build(name, form, imgsz, nc, seed, batch, opset, dtype, grid=False):
    if form not in ("bn", "folded", "fused", "converted"):
        raise ValueError(f"unknown form {form!r}")
    hw = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    stride = 64 if name == "yolov7-w6" else 32
    if any(v % stride for v in hw):
        raise ValueError(f"imgsz must be a multiple of {stride} for {name}, got {imgsz!r}")
    return _V7(name, options(form, hw, nc, seed, batch, opset, dtype), grid).model()
