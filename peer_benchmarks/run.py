"""`make bench`: onnxrep against its peers on YOLOv9, measured side by side in one run.

    python peer_benchmarks/run.py                        # everything: yolov9-t/c/e x bn/folded/fused x every tool
    python peer_benchmarks/run.py --models t --runs 1 --out /tmp/bench     # a quick look while developing
    python peer_benchmarks/run.py --report-only          # re-render BENCHMARKS.md and the plot from the JSON

Steps, per model and input form:
1. build the input with the models/ builder into peer_benchmarks/work/models/ (cached; rebuilt when models/ changes);
2. run every tool on it in a fresh process, several runs interleaved tool by tool (A B C A B C), timing
   the wall clock and reading the child's peak resident memory from wait4(); onnxrep runs with
   --no-verify and reports its own load/optimize split, then once more with verification for its time;
3. in a separate process (peer_benchmarks/worker.py quality): node/Conv/BN/parameter counts, whether onnxruntime
   loads the result, and the error of the main output against the original's, both in onnxruntime with
   graph optimizations off, on the same seeded input; plus the original under ORT's full optimizations
   as the floor that deployment itself adds;
4. in a separate process (peer_benchmarks/worker.py latency): onnxruntime CPU latency of the original and every
   result, the sessions alternating run by run (onnxrep.bench.time_alternating), main output only,
   ORT's default optimizations, the same thread count for all.
Then the targets of issue 6 are judged (PASS/FAIL printed and stored), onnxrep is profiled on yolov9-e
(peer_benchmarks/profile_optimize.py) and peer_benchmarks/report.py writes BENCHMARKS.md and the PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from peer_benchmarks.tools import BY_NAME, PEERS, TOOLS  # noqa: E402

SCHEMA = "onnxrep.peer-bench/1"
MODELS = ("yolov9-t", "yolov9-c", "yolov9-e")

# Input forms: builder arguments, and what each stands for. External data where that exporter writes it.
FORMS = {
    "bn": (["--form", "bn"], "training form: BatchNormalization kept, RepConvN as two Convs + Add, aux head"),
    "folded": (["--exporter", "dynamo"], "dynamo exporter: BN folded, RepConvN unmerged, opset 18, "
                                         "weights in external data (.onnx.data)"),
    "fused": (["--exporter", "official"], "official export script: BN folded and RepConvN merged, Identity "
                                          "re-sharing, Constant nodes, shape chains; main output named by a number"),
}

# Runs per model, sized so that `make bench` fits in 20 minutes on 2 cores: `runs` optimization runs per
# tool, but none after the first once a tool's runs on that input took `cap_s` (onnxsim and onnxoptimizer
# on yolov9-c/e get one); latency: warm-up rounds once all sessions of a group are open, then timed
# rounds, every graph of the group once per round, `latency_min_runs` to `latency_runs` of them.
PLAN = {
    "yolov9-t": {"runs": 3, "cap_s": 5.0, "opt_share": 0.75, "latency_warmup": 2, "latency_min_runs": 3,
                 "latency_runs": 10, "share": 0.18},
    "yolov9-c": {"runs": 2, "cap_s": 5.0, "opt_share": 0.5, "latency_warmup": 2, "latency_min_runs": 2,
                 "latency_runs": 4, "share": 0.37},
    "yolov9-e": {"runs": 2, "cap_s": 8.0, "opt_share": 0.5, "latency_warmup": 2, "latency_min_runs": 2,
                 "latency_runs": 3, "share": 0.45},
}
# The whole run's time budget: each model may use up to its share of it (time left over passes on), and
# repetitions beyond the minimum (2nd/3rd optimization runs after `opt_share` of the model's time,
# latency rounds past `latency_min_runs`) are skipped when a model runs late, so that a loaded machine
# still finishes in time.
BUDGET_S = 1140.0
RUN_TIMEOUT_S = 300
THREADS = 2
SEED = 0

TARGETS = {"error_px": 1e-3, "latency_ratio": 1.02, "optimize_s": 5.0, "rss_factor": 3.0, "bench_s": 1200.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ environment


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def environment() -> dict:
    cpu, mem = "", None
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
        flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
        mem = next((int(ln.split()[1]) * 1024 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), None)
    except OSError:
        flags = []
    dists = ["onnxrep", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "protobuf", "onnxsim", "onnxslim",
             "onnxoptimizer", "polygraphy", "matplotlib"]
    return {"cpu": cpu or platform.processor(), "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile")
                                                               if f in flags],
            "cores": os.cpu_count(), "memory_bytes": mem, "python": platform.python_version(),
            "platform": platform.platform(), "versions": {d: _version(d) for d in dists}}


# ------------------------------------------------------------------------------------------ inputs


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / "models").glob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def _files(path: Path) -> list[Path]:
    """The .onnx and every file its external data points to (without loading the tensors)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = [path]
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and (path.parent / loc) not in out:
                out.append(path.parent / loc)
    return out


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in _files(path) if p.exists())


