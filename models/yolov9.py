"""build(): options and presets -> layer table -> blocks -> head -> onnx.ModelProto."""
from __future__ import annotations

from . import arch
from . import moments as M
from .blocks import Net, T
from .graph import Graph, Options, Scope
from .arch7 import NAMES as V7_NAMES
from .head import Half, ddetect, mit_detect

SIZES = ("t", "s", "m", "c", "e")
NAMES = tuple(f"yolov9-{s}" for s in SIZES) + tuple(f"gelan-{s}" for s in SIZES)
FORMS = ("bn", "folded", "fused", "converted")

# A preset only fills in what the caller left unset; explicit arguments always win.
EXPORTERS = {
    # torch.onnx.export(dynamo=False), eval mode: BN folded, RepConv unmerged, Identity re-sharing,
    # Constant nodes for shapes/axes/scales, view() as Shape chains, stack+sum as ReduceSum.
    "torchscript": dict(form="folded", identity_dedup=True, constant_nodes="small", shape_chains=True,
                        cbfuse="reducesum", opset=17, exporter_names=True),
    # the official export script: model fused first, then as torchscript; second output a number.
    "official": dict(form="fused", identity_dedup=True, constant_nodes="small", shape_chains=True,
                     cbfuse="reducesum", opset=17, naming="official", exporter_names=True),
    # torch.onnx.export(dynamo=True) (default since 2.9): BN folded by its optimizer, opset 18.
    "dynamo": dict(form="folded", opset=18, cbfuse="reducesum"),
    # dynamo with optimize=False: BN kept, computed zero biases, Constant nodes, value_floats scales.
    "dynamo-raw": dict(form="bn", dynamo_bias=True, constant_nodes="small", scales_value_floats=True,
                       cbfuse="reducesum", opset=18),
    # MultimediaTechLab YOLO (TorchScript): 18 raw outputs, Main first, input 'input' with a dynamic batch;
    # the AUX head's fixed anc2vec weight an Identity of the Main head's, one pooled Gather index.
    "mit": dict(layout="mit", form="folded", identity_dedup=True, constant_nodes="small", exporter_names=True),
}
# Presets whose real files keep their weights in <model>.onnx.data (the CLI saves them that way).
EXTERNAL_DATA_EXPORTERS = ("dynamo", "dynamo-raw")

_DEFAULTS = dict(form="bn", batch=1, opset=17, identity_dedup=False, constant_nodes=False,
                 shape_chains=False, dynamo_bias=False, cbfuse="add", naming="default",
                 layout="ultralytics", scales_value_floats=False, exporter_names=False)


def build(name, form=None, *, imgsz=640, nc=80, seed=0, batch=None, opset=None, dtype="float32",
          exporter=None, identity_dedup=None, constant_nodes=None, shape_chains=None, dynamo_bias=None,
          cbfuse=None, naming=None, layout=None, scales_value_floats=None, exporter_names=None, grid=None):
    """Build a YOLOv9-family ONNX model (see models/__init__.py for the options)."""
    given = dict(form=form, batch=batch, opset=opset, identity_dedup=identity_dedup,
                 constant_nodes=constant_nodes, shape_chains=shape_chains, dynamo_bias=dynamo_bias,
                 cbfuse=cbfuse, naming=naming, layout=layout, scales_value_floats=scales_value_floats,
                 exporter_names=exporter_names)
    if name in V7_NAMES:
        from .yolov7 import build as build_v7

        rest = {k: v for k, v in given.items() if k not in ("form", "batch", "opset") and v is not None}
        if exporter is not None or rest:
            raise ValueError(f"{name}: the exporter options are YOLOv9's; YOLOv7 takes form, imgsz, nc, seed, "
                             f"batch, opset, dtype and grid")
        return build_v7(name, form or "bn", imgsz, nc, seed, 1 if batch is None else batch, opset or 17, dtype,
                        bool(grid))
    if grid is not None:
        raise ValueError("grid is a YOLOv7 option (YOLOv9's heads always decode)")
    if exporter is not None and exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter preset {exporter!r}; choose from {', '.join(EXPORTERS)}")
    preset = EXPORTERS.get(exporter, {})
    kw = {k: v if v is not None else preset.get(k, _DEFAULTS[k]) for k, v in given.items()}
    if batch is None and kw["layout"] == "mit":
        kw["batch"] = "batch_size"          # MIT exports always have a dynamic batch
    o = _options(name, imgsz=imgsz, nc=nc, seed=seed, dtype=dtype, **kw)
    return _Builder(name, o).model()


