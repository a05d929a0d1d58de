"""`make bench`, float16 rows: what `--precision fp16` gives and costs on the builder's YOLOv9 models.

    python peer_benchmarks/float16.py                           # yolov9-t/c/e, 640x640, every runtime present
    python peer_benchmarks/float16.py --models yolov9-t --imgsz 320 --out /tmp/f16

Per model (training form, the builder's random weights): onnxrep optimize to float32 and to float16 (both
verified), then file size; latency of the two in every runtime present (onnxrep.bench: ORT CPU, OpenVINO
CPU, ORT CUDA/TensorRT where a GPU is), alternating run by run; the float16 model's detection agreement with
the float32 one (verify/detections.py) and, on the 100 top-scoring anchors of seeded image-like inputs, its
largest box error in pixels and score error relative to the score. Writes float16.json and float16.md.

ORT CPU has few float16 kernels and computes the rest in float32 between casts, so float16 is no faster
there (slower on CPUs without AVX-512-FP16); its value is size and the accelerators (CUDA, TensorRT, DirectML, OpenVINO GPU/NPU, CoreML).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import models  # noqa: E402
import onnxrep  # noqa: E402
from onnxrep.bench import run_bench  # noqa: E402
from peer_benchmarks import rows as rows_mod  # noqa: E402
from onnxrep.verify.detections import top_anchor_errors  # noqa: E402
from onnxrep.verify.inputs import make_inputs  # noqa: E402


def _ort(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def measure(name: str, imgsz: int, work: Path, threads: int, min_time: float) -> dict:
    model = models.build(name, "bn", imgsz=imgsz)
    t0 = time.perf_counter()
    fp32 = onnxrep.optimize(model)
    t32 = time.perf_counter() - t0
    t0 = time.perf_counter()
    fp16 = onnxrep.optimize(model, precision="fp16")
    t16 = time.perf_counter() - t0
    paths = {}
    for label, result in (("fp32", fp32), ("fp16", fp16)):
        paths[label] = work / f"{name}.{label}.onnx"
        onnx.save(result.model, str(paths[label]))
    px = rel = 0.0
    for feed in make_inputs(fp32.model, 2, 11):   # other inputs than verification's
        a, b, _ = top_anchor_errors(_ort(fp32.model, feed), _ort(fp16.model, feed))
        px, rel = max(px, a), max(rel, b)
    (agree,) = fp16.verification.agreements.values()
    bench = run_bench([str(paths["fp32"]), str(paths["fp16"])], labels=["fp32", "fp16"], threads=threads,
                      min_time=min_time, min_runs=5)
    latency = rows_mod.latency(bench)
    kept = fp16.report.passes["to_float16"]["float16"]
    return {"model": name, "imgsz": imgsz, "status": fp16.status,
            "bytes": {k: p.stat().st_size for k, p in paths.items()},
            "optimize_s": {"fp32": round(t32, 2), "fp16": round(t16, 2)},
            "agreement": {k: agree[k] for k in ("rate", "matched", "disagreements", "ties", "mean_iou",
                                                "max_score_diff", "conf", "conf_lowered")},
            "top_anchor_px": px, "top_anchor_score_rel": rel,
            "used_of_tolerance": fp16.verification.outputs[0].used,
            "kept_float32": kept["kept_float32"], "weights_flushed_to_zero": kept["weights_flushed_to_zero"],
            "runtimes": [r for r in bench.runtimes], "latency": latency}


def render(rows: list[dict]) -> str:
    lines = ["# float16 (`onnxrep optimize --precision fp16`)", "",
             "Builder models (random weights), training form, optimized to float32 and to float16, both verified. "
             "Latency: median ms at batch 1, the two alternating run by run (onnxrep.bench). ORT CPU has few "
             "float16 kernels and computes the rest in float32 between casts: no faster there; float16 is for size and "
             "accelerators. OpenVINO CPU runs both models at its default inference precision (bfloat16 on CPUs "
             "that have it), so its two columns differ little. Box/score errors: the float16 model against the "
             "float32 one on the 100 top-scoring anchors of seeded inputs.", "",
             "| model | fp32 file | fp16 file | ratio | runtime | fp32 ms | fp16 ms | agreement (ties) | box px | "
             "score rel | kept float32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["bytes"]
        kept = sum(r["kept_float32"].values())
        for rt, cells in r["latency"].items():
            a, h = cells.get("fp32", {}), cells.get("fp16", {})
            ms = [f"{c['median_ms']:.1f}" if c.get("median_ms") else c.get("status", "-") for c in (a, h)]
            ag = r["agreement"]
            lines.append(f"| {r['model']} {r['imgsz']} | {b['fp32'] / 1e6:.1f} MB | {b['fp16'] / 1e6:.1f} MB | "
                         f"{b['fp16'] / b['fp32']:.3f} | {rt} | {ms[0]} | {ms[1]} | {ag['rate']:.2%} ({ag['ties']}) | "
                         f"{r['top_anchor_px']:.2f} | {r['top_anchor_score_rel']:.2%} | {kept} nodes |")
    lines += rows_mod.not_measured(rows)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return rows_mod.main("float16", __doc__, measure, render, "yolov9-t,yolov9-c,yolov9-e", HERE / "results", argv, extra=())


if __name__ == "__main__":
    sys.exit(main())
