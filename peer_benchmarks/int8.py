"""`make bench`, int8 rows: accuracy on trained models (mAP by pycocotools) and latency on the builder's yolov9-c.

    python peer_benchmarks/int8.py accuracy [--models gelan-t-synth,yolov9-t-synth] [--images 500]
    python peer_benchmarks/int8.py latency [--model yolov9-c] [--imgsz 640]

accuracy: the models trained on synthetic shapes by their own code (tests/real/train_synthetic.py, cached in
out/trained/<torch>/; trained first when missing), each optimized to float32 (verified) and to int8 for the
trt and ort targets (`--calib` 128 + 24 held-out synthetic images of one seed), then evaluated on --images
new labelled images of another seed: mAP50-95 and mAP50 by pycocotools (quantize/proof.py, YOLOv9 val.py's
conf 0.001, IoU 0.7, multi-label), detection agreement with the float model, file size. The naive peer:
onnxruntime's quantize_static with its defaults (QDQ, MinMax, per-tensor, uint8/int8, every op) on the
same optimized float model and the same calibration images. Writes results/int8_accuracy.json/.md.

latency: the builder's yolov9-c (random weights, training form) optimized to float32 and int8 (ort target
and trt target, 32 calibration images: latency does not depend on them), and the naive quantize_static
model, timed by onnxrep.bench in onnxruntime CPU and OpenVINO CPU, alternating run by run. Writes
results/int8_latency.json/.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import onnxrep  # noqa: E402
from onnxrep.quantize import HELD_OUT, proof  # noqa: E402
from onnxrep.quantize.data import Images  # noqa: E402


def _trained(name: str) -> Path:
    import torch

    root = REPO / "out" / "trained" / torch.__version__.replace("+", "_")
    path = root / f"{name}.160.onnx"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-I", str(REPO / "tests/real/train_synthetic.py"), str(root), "--model",
                        name.removesuffix("-synth"), "--imgsz", "160"], check=True, cwd=root)
    return path


def naive(model: onnx.ModelProto, arrays: np.ndarray, input_name: str, **kw) -> onnx.ModelProto:
    """onnxruntime's quantize_static with its defaults (kw: per_channel=True...): the peer a user reaches for first."""
    import logging

    from onnxrep.quantize.int8 import _Reader, _quiet, ort_quantization

    quantize_static = ort_quantization().quantize_static
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        logging.disable(logging.WARNING)
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(model, src)
        quantize_static(src, dst, _Reader([{input_name: x[None]} for x in arrays]), **kw)
        return onnx.load(dst)


def accuracy(args) -> int:
    sys.path.insert(0, str(REPO / "tests/real"))
    from train_synthetic import synth_batch

    rows = []
    for name in args.models.split(","):
        path = _trained(name)
        size = json.loads(path.with_suffix(".json").read_text())["imgsz"]
        calib, _, _ = synth_batch(np.random.default_rng(30_000), args.calib + HELD_OUT, size)
        imgs, _, boxes = synth_batch(np.random.default_rng(40_000), args.images, size)
        evals = Images(imgs, "synthetic", boxes[:, 2:].astype(np.float64), boxes[:, 1].astype(np.int64),
                       boxes[:, 0].astype(np.int64))
        with tempfile.TemporaryDirectory() as tmp:
            cpath, epath = Path(tmp) / "calib.npz", Path(tmp) / "eval.npz"
            np.savez(cpath, images=calib)
            np.savez(epath, images=imgs, boxes=evals.boxes, classes=evals.classes, image_index=evals.image_index)
            fp32 = onnxrep.optimize(path)
            assert fp32.ok, fp32.report.text()
            inp = fp32.model.graph.input[0].name
            ref = proof.run_images(fp32.model, imgs, inp)
            kinds = proof.layouts(fp32.model, ref)
            (out,) = kinds
            models = {"float32": (fp32.model, None)}
            for target in ("trt", "ort"):
                t0 = time.perf_counter()
                r = onnxrep.optimize(path, precision="int8", int8_target=target, calib=str(cpath), calib_size=args.calib)
                models[f"int8 {target}"] = (r.model, {"ok": r.ok, "seconds": round(time.perf_counter() - t0, 1),
                                                     **{k: r.report.int8[k] for k in ("method", "methods_tried", "lint")}})
            models["naive quantize_static"] = (naive(fp32.model, calib[:args.calib], inp), None)
            row = {"model": name, "imgsz": size, "eval_images": len(imgs), "objects": len(evals.boxes), "results": {}}
            for label, (m, extra) in models.items():
                got = ref if label == "float32" else proof.run_images(m, imgs, inp)
                facts = proof.compare({out: ref[out]}, {out: got[out]}, kinds, 0.95)[out]
                row["results"][label] = {"map": proof.mean_ap(got[out], kinds[out], evals), "bytes": m.ByteSize(),
                                         "agreement": facts["agreement"], "box_px": facts["box_px"],
                                         "score_rel": facts["score_rel"], **(extra or {})}
                print(name, label, row["results"][label]["map"], facts["agreement"], flush=True)
        rows.append(row)
    _write(args.out, "int8_accuracy", rows, render_accuracy(rows))
    return 0