def _options(name, *, imgsz, nc, seed, dtype, **kw):
    if name not in NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(NAMES)}")
    if kw["form"] not in FORMS:
        raise ValueError(f"unknown form {kw['form']!r}; choose from {', '.join(FORMS)}")
    hw = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    if len(hw) != 2 or any(not isinstance(v, int) or v <= 0 or v % 32 for v in hw):
        raise ValueError(f"imgsz must be a positive multiple of 32 (or a pair of them), got {imgsz!r}")
    if not isinstance(nc, int) or nc < 1:
        raise ValueError(f"nc must be a positive int, got {nc!r}")
    b = kw["batch"]
    if not ((isinstance(b, int) and b >= 1) or (isinstance(b, str) and b)):
        raise ValueError(f"batch must be an int >= 1 or a symbolic dim name, got {b!r}")
    if not isinstance(kw["opset"], int) or not 13 <= kw["opset"] <= 21:
        raise ValueError(f"opset must be 13..21, got {kw['opset']!r}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if kw["constant_nodes"] not in (False, True, "small"):
        raise ValueError("constant_nodes must be False, True (all constants) or 'small' (all but parameters)")
    for k, allowed in (("cbfuse", ("add", "reducesum")), ("naming", ("default", "official")),
                       ("layout", ("ultralytics", "mit"))):
        if kw[k] not in allowed:
            raise ValueError(f"{k} must be one of {allowed}, got {kw[k]!r}")
    if kw["dynamo_bias"] and kw["form"] != "bn":
        raise ValueError("dynamo_bias models raw dynamo exports, which keep BatchNormalization: "
                         "use form='bn'")
    if kw["dynamo_bias"] and kw["opset"] < 15:
        raise ValueError("dynamo_bias needs opset >= 15 (CastLike, Shape start/end)")
    if kw["layout"] == "mit" and kw["naming"] == "official":
        raise ValueError("naming='official' is the WongKinYiu export script's; the mit layout has its own")
    return Options(imgsz=hw, nc=nc, seed=seed, dtype=dtype, **kw)


class _Builder:
    def __init__(self, name, o: Options):
        self.o = o
        self.dual = name.startswith("yolov9-") and o.form != "converted"
        base = "yolov9-" + name.split("-")[1]
        self.rows = arch.dual_table(base) if self.dual else arch.main_table(base)
        self.g = Graph(o)
        self.net = Net(self.g)

    def model(self):
        o, g = self.o, self.g
        in_name = "input" if o.layout == "mit" else "images"
        image = T(in_name, 3, *o.imgsz, M.image(3))
        outs = {}
        for r in self.rows:
            ins = [image if s == arch.IMAGE else outs[s] for s in r.src]
            outs[r.idx] = self._row(r, ins)
        outputs = outs[self.rows[-1].idx]
        dt = g.fdtype
        b = o.batch
        if isinstance(b, str) and o.exporter_names and o.layout != "mit":
            # TorchScript names every dim of an output of a dynamic-batch export after its producer
            outputs = [(n, tuple(f"Concat{n}_dim_{k + 1}" for k in range(len(shape)))) for n, shape in outputs]
        return g.model([(in_name, dt, (b, 3, *o.imgsz))], [(n, dt, (b, *shape)) for n, shape in outputs])

    def _row(self, r, ins):
        n, sc, a = self.net, Scope.row(r.idx, r.key), r.args
        x = ins[0]
        if r.kind == "Silence":
            return x
        if r.kind == "Conv":
            return n.conv(x, sc, a[0], a[1], a[2])
        if r.kind == "RepNCSPELAN4":
            return n.repncspelan4(x, sc, *a)
        if r.kind == "ELAN1":
            return n.elan1(x, sc, *a)
        if r.kind == "ADown":
            return n.adown(x, sc, a[0])
        if r.kind == "AConv":
            return n.aconv(x, sc, a[0])
        if r.kind == "SPPELAN":
            return n.sppelan(x, sc, *a)
        if r.kind == "Upsample":
            return n.upsample(x, sc)
        if r.kind == "Concat":
            return n.concat(ins, sc)
        if r.kind == "CBLinear":
            return n.cblinear(x, sc, a[0])
        if r.kind == "CBFuse":
            parts = [src[i] for src, i in zip(ins[:-1], a[0])]
            return n.cbfuse(parts, ins[-1], sc)
        if r.kind in ("DualDDetect", "DDetect"):
            return self._head(sc, ins)
        raise AssertionError(r.kind)

    def _head(self, sc, ins):
        o = self.o
        if self.dual:
            aux = Half(ins[:3], ("cv2", "cv2"), ("cv3", "cv3"), ("dfl", "dfl"))
            main = Half(ins[3:], ("cv4", "cv4"), ("cv5", "cv5"), ("dfl2", "dfl2"))
            halves = [aux, main]
        else:
            # gelan's DDetect names the main half cv2/cv3/dfl; its weights are yolov9's cv4/cv5/dfl2
            halves = [Half(ins, ("cv2", "cv4"), ("cv3", "cv5"), ("dfl", "dfl2"))]
        if o.layout == "mit":
            outs = mit_detect(self.net, sc, halves[::-1], o.nc)    # Main first, then AUX
            # only the first output is named; TorchScript names an output read by a Softmax (each level's
            # anchor tensor) onnx::Softmax_<n> and the rest by number
            names = ["output"] + [self.g.exporter_name("Softmax") if o.exporter_names and k % 3 == 1 else None
                                  for k in range(1, len(outs))]
            return self._rename(outs, names)
        A = sum((o.imgsz[0] // s) * (o.imgsz[1] // s) for s in (8, 16, 32))
        names = [f"output{i}" for i in range(len(halves))]
        if o.naming == "official":
            names[1:] = [None] * (len(halves) - 1)
        outs = ddetect(self.net, sc, halves, o.nc, names)
        return self._rename([(x, (4 + o.nc, A)) for x in outs], names)

    def _rename(self, outs, names):
        """Give graph outputs their names; None = an exporter-made number, as TorchScript leaves it."""
        nodes = self.g.nodes
        res = []
        for k, ((t, shape), new) in enumerate(zip(outs, names)):
            new = new or str(len(nodes) + k)
            if new != t:
                for nd in nodes:
                    for io in (nd.input, nd.output):
                        for i, v in enumerate(io):
                            if v == t:
                                io[i] = new
            res.append((new, shape))
        return res
