"""onnxruntime CPU latency of a model before and after merge_branches alone (RepConv re-parameterization).

    python peer_benchmarks/merge_latency.py                      # yolov9-c, folded form, 640x640
    python peer_benchmarks/merge_latency.py --model yolov9-t --imgsz 320 --runs 30

The "before" model is the builder's `folded` form (BN folded, RepConvN still two Convs + Add: what an
export that skipped fuse() carries); "after" is that model through `merge_branches` only, so the ratio
measures this pass and nothing else. Runs alternate between the two sessions (so drift in machine load
hits both alike); the figure is the median per model. ORT's own graph optimizations are on (what a
deployment uses) unless --ort-opt disable. On a shared machine, --threads 1 and the fastest-run ratio
are the steadier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import models
import onnxrep

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


def session(model, level: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov9-c")
    ap.add_argument("--form", default="folded", choices=["folded", "bn"])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model (after warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    ap.add_argument("--ort-opt", default="all", choices=list(_LEVELS))
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    before = models.build(args.model, form=args.form, imgsz=args.imgsz)
    build_s = time.perf_counter() - t0
    passes = ["merge_branches"] if args.form == "folded" else ["fold_batchnorm", "merge_branches"]
    # random weights through ~250 layers: boxes reach hundreds of pixels, so float32 rounding shows up
    # at 1e-2 absolute; the figures are printed, the equivalence itself is what the tests assert
    result = onnxrep.optimize(before, passes=passes, verify=True, samples=1, rtol=1e-3, atol=1e-2)
    after = result.model

    sessions = {k: session(m, args.ort_opt, args.threads) for k, m in (("before", before), ("after", after))}
    inp = sessions["before"].get_inputs()[0]
    feed = {inp.name: np.random.default_rng(0).random((1, 3, args.imgsz, args.imgsz), dtype=np.float32)}
    wall = {k: [] for k in sessions}
    cpu = {k: [] for k in sessions}  # process CPU time: what the run cost, whoever else used the machine
    for _ in range(args.warmup):
        for s in sessions.values():
            s.run(None, feed)
    for _ in range(args.runs):
        for k, s in sessions.items():
            t, c = time.perf_counter(), time.process_time()
            s.run(None, feed)
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)

    def ms(values):
        return {k: round(v * 1e3, 2) for k, v in values.items()}

    med = {k: statistics.median(v) for k, v in wall.items()}
    fastest = {k: min(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    convs = {"before": models.count_convs(before)[0], "after": models.count_convs(after)[0]}
    report = {
        "model": args.model, "form": args.form, "imgsz": args.imgsz, "runs": args.runs,
        "ort_opt": args.ort_opt, "threads": args.threads or "default", "cpus": os.cpu_count(),
        "merged_groups": result.report.passes["merge_branches"]["count"], "convs": convs,
        "median_ms": ms(med), "min_ms": ms(fastest), "median_cpu_ms": ms(med_cpu),
        "ratio_after_over_before": round(med["after"] / med["before"], 4),
        # on a shared machine the fastest run and the CPU time are the steadier figures
        "ratio_of_min": round(fastest["after"] / fastest["before"], 4),
        "ratio_of_cpu": round(med_cpu["after"] / med_cpu["before"], 4),
        "macs": {"before": result.report.before.macs, "after": result.report.after.macs},
        "verified": result.ok, "build_s": round(build_s, 1),
        "max_abs_err": {o.name: o.max_abs for o in result.verification.outputs},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.model} ({args.form}, {args.imgsz}x{args.imgsz}), onnxruntime CPU, "
              f"graph opt {args.ort_opt}, "
              f"{args.runs} runs, {report['cpus']} CPUs")
        print(f"  merge_branches: {report['merged_groups']} groups merged, "
              f"Conv {convs['before']} -> {convs['after']}, "
              f"verified {result.ok} (max abs error {max(report['max_abs_err'].values()):.3g})")
        r = report
        print(f"  median latency: before {r['median_ms']['before']:.1f} ms, "
              f"after {r['median_ms']['after']:.1f} ms, "
              f"ratio after/before {r['ratio_after_over_before']:.3f}")
        print(f"  fastest run: before {r['min_ms']['before']:.1f} ms, after {r['min_ms']['after']:.1f} ms, "
              f"ratio {r['ratio_of_min']:.3f}")
        print(f"  median CPU time: before {r['median_cpu_ms']['before']:.1f} ms, "
              f"after {r['median_cpu_ms']['after']:.1f} ms, ratio {r['ratio_of_cpu']:.3f}; "
              f"MACs ratio {r['macs']['after'] / r['macs']['before']:.4f}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
