"""YOLOv7 layer tables: the official training configurations (cfg/training/yolov7-tiny, yolov7, yolov7-w6
.yaml), generated block by block in the official format ``{"backbone": [[from, number, module, args], ...]}``
with absolute layer indices (which the official parse_model accepts).

Used twice: the builder (models/yolov7.py) walks the table to write ONNX; the real tier
(tests/real/export_models.py) hands it to the official YOLOv7 code (yolov7-package, which ships no
configurations). The layer counts and parameter counts are the official ones (yolov7-tiny 6.2 M, yolov7
37.6 M in training form, 36.9 M deployed; yolov7-w6 70.4 M deployed).
"""
from __future__ import annotations

NAMES = ("yolov7-tiny", "yolov7", "yolov7-w6")


class V7Net:
    """Emits the layers of one configuration (layer indices are absolute,
    which the official parse_model accepts), in the order of cfg/training/*.yaml."""

    def __init__(self, act=None):
        self.layers: list = []
        self.act = act       # yolov7-tiny: every Conv is LeakyReLU(0.1)

    def add(self, src, module: str, args: list) -> int:
        self.layers.append([src, 1, module, args])
        return len(self.layers) - 1

    def conv(self, c: int, k: int = 1, s: int = 1, src=-1) -> int:
        return self.add(src, "Conv", [c, k, s] + ([None, 1, self.act] if self.act else []))

    def elan(self, c: int, c_out: int, src: int, mids: int, mid_c: int | None = None, all_mids: bool = False) -> int:
        """Two 1x1 branches from src, `mids` chained 3x3 on the second, Concat, 1x1 to c_out. all_mids: every
        3x3 output joins the Concat (the head's ELAN-H, and the tiny ELAN); else every second one."""
        a = self.conv(c, 1, 1, src)
        b = self.conv(c, 1, 1, src)
        chain = [b]
        for _ in range(mids):
            chain.append(self.conv(mid_c or c, 3, 1))
        taken = chain[1:] if all_mids else chain[2::2]
        self.add(list(reversed(taken)) + [b, a], "Concat", [1])
        return self.conv(c_out, 1, 1)

    def mp(self, c: int, src: int, extra=()) -> int:
        """MP-1: MaxPool then 1x1, beside 1x1 then 3x3 stride 2; Concat (with `extra`)."""
        self.add(src, "MP", [])
        pooled = self.conv(c, 1, 1)
        self.conv(c, 1, 1, src)
        strided = self.conv(c, 3, 2)
        return self.add([strided, pooled, *extra], "Concat", [1])

    def up(self, c: int, src: int, lateral: int, c_lat: int) -> int:
        self.conv(c, 1, 1, src)
        top = self.add(-1, "nn.Upsample", [None, 2, "nearest"])
        side = self.conv(c_lat, 1, 1, lateral)
        return self.add([side, top], "Concat", [1])


