"""How much of its tolerance each honest rewrite uses, and how far float16 moves the scores against the
noisy twin: the calibration of verify/tolerance.py's K and verify/__init__.py's EPS_FACTOR.

    python peer_benchmarks/calibrate_noise.py [--json out/calibration.json] [--quick]

For each builder model and export form (models/): optimize in float32 and float16 without verification,
then, against the original: the share of the tolerance the float32 result uses (K = 20), the share the
float16 result uses (K = 3), and, for YOLO outputs, the largest class-score difference of the honest float16
result over the largest score move of the float16-step twin (the tie threshold EPS_FACTOR must stay above it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [(n, f, 160) for n in ("yolov9-t", "yolov9-s", "gelan-t", "gelan-s") for f in ("bn", "folded", "fused", "converted")]
CASES += [("yolov9-c", f, 320) for f in ("bn", "folded")] + [("yolov9-e", "bn", 320), ("gelan-c", "converted", 320)]
CASES += [(n, f, 160) for n in ("yolov7-tiny",) for f in ("bn", "folded", "fused")]
CASES += [("yolov9-t", exporter, 160) for exporter in ("torchscript", "official", "dynamo", "dynamo-raw", "mit")]
QUICK = [("yolov9-t", "bn", 160), ("gelan-t", "converted", 160), ("yolov7-tiny", "bn", 160)]


def one(name: str, form: str, imgsz: int) -> dict:
    import models
    import onnxrep
    from onnxrep.verify import reference, run_outputs, verify
    from onnxrep.verify.detections import anchors_last, head_layouts

    exporters = set(models.EXPORTERS)
    model = models.build(name, exporter=form, imgsz=imgsz) if form in exporters else models.build(name, form, imgsz=imgsz)
    row = {"model": name, "form": form, "imgsz": imgsz}
    r32 = onnxrep.optimize(model, verify=False)
    v = verify(model, r32.model, dropped=r32.report.outputs.get("dropped", ()), renamed=r32.report.outputs.get("renamed"))
    row["fp32_used"] = max(o.used for o in v.outputs)
    r16 = onnxrep.optimize(model, verify=False, precision="fp16")
    dropped, renamed = r16.report.outputs.get("dropped", ()), r16.report.outputs.get("renamed") or {}
    v16 = verify(model, r16.model, precision="fp16", dropped=dropped, renamed=renamed)
    row["fp16_used"] = max(o.used for o in v16.outputs)
    row["fp16_agreement"] = min((a["rate"] for a in v16.agreements.values()), default=None)
    kept = [o.name for o in model.graph.output if o.name not in dropped]
    ref = reference(model, outputs=kept, as_float16=True)
    layouts = head_layouts(model, {k: np.shape(ref.clean[0][k]) for k in kept})
    ratios = []
    for a in kept:
        if a not in layouts:
            continue
        b = renamed.get(a, a)
        got = run_outputs(r16.model, ref.feeds, [b])
        honest = max(float(np.max(np.abs(anchors_last(c[a], layouts[a])[:, 4:] - anchors_last(g[b], layouts[a])[:, 4:])))
                     for c, g in zip(ref.clean, got))
        twin = max(float(np.max(np.abs(anchors_last(c[a], layouts[a])[:, 4:] - anchors_last(n[a], layouts[a])[:, 4:])))
                   for c, n in zip(ref.clean, ref.noisy))
        ratios.append(honest / twin if twin else float("inf"))
    row["score_move_honest_over_twin"] = max(ratios) if ratios else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=str(ROOT / "out" / "calibration.json"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows = []
    for case in QUICK if args.quick else CASES:
        t0 = time.perf_counter()
        row = one(*case)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {k: max(r[k] for r in rows if r.get(k) is not None) for k in ("fp32_used", "fp16_used", "score_move_honest_over_twin")}
    summary["fp16_agreement_min"] = min(r["fp16_agreement"] for r in rows if r.get("fp16_agreement") is not None)
    print("worst:", json.dumps(summary))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "worst": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
