"""Layer tables of the YOLOv9 family, as in /work/shared/yolov9-graphs.md section 2.

A table is a list of `Row`s in the order of the WongKinYiu yaml files. `src` holds absolute row
indices (the yaml's -1 already resolved); IMAGE stands for the network input. gelan-X is derived
from yolov9-X (rows marked M, re-indexed the way the gelan yaml files number them), so that both
share one source of truth and the weights of a gelan row can be keyed by its yolov9 row.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGE = "image"


@dataclass(frozen=True)
class Row:
    idx: int            # index in this table: nodes are named /model.{idx}/...
    key: int            # index of the same layer in yolov9-X: weights are keyed by model.{key}
    main: bool          # part of the main (deployable) branch
    kind: str
    src: tuple          # absolute row indices or IMAGE
    args: tuple = ()


def _table(spec):
    """spec: list of (branch, src, kind, args); src -1 = previous row, int or list."""
    rows = []
    for i, (branch, src, kind, args) in enumerate(spec):
        srcs = src if isinstance(src, (list, tuple)) else [src]
        srcs = tuple(i - 1 if s == -1 else s for s in srcs)
        rows.append(Row(i, i, branch == "M", kind, srcs, tuple(args)))
    # Silence passes the image through; it is the only row that reads the input.
    if rows[0].kind == "Silence":
        rows[0] = Row(0, 0, True, "Silence", (IMAGE,))
    else:
        rows[0] = Row(0, 0, rows[0].main, rows[0].kind, (IMAGE,), rows[0].args)
    return rows


def _c_like(w):
    """yolov9-c and yolov9-m: same rows and wiring; w holds the widths, w['down'] ADown/AConv."""
    d = w["down"]
    e = [w["e3"], w["e5"], w["e7"], w["e9"]]
    return _table([
        ("M", -1, "Silence", ()),
        ("M", -1, "Conv", (w["c1"], 3, 2)),
        ("M", -1, "Conv", (w["c2"], 3, 2)),
        ("M", -1, "RepNCSPELAN4", e[0]),
        ("M", -1, d, (w["d4"],)),
        ("M", -1, "RepNCSPELAN4", e[1]),
        ("M", -1, d, (w["d6"],)),
        ("M", -1, "RepNCSPELAN4", e[2]),
        ("M", -1, d, (w["d8"],)),
        ("M", -1, "RepNCSPELAN4", e[3]),
        ("M", -1, "SPPELAN", w["spp"]),                 # 10
        ("M", -1, "Upsample", ()),
        ("M", [-1, 7], "Concat", ()),
        ("M", -1, "RepNCSPELAN4", w["e13"]),
        ("M", -1, "Upsample", ()),
        ("M", [-1, 5], "Concat", ()),
        ("M", -1, "RepNCSPELAN4", w["e16"]),            # 16
        ("M", -1, d, (w["d17"],)),
        ("M", [-1, 13], "Concat", ()),
        ("M", -1, "RepNCSPELAN4", w["e19"]),            # 19
        ("M", -1, d, (w["d20"],)),
        ("M", [-1, 10], "Concat", ()),
        ("M", -1, "RepNCSPELAN4", w["e22"]),            # 22
        ("A", 5, "CBLinear", (w["cb"][:1],)),           # 23
        ("A", 7, "CBLinear", (w["cb"][:2],)),
        ("A", 9, "CBLinear", (w["cb"][:3],)),
        ("A", 0, "Conv", (w["c1"], 3, 2)),              # 26: a second backbone from the image
        ("A", -1, "Conv", (w["c2"], 3, 2)),
        ("A", -1, "RepNCSPELAN4", e[0]),
        ("A", -1, d, (w["d4"],)),
        ("A", [23, 24, 25, -1], "CBFuse", ((0, 0, 0),)),  # 30
        ("A", -1, "RepNCSPELAN4", e[1]),
        ("A", -1, d, (w["d6"],)),
        ("A", [24, 25, -1], "CBFuse", ((1, 1),)),
        ("A", -1, "RepNCSPELAN4", e[2]),
        ("A", -1, d, (w["d8"],)),
        ("A", [25, -1], "CBFuse", ((2,),)),
        ("A", -1, "RepNCSPELAN4", e[3]),                # 37
        ("-", [31, 34, 37, 16, 19, 22], "DualDDetect", ()),
    ])


def _t_like(k):
    """yolov9-t (k=1) and yolov9-s (k=2): widths scale, wiring identical."""
    def s(*xs):
        return tuple(x * k if i < 3 else x for i, x in enumerate(xs))
    return _table([
        ("M", -1, "Conv", (16 * k, 3, 2)),
        ("M", -1, "Conv", (32 * k, 3, 2)),
        ("M", -1, "ELAN1", (32 * k, 32 * k, 16 * k)),
        ("M", -1, "AConv", (64 * k,)),
        ("M", -1, "RepNCSPELAN4", s(64, 64, 32, 3)),    # 4
        ("M", -1, "AConv", (96 * k,)),
        ("M", -1, "RepNCSPELAN4", s(96, 96, 48, 3)),    # 6
        ("M", -1, "AConv", (128 * k,)),
        ("M", -1, "RepNCSPELAN4", s(128, 128, 64, 3)),  # 8
        ("M", -1, "SPPELAN", (128 * k, 64 * k)),        # 9
        ("M", -1, "Upsample", ()),
        ("M", [-1, 6], "Concat", ()),
        ("M", -1, "RepNCSPELAN4", s(96, 96, 48, 3)),    # 12
        ("M", -1, "Upsample", ()),
        ("M", [-1, 4], "Concat", ()),
        ("M", -1, "RepNCSPELAN4", s(64, 64, 32, 3)),    # 15
        ("M", -1, "AConv", (48 * k,)),
        ("M", [-1, 12], "Concat", ()),
        ("M", -1, "RepNCSPELAN4", s(96, 96, 48, 3)),    # 18
        ("M", -1, "AConv", (64 * k,)),
        ("M", [-1, 9], "Concat", ()),
        ("M", -1, "RepNCSPELAN4", s(128, 128, 64, 3)),  # 21
        ("A", 8, "SPPELAN", (128 * k, 64 * k)),         # 22: aux neck on the main backbone
        ("A", -1, "Upsample", ()),
        ("A", [-1, 6], "Concat", ()),
        ("A", -1, "RepNCSPELAN4", s(96, 96, 48, 3)),    # 25
        ("A", -1, "Upsample", ()),
        ("A", [-1, 4], "Concat", ()),
        ("A", -1, "RepNCSPELAN4", s(64, 64, 32, 3)),    # 28
        ("-", [28, 25, 22, 15, 18, 21], "DualDDetect", ()),
    ])


def _e():
    E = "RepNCSPELAN4"
    return _table([
        ("M", -1, "Silence", ()),
        ("M", -1, "Conv", (64, 3, 2)),
        ("M", -1, "Conv", (128, 3, 2)),
        ("M", -1, E, (256, 128, 64, 2)),
        ("M", -1, "ADown", (256,)),
        ("M", -1, E, (512, 256, 128, 2)),
        ("M", -1, "ADown", (512,)),
        ("M", -1, E, (1024, 512, 256, 2)),
        ("M", -1, "ADown", (1024,)),
        ("M", -1, E, (1024, 512, 256, 2)),              # 9
        ("M", 1, "CBLinear", ((64,),)),                 # 10
        ("M", 3, "CBLinear", ((64, 128),)),
        ("M", 5, "CBLinear", ((64, 128, 256),)),
        ("M", 7, "CBLinear", ((64, 128, 256, 512),)),
        ("M", 9, "CBLinear", ((64, 128, 256, 512, 1024),)),
        ("M", 0, "Conv", (64, 3, 2)),                   # 15
        ("M", [10, 11, 12, 13, 14, -1], "CBFuse", ((0, 0, 0, 0, 0),)),
        ("M", -1, "Conv", (128, 3, 2)),
        ("M", [11, 12, 13, 14, -1], "CBFuse", ((1, 1, 1, 1),)),
        ("M", -1, E, (256, 128, 64, 2)),                # 19
        ("M", -1, "ADown", (256,)),
        ("M", [12, 13, 14, -1], "CBFuse", ((2, 2, 2),)),
        ("M", -1, E, (512, 256, 128, 2)),               # 22
        ("M", -1, "ADown", (512,)),
        ("M", [13, 14, -1], "CBFuse", ((3, 3),)),
        ("M", -1, E, (1024, 512, 256, 2)),              # 25
        ("M", -1, "ADown", (1024,)),
        ("M", [14, -1], "CBFuse", ((4,),)),
        ("M", -1, E, (1024, 512, 256, 2)),              # 28
        ("A", 9, "SPPELAN", (512, 256)),                # 29: aux neck on the first backbone
        ("A", -1, "Upsample", ()),
        ("A", [-1, 7], "Concat", ()),
        ("A", -1, E, (512, 512, 256, 2)),               # 32
        ("A", -1, "Upsample", ()),
        ("A", [-1, 5], "Concat", ()),
        ("A", -1, E, (256, 256, 128, 2)),               # 35
        ("M", 28, "SPPELAN", (512, 256)),               # 36
        ("M", -1, "Upsample", ()),
        ("M", [-1, 25], "Concat", ()),
        ("M", -1, E, (512, 512, 256, 2)),               # 39
        ("M", -1, "Upsample", ()),
        ("M", [-1, 22], "Concat", ()),
        ("M", -1, E, (256, 256, 128, 2)),               # 42
        ("M", -1, "ADown", (256,)),
        ("M", [-1, 39], "Concat", ()),
        ("M", -1, E, (512, 512, 256, 2)),               # 45
        ("M", -1, "ADown", (512,)),
        ("M", [-1, 36], "Concat", ()),
        ("M", -1, E, (512, 1024, 512, 2)),              # 48
        ("-", [35, 32, 29, 42, 45, 48], "DualDDetect", ()),
    ])


_C = dict(down="ADown", c1=64, c2=128, e3=(256, 128, 64, 1), d4=256, e5=(512, 256, 128, 1), d6=512,
          e7=(512, 512, 256, 1), d8=512, e9=(512, 512, 256, 1), spp=(512, 256),
          e13=(512, 512, 256, 1), e16=(256, 256, 128, 1), d17=256, e19=(512, 512, 256, 1), d20=512,
          e22=(512, 512, 256, 1), cb=(256, 512, 512))
# yolov9-m row 17 is AConv(184) in the real yaml and in the section-3 counts (the doc table says 180).
_M = dict(down="AConv", c1=32, c2=64, e3=(128, 128, 64, 1), d4=240, e5=(240, 240, 120, 1), d6=360,
          e7=(360, 360, 180, 1), d8=480, e9=(480, 480, 240, 1), spp=(480, 240),
          e13=(360, 360, 180, 1), e16=(240, 240, 120, 1), d17=184, e19=(360, 360, 180, 1), d20=240,
          e22=(480, 480, 240, 1), cb=(240, 360, 480))

YOLOV9 = {
    "yolov9-t": lambda: _t_like(1),
    "yolov9-s": lambda: _t_like(2),
    "yolov9-m": lambda: _c_like(_M),
    "yolov9-c": lambda: _c_like(_C),
    "yolov9-e": _e,
}
# gelan-c/m yaml files start at the first Conv (no Silence); gelan-e keeps Silence because
# row 15 reads the image by index 0.
_GELAN_KEEPS_SILENCE = {"yolov9-e"}


def dual_table(name):
    return YOLOV9[name]()


def main_table(name):
    """The gelan-X table: main rows of yolov9-X, renumbered, head DDetect on the main inputs.

    Row.key keeps the yolov9 index so the converted model draws the very same weights."""
    rows = dual_table(name)
    keep = [r for r in rows if r.main and not (r.kind == "Silence" and name not in _GELAN_KEEPS_SILENCE)]
    new = {r.idx: i for i, r in enumerate(keep)}
    silence = rows[0].idx if rows[0].kind == "Silence" else None

    def remap(s):
        if s == IMAGE:
            return IMAGE
        if s in new:
            return new[s]
        assert s == silence, f"main row reads aux row {s}"
        return IMAGE
    out = [Row(new[r.idx], r.idx, True, r.kind, tuple(remap(s) for s in r.src), r.args) for r in keep]
    head = rows[-1]
    out.append(Row(len(out), head.idx, True, "DDetect", tuple(remap(s) for s in head.src[3:]), ()))
    return out
