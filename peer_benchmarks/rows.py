"""What the per-feature bench scripts (float16.py, nms.py) share: latency cells by runtime and model,
the "not measured" line, and the main loop that measures each model and writes <name>.json and <name>.md."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def latency(bench) -> dict:
    """runtime -> model label -> status, median ms, ratio to the first model, message."""
    out: dict = {}
    for cell in bench.results:
        out.setdefault(cell.runtime, {})[cell.model] = {"status": cell.status, "median_ms": cell.median_ms,
                                                         "ratio": cell.ratio, "message": cell.message}
    return out


def not_measured(rows: list[dict]) -> list[str]:
    skipped = {rt["name"]: rt["reason"] for r in rows for rt in r["runtimes"] if not rt["ran"]}
    return ["", "Not measured: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())] if skipped else []


def main(name: str, doc: str, measure, render, default_models: str, out_default: Path, argv=None,
         extra=()) -> int:
    """Parse --models/--imgsz/--threads/--min-time/--out (plus `extra`: (flag, type, default) each), call
    measure(model, imgsz, workdir, threads, min_time, **extra) per model, write <name>.json and .md."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--models", default=default_models)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--out", default=str(out_default))
    for flag, kind, default in extra:
        ap.add_argument(flag, type=kind, default=default)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    more = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_")) for flag, _, _ in extra}
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"onnxrep-{name}-") as work:
        for model in args.models.split(","):
            print(f"{name}: {model}", flush=True)
            rows.append(measure(model, args.imgsz, Path(work), args.threads, args.min_time, **more))
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    text = render(rows)
    (out / f"{name}.md").write_text(text)
    print(text)
    return 0
