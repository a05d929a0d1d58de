"""Where onnxrep's time and memory go on one model: what `onnxrep optimize --no-verify` does, in-process.

    python peer_benchmarks/profile_optimize.py peer_benchmarks/work/models/yolov9-e-bn.onnx \\
        [--json out.json] [--modes rss,cprofile,tracemalloc]

Three fresh processes, one per mode:
- rss: wall time and resident memory per phase (load, onnx -> graph import, each pass, dead-code
  elimination, graph -> onnx export, report statistics, save), RSS sampled every 10 ms;
- cprofile: the functions that take the time (own and cumulative), no other instrumentation;
- tracemalloc: Python-visible allocations (numpy arrays, bytes, Python objects; not protobuf's C++
  heap, which the rss mode sees) per phase, and the sites holding the most at the heaviest phase end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Phases:
    """Time, RSS and (optionally) tracemalloc figures per named phase; a phase may recur (summed)."""

    def __init__(self, tracemalloc_on: bool = False):
        self.tm = tracemalloc_on
        self.rows: dict[str, dict] = {}
        self.order: list[str] = []
        self.current: str | None = None
        self.start = time.perf_counter()
        self.peak_all = _rss()
        self.peak_phase = self.peak_all
        self.snapshots: list[tuple[int, str, object]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop:
            r = _rss()
            self.peak_phase = max(self.peak_phase, r)
            time.sleep(0.01)

    def enter(self, name: str | None):
        now = time.perf_counter()
        if self.current is not None:
            rss = _rss()
            self.peak_phase = max(self.peak_phase, rss)
            self.peak_all = max(self.peak_all, self.peak_phase)
            row = self.rows.setdefault(self.current, {"phase": self.current, "seconds": 0.0, "rss_end": 0, "peak": 0,
                                                      "phase_peak": 0, "count": 0})
            if self.current not in self.order:
                self.order.append(self.current)
            row["seconds"] += now - self.start
            row["rss_end"] = rss
            row["phase_peak"] = max(row["phase_peak"], self.peak_phase)
            row["peak"] = self.peak_all
            row["count"] += 1
            if self.tm:
                import tracemalloc

                cur, peak = tracemalloc.get_traced_memory()
                row["py_current"] = cur
                row["py_peak"] = max(row.get("py_peak", 0), peak)
                tracemalloc.reset_peak()
                if not self.snapshots or cur > self.snapshots[0][0]:   # keep the heaviest phase end only
                    self.snapshots = [(cur, self.current, tracemalloc.take_snapshot())]
        self.current = name
        self.start = time.perf_counter()
        self.peak_phase = _rss()

    def stop(self):
        self.enter(None)
        self._stop = True
        return [self.rows[n] for n in self.order]


def instrument(phases: Phases):
    """Wrap onnxrep's steps so that each becomes a phase (no change to what they do)."""
    import onnxrep
    import onnxrep.io
    import onnxrep.passes

    def wrap(module, name, label, restore=False):
        fn = getattr(module, name)

        def wrapped(*a, **k):
            prev = phases.current
            phases.enter(label)
            try:
                return fn(*a, **k)
            finally:
                phases.enter(prev if restore else f"after {label}")

        setattr(module, name, wrapped)

    wrap(onnxrep._io, "load", "load (parse, check, external data)")
    wrap(onnxrep, "import_model", "import (onnx -> graphsurgeon)")
    wrap(onnxrep.passes, "eliminate_dead_code", "dead-code elimination (gs cleanup + toposort)", restore=True)
    wrap(onnxrep, "from_graph", "export (graphsurgeon -> onnx)")
    wrap(onnxrep, "model_stats", "report statistics (before/after)")
    wrap(onnxrep.io, "save", "save")


def run_once(path: str, out_dir: str) -> None:
    import onnxrep
    from onnxrep import io

    result = onnxrep.optimize(path, verify=False, on_step=_on_step)
    use_external = bool(result.source and result.source.external_data) or None
    io.save(result.model, Path(out_dir) / "out.onnx", external_data=use_external)


_PHASES: Phases | None = None