def outputs_of(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def prepare_inputs(model: str, forms: list[str], work: Path) -> dict:
    """Build (or reuse) the inputs of `model`; the converted form's counts are what onnxrep must reach."""
    folder = work / "models"
    folder.mkdir(parents=True, exist_ok=True)
    stamp_path = folder / "stamp.json"
    stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    src = _source_hash()
    info: dict = {"inputs": {}}
    for form in forms:
        path = folder / f"{model}-{form}.onnx"
        args = [sys.executable, "-m", "models", model, *FORMS[form][0], "--imgsz", "640", "--nc", "80",
                "--seed", str(SEED), "-o", str(path)]
        key = f"{model}-{form}"
        if stamp.get(key, {}).get("args") != args[1:] or stamp[key].get("src") != src or not path.exists():
            start = time.perf_counter()
            subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            stamp[key] = {"args": args[1:], "src": src, "seconds": round(time.perf_counter() - start, 2)}
            stamp_path.write_text(json.dumps(stamp, indent=1))
            log(f"built {path.name} ({stamp[key]['seconds']} s)")
        names = outputs_of(path)
        info["inputs"][form] = {"path": str(path), "file_bytes": file_bytes(path), "outputs": names,
                                "main": names[1] if len(names) == 2 else names[0],
                                "external_data": len(_files(path)) > 1, "builder": " ".join(args[3:-2])}
    key = f"{model}-converted"
    if stamp.get(key, {}).get("src") != src:
        code = ("import json, sys, models; from onnxrep.report import model_stats; "
                f"print(json.dumps(vars(model_stats(models.build({model!r}, 'converted', seed={SEED})))))")
        out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
        stamp[key] = {"src": src, "stats": json.loads(out.stdout)}
        stamp_path.write_text(json.dumps(stamp, indent=1))
    info["converted"] = stamp[key]["stats"]
    return info


# ------------------------------------------------------------------------------------------ optimization runs


def run_measured(argv: list[str], log_path: Path, timeout: float = RUN_TIMEOUT_S) -> dict:
    """Run argv in a fresh process: wall seconds, the child's peak RSS (wait4), exit status."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1")
    with open(log_path, "wb") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "rss_bytes": usage.ru_maxrss * 1024, "rc": proc.returncode,
            "timed_out": wall >= timeout}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    keep = [ln.strip() for ln in text if ln.strip()][-lines:]
    return " | ".join(keep)[-400:]


def spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def optimize_input(model: str, form: str, inp: dict, tools: list[str], plan: dict, work: Path,
                   verify: bool = True) -> dict:
    """Every tool on one input, plan["runs"] rounds interleaved tool by tool (a tool whose runs took
    plan["cap_s"] gets no more); then, if `verify`, onnxrep once more with its verification on."""
    runs, cap = plan["runs"], plan["cap_s"]
    base = work / "out" / f"{model}-{form}"
    rows = {}
    for name in tools:
        ok, why = BY_NAME[name].availability()
        rows[name] = {"tool": name, "status": "ok" if ok else "unavailable", "reason": why, "runs": []}
    spent = {name: 0.0 for name in tools}
    for k in range(runs):
        for name in tools:
            row = rows[name]
            if row["status"] != "ok" or (k > 0 and spent[name] >= cap):
                continue
            if k > 0 and plan.get("opt_deadline") and time.time() > plan["opt_deadline"]:
                row.setdefault("note", "fewer runs: the time budget was short")
                continue
            folder = base / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            out, js = folder / "model.onnx", base / f"{name}.json"
            js.unlink(missing_ok=True)
            argv = BY_NAME[name].argv(inp["path"], str(out), main_output=inp["main"], json_path=str(js))
            rec = run_measured(argv, base / f"{name}.log")
            spent[name] += rec["wall_s"]
            if rec["rc"] != 0 or not out.exists():
                row["status"] = "failed"
                row["reason"] = ("timed out after %d s" % RUN_TIMEOUT_S if rec["timed_out"] else
                                 f"exit {rec['rc']}: {_tail(base / f'{name}.log')}" if rec["rc"] else
                                 "no output written")
                row["runs"].append(rec)
                log(f"  {model} {form} {name}: FAILED ({row['reason'][:160]})")
                continue
            if name == "onnxrep" and js.exists():
                rec["seconds"] = json.loads(js.read_text()).get("seconds", {})
            row["runs"].append(rec)
            row["argv"] = [a if "\n" not in a else "<code>" for a in argv]
            log(f"  {model} {form} {name} run {k + 1}: {rec['wall_s']:.2f} s, {rec['rss_bytes'] / 1e6:.0f} MB"
                + (f" (optimize {rec['seconds'].get('optimize')} s)" if "seconds" in rec else ""))
    for name, row in rows.items():
        good = [r for r in row["runs"] if r["rc"] == 0]
        row["wall_s"] = spread([r["wall_s"] for r in good])
        row["rss_bytes"] = spread([r["rss_bytes"] for r in good])
        if name == "onnxrep":
            row["optimize_s"] = spread([r["seconds"]["optimize"] for r in good if "optimize" in r.get("seconds", {})])
            row["load_s"] = spread([r["seconds"]["load"] for r in good if "load" in r.get("seconds", {})])
        if row["status"] == "ok":
            row["path"] = str(base / name / "model.onnx")
            row["file_bytes"] = file_bytes(Path(row["path"]))
    if verify and "onnxrep" in rows and rows["onnxrep"]["status"] == "ok":   # once more, verifying
        folder = work / "out" / f"{model}-{form}-verify"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        js = folder / "report.json"
        rec = run_measured(BY_NAME["onnxrep"].verify_argv(inp["path"], str(folder / "model.onnx"), str(js)),
                           folder / "log.txt")
        data = json.loads(js.read_text()) if js.exists() else {}
        ver = data.get("verification") or {}
        rows["onnxrep"]["verify"] = {"rc": rec["rc"], "wall_s": rec["wall_s"], "rss_bytes": rec["rss_bytes"],
                                     "seconds": data.get("seconds", {}), "ok": ver.get("ok"),
                                     "outputs": [{k: o.get(k) for k in ("name", "max_abs", "max_rel", "ok")}
                                                 for o in ver.get("outputs", [])]}
        log(f"  {model} {form} onnxrep with verification: {rec['wall_s']:.2f} s "
            f"(verify {data.get('seconds', {}).get('verify')} s, ok={ver.get('ok')})")
        shutil.rmtree(folder, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------------------ workers


def run_worker(command: str, spec: dict, work: Path, tag: str) -> list[dict]:
    """peer_benchmarks/worker.py in a fresh process; if it dies, the item it was on is marked and it goes on."""
    folder = work / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, err_path = folder / f"{tag}.json", folder / f"{tag}.jsonl", folder / f"{tag}.err"
    out_path.unlink(missing_ok=True)
    items = list(spec["items"])
    lines: list[dict] = []
    while True:
        spec_path.write_text(json.dumps(dict(spec, items=items)))
        with open(err_path, "wb") as err:
            proc = subprocess.run([sys.executable, str(HERE / "worker.py"), command, str(spec_path), str(out_path)],
                                  stderr=err, stdout=err, cwd=ROOT)
        lines = [json.loads(ln) for ln in out_path.read_text().splitlines()] if out_path.exists() else []
        if proc.returncode == 0 or command != "quality":
            if proc.returncode != 0:
                lines.append({"crashed": f"exit {proc.returncode}: {_tail(err_path)}"})
            return lines
        done = {ln.get("label") for ln in lines}
        rest = [it for it in items if it["label"] not in done]
        if not rest:
            return lines
        lines_out = out_path.read_text() if out_path.exists() else ""
        crashed = rest[0]
        lines_out += json.dumps({"label": crashed["label"], "loads": False,
                                 "load_error": f"onnxruntime crashed (exit {proc.returncode}): {_tail(err_path)}"}) + "\n"
        out_path.write_text(lines_out)
        items = rest[1:]
        spec = dict(spec, floor=False)
        if not items:
            return [json.loads(ln) for ln in lines_out.splitlines()]


def quality_input(model: str, form: str, inp: dict, rows: dict, work: Path) -> dict:
    items = [{"label": "original", "path": inp["path"]}]
    items += [{"label": name, "path": row["path"]} for name, row in rows.items() if row["status"] == "ok"]
    start = time.perf_counter()
    lines = run_worker("quality", {"original": inp["path"], "main": inp["main"], "seed": SEED, "threads": THREADS,
                                   "floor": True, "items": items}, work, f"quality-{model}-{form}")
    out = {ln["label"]: ln for ln in lines if "label" in ln}
    log(f"  {model} {form}: counts and errors ({time.perf_counter() - start:.1f} s)")
    return out


def fingerprint(stats: dict | None) -> str | None:
    """Same op histogram, parameters, MACs and stored weights: the same graph for latency purposes."""
    if not stats:
        return None
    return json.dumps([stats.get("ops"), stats.get("parameters"), stats.get("macs"), stats.get("stored_weights"),
                       stats.get("conv_runtime_weights")], sort_keys=True)


def latency_model(model: str, per_form: dict, plan: dict, work: Path) -> dict:
    """Latency of every distinct graph of one model, one alternating group per input form.

    Each group holds that form's original and onnxrep's result (the references of the ratios), plus every
    peer result whose graph (fingerprint) no group has timed yet; a result with the graph of one already
    timed (onnxsim on bn = the folded original, for instance) takes that measurement over, marked as such.
    """
    timed: dict[str, tuple[str, str]] = {}          # fingerprint -> (form, label) where it was timed
    out = {}
    for form, (inp, rows, quality) in per_form.items():
        candidates = [("original", inp["path"], inp["main"])]
        candidates += [(name, row["path"], quality.get(name, {}).get("main")) for name, row in rows.items()
                       if row["status"] == "ok" and quality.get(name, {}).get("loads") and quality[name].get("main")]
        candidates.sort(key=lambda c: c[0] not in ("original", "onnxrep"))   # the references first
        items, aliases, here = [], {}, {}
        references = {fingerprint(quality.get(label, {}).get("stats")) for label in ("original", "onnxrep")}
        for label, path, main in candidates:
            key = fingerprint(quality.get(label, {}).get("stats"))
            # a peer with the graph of this group's original or onnxrep is timed anyway: an A/A pair
            if label not in ("original", "onnxrep") and key in timed and timed[key][0] != form \
                    and key not in references:
                aliases[label] = list(timed[key])
                continue
            items.append({"label": label, "path": path, "main": main})
            if key is not None:
                timed.setdefault(key, (form, label))
                here.setdefault(key, []).append(label)
        start = time.perf_counter()
        groups_left = len(per_form) - len(out)
        deadline = time.time() + max(0.0, (plan["deadline"] - time.time()) / groups_left) if plan.get("deadline") else None
        lines = run_worker("latency", {"items": items, "threads": THREADS, "seed": SEED, "deadline": deadline,
                                       "warmup": plan["latency_warmup"], "min_runs": plan["latency_min_runs"],
                                       "runs": plan["latency_runs"]}, work, f"latency-{model}-{form}")
        result = {"loaded": {}, "times": {}, "errors": {}, "aliases": aliases,
                  "same_graph": [labels for labels in here.values() if len(labels) > 1]}
        for ln in lines:
            if "loaded" in ln:
                result["loaded"][ln["label"]] = ln
            elif "times" in ln:
                result["times"], result["errors"] = ln["times"], ln["errors"]
            elif "crashed" in ln:
                result["crashed"] = ln["crashed"]
        out[form] = result
        log(f"  {model} {form}: latency of {len(result['times'])} graphs, {len(aliases)} more are the same graph "
            f"as one timed ({time.perf_counter() - start:.1f} s)")
    return out


# ------------------------------------------------------------------------------------------ assembling


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def _pair_median(base: list[float] | None, other: list[float] | None) -> dict | None:
    from onnxrep.bench import pair_ratios

    if not base or not other:
        return None
    r = pair_ratios(base, other)
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "n": len(r)} if r else None


def _resolve(lat_all: dict, form: str, label: str) -> tuple[list[float] | None, str, str]:
    """(run times, form of the group they come from, label there) for a result, through 'same graph as'."""
    lat = lat_all.get(form, {})
    if label in lat.get("aliases", {}):
        form, label = lat["aliases"][label]
        lat = lat_all.get(form, {})
    return lat.get("times", {}).get(label), form, label


def assemble(model: str, form: str, inp: dict, converted: dict, rows: dict, quality: dict, lat_all: dict) -> dict:
    from onnxrep.bench import summarize

    lat = lat_all.get(form, {})
    original = {"tool": "original", "status": "ok", "path": inp["path"], "file_bytes": inp["file_bytes"],
                "external_data": inp["external_data"]}
    table = {"original": original, **rows}
    for name, row in table.items():
        q = quality.get(name, {})
        row["stats"] = q.get("stats")
        row["loads"] = q.get("loads")
        if q.get("load_error"):
            row["load_error"] = q["load_error"]
        row["main_output"] = q.get("main")
        row["outputs"] = q.get("outputs")
        row["error"] = q.get("error")
        times, where, label = _resolve(lat_all, form, name)
        if times:
            row["latency"] = summarize(times, 1)
            row["latency"]["times_s"] = times
            if (where, label) != (form, name):
                row["latency"]["same_graph_as"] = f"{label} ({where})" if where != form else label
            group = lat_all[where]["times"]
            row["latency"]["ratio_to_onnxrep"] = _pair_median(group.get("onnxrep"), times)
            if where == form:
                row["latency"]["ratio_to_original"] = _pair_median(group.get("original"), times)
            elif lat.get("times", {}).get("original"):   # timed in another group: the ratio of medians
                row["latency"]["ratio_to_original"] = {
                    "median": statistics.median(times) / statistics.median(lat["times"]["original"]),
                    "n": 0, "min": None, "max": None, "from_medians": True}
            if label in lat_all[where].get("errors", {}):
                row["latency"]["error"] = lat_all[where]["errors"][label]
        elif name in lat.get("loaded", {}) and not lat["loaded"][name].get("loaded"):
            row["latency"] = {"error": lat["loaded"][name].get("error")}
    rep = table.get("onnxrep", {})
    for name, row in table.items():
        s, so, sr = row.get("stats") or {}, original.get("stats") or {}, rep.get("stats") or {}
        row["ratios"] = {
            "to_original": {k: _ratio(s.get(k), so.get(k)) for k in ("nodes", "conv", "parameters", "macs")},
            "to_onnxrep": {k: _ratio(s.get(k), sr.get(k)) for k in ("nodes", "conv", "parameters", "macs")},
        }
        row["ratios"]["to_original"]["file_bytes"] = _ratio(row.get("file_bytes"), original["file_bytes"])
        row["ratios"]["to_onnxrep"]["file_bytes"] = _ratio(row.get("file_bytes"), rep.get("file_bytes"))
        for key in ("wall_s", "rss_bytes"):
            mine, theirs = row.get(key), rep.get(key)
            row["ratios"]["to_onnxrep"][key] = _ratio(mine and mine["median"], theirs and theirs["median"])
        lat_row = row.get("latency") or {}
        for which in ("to_original", "to_onnxrep"):
            r = lat_row.get(f"ratio_{which}")
            row["ratios"][which]["latency"] = r and r["median"]
    aa = []   # identical graphs timed in the same group: the latency noise of this run
    for labels in lat.get("same_graph", []):
        for other in labels[1:]:
            r = _pair_median(lat["times"].get(labels[0]), lat["times"].get(other))
            if r:
                aa.append({"a": labels[0], "b": other, "ratio": r["median"]})
    return {"model": model, "form": form, "input": dict(inp), "converted": converted, "latency_aa": aa,
            "latency_rounds": len(lat.get("times", {}).get("original") or []),
            "floor": quality.get("@ort-all", {}).get("error"), "latency_crashed": lat.get("crashed"),
            "latency_group": [it for it in lat.get("times", {})], "rows": table}


# ------------------------------------------------------------------------------------------ targets


def judge(results: dict) -> list[dict]:
    """The targets of issue 6, one line each, measured values attached."""
    out = []

    def add(name, model, form, value, limit, ok, detail=""):
        out.append({"target": name, "model": model, "form": form, "value": value, "limit": limit,
                    "pass": bool(ok) if ok is not None else None, "detail": detail})

    for entry in results["inputs"]:
        model, form, rows = entry["model"], entry["form"], entry["rows"]
        rep = rows.get("onnxrep", {})
        rs = rep.get("stats") or {}
        conv = entry["converted"]
        if not rs:
            add("counts = converted", model, form, None, None, False, f"onnxrep {rep.get('status')}: {rep.get('reason')}")
            continue
        add("Conv and parameters = converted form", model, form, f"{rs['conv']} Conv / {rs['parameters']:,}",
            f"{conv['conv']} / {conv['parameters']:,}", rs["conv"] == conv["conv"] and rs["parameters"] == conv["parameters"])
        peers = {n: r["stats"]["nodes"] for n, r in rows.items() if n in PEERS and r.get("stats")}
        if peers:
            best = min(peers, key=peers.get)
            add("nodes <= every peer's", model, form, rs["nodes"], f"{peers[best]} ({best})", rs["nodes"] <= peers[best])
        # a peer whose result is onnxrep's very graph is as fast by construction: its measured ratio is noise
        same = [n for n, r in rows.items() if n in PEERS and r.get("stats") and fingerprint(r["stats"]) == fingerprint(rs)]
        lat_ratios = {n: r["latency"]["ratio_to_onnxrep"]["median"] for n, r in rows.items()
                      if n in PEERS and n not in same and (r.get("latency") or {}).get("ratio_to_onnxrep")}
        if lat_ratios:   # peer / onnxrep per round; onnxrep / best peer = 1 / the smallest of these
            best = min(lat_ratios, key=lat_ratios.get)
            value = 1 / lat_ratios[best]
            aa = entry.get("latency_aa") or []
            noise = max((abs(a["ratio"] - 1) for a in aa), default=None)
            add("latency <= best peer x 1.02", model, form, round(value, 3), f"{TARGETS['latency_ratio']} (vs {best})",
                value <= TARGETS["latency_ratio"],
                f"{entry.get('latency_rounds')} rounds" + ("" if noise is None else
                                                            f"; A/A noise (same graph twice in the group) ±{noise:.1%}")
                + (f"; {', '.join(same)}: the same graph as onnxrep's" if same else ""))
        err = rep.get("error") or {}
        floor = (entry.get("floor") or {}).get("boxes_px")
        ortb = ((rows.get("ort-basic") or {}).get("error") or {}).get("boxes_px")
        detail = "floor: ORT all-opt %s px, ORT basic %s px" % (_g(floor), _g(ortb))
        add("boxes max abs error <= 1e-3 px", model, form, err.get("boxes_px"), TARGETS["error_px"],
            err.get("ok") and err.get("boxes_px") <= TARGETS["error_px"], detail)
        if model == "yolov9-e":
            opt = (rep.get("optimize_s") or {}).get("median")
            add("yolov9-e optimize phase <= 5 s", model, form, opt, TARGETS["optimize_s"],
                opt is not None and opt <= TARGETS["optimize_s"],
                "verify %s s separately" % _g(rep["verify"]["seconds"].get("verify")) if rep.get("verify") else "")
            wall = (rep.get("wall_s") or {}).get("median")
            for peer in ("onnxsim", "onnxslim"):
                theirs = ((rows.get(peer) or {}).get("wall_s") or {}).get("median")
                add(f"yolov9-e faster than {peer} (process wall)", model, form, wall, theirs,
                    None if theirs is None or wall is None else wall < theirs)
            rss = (rep.get("rss_bytes") or {}).get("median")
            limit = TARGETS["rss_factor"] * entry["input"]["file_bytes"]
            add("yolov9-e peak RSS <= 3x file size", model, form, rss, limit, rss is not None and rss <= limit,
                "%.2fx the file" % (rss / entry["input"]["file_bytes"]) if rss else "")
    return out


def _g(v) -> str:
    return "-" if v is None else f"{v:.3g}"


# ------------------------------------------------------------------------------------------ main


def wait_for_load(limit: float, max_wait: float) -> dict:
    start = time.time()
    first = load_average()
    while max_wait > 0 and load_average() and load_average()[0] > limit and time.time() - start < max_wait:
        log(f"waiting for the machine to quieten: load {load_average()[0]} > {limit}")
        time.sleep(20)
    return {"at_request": first, "at_start": load_average(), "waited_s": round(time.time() - start)}


def _short_models(values: str) -> list[str]:
    names = []
    for v in values.split(","):
        v = v.strip()
        names.append(v if v.startswith("yolov9-") else f"yolov9-{v}")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: t,c,e or full names")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--tools", default=",".join(t.name for t in TOOLS))
    ap.add_argument("--runs", type=int, default=None, help="optimization runs per tool (default: per model)")
    ap.add_argument("--latency-runs", type=int, default=None)
    ap.add_argument("--cap", type=float, default=None, help="seconds after which a tool gets no further run")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds the whole run may take (default %(default)s)")
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--no-profile", action="store_true", help="skip profiling onnxrep on yolov9-e")
    ap.add_argument("--wait-load", type=float, default=1.5, help="wait for the 1-min load to fall below this")
    ap.add_argument("--max-wait", type=float, default=0, help="... for at most this many seconds (default: don't wait)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)

    from peer_benchmarks import report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    if args.report_only:   # re-judge and re-render the stored measurements
        results = json.loads(json_path.read_text())
        bench_target = [t for t in results.get("targets", []) if t["target"].startswith("make bench")]
        results["targets"] = judge(results) + bench_target
        json_path.write_text(json.dumps(results, indent=1, default=float))
        report.render(results, Path(args.markdown), out)
        print(report.targets_text(results))
        return 0

    waited = wait_for_load(args.wait_load, args.max_wait)
    started = time.time()
    work = Path(args.work)
    models = _short_models(args.models)
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [m for m in models if m not in PLAN] + [f for f in forms if f not in FORMS] + \
              [t for t in tools if t not in BY_NAME]
    if unknown:
        ap.error(f"unknown: {unknown}")
    tools = [t.name for t in TOOLS if t.name in tools]   # the registry's order, onnxrep first
    results = {"schema": SCHEMA, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "environment": environment(), "load": waited,
               "settings": {"threads": THREADS, "seed": SEED, "budget_s": args.budget, "plan": {m: dict(PLAN[m]) for m in models},
                            "forms": {f: FORMS[f][1] for f in forms}, "targets": TARGETS,
                            "tools": [{"name": t, "label": BY_NAME[t].label, "how": BY_NAME[t].how,
                                       "version": BY_NAME[t].version(), "prunes": BY_NAME[t].prunes} for t in tools]},
               "inputs": [], "timeline": []}
    log(f"machine: {results['environment']['cpu']}, {results['environment']['cores']} cores, load {waited['at_start']}")
    budget = args.budget
    shares = [PLAN[m]["share"] for m in models]
    reserve = 0.04 * budget if (not args.no_profile and "yolov9-e" in models) else 0.0
    for index, model in enumerate(models):
        plan = dict(PLAN[model])
        model_start = time.time()
        plan["deadline"] = started + (budget - reserve) * sum(shares[:index + 1]) / sum(shares)
        span = max(0.0, plan["deadline"] - model_start)
        if args.runs:
            plan["runs"] = args.runs
        if args.latency_runs:
            plan["latency_runs"] = args.latency_runs
        if args.cap is not None:
            plan["cap_s"] = args.cap
        results["settings"]["plan"][model] = {k: v for k, v in plan.items() if "deadline" not in k}
        t0 = time.perf_counter()
        info = prepare_inputs(model, forms, work)
        results["timeline"].append({"step": f"{model} inputs", "seconds": round(time.perf_counter() - t0, 1)})
        per_form = {}
        for form in forms:
            inp = info["inputs"][form]
            log(f"{model} {form}: {inp['file_bytes'] / 1e6:.1f} MB, main output {inp['main']!r}")
            t0 = time.perf_counter()
            # repeats of the optimization runs only within this form's slice of the model's optimization time
            plan["opt_deadline"] = model_start + plan["opt_share"] * span * (forms.index(form) + 1) / len(forms)
            rows = optimize_input(model, form, inp, tools, plan, work, verify=form == forms[0])
            t1 = time.perf_counter()
            quality = quality_input(model, form, inp, rows, work)
            per_form[form] = (inp, rows, quality)
            results["timeline"].append({"step": f"{model} {form}", "optimize_s": round(t1 - t0, 1),
                                        "quality_s": round(time.perf_counter() - t1, 1), "load": load_average()})
        t0 = time.perf_counter()
        lat_all = latency_model(model, per_form, plan, work)
        results["timeline"].append({"step": f"{model} latency", "seconds": round(time.perf_counter() - t0, 1),
                                    "load": load_average()})
        for form, (inp, rows, quality) in per_form.items():
            results["inputs"].append(assemble(model, form, inp, info["converted"], rows, quality, lat_all))
        json_path.write_text(json.dumps(results, indent=1, default=float))
    if not args.no_profile and "yolov9-e" in models and "bn" in forms:
        t0 = time.perf_counter()
        prof = out / "profile-yolov9-e.json"
        path = work / "models" / "yolov9-e-bn.onnx"
        log("profiling onnxrep on yolov9-e (bn)")
        proc = subprocess.run([sys.executable, str(HERE / "profile_optimize.py"), str(path), "--json", str(prof)],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode == 0 and prof.exists():
            results["profile"] = json.loads(prof.read_text())
        else:
            results["profile"] = {"failed": _tail_text(proc.stderr)}
        results["timeline"].append({"step": "profile", "seconds": round(time.perf_counter() - t0, 1)})
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["duration_s"] = round(time.time() - started, 1)
    results["load"]["at_end"] = load_average()
    results["targets"] = judge(results)
    results["targets"].append({"target": "make bench <= 20 minutes", "model": "", "form": "",
                               "value": results["duration_s"], "limit": TARGETS["bench_s"],
                               "pass": results["duration_s"] <= TARGETS["bench_s"],
                               "detail": "peer_benchmarks/run.py wall time (without the pip install step)"})
    json_path.write_text(json.dumps(results, indent=1, default=float))
    report.render(results, Path(args.markdown), out)
    print()
    print(report.targets_text(results))
    log(f"done in {results['duration_s'] / 60:.1f} min; {json_path}, {args.markdown}")
    return 0


def _tail_text(text: str) -> str:
    return " | ".join([ln for ln in (text or "").strip().splitlines() if ln.strip()][-3:])[-400:]


if __name__ == "__main__":
    sys.exit(main())
