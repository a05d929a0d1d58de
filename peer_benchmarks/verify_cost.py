"""What verification costs: wall time and peak memory of `onnxrep optimize` with and without verification.

    python peer_benchmarks/verify_cost.py MODEL.onnx [--repeat 2] [--json]

Each run is a fresh process (`onnxrep optimize MODEL -o tmp --json -`), once with --no-verify and once
verifying with the defaults, `--repeat` times; the verify cost is the difference, and the report's own
seconds["verify"] is printed beside it. Run it on the same file with two checkouts to compare versions:

    PYTHONPATH=/path/to/other/checkout python peer_benchmarks/verify_cost.py out/y9c.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _run(model: str, verify: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "o.onnx")
        cmd = [sys.executable, "-m", "onnxrep", "optimize", model, "-o", out, "--json", "-", "-q"]
        if not verify:
            cmd.append("--no-verify")
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return {"wall_s": wall, "exit": proc.returncode, "peak_rss_mb": max(peak, before) / 1024,
            "verify_s": (report.get("seconds") or {}).get("verify"),
            "samples": (report.get("verification") or {}).get("samples")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = {"no-verify": [], "verify": []}
    for _ in range(args.repeat):
        rows["no-verify"].append(_run(args.model, False))
        rows["verify"].append(_run(args.model, True))
    summary = {k: {"wall_s": statistics.median(r["wall_s"] for r in v),
                   "verify_s": statistics.median(r["verify_s"] for r in v) if v[0]["verify_s"] is not None else None,
                   "samples": v[0]["samples"], "exit": [r["exit"] for r in v]} for k, v in rows.items()}
    summary["verify_cost_s"] = summary["verify"]["wall_s"] - summary["no-verify"]["wall_s"]
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{args.model}: optimize {summary['no-verify']['wall_s']:.1f} s without verification, "
              f"{summary['verify']['wall_s']:.1f} s with ({summary['verify_cost_s']:.1f} s more; report's own "
              f"verify {summary['verify']['verify_s']} s, {summary['verify']['samples']} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
