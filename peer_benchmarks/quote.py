"""Every measured number of README.md and docs/*.md, rendered from the results files that commands write.

    python peer_benchmarks/quote.py                      # rewrite the quote regions of README.md and docs/*.md
    python peer_benchmarks/quote.py --check              # exit 1 if a region is not what the results say
    python peer_benchmarks/quote.py --import-calibration # copy out/calibration.json here, with its date and machine
    python peer_benchmarks/quote.py --record-test-time FILE  # `make measure-test`: /usr/bin/time's seconds -> test_time.json

A region is the text between ``<!-- quote:NAME -->`` and ``<!-- /quote -->``; NAME is a key of RENDER. Each
rendering says where its numbers come from: the results file, its date and the machine it ran on (from the
file's own meta; a file without one gets its git commit date and "machine not recorded"). A results file
that does not exist yet renders as one line saying so and which command writes it, never as old numbers.
tests/test_docs.py renders every region in-process and asserts the files hold exactly that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
REGION = re.compile(r"(<!-- quote:([\w-]+) -->\n)(.*?)(<!-- /quote -->)", re.S)
MB = 1e6


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _load(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _git_date(path: Path) -> str:
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "date not recorded"


def _missing(name: str, command: str) -> str:
    return f"(not measured yet: run `{command}`; it writes `peer_benchmarks/results/{name}`)\n"


def _source(name: str, date: str, machine: str, command: str, script: str = "") -> str:
    by = f"`{command}`" + (f" (`peer_benchmarks/{script}`)" if script else "")
    return f"*`peer_benchmarks/results/{name}`, measured {date} on {machine}, by {by}.*\n"


def _cpu(env: dict) -> str:
    cores = env.get("cores")
    return f"{env.get('cpu', 'an unrecorded CPU')}" + (f", {cores} cores" if cores else "")


# ------------------------------------------------------------------------------------------- renderers


def peers() -> str:
    """The demo's model (yolov9-c, bn form) against the peers: results.json of peer_benchmarks/run.py."""
    d = _load("results.json")
    if d is None:
        return _missing("results.json", "make bench")
    entry = next((e for e in d["inputs"] if (e["model"], e["form"]) == ("yolov9-c", "bn")), None)
    if entry is None:
        return "(results.json holds no yolov9-c bn row: run `make bench`)\n"
    labels = {t["name"]: t["label"] for t in d["settings"]["tools"]}
    lines = ["| yolov9-c 640, `bn` form | nodes | Conv | BN | parameters | time s | peak RSS MB | ORT latency ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in entry["rows"].items():
        s = row.get("stats") or {}
        if not s:
            continue
        label = "original" if name == "original" else labels.get(name, name)
        wall, rss = (row.get("wall_s") or {}).get("median"), (row.get("rss_bytes") or {}).get("median")
        lat = (row.get("latency") or {}).get("median_ms")
        cells = [f"{s['nodes']:,}", f"{s['conv']:,}", f"{s['batchnorm']:,}", f"{s['parameters']:,}",
                 "–" if wall is None else f"{wall:.2f}", "–" if rss is None else f"{rss / MB:.0f}",
                 "–" if lat is None else f"{lat:.0f}"]
        if name == "onnxrep":
            label, cells = f"**{label}**", [f"**{c}**" for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    conv = entry["converted"]
    lines += ["", f"The official converted yolov9-c (the deploy form) has {conv['conv']:,} Conv and "
                  f"{conv['parameters']:,} parameters. Time and memory are each tool's whole process (onnxrep "
                  f"with `--no-verify`, as the peers verify nothing); latency is onnxruntime CPU at "
                  f"{d['settings']['threads']} threads, median of the models alternating run by run.", ""]
    return "\n".join(lines) + "\n" + _source("results.json", d["started"][:10], _cpu(d["environment"]),
                                             "make bench", "run.py")


def peers_summary() -> str:
    """Every input of the peer benchmark, one line each (peer_benchmarks/report.py's summary table)."""
    d = _load("results.json")
    if d is None:
        return _missing("results.json", "make bench")
    sys.path.insert(0, str(ROOT))
    from peer_benchmarks.report import summary_table

    return "\n".join(summary_table(d)) + "\n\n" + _source(
        "results.json", d["started"][:10], _cpu(d["environment"]), "make bench", "run.py")


def _rows_meta(name: str, data) -> tuple[list, str, str]:
    """(rows, date, machine) of a per-feature bench file: a list of rows (no meta) or {"meta", "rows"}."""
    if isinstance(data, dict):
        meta = data.get("meta", {})
        return data.get("rows", []), meta.get("date", _git_date(RESULTS / name)), meta.get("machine", "machine not recorded")
    return data, _git_date(RESULTS / name), "a machine the file does not record"


def _ms(cell: dict | None) -> str:
    return "–" if not cell or cell.get("median_ms") is None else f"{cell['median_ms']:.1f}"


def float16() -> str:
    """fp32 against fp16: peer_benchmarks/float16.py."""
    data = _load("float16.json")
    if data is None:
        return _missing("float16.json", "make bench")
    rows, date, machine = _rows_meta("float16.json", data)
    runtimes = [rt["name"] for rt in rows[0]["runtimes"] if rt["ran"]] if rows else []
    head = "| model | fp32 file MB | fp16 file MB | ratio | " + " | ".join(f"{rt} ms fp32 / fp16" for rt in runtimes)
    lines = [head + " | detections agree (ties) | top-anchor box px | score rel |",
             "|---|---:|---:|---:|" + "---|" * len(runtimes) + "---|---:|---:|"]
    for r in rows:
        b = r["bytes"]
        lat = r.get("latency", {})
        cells = []
        for rt in runtimes:
            m = lat.get(rt, {})
            cells.append(f"{_ms(m.get('fp32'))} / {_ms(m.get('fp16'))}")
        a = r.get("agreement") or {}
        agree = "–" if not a else f"{a['rate']:.0%} ({a['ties']})"
        lines.append(f"| {r['model']} {r['imgsz']} | {b['fp32'] / MB:.1f} | {b['fp16'] / MB:.1f} | "
                     f"{b['fp16'] / b['fp32']:.3f} | " + " | ".join(cells)
                     + f" | {agree} | {r['top_anchor_px']:.2f} | {r['top_anchor_score_rel']:.1%} |")
    skipped = sorted({rt["name"] for r in rows for rt in r["runtimes"] if not rt["ran"]})
    if skipped:
        lines += ["", "Not measured (not offered by this onnxruntime build): " + ", ".join(skipped) + "."]
    return "\n".join(lines) + "\n\n" + _source("float16.json", date, machine, "make bench", "float16.py")


def nms() -> str:
    """The embedded NMS's cost: peer_benchmarks/nms.py."""
    data = _load("nms.json")
    if data is None:
        return _missing("nms.json", "make bench")
    rows, date, machine = _rows_meta("nms.json", data)
    lines = ["| model | runtime | variant | candidates | detections | ms | ratio |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        for rt, cells in r.get("latency", {}).items():
            for label, cell in cells.items():
                det = r["detections"].get(label)
                cand = "–" if label == "no NMS" else ("0" if label.endswith("0.25") else str(r["candidates"]))
                ratio = "–" if cell.get("ratio") is None else f"{cell['ratio']:.3f}"
                lines.append(f"| {r['model']} {r['imgsz']} | {rt} | {label} | {cand} | "
                             f"{'–' if det is None else det} | {_ms(cell)} | {ratio} |")
    return "\n".join(lines) + "\n\n" + _source("nms.json", date, machine, "make bench", "nms.py")


def _int8(name: str) -> str:
    data = _load(name)
    if data is None:
        return _missing(name, f"python peer_benchmarks/int8.py {name.removeprefix('int8_').removesuffix('.json')}")
    meta = data["meta"]
    return data["table"] + "\n\n" + _source(name, meta["date"], meta["machine"], meta["command"])


def int8_accuracy() -> str:
    """int8 against float32 on the trained models, mAP by pycocotools: peer_benchmarks/int8.py accuracy."""
    return _int8("int8_accuracy.json")


def int8_latency() -> str:
    """int8 latency on the builder's yolov9-c: peer_benchmarks/int8.py latency."""
    return _int8("int8_latency.json")


def _tool_time(name: str, command: str) -> str:
    data = _load(name)
    if data is None:
        return _missing(name, command)
    meta, results = data.get("meta", {}), data.get("results", [])
    lines = ["| command | " + " | ".join(f"{Path(r['model']).name} ({r['file_mb']} MB)" for r in results) + " |",
             "|---|" + "---:|" * len(results)]
    names = list(dict.fromkeys(k for r in results for k in r["rows"]))
    for n in names:
        cells = []
        for r in results:
            x = r["rows"].get(n)
            verify = (x or {}).get("seconds", {}).get("verify")   # onnxrep's own account of its proof
            cells.append(f"{x['wall_s']:.1f} s, {x['rss_mb'] / 1024:.2f} GB" + (f" (verify {verify:.1f} s)" if verify else "")
                         if x and x.get("wall_s") else "–")
        lines.append(f"| `{n}` | " + " | ".join(cells) + " |")
    judged = list(dict.fromkeys((t["row"], t["against"], t["measure"], t["limit"]) for r in results for t in r["targets"]))
    if judged:
        lines += ["", "| target | " + " | ".join(Path(r["model"]).name for r in results) + " |",
                  "|---|" + "---|" * len(results)]
        for row, against, what, limit in judged:
            cells = []
            for r in results:
                t = next((t for t in r["targets"] if (t["row"], t["against"], t["measure"]) == (row, against, what)), None)
                cells.append("–" if t is None else f"{t['ratio']:.2f} {'PASS' if t['pass'] else 'FAIL'}")
            lines.append(f"| {what} of `{row}` / `{against}` ≤ {limit} | " + " | ".join(cells) + " |")
    how = (f"wall time and peak RSS of the whole process, median of {meta.get('runs', '?')} runs, each command in "
           f"a fresh process" + ("; in brackets the verification's share, as onnxrep's report times it"
                                 if any("seconds" in x for r in results for x in r["rows"].values()) else ""))
    return ("\n".join(lines) + "\n\n" + f"*{how}; `peer_benchmarks/results/{name}`, measured "
            f"{meta.get('date', 'date not recorded')} on {meta.get('machine', 'machine not recorded')} "
            f"(onnxruntime {meta.get('onnxruntime', '?')}), by `{(meta.get('command') or command).strip()}`.*\n")


def tool_time() -> str:
    """Wall time and peak memory per command, builder models: peer_benchmarks/tool_time.py."""
    return _tool_time("tool_time.json", "make bench")


def tool_time_real() -> str:
    """The same on real exports (out/real-exports/, `make test-real` first)."""
    return _tool_time("tool_time_real.json", "python peer_benchmarks/tool_time.py --model <export> "
                                             "--out peer_benchmarks/results/tool_time_real")


def calibration() -> str:
    """How much of its tolerance an honest rewrite uses: peer_benchmarks/calibrate_noise.py."""
    d = _load("calibration.json")
    if d is None:
        return _missing("calibration.json", "python peer_benchmarks/calibrate_noise.py && "
                                            "python peer_benchmarks/quote.py --import-calibration")
    rows, worst, meta = d["rows"], d["worst"], d.get("meta", {})
    models = sorted({r["model"] for r in rows})
    forms = sorted({r["form"] for r in rows})
    text = (f"Over {len(rows)} builder models and forms ({', '.join(models)}; forms and exporters "
            f"{', '.join(forms)}), the most of its tolerance an honest float32 rewrite used was "
            f"{worst['fp32_used']:.3f} (K = 20), an honest float16 conversion {worst['fp16_used']:.3f} (K = 3); "
            f"the float16 detections agreed at least {worst['fp16_agreement_min']:.0%}, and the honest float16 "
            f"score moves were at most {worst['score_move_honest_over_twin']:.2f} of the float16 twin's "
            f"(the tie threshold is 1.5 of it).")
    return text + "\n\n" + _source("calibration.json", meta.get("date", "date not recorded"),
                                   meta.get("machine", "machine not recorded"),
                                   meta.get("command", "python peer_benchmarks/calibrate_noise.py"))


def test_time() -> str:
    """How long `make test` takes: `make measure-test`."""
    d = _load("test_time.json")
    if d is None:
        return _missing("test_time.json", "make measure-test")
    return (f"`make test` took {d['seconds']:.0f} s on {d['machine']} ({d['date']}, `make measure-test`, "
            f"`peer_benchmarks/results/test_time.json`).\n")


def _counts(c) -> str:
    return f"{c[0]}/{c[1]:,}" + (f" +{c[2]} BN" if c[2] else "")


def _exact(row: dict) -> bool:
    """The family's deploy form exactly: its Conv count and parameters, no BatchNormalization left."""
    return tuple(row["after"][:2]) == tuple(row["deploy"][:2]) and not row["after"][2]


def families() -> str:
    """Other libraries' detectors in the real tier: results/families.json (`--record-families`)."""
    d = _load("families.json")
    if d is None:
        return _missing("families.json", "make test-real REAL=<the family models> && python peer_benchmarks/quote.py "
                                         "--record-families")
    lines = ["| model | form | before: Conv/params | after `onnxrep optimize` | the family's deploy form | |",
             "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['model']} | {r['form']} | {_counts(r['before'])} | {_counts(r['after'])} | "
                     f"{_counts(r['deploy'])} | {'✓' if _exact(r) else '✗'} |")
    meta = d["meta"]
    return "\n".join(lines) + "\n\n" + _source("families.json", meta["date"], meta["machine"], meta["command"])


def families_by_model() -> str:
    """The same, one row per model and one column per form (README.md)."""
    d = _load("families.json")
    if d is None:
        return families()
    forms, models = [], {}
    for r in d["rows"]:
        forms += [r["form"]] if r["form"] not in forms else []
        models.setdefault(r["model"], {})[r["form"]] = r
    lines = ["| model | deploy form | " + " | ".join(forms) + " |", "|---|---|" + "---|" * len(forms)]
    for model, by_form in models.items():
        deploy = next(iter(by_form.values()))["deploy"]
        cells = []
        for f in forms:
            r = by_form.get(f)
            cells.append("–" if r is None else f"{_counts(r['before'])} → {_counts(r['after'])} {'✓' if _exact(r) else '✗'}")
        lines.append(f"| {model} | {_counts(deploy)} | " + " | ".join(cells) + " |")
    meta = d["meta"]
    return "\n".join(lines) + "\n\n" + _source("families.json", meta["date"], meta["machine"], meta["command"])


def record_families(root: Path) -> Path:
    """The summaries test_real_exports.py wrote for the family models (tests/real/families) -> results/families.json."""
    sys.path.insert(0, str(ROOT))
    from tests.real import families as fam

    rows = []
    for model, (_, forms) in fam.registry().items():
        for form in forms:
            p = root / f"summary.{model}.{form}.json"
            if p.exists():
                s = json.loads(p.read_text())
                rows.append({k: s[k] for k in ("model", "form", "before", "after", "deploy")})
    d = {"meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": _machine(),
                  "command": f"make test-real REAL={','.join(fam.registry())} && python peer_benchmarks/quote.py "
                             f"--record-families"},
         "rows": rows}
    dst = RESULTS / "families.json"
    dst.write_text(json.dumps(d, indent=1) + "\n")
    return dst


RENDER = {
    "families": families,
    "families_by_model": families_by_model,
    "peers": peers,
    "peers_summary": peers_summary,
    "float16": float16,
    "nms": nms,
    "tool_time": tool_time,
    "tool_time_real": tool_time_real,
    "calibration": calibration,
    "test_time": test_time,
    "int8_accuracy": int8_accuracy,
    "int8_latency": int8_latency,
}


def fill(text: str, cache: dict | None = None) -> str:
    """`text` with every quote region re-rendered (an unknown region name is an error)."""
    cache = {} if cache is None else cache

    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in RENDER:
            raise KeyError(f"unknown quote region {name!r} (known: {', '.join(RENDER)})")
        if name not in cache:
            cache[name] = RENDER[name]()
        return m.group(1) + cache[name] + m.group(4)

    return REGION.sub(sub, text)


# ------------------------------------------------------------------------------------------- recording


def _machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def import_calibration(src: Path) -> Path:
    """out/calibration.json -> results/calibration.json with a meta (its own mtime, this machine)."""
    d = json.loads(src.read_text())
    when = datetime.fromtimestamp(src.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    d["meta"] = {"date": when, "machine": _machine(), "command": "python peer_benchmarks/calibrate_noise.py",
                 "copied_from": str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src)}
    dst = RESULTS / "calibration.json"
    dst.write_text(json.dumps(d, indent=1) + "\n")
    return dst


def record_test_time(time_file: Path, jobs: str) -> Path:
    """/usr/bin/time -f %e's output (its last line: seconds) -> results/test_time.json."""
    seconds = float(time_file.read_text().strip().splitlines()[-1])
    d = {"seconds": seconds, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cores": os.cpu_count(),
         "machine": _machine(), "jobs": jobs, "command": "make measure-test"}
    dst = RESULTS / "test_time.json"
    dst.write_text(json.dumps(d, indent=1) + "\n")
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a region is out of date")
    ap.add_argument("--import-calibration", nargs="?", const=str(ROOT / "out" / "calibration.json"), default=None,
                    metavar="FILE")
    ap.add_argument("--record-test-time", default=None, metavar="FILE")
    ap.add_argument("--jobs", default="auto")
    ap.add_argument("--record-families", nargs="?", const="", default=None, metavar="DIR",
                    help="collect the real tier's family summaries (default: out/real-exports/<torch version>/)")
    args = ap.parse_args(argv)
    if args.record_families is not None:
        root = Path(args.record_families) if args.record_families else \
            next(iter(sorted((ROOT / "out" / "real-exports").glob("*"))), ROOT / "out" / "real-exports")
        print(f"wrote {record_families(root)}")
    if args.import_calibration:
        print(f"wrote {import_calibration(Path(args.import_calibration))}")
    if args.record_test_time:
        print(f"wrote {record_test_time(Path(args.record_test_time), args.jobs)}")
    stale, cache = [], {}
    for path in documents():
        if not path.exists():
            continue
        old = path.read_text()
        new = fill(old, cache)
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    verb = "out of date" if args.check else "updated"
    print(f"{verb}: {', '.join(map(str, stale))}" if stale else "quote regions: up to date")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
