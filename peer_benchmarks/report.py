"""BENCHMARKS.md and the PNG from peer_benchmarks/results/results.json (python peer_benchmarks/run.py --report-only).

The hand-written part (what the profile means, what to fix) lives in peer_benchmarks/findings.md and is
included verbatim under "Findings"; everything else is rendered from the measurements.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

HEADLINE = ("yolov9-c", "bn")      # the demo's model and form: the table the README quotes
MB = 1e6


def _fmt(v, spec="{:,}") -> str:
    return "–" if v is None else spec.format(v)


def _mb(v) -> str:
    return "–" if v is None else (f"{v / MB:.1f}" if v < 100 * MB else f"{v / MB:.0f}")


def _spread(s, scale=1.0, digits=2) -> str:
    if not s:
        return "–"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    f = f"{{:.{digits}f}}"
    return f.format(med) if s.get("n", 1) == 1 or lo == hi else f"{f.format(med)} [{f.format(lo)}–{f.format(hi)}]"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _err(e) -> str:
    if not e:
        return "–"
    if not e.get("ok"):
        return "✗ " + e.get("message", "")[:60]
    return f"{e['boxes_px']:.1e} ({e['boxes_rel']:.0e})"


def _label(results: dict, name: str) -> str:
    if name == "original":
        return "*original*"
    tool = next((t for t in results["settings"]["tools"] if t["name"] == name), None)
    return f"**{tool['label']}**" if name == "onnxrep" else (tool["label"] if tool else name)


def _status(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason', '')[:80]}"
    if row.get("loads") is False:
        return "ORT can't load: " + (row.get("load_error") or "")[:80]
    return ""


def input_table(results: dict, entry: dict) -> list[str]:
    lines = ["| tool | time s | peak RSS MB | nodes | Conv | BN | parameters | stored weights | size MB "
             "| boxes error px (rel) | latency ms | × original | × onnxrep | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, row in entry["rows"].items():
        s = row.get("stats") or {}
        lat = row.get("latency") or {}
        med = lat.get("median_ms")
        lat_text = "–" if med is None else f"{med:.0f} [{lat['min_ms']:.0f}–{max(lat['times_s']) * 1e3:.0f}]"
        if lat.get("same_graph_as"):
            lat_text += f" = {lat['same_graph_as']}"
        r_orig = (lat.get("ratio_to_original") or {}).get("median")
        r_rep = (lat.get("ratio_to_onnxrep") or {}).get("median")
        approx = "≈" if (lat.get("ratio_to_original") or {}).get("from_medians") else ""
        note = _status(row)
        if name == "onnxrep" and row.get("optimize_s"):
            ver = row.get("verify") or {}
            note = (f"optimize {_spread(row['optimize_s'])} s, load {_spread(row.get('load_s'))} s"
                    + (f"; verify {_fmt((ver.get('seconds') or {}).get('verify'), '{:.1f}')} s "
                       f"({'passed' if ver.get('ok') else 'FAILED'})" if ver else "") + (f"; {note}" if note else ""))
        if row.get("note"):
            note += ("; " if note else "") + row["note"]
        if s.get("conv_runtime_weights"):
            note += (("; " if note else "") + f"{s['conv_runtime_weights']} Conv weights computed at run time "
                     "(Mul/Sqrt/Add of the BN statistics), not counted as parameters")
        if lat.get("error"):
            note += f" latency: {lat['error'][:60]}"
        lines.append("| " + " | ".join([
            _label(results, name), _spread(row.get("wall_s")), _spread(row.get("rss_bytes"), 1 / MB, 0),
            _fmt(s.get("nodes")), _fmt(s.get("conv")), _fmt(s.get("batchnorm")), _fmt(s.get("parameters")),
            _fmt(s.get("stored_weights")), _mb(row.get("file_bytes")), "–" if name == "original" else _err(row.get("error")), lat_text,
            approx + _x(r_orig), _x(r_rep), note]) + " |")
    return lines


def summary_table(results: dict) -> list[str]:
    """One line per input: the original, onnxrep, and the best peer on each figure."""
    lines = ["| model | form | size MB | nodes: original → onnxrep (best peer) | parameters: original → onnxrep "
             "(converted) | onnxrep time s (optimize) | fastest peer s | onnxrep peak RSS MB | "
             "latency ms: original → onnxrep (best peer) | boxes error px: onnxrep (ORT floor) |",
             "|---|---|---:|---|---|---|---|---:|---|---|"]
    for e in results["inputs"]:
        rows = e["rows"]
        o, r = rows["original"], rows.get("onnxrep", {})
        os_, rs = o.get("stats") or {}, r.get("stats") or {}
        peers = {n: x for n, x in rows.items() if n not in ("original", "onnxrep") and x.get("stats")}
        best_nodes = min(peers.items(), key=lambda kv: kv[1]["stats"]["nodes"], default=None)
        timed = {n: x for n, x in peers.items() if x.get("wall_s")}
        fastest = min(timed.items(), key=lambda kv: kv[1]["wall_s"]["median"], default=None)
        lat = {n: x for n, x in peers.items() if (x.get("latency") or {}).get("median_ms")}
        best_lat = min(lat.items(), key=lambda kv: kv[1]["latency"]["median_ms"], default=None)

        def ms(row):
            return _fmt((row.get("latency") or {}).get("median_ms"), "{:.0f}")

        lines.append("| " + " | ".join([
            e["model"], e["form"], _mb(e["input"]["file_bytes"]),
            f"{_fmt(os_.get('nodes'))} → **{_fmt(rs.get('nodes'))}**"
            + (f" ({best_nodes[1]['stats']['nodes']:,} {best_nodes[0]})" if best_nodes else ""),
            f"{_fmt(os_.get('parameters'))} → **{_fmt(rs.get('parameters'))}** ({e['converted']['parameters']:,})",
            f"{_spread(r.get('wall_s'))} ({_spread(r.get('optimize_s'))})",
            f"{fastest[1]['wall_s']['median']:.2f} ({fastest[0]})" if fastest else "–",
            _spread(r.get("rss_bytes"), 1 / MB, 0),
            f"{ms(o)} → **{ms(r)}**" + (f" ({best_lat[1]['latency']['median_ms']:.0f} {best_lat[0]})" if best_lat else ""),
            f"{_fmt((r.get('error') or {}).get('boxes_px'), '{:.1e}')} ({_fmt((e.get('floor') or {}).get('boxes_px'), '{:.1e}')})",
        ]) + " |")
    return lines


def targets_table(results: dict) -> list[str]:
    lines = ["| target | model | form | measured | limit | result | detail |", "|---|---|---|---:|---:|---|---|"]
    for t in results.get("targets", []):
        v, lim = t["value"], t["limit"]
        if "RSS" in t["target"]:
            v, lim = _mb(v) + " MB", _mb(lim) + " MB"
        elif isinstance(v, float):
            v = f"{v:.3g}"
        if isinstance(lim, float):
            lim = f"{lim:.3g}"
        verdict = {True: "PASS", False: "**FAIL**", None: "n/a"}[t["pass"]]
        lines.append(f"| {t['target']} | {t['model']} | {t['form']} | {v if v is not None else '–'} | "
                     f"{lim if lim is not None else '–'} | {verdict} | {t.get('detail', '')} |")
    return lines


def targets_text(results: dict) -> str:
    out = ["targets (issue 6):"]
    for t in results.get("targets", []):
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
        v = t["value"]
        v = f"{v:.4g}" if isinstance(v, float) else v
        lim = t["limit"]
        lim = f"{lim:.4g}" if isinstance(lim, float) else lim
        out.append(f"  {verdict}  {t['target']:<42} {t['model']:<9} {t['form']:<7} measured {v}  limit {lim}"
                   + (f"  ({t['detail']})" if t.get("detail") else ""))
    return "\n".join(out)


def profile_lines(results: dict) -> list[str]:
    prof = results.get("profile")
    if not prof:
        return ["(no profile in this run)"]
    if "failed" in prof:
        return [f"profiling failed: {prof['failed']}"]
    lines = [f"onnxrep on `{Path(prof['model']).name}` ({_mb(prof['file_bytes'])} MB on disk), in one process.", ""]
    lines += ["Phases (wall time, and the peak resident memory reached by the end of each phase):", "",
              "| phase | seconds | RSS at end MB | peak so far MB |", "|---|---:|---:|---:|"]
    for p in prof.get("phases", []):
        lines.append(f"| {p['phase']} | {p['seconds']:.2f} | {_mb(p['rss_end'])} | {_mb(p['peak'])} |")
    if prof.get("cprofile"):
        lines += ["", f"cProfile, top functions by own time (total {prof.get('cprofile_total_s', 0):.1f} s "
                      "under the profiler):", "",
                  "| function | own s | cumulative s | calls |", "|---|---:|---:|---:|"]
        for f in prof["cprofile"][:15]:
            lines.append(f"| `{f['where']}` | {f['tottime']:.2f} | {f['cumtime']:.2f} | {f['calls']:,} |")
    if prof.get("cumulative"):
        lines += ["", "cProfile, onnxrep functions by cumulative time:", "",
                  "| function | cumulative s | calls |", "|---|---:|---:|"]
        for f in prof["cumulative"][:15]:
            lines.append(f"| `{f['where']}` | {f['cumtime']:.2f} | {f['calls']:,} |")
    if prof.get("tracemalloc"):
        t = prof["tracemalloc"]
        peak = max((p.get("py_peak") or 0 for p in prof.get("tracemalloc_phases") or []), default=t["peak"])
        lines += ["", f"tracemalloc (`peer_benchmarks/profile_optimize.py MODEL --modes tracemalloc`, run separately: it is slow): "
                      f"peak {_mb(peak)} MB of Python-visible allocations (numpy arrays included, protobuf's C++ heap "
                      f"not); {_mb(t['current_at_phase_end'])} MB live at the end of the heaviest phase "
                      f"({t['at_phase']}), held by:", "",
                  "| allocated at | MB | blocks |", "|---|---:|---:|"]
        for s in t.get("top", [])[:12]:
            lines.append(f"| `{s['where']}` | {_mb(s['bytes'])} | {s['count']:,} |")
    return lines


def render(results: dict, markdown: Path, out: Path) -> None:
    tm = out / "profile-yolov9-e-tracemalloc.json"   # peer_benchmarks/profile_optimize.py --modes tracemalloc (slow: by hand)
    prof = results.get("profile")
    if isinstance(prof, dict) and "tracemalloc" not in prof and "failed" not in prof and tm.exists():
        extra = json.loads(tm.read_text())
        prof["tracemalloc"], prof["tracemalloc_phases"] = extra.get("tracemalloc"), extra.get("tracemalloc_phases")
    png = out / "bench.png"
    plotted = plot(results, png)
    env = results["environment"]
    s = results["settings"]
    load = results.get("load", {})
    md = ["# Benchmarks: onnxrep and its peers on YOLOv9", "",
          f"Generated by `make bench` (peer_benchmarks/run.py, then peer_benchmarks/report.py) on {results['started']}; "
          f"the whole run took **{results.get('duration_s', 0) / 60:.1f} minutes**. "
          "Raw numbers: [peer_benchmarks/results/results.json](peer_benchmarks/results/results.json).", ""]
    md += ["## Machine", "",
           f"- CPU: {env['cpu']} ({', '.join(env['cpu_flags'])}), **{env['cores']} cores**, "
           f"{(env['memory_bytes'] or 0) / 2**30:.0f} GiB RAM; {env['platform']}; Python {env['python']}",
           f"- load average (1, 5, 15 min): {load.get('at_start')} at the start, {load.get('at_end')} at the end "
           "(the machine is shared: other work ran beside this benchmark, so timings carry that noise)",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v), ""]
    md += ["## Headline", "", "Every input, onnxrep against the original and the best peer on each figure:", ""]
    md += summary_table(results)
    head = next((e for e in results["inputs"] if (e["model"], e["form"]) == HEADLINE), None)
    if head:
        md += ["", f"**{HEADLINE[0]}, {HEADLINE[1]} form** ({s['forms'].get(HEADLINE[1], '')}), every tool:", ""]
        md += input_table(results, head)
    if plotted:
        md += ["", "![parameters and latency per tool](peer_benchmarks/results/bench.png)", ""]
    md += ["", "## Targets", ""] + targets_table(results)
    md += ["", "## Findings", ""]
    findings = HERE / "findings.md"
    if findings.exists():
        md += [findings.read_text().strip(), ""]
    md += ["### Profile of onnxrep on yolov9-e", ""] + profile_lines(results)
    md += ["", "## Every input", ""]
    for e in results["inputs"]:
        inp = e["input"]
        md += [f"### {e['model']}, {e['form']}", "",
               f"`python -m models {inp['builder']}`: {s['forms'].get(e['form'], '')}; "
               f"{_mb(inp['file_bytes'])} MB, main output `{inp['main']}`. Converted (deployable) form: "
               f"{e['converted']['conv']} Conv, {e['converted']['parameters']:,} parameters, "
               f"{e['converted']['nodes']} nodes. Deployment floor (original under ORT's full optimizations vs off): "
               f"boxes {_err(e.get('floor'))} px. Latency: {e.get('latency_rounds')} rounds"
               + "".join(f"; A/A {a['b']}/{a['a']} (same graph) {a['ratio']:.3f}" for a in e.get("latency_aa", []))
               + ".", ""]
        md += input_table(results, e) + [""]
    md += ["## Method", ""]
    md += ["- Inputs: the models builder's yolov9-t, -c and -e, 640×640, nc 80, seed 0, in three forms:"]
    md += [f"  - `{f}`: {d}" for f, d in s["forms"].items()]
    md += ["- Tools, each run as a user would run it, in a fresh process:"]
    md += [f"  - {t['label']} {t['version']}: `{t['how']}`" + ("" if t["prunes"] else " (keeps the aux head)")
           for t in s["tools"]]
    plan = "; ".join(f"{m}: up to {p['runs']} runs (no further run once a tool's runs took {p['cap_s']:g} s), "
                     f"latency {p['latency_warmup']} warm-up + {p.get('latency_min_runs', 2)} to {p['latency_runs']} "
                     "timed rounds" for m, p in s["plan"].items())
    md += [f"- Runs: {plan}. Optimization runs are interleaved tool by tool (A B C … A B C). "
           "Figures are median [min–max] over the runs. The run has a time budget "
           f"({s.get('budget_s', 0):.0f} s) split over the models; a model running late skips repeats beyond the "
           "minimum (the rounds actually run are in each input's heading).",
           "- time s: wall clock of the whole process (start-up, imports, load, optimize, save), the same for every "
           "tool. onnxrep also reports its own phases (`--json` seconds): load, optimize; it runs with `--no-verify`, "
           "then once more with verification, whose time is reported separately.",
           "- peak RSS: the child process's maximum resident set size from `wait4()` (ru_maxrss).",
           "- nodes, Conv, BN, parameters: onnxrep.report.model_stats (parameters: Conv/Gemm/MatMul weights and "
           "biases plus BN scale and bias). size: the .onnx plus every external data file it references.",
           "- boxes error: max |Δ| of the main output's box channels ([B, 4+nc, A][:, :4], pixels) against the "
           "original's main output (output 1 of the dual-head models, matched by name, else by position), both in "
           "onnxruntime with graph optimizations off, on the same seeded uniform [0, 1) input; in parentheses the "
           "same relative to the largest box coordinate. The ORT floor is the original itself under ORT's full "
           "optimizations (what deployment adds anyway); the `onnxruntime basic` row is ORT's own offline rewrite.",
           f"- latency: onnxruntime {env['versions'].get('onnxruntime')} CPU, default (full) graph optimizations, "
           f"{s['threads']} intra-op threads for every model, main output only; the original and every result of "
           "one input alternate run by run (onnxrep.bench.time_alternating); × original and × onnxrep are medians "
           "of the per-round ratios. median [min–max] ms. A result whose graph is the same as one already timed "
           "(same op histogram, parameters, MACs and stored weights: onnxsim on `bn` gives the `folded` original, "
           "for instance) is not timed again: it shows that measurement, marked `=`; its × original is then the "
           "ratio of medians across groups (marked ≈).",
           "- Peers that keep the aux head are reported as they are (their parameters include the aux head).", ""]
    markdown.write_text("\n".join(md) + "\n")


def plot(results: dict, path: Path) -> bool:
    """Per model: parameters and latency per tool, one bar per input form."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(e["model"] for e in results["inputs"]))
    forms = list(dict.fromkeys(e["form"] for e in results["inputs"]))
    names = ["original"] + [t["name"] for t in results["settings"]["tools"]]
    labels = {"original": "original", **{t["name"]: t["label"] for t in results["settings"]["tools"]}}
    fig, axes = plt.subplots(len(models), 2, figsize=(14, 3.6 * len(models)), squeeze=False)
    width = 0.8 / max(1, len(forms))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for i, model in enumerate(models):
        for j, (key, title) in enumerate((("parameters", "parameters (M)"), ("latency", "ORT CPU latency (ms)"))):
            ax = axes[i][j]
            for k, form in enumerate(forms):
                e = next((x for x in results["inputs"] if (x["model"], x["form"]) == (model, form)), None)
                if e is None:
                    continue
                xs, ys, lo, hi = [], [], [], []
                for n, name in enumerate(names):
                    row = e["rows"].get(name) or {}
                    if key == "parameters":
                        st = row.get("stats") or {}
                        v = st.get("parameters")
                        if v is None:
                            continue
                        if st.get("conv_runtime_weights"):   # weights computed at run time: show what's stored
                            ax.bar(n - 0.4 + width * (k + 0.5), st["stored_weights"] / 1e6, width, fill=False,
                                   hatch="//", edgecolor=colors[k % len(colors)])
                            continue
                        xs.append(n - 0.4 + width * (k + 0.5))
                        ys.append(v / 1e6)
                        lo.append(0)
                        hi.append(0)
                    else:
                        lat = row.get("latency") or {}
                        if lat.get("median_ms") is None:
                            continue
                        xs.append(n - 0.4 + width * (k + 0.5))
                        ys.append(lat["median_ms"])
                        lo.append(lat["median_ms"] - lat["min_ms"])
                        hi.append(max(lat["times_s"]) * 1e3 - lat["median_ms"])
                ax.bar(xs, ys, width, yerr=None if key == "parameters" else [lo, hi], capsize=2,
                       color=colors[k % len(colors)], label=form)
            conv = next((x["converted"] for x in results["inputs"] if x["model"] == model), None)
            if key == "parameters" and conv:
                ax.axhline(conv["parameters"] / 1e6, color="k", lw=0.8, ls="--", label="converted (deployable)")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([labels[n] for n in names], rotation=20, ha="right", fontsize=8)
            ax.set_title(f"{model}: {title}" + (" (hatched: weights computed at run time, stored elements shown)"
                                                if key == "parameters" else ""), fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if i == 0 and key == "parameters":
                handles, names_ = ax.get_legend_handles_labels()
                fig.legend(handles, names_, loc="upper right", ncol=len(handles), fontsize=8, title="input form",
                           bbox_to_anchor=(0.99, 0.995))
    fig.suptitle(f"onnxrep vs peers on YOLOv9 ({results['environment']['cpu']}, "
                 f"{results['settings']['threads']} threads; latency bars: median, whiskers min–max)", fontsize=10,
                 x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "results" / "results.json").read_text())
    render(data, HERE.parent / "BENCHMARKS.md", HERE / "results")