def v7_cfg(name: str, nc: int = 80) -> dict:
    if name == "yolov7-tiny":
        n = V7Net("nn.LeakyReLU(0.1)")
        n.conv(32, 3, 2)
        n.conv(64, 3, 2)
        p2 = n.elan(32, 64, len(n.layers) - 1, 2, all_mids=True)
        p3 = n.elan(64, 128, n.add(p2, "MP", []), 2, all_mids=True)
        p4 = n.elan(128, 256, n.add(p3, "MP", []), 2, all_mids=True)
        p5 = n.elan(256, 512, n.add(p4, "MP", []), 2, all_mids=True)
        a = n.conv(256, 1, 1, p5)                                       # the tiny SPP-CSP, spelled out
        n.conv(256, 1, 1, p5)
        pools = [n.add(-1 - k, "SP", [size]) for k, size in enumerate((5, 9, 13))]
        n.add(list(reversed(pools)) + [pools[0] - 1], "Concat", [1])
        spp = n.conv(256, 1, 1)
        n.add([spp, a], "Concat", [1])
        top = n.conv(256, 1, 1)
        h4 = n.elan(64, 128, n.up(128, top, p4, 128), 2, all_mids=True)
        h3 = n.elan(32, 64, n.up(64, h4, p3, 64), 2, all_mids=True)
        n.conv(128, 3, 2, h3)
        d4 = n.elan(64, 128, n.add([-1, h4], "Concat", [1]), 2, all_mids=True)
        n.conv(256, 3, 2, d4)
        d5 = n.elan(128, 256, n.add([-1, top], "Concat", [1]), 2, all_mids=True)
        heads = [n.conv(c, 3, 1, src) for c, src in ((128, h3), (256, d4), (512, d5))]
        n.add(heads, "IDetect", [nc, "anchors"])
        anchors = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
    elif name == "yolov7":
        n = V7Net()
        n.conv(32, 3, 1)
        n.conv(64, 3, 2)
        n.conv(64, 3, 1)
        n.conv(128, 3, 2)
        p2 = n.elan(64, 256, len(n.layers) - 1, 4)
        p3 = n.elan(128, 512, n.mp(128, p2), 4)
        p4 = n.elan(256, 1024, n.mp(256, p3), 4)
        p5 = n.elan(256, 1024, n.mp(512, p4), 4)
        spp = n.add(p5, "SPPCSPC", [512])
        h4 = n.elan(256, 256, n.up(256, spp, p4, 256), 4, mid_c=128, all_mids=True)
        h3 = n.elan(128, 128, n.up(128, h4, p3, 128), 4, mid_c=64, all_mids=True)
        d4 = n.elan(256, 256, n.mp(128, h3, extra=(h4,)), 4, mid_c=128, all_mids=True)
        d5 = n.elan(512, 512, n.mp(256, d4, extra=(spp,)), 4, mid_c=256, all_mids=True)
        heads = [n.add(src, "RepConv", [c, 3, 1]) for c, src in ((256, h3), (512, d4), (1024, d5))]
        n.add(heads, "IDetect", [nc, "anchors"])
        anchors = [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146], [142, 110, 192, 243, 459, 401]]
    elif name == "yolov7-w6":
        n = V7Net()
        n.add(-1, "ReOrg", [])
        n.conv(64, 3, 1)
        stages = []
        src = n.conv(128, 3, 2)
        for c, c_out, down in ((64, 128, 256), (128, 256, 512), (256, 512, 768), (384, 768, 1024), (512, 1024, None)):
            src = n.elan(c, c_out, src, 4)
            stages.append(src)
            if down:
                src = n.conv(down, 3, 2)
        p3, p4, p5, p6 = stages[1:]
        spp = n.add(p6, "SPPCSPC", [512])
        h5 = n.elan(384, 384, n.up(384, spp, p5, 384), 4, mid_c=192, all_mids=True)
        h4 = n.elan(256, 256, n.up(256, h5, p4, 256), 4, mid_c=128, all_mids=True)
        h3 = n.elan(128, 128, n.up(128, h4, p3, 128), 4, mid_c=64, all_mids=True)
        n.conv(256, 3, 2, h3)
        d4 = n.elan(256, 256, n.add([-1, h4], "Concat", [1]), 4, mid_c=128, all_mids=True)
        n.conv(384, 3, 2, d4)
        d5 = n.elan(384, 384, n.add([-1, h5], "Concat", [1]), 4, mid_c=192, all_mids=True)
        n.conv(512, 3, 2, d5)
        d6 = n.elan(512, 512, n.add([-1, spp], "Concat", [1]), 4, mid_c=256, all_mids=True)
        lead = [n.conv(c, 3, 1, src) for c, src in ((256, h3), (512, d4), (768, d5), (1024, d6))]
        aux = [n.conv(c, 3, 1, src) for c, src in ((320, h3), (640, h4), (960, h5), (1280, spp))]
        n.add(lead + aux, "IAuxDetect", [nc, "anchors"])
        anchors = [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137], [140, 301, 303, 264, 238, 542],
                   [436, 615, 739, 380, 925, 792]]
    else:
        raise ValueError(name)
    return {"nc": nc, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": anchors, "backbone": n.layers,
            "head": []}
