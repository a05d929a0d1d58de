"""`make bench`, NMS rows: what the embedded NMS (`--nms ort`) costs next to the model it ends.

    python peer_benchmarks/nms.py                                  # yolov9-t/c, 640x640, every runtime present
    python peer_benchmarks/nms.py --models yolov9-t --imgsz 320 --out /tmp/nms

Per model (training form, the builder's random weights): onnxrep optimize without NMS and with `--nms ort` at
two score thresholds, all verified, then latency of the three in every runtime present (onnxrep.bench,
alternating run by run, on the bench's own seeded input). NMS cost depends on how many candidates pass the
threshold. A random-weight model's scores are all small, so at the default conf 0.25 nothing passes (the
graph runs its ops on empty tensors); the second threshold is set, from the model's own scores on that
input, so that `--candidates` anchors pass (1000 by default: a busy street scene for a trained model at
conf 0.25, or a validation run at conf 0.001 lets far more through). Writes nms.json and nms.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import models  # noqa: E402
import onnxrep  # noqa: E402
from onnxrep.bench import run_bench  # noqa: E402
from peer_benchmarks import rows as rows_mod  # noqa: E402
from onnxrep.verify.inputs import make_inputs  # noqa: E402


def conf_for(model: onnx.ModelProto, candidates: int) -> float:
    """The score threshold at which `candidates` anchors pass (best class score > conf) on the bench input."""
    import onnxruntime as ort

    feed = make_inputs(model, 1, 0, batches=(1,))[0]
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    best = np.sort(y[0, 4:].max(0))[::-1]
    return float(best[min(candidates, best.size - 1)])


def measure(name: str, imgsz: int, work: Path, threads: int, min_time: float, candidates: int) -> dict:
    model = models.build(name, "bn", imgsz=imgsz)
    plain = onnxrep.optimize(model)
    low = conf_for(plain.model, candidates)
    variants = {"no NMS": plain, "NMS conf 0.25": onnxrep.optimize(model, nms="ort"),
                f"NMS conf {low:.3g}": onnxrep.optimize(model, nms="ort", conf=low, max_det=300)}
    paths, detections = {}, {}
    for k, (label, result) in enumerate(variants.items()):
        assert result.ok, result.report.text()
        paths[label] = work / f"{name}.{k}.onnx"
        onnx.save(result.model, str(paths[label]))
        if label != "no NMS":
            import onnxruntime as ort

            feed = make_inputs(plain.model, 1, 0, batches=(1,))[0]
            detections[label] = int(ort.InferenceSession(result.model.SerializeToString(),
                                                         providers=["CPUExecutionProvider"]).run(["num_dets"], feed)[0].sum())
    bench = run_bench([str(p) for p in paths.values()], labels=list(paths), threads=threads, min_time=min_time,
                      min_runs=5)
    latency = rows_mod.latency(bench)
    return {"model": name, "imgsz": imgsz, "low_conf": low, "candidates": candidates, "detections": detections,
            "runtimes": list(bench.runtimes), "latency": latency}


def render(rows: list[dict]) -> str:
    lines = ["# Embedded NMS (`onnxrep optimize --nms ort`)", "",
             "Builder models (random weights), optimized and verified without NMS and with the standard-ops NMS "
             "(each NMS model proven equal to the numpy reference NMS). Median ms at batch 1, the three alternating "
             "run by run (onnxrep.bench); ratio against the model without NMS. Random weights score every anchor "
             "low: at conf 0.25 no candidate passes, so the second NMS row uses a threshold that lets "
             "`candidates` anchors through.", "",
             "| model | runtime | variant | candidates | detections | ms | ratio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for rt, cells in r["latency"].items():
            for label, c in cells.items():
                ms = f"{c['median_ms']:.1f}" if c.get("median_ms") else c.get("status", "-")
                ratio = f"{c['ratio']:.3f}" if c.get("ratio") else "1"
                cand = "-" if label == "no NMS" else ("0" if label.endswith("0.25") else str(r["candidates"]))
                dets = r["detections"].get(label, "-")
                lines.append(f"| {r['model']} {r['imgsz']} | {rt} | {label} | {cand} | {dets} | {ms} | {ratio} |")
    lines += rows_mod.not_measured(rows)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return rows_mod.main("nms", __doc__, measure, render, "yolov9-t,yolov9-c", HERE / "results", argv, extra=(("--candidates", int, 1000),))


if __name__ == "__main__":
    sys.exit(main())
