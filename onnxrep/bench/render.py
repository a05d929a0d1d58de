"""The bench report as a text table and a bar chart."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import TYPE_CHECKING

from onnxrep.io import OnnxrepError

if TYPE_CHECKING:
    from onnxrep.bench import BenchReport


def _size(v: int | None) -> str:
    if v is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return str(v)


def _si(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {prefix}{unit}".rstrip()
    return f"{v:g} {unit}".rstrip()


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.1f}")


def render_text(report: BenchReport) -> str:
    s = report.settings
    base = s.get("baseline")
    lines = []
    width = max([len(m.label) for m in report.models] + [5])
    lines.append(f"{'model':<{width}}  {'file size':>10}  {'parameters':>11}  {'MACs':>9}  source")
    for m in report.models:
        lines.append(f"{m.label:<{width}}  {_size(m.file_bytes):>10}  {_si(m.parameters):>11}  {_si(m.macs):>9}  {m.source}")
    threads = s.get("threads") or "default"
    for rt in (r for r in report.runtimes if r["ran"]):
        cells = [c for c in report.results if c.runtime == rt["name"]]
        lines.append("")
        lines.append(f"{rt['label']} {rt['version']}".rstrip() + (f", threads {threads}" if rt["name"] in ("ort-cpu", "openvino") else ""))
        lines.append(f"  {'batch':>5}  {'model':<{width}}  {'median ms':>9}  {'p90 ms':>8}  {'min ms':>8}  {'images/s':>9}"
                     f"  {'memory':>9}  {'load s':>6}  {'runs':>4}  ratio")
        last_batch = None
        for c in cells:
            shown_batch = "" if c.batch == last_batch else str(c.batch)
            last_batch = c.batch
            head = f"  {shown_batch:>5}  {c.model:<{width}}"
            if c.status == "ok" or c.runs:
                ratio = ""
                if c.ratio is not None and c.model == base:
                    ratio = "baseline"
                elif c.ratio is not None:
                    ratio = (f"{c.ratio:.3f} ({1 / c.ratio:.2f}x faster)" if 0 < c.ratio <= 1
                             else f"{c.ratio:.3f} ({c.ratio:.2f}x slower)")
                ips = "-" if c.images_per_s is None else (f"{c.images_per_s:.3g}" if c.images_per_s < 100
                                                          else f"{c.images_per_s:.0f}")
                load = "-" if c.load_s is None else f"{c.load_s:.2f}"
                lines.append(f"{head}  {_ms(c.median_ms):>9}  {_ms(c.p90_ms):>8}  {_ms(c.min_ms):>8}  {ips:>9}"
                             f"  {_size(c.memory_bytes):>9}  {load:>6}  {c.runs:>4}  {ratio}".rstrip())
            if c.status != "ok":
                lines.append(f"{head}  {c.status}: {c.message}" if not c.runs else f"  {'':>5}  {'':<{width}}  {c.message}")
    skipped = [r for r in report.runtimes if not r["ran"]]
    if skipped:
        lines.append("")
        lines.extend(f"skipped {r['label']}: {r['reason']}" for r in skipped)
    lines.append("")
    lines.append(f"ratio: median over rounds of (model's run / {base}'s run in the same round), the models alternating "
                 f"run by run; below 1 is faster.")
    lines.append(f"method: {s['warmup']} warm-up rounds, then at least {s['min_runs']} runs and {s['min_time_s']:g} s "
                 f"per model; memory: host peak-RSS growth over session creation and the first run.")
    return "\n".join(lines)


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def render_plot(report: BenchReport, path: str | os.PathLike) -> None:
    """Median latency per runtime (and batch), one bar per model; whiskers from min to p90."""
    if not plot_available():
        raise OnnxrepError("--plot needs matplotlib: pip install 'onnxrep[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []
    for c in report.results:
        key = (c.runtime, c.batch)
        if key not in groups:
            groups.append(key)
    labels = {r["name"]: r["label"] for r in report.runtimes}
    multi_batch = len({b for _, b in groups}) > 1
    names = [m.label for m in report.models]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) * max(1, len(names)) ** 0.5 + 2), 4))
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for g, (rt, b) in enumerate(groups):
            c = next((c for c in report.results if (c.runtime, c.batch, c.model) == (rt, b, name)), None)
            if c is None or c.median_ms is None:
                continue
            xs.append(g - 0.4 + width * (k + 0.5))
            ys.append(c.median_ms)
            lo.append(c.median_ms - c.min_ms)
            hi.append(c.p90_ms - c.median_ms)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([labels.get(rt, rt) + (f"\nbatch {b}" if multi_batch else "") for rt, b in groups])
    ax.set_ylabel("latency, ms (median; whiskers min to p90)")
    ax.set_title("onnxrep bench")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(str(path), dpi=120)
    except OSError as exc:
        raise OnnxrepError(f"--plot {path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        plt.close(fig)
