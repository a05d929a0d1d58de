"""python -m models yolov9-c --form bn -o yolov9-c.onnx   |   python -m models --list"""
from __future__ import annotations

import argparse
import sys
import time

from . import EXPORTERS, EXTERNAL_DATA_EXPORTERS, FORMS, NAMES, V7_NAMES, build, count_convs, save


def _batch(s):
    return int(s) if s.isdigit() else s


def _constant_nodes(s):
    return {"all": True, "small": "small", "none": False}[s]


def parser():
    p = argparse.ArgumentParser(prog="python -m models", description="Write a YOLOv9-family ONNX model.")
    p.add_argument("name", nargs="?", choices=NAMES + V7_NAMES, metavar="NAME", help="one of: " + ", ".join(NAMES + V7_NAMES))
    p.add_argument("--list", action="store_true", help="list models, forms and exporter presets")
    p.add_argument("-o", "--output", help="output path (default NAME.onnx)")
    p.add_argument("--form", choices=FORMS, help="default bn, or the exporter preset's")
    p.add_argument("--exporter", choices=list(EXPORTERS), help="preset of exporter quirks")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--nc", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_batch, help="int, or a name for a symbolic batch dim")
    p.add_argument("--opset", type=int)
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--identity-dedup", action=argparse.BooleanOptionalAction)
    p.add_argument("--constant-nodes", type=_constant_nodes, metavar="{all,small,none}")
    p.add_argument("--shape-chains", action=argparse.BooleanOptionalAction)
    p.add_argument("--dynamo-bias", action=argparse.BooleanOptionalAction)
    p.add_argument("--cbfuse", choices=("add", "reducesum"))
    p.add_argument("--naming", choices=("default", "official"))
    p.add_argument("--layout", choices=("ultralytics", "mit"))
    p.add_argument("--external-data", action=argparse.BooleanOptionalAction,
                   help="weights in OUTPUT.data (default: on for the dynamo presets)")
    return p


def _list():
    print("models:   " + " ".join(NAMES + V7_NAMES))
    print("forms:    " + " ".join(FORMS))
    print("exporters:")
    for k, v in EXPORTERS.items():
        print(f"  {k:12s} " + ", ".join(f"{a}={b}" for a, b in v.items()))


def main(argv=None):
    a = parser().parse_args(argv)
    if a.list:
        _list()
        return 0
    if not a.name:
        parser().error("NAME is required (or --list)")
    opts = dict(form=a.form, imgsz=a.imgsz, nc=a.nc, seed=a.seed, batch=a.batch, opset=a.opset, dtype=a.dtype,
                exporter=a.exporter, identity_dedup=a.identity_dedup, constant_nodes=a.constant_nodes,
                shape_chains=a.shape_chains, dynamo_bias=a.dynamo_bias, cbfuse=a.cbfuse, naming=a.naming,
                layout=a.layout)
    t = time.perf_counter()
    try:
        m = build(a.name, **opts)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ext = a.external_data if a.external_data is not None else a.exporter in EXTERNAL_DATA_EXPORTERS
    out = save(m, a.output or f"{a.name}.onnx", external_data=ext)
    n, p = count_convs(m)
    print(f"{out}: {n} Conv, {p:,} Conv parameters, {len(m.graph.node)} nodes, "
          f"outputs {[o.name for o in m.graph.output]} ({time.perf_counter() - t:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