def render_accuracy(rows) -> str:
    lines = ["# int8 accuracy (`onnxrep optimize --precision int8`)", "",
             "Models trained on synthetic shapes by their own code (tests/real/train_synthetic.py), training-form "
             "TorchScript exports. Calibration: 128 synthetic images (+24 held out), evaluation: other labelled "
             "synthetic images. mAP by pycocotools (conf 0.001, IoU 0.7, multi-label); agreement: detections after "
             "NMS at conf 0.25 against the float32 model. Naive: onnxruntime `quantize_static` defaults on the same "
             "optimized float model and calibration images.", "",
             "| model | eval images | variant | mAP50-95 | mAP50 | drop (AP) | agreement | file (of fp32) | method |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["results"]["float32"]
        for label, x in r["results"].items():
            drop = base["map"]["map50_95"] - x["map"]["map50_95"]
            lines.append(f"| {r['model']} {r['imgsz']} | {r['eval_images']} | {label} | {x['map']['map50_95']:.2f} | "
                         f"{x['map']['map50']:.2f} | {drop:.2f} | {x['agreement']:.2%} | {x['bytes'] / base['bytes']:.3f} | "
                         f"{x.get('method', '-')} |")
    return "\n".join(lines) + "\n"


def latency(args) -> int:
    import models as builder
    from onnxrep.bench import run_bench
    from peer_benchmarks import rows as rows_mod
    from tests.quantize.conftest import images

    src = builder.build(args.model, "bn", imgsz=args.imgsz)
    fp32 = onnxrep.optimize(src)
    inp = fp32.model.graph.input[0].name
    arrays = images(args.calib + HELD_OUT, args.imgsz)
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        cpath = Path(tmp) / "calib.npz"
        np.savez(cpath, images=arrays)
        variants = {"fp32": fp32.model}
        for target in ("ort", "trt"):
            r = onnxrep.optimize(src, precision="int8", int8_target=target, calib=str(cpath), calib_size=args.calib,
                                 calib_method="minmax", min_agreement=0)
            variants[f"int8-{target}"] = r.model
        variants["naive"] = naive(fp32.model, arrays[:args.calib], inp)
        variants["naive-pc"] = naive(fp32.model, arrays[:args.calib], inp, per_channel=True)
        for label, m in variants.items():
            paths[label] = Path(tmp) / f"{label}.onnx"
            onnx.save(m, paths[label])
        bench = run_bench([str(p) for p in paths.values()], labels=list(paths), threads=args.threads,
                          min_time=args.min_time, min_runs=5, runtimes=["ort-cpu", "openvino"])
        sizes = {k: p.stat().st_size for k, p in paths.items()}
    row = {"model": args.model, "imgsz": args.imgsz, "threads": args.threads, "bytes": sizes,
           "latency": rows_mod.latency(bench), "runtimes": bench.runtimes}
    lines = ["# int8 latency", "",
             f"The builder's {args.model} at {args.imgsz} (random weights), {args.threads} threads, median ms at batch 1, "
             "the models alternating run by run (onnxrep.bench; runtimes' own graph optimizations on). naive: "
             "onnxruntime `quantize_static` defaults (uint8/int8 per-tensor, every op, head included: its scores "
             "are lost); naive-pc: the same per-channel.", "",
             "| runtime | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for rt, cells in row["latency"].items():
        base = cells["fp32"]["median_ms"]
        lines.append(f"| {rt} | " + " | ".join(
            f"{c['median_ms']:.1f} ({c['median_ms'] / base:.2f}x)" if c.get("median_ms") else c.get("status", "-")
            for c in (cells[k] for k in variants)) + " |")
    lines.append("| file | " + " | ".join(f"{sizes[k] / 1e6:.1f} MB ({sizes[k] / sizes['fp32']:.3f})" for k in variants) + " |")
    _write(args.out, "int8_latency", [row], "\n".join(lines) + "\n")
    return 0


def _write(out, name, rows, text) -> None:
    """<name>.json ({"meta": date, machine, command; "rows"; "table": the markdown table quote.py renders}) and .md."""
    import platform
    from datetime import datetime, timezone

    import onnxruntime

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (onnxruntime {onnxruntime.__version__})",
            "command": "python peer_benchmarks/int8.py " + " ".join(sys.argv[1:])}
    table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "table": table}, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--models", default="gelan-t-synth,yolov9-t-synth")
    a.add_argument("--images", type=int, default=500)
    a.add_argument("--calib", type=int, default=128)
    lat = sub.add_parser("latency")
    lat.add_argument("--model", default="yolov9-c")
    lat.add_argument("--imgsz", type=int, default=640)
    lat.add_argument("--calib", type=int, default=32)
    lat.add_argument("--threads", type=int, default=2)
    lat.add_argument("--min-time", type=float, default=5.0)
    for p in (a, lat):
        p.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    return accuracy(args) if args.what == "accuracy" else latency(args)


if __name__ == "__main__":
    sys.exit(main())