def _on_step(msg: str) -> None:
    if _PHASES is not None and msg.startswith("pass "):
        _PHASES.enter(msg)


def mode_rss(path: str, tm: bool = False) -> dict:
    global _PHASES
    if tm:
        import tracemalloc

        tracemalloc.start(4)
    t0 = time.perf_counter()
    import onnxrep  # noqa: F401 -- imports count as a phase of their own
    import onnxrep.io
    import onnxrep.passes  # noqa: F401
    imports = time.perf_counter() - t0
    _PHASES = Phases(tracemalloc_on=tm)
    instrument(_PHASES)
    _PHASES.enter("start")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_once(path, tmp)
        total = time.perf_counter() - start
        rows = _PHASES.stop()
    rows = [r for r in rows if r["phase"] != "start" and not r["phase"].startswith("after ") or r["seconds"] > 0.05]
    out = {"imports_s": imports, "total_s": total, "phases": rows, "vm_hwm": _hwm()}
    if tm:
        import tracemalloc

        _, peak = tracemalloc.get_traced_memory()
        cur, phase, snap = _PHASES.snapshots[0]
        stats = snap.statistics("traceback")[:12]
        out["tracemalloc"] = {"peak": peak, "at_phase": phase, "current_at_phase_end": cur,
                              "top": [{"where": _site(s.traceback), "bytes": s.size, "count": s.count} for s in stats]}
    return out


def _hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _short_file(filename: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _site(tb) -> str:
    """The innermost frame in onnxrep, and the innermost frame overall when that differs."""
    frames = list(tb)  # most recent call last? tracemalloc: most recent first in .format(); list is oldest first
    inner = frames[-1] if frames else None
    ours = next((f for f in reversed(frames) if "/onnxrep/" in f.filename), None)
    text = f"{_short_file(ours.filename)}:{ours.lineno}" if ours else ""
    if inner and inner is not ours:
        text += (" → " if text else "") + f"{_short_file(inner.filename)}:{inner.lineno}"
    return text


def mode_cprofile(path: str) -> dict:
    import cProfile
    import pstats

    import onnxrep  # noqa: F401
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prof.enable()
        run_once(path, tmp)
        prof.disable()
        total = time.perf_counter() - start
    st = pstats.Stats(prof)
    entries = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():
        entries.append({"where": f"{_short_file(filename)}:{func}" if filename != "~" else func,
                        "line": line, "calls": nc, "tottime": tt, "cumtime": ct})
    by_own = sorted(entries, key=lambda e: -e["tottime"])[:25]
    ours = sorted((e for e in entries if e["where"].startswith("onnxrep/")), key=lambda e: -e["cumtime"])[:25]
    return {"cprofile_total_s": total, "cprofile": by_own, "cumulative": ours}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--json", default=None)
    ap.add_argument("--modes", default="rss,cprofile", help="any of rss, cprofile, tracemalloc (slow: ~15x)")
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)   # internal: one mode, this process
    args = ap.parse_args(argv)
    if args.mode:
        data = {"rss": lambda: mode_rss(args.model), "cprofile": lambda: mode_cprofile(args.model),
                "tracemalloc": lambda: mode_rss(args.model, tm=True)}[args.mode]()
        print(json.dumps(data, default=float))
        return 0
    result = {"model": args.model, "file_bytes": _file_bytes(Path(args.model))}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, args.model, "--mode", mode], capture_output=True, text=True,
                              cwd=ROOT)
        if proc.returncode != 0:
            result[f"{mode}_failed"] = proc.stderr.strip().splitlines()[-3:]
            continue
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        if mode == "tracemalloc":
            result["tracemalloc"] = data["tracemalloc"]
            result["tracemalloc_phases"] = [{k: p.get(k) for k in ("phase", "py_peak", "py_current")}
                                            for p in data["phases"]]
        else:
            result.update(data)
        result[f"{mode}_wall_s"] = time.perf_counter() - start
    text = json.dumps(result, indent=1, default=float)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


def _file_bytes(path: Path) -> int:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return total + (data.stat().st_size if data.exists() else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
