"""What a user waits for: wall time and peak memory of each onnxrep command against its peers, one run.

    python peer_benchmarks/tool_time.py                      # the builder's yolov9-c and yolov9-e (640, bn form)
    python peer_benchmarks/tool_time.py --model out/real-exports/bench/yolov9-c.torchscript.onnx ...
    python peer_benchmarks/tool_time.py --runs 1 --models yolov9-c           # a quick look

Every command runs in a fresh process; its wall time and its peak resident memory (the child's own, from
wait4) are measured, `--runs` times interleaved command by command, and the medians are kept. Rows: a bare
onnx.load + onnx.save (the floor any tool pays), `onnxrep optimize --no-verify`, the default run (verified),
the default run with each adapter (--precision fp16, --nms ort, --dynamic-batch), onnxslim with --outputs
the main output (the closest peer: it drops the aux head too) and onnxsim. The targets of issue 28 are
judged as ratios within the same run (PASS/FAIL). Results: peer_benchmarks/results/tool_time.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
RESULTS = HERE / "results"

LOAD_SAVE = """\
import os, sys, onnx
m = onnx.load(sys.argv[1])
big = sum(len(t.raw_data) for t in m.graph.initializer) > 2**31 - 2**26 or os.path.exists(sys.argv[1] + ".data")
onnx.save(m, sys.argv[2], save_as_external_data=big, location=os.path.basename(sys.argv[2]) + ".data")
"""

# name -> (argv after the input and output paths are known, what it is)
def commands(inp: str, out: str, main_output: str) -> dict[str, list[str]]:
    rep = [str(BIN / "onnxrep"), "optimize", inp, "-o", out, "-q"]
    return {
        "load+save": [sys.executable, "-c", LOAD_SAVE, inp, out],
        "onnxrep --no-verify": rep + ["--no-verify"],
        "onnxrep": rep,
        "onnxrep --precision fp16": rep + ["--precision", "fp16"],
        "onnxrep --nms ort": rep + ["--nms", "ort"],
        "onnxrep --dynamic-batch": rep + ["--dynamic-batch"],
        "onnxslim --outputs main": [str(BIN / "onnxslim"), inp, out, "--outputs", main_output],
        "onnxsim": [str(BIN / "onnxsim"), inp, out],
    }


TARGETS = [  # (row, against, at most): issue 28
    ("onnxrep", "onnxslim --outputs main", 2.0, "wall"),
    ("onnxrep", "onnxslim --outputs main", 1.5, "rss"),
    ("onnxrep --precision fp16", "onnxrep", 1.3, "wall"),
    ("onnxrep --nms ort", "onnxrep", 1.3, "wall"),
    ("onnxrep --dynamic-batch", "onnxrep", 1.3, "wall"),
    ("onnxrep --no-verify", "load+save", 1.5, "wall"),
]


def _run(argv: list[str], timeout: float) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        proc.kill()
        raise
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
    code = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "rss_mb": usage.ru_maxrss / 1024, "exit": code, "error": err[-1][:200] if code and err else ""}


def _available(argv: list[str]) -> bool:
    return Path(argv[0]).exists()


def _builder_model(name: str, folder: Path) -> Path:
    path = folder / f"{name}-bn.onnx"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "models", name, "--form", "bn", "-o", str(path)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return path


def _main_output(path: Path) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return m.graph.output[-1].name   # DualDDetect: [aux, main]


def bench(path: Path, runs: int, timeout: float, only: list[str] | None) -> dict:
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="tool-time-") as tmp:
        cmds = commands(str(path), os.path.join(tmp, "out.onnx"), _main_output(path))
        cmds = {k: v for k, v in cmds.items() if (not only or k in only) and _available(v)}
        for _ in range(runs):
            for name, argv in cmds.items():
                for f in Path(tmp).iterdir():
                    f.unlink()
                report = os.path.join(tmp, "report.json")
                r = _run(argv + (["--json", report] if "optimize" in argv else []), timeout)
                if "optimize" in argv and os.path.exists(report):   # where the time went, by onnxrep's own account
                    r["seconds"] = json.loads(Path(report).read_text()).get("seconds", {})
                rows.setdefault(name, []).append(r)
                print(f"  {path.name:34s} {name:28s} {r['wall_s']:7.2f} s {r['rss_mb']:7.0f} MB  exit {r['exit']}"
                      f"{'  ' + r['error'] if r['error'] else ''}", flush=True)
    out = {}
    for name, rs in rows.items():
        ok = [r for r in rs if r["exit"] == 0]
        out[name] = {"wall_s": statistics.median(r["wall_s"] for r in ok) if ok else None,
                     "rss_mb": statistics.median(r["rss_mb"] for r in ok) if ok else None,
                     "runs": len(rs), "failed": len(rs) - len(ok)}
        stages = {k for r in ok for k in r.get("seconds", {})}
        if stages:   # the run's stages (load, optimize, verify, ...), median over the runs
            out[name]["seconds"] = {k: round(statistics.median(r.get("seconds", {}).get(k, 0.0) for r in ok), 2)
                                    for k in sorted(stages)}
    judged = []
    for row, against, limit, what in TARGETS:
        a, b = out.get(row, {}), out.get(against, {})
        key = "wall_s" if what == "wall" else "rss_mb"
        if a.get(key) and b.get(key):
            ratio = a[key] / b[key]
            judged.append({"row": row, "against": against, "measure": what, "ratio": round(ratio, 2), "limit": limit,
                           "pass": ratio <= limit})
    return {"model": str(path), "file_mb": round(path.stat().st_size / 1e6, 1), "rows": out, "targets": judged}


def _table(results: list[dict]) -> str:
    names = list(dict.fromkeys(k for r in results for k in r["rows"]))
    head = "| command | " + " | ".join(f"{Path(r['model']).name} ({r['file_mb']} MB)" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for n in names:
        cells = []
        for r in results:
            x = r["rows"].get(n)
            verify = (x or {}).get("seconds", {}).get("verify")
            cells.append(f"{x['wall_s']:.1f} s, {x['rss_mb'] / 1024:.2f} GB" + (f" (verify {verify:.1f} s)" if verify else "")
                         if x and x["wall_s"] else "—")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "| target (issue 28) | " + " | ".join(Path(r["model"]).name for r in results) + " |",
              "|---|" + "---|" * len(results)]
    for row, against, limit, what in TARGETS:
        cells = []
        for r in results:
            j = next((t for t in r["targets"] if t["row"] == row and t["against"] == against and t["measure"] == what), None)
            cells.append(f"{j['ratio']:.2f} {'PASS' if j['pass'] else 'FAIL'}" if j else "—")
        lines.append(f"| {what} of {row} / {against} <= {limit} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=[], help="an ONNX file (repeatable); default: the builder's")
    ap.add_argument("--models", default="yolov9-c,yolov9-e", help="builder models when no --model is given")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated rows")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default=str(RESULTS / "tool_time"), help="results path without extension")
    args = ap.parse_args()
    work = ROOT / "peer_benchmarks" / "work" / "models"
    work.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in args.model] or [_builder_model(m, work) for m in args.models.split(",")]
    only = args.only.split(",") if args.only else None
    results = [bench(p, args.runs, args.timeout, only) for p in paths]
    import onnxruntime

    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores", "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "runs": args.runs, "command": "python peer_benchmarks/tool_time.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    text = (f"Measured {meta['date']} on {meta['machine']} (onnxruntime {meta['onnxruntime']}), median of "
            f"{args.runs} runs, each in a fresh process; `{meta['command'].strip()}`.\n\n" + _table(results))
    Path(args.out + ".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
