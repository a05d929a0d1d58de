"""`onnxrep bench`: time models in the runtimes you deploy to, alternating them run by run.

Why alternate: on a shared or throttling machine latency drifts over seconds. Timing A for ten seconds
and then B for ten lets the drift land on one of them; running A B A B ... spreads it over both, and
the ratio within each round (B's run / A's run, taken moments apart) cancels it. The median of those
per-round ratios is the number to quote; per-model medians, p90 and min are there for scale.

Method, per runtime and batch size: open a session per model (the host memory it takes is measured
across creation and the first run), `warmup` untimed rounds, then timed rounds until every model has
at least `min_runs` runs and `min_time` seconds of timed runs. Inputs are seeded random arrays, the
very same arrays for every model with the same input signature.

Runtimes: onnxruntime CPU always; CUDA and TensorRT when this onnxruntime offers them; OpenVINO when
the `openvino` package is installed. ORT sessions keep ORT's default (full) graph optimizations: this
measures deployment, the opposite of verify.py, which turns them off to see our rewrites alone.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx


from onnxrep.bench.prepare import ModelInfo, _labels, _Model, feed_shapes, prepare_models  # noqa: F401
from onnxrep.bench.render import plot_available, render_plot, render_text  # noqa: F401
from onnxrep.bench.runtimes import (RUNTIME_NAMES, Runtime, _dist_version, discover, open_session,  # noqa: F401
                                    parse_batches, parse_runtimes, select_runtimes)
from onnxrep.bench.timing import _short, measure_memory, pair_ratios, summarize, time_alternating  # noqa: F401

SCHEMA = "onnxrep.bench/1"


@dataclass
class Cell:
    """One model in one runtime at one batch size."""
    runtime: str
    batch: int
    model: str
    status: str                         # ok | failed | skipped
    message: str = ""
    load_s: float | None = None         # session creation plus the first run
    memory_bytes: int | None = None     # host peak-RSS growth over load_s (Linux), else None
    runs: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    mean_ms: float | None = None
    images_per_s: float | None = None
    ratio: float | None = None          # median over rounds of (this run / baseline's run); baseline: 1.0
    pairs: int = 0                      # rounds the ratio is taken over


@dataclass
class BenchReport:
    settings: dict
    environment: dict
    runtimes: list[dict]                # every runtime asked for: name, label, version, ran, reason
    models: list[ModelInfo]
    results: list[Cell]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "settings": self.settings, "environment": self.environment,
                "runtimes": self.runtimes, "models": [asdict(m) for m in self.models],
                "results": [asdict(c) for c in self.results]}

    def text(self) -> str:
        return render_text(self)

    def plot(self, path: str | os.PathLike) -> None:
        render_plot(self, path)


def _environment() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu or platform.processor(),
            "cpu_count": os.cpu_count(), "onnxruntime": _dist_version("onnxruntime") or _dist_version("onnxruntime-gpu"),
            "openvino": _dist_version("openvino") or None}


def run_bench(models: Sequence, *, labels: Sequence[str] | None = None, runtimes: Sequence[str] | None = None,
              batches: Sequence[int] | None = None, shapes: dict | None = None, seed: int = 0,
              threads: int | None = None, warmup: int = 3, min_runs: int = 10, min_time: float = 2.0,
              ov_device: str = "CPU", timer: Callable[[], float] = time.perf_counter,
              on_step: Callable[[str], None] | None = None) -> BenchReport:
    """Time `models` (paths or ModelProtos; the first is the baseline of the ratios) in every runtime
    of `runtimes` (canonical names; None: every available one) at every size of `batches`."""
    step = on_step or (lambda _m: None)
    chosen, skipped = select_runtimes(runtimes, discover(ov_device))
    settings = {"warmup": warmup, "min_runs": min_runs, "min_time_s": min_time, "threads": threads,
                "batches": list(batches) if batches else None, "seed": seed, "ov_device": ov_device,
                "input_shapes": dict(shapes or {}), "baseline": None}
    results: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="onnxrep-bench-") as work:
        prepared = prepare_models(models, Path(work), labels=labels, shapes=shapes, step=step)
        settings["baseline"] = prepared[0].info.label if prepared else None
        for rt in chosen:
            _prime(rt, Path(work), threads=threads, ov_device=ov_device)
            for batch in batches or [None]:
                results.extend(_bench_runtime(rt, batch, prepared, shapes=shapes, seed=seed, threads=threads,
                                              warmup=warmup, min_runs=min_runs, min_time=min_time,
                                              ov_device=ov_device, timer=timer, step=step))
    ran = [{"name": r.name, "label": r.label, "version": r.version, "ran": True, "reason": ""} for r in chosen]
    ran += [{"name": r.name, "label": r.label, "version": r.version, "ran": False, "reason": r.reason} for r in skipped]
    return BenchReport(settings=settings, environment=_environment(), runtimes=ran,
                       models=[m.info for m in prepared], results=results)


def _prime(rt: Runtime, workdir: Path, *, threads, ov_device) -> None:
    """Open and run a one-node model first, so that the runtime's one-time start-up (libraries, plugins,
    thread pools) is not charged to the baseline's load time and memory."""
    from onnx import TensorProto, helper

    path = workdir / "prime.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "prime",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)
    try:
        open_session(rt, path, {"x": np.zeros((1, 4), np.float32)}, threads=threads, ov_device=ov_device)()
    except Exception:  # noqa: BLE001, S110 -- the models' own loading will report what is wrong
        pass


def _bench_runtime(rt: Runtime, batch: int | None, prepared: list[_Model], *, shapes, seed, threads, warmup,
                   min_runs, min_time, ov_device, timer, step) -> list[Cell]:
    from onnxrep.verify import make_inputs

    cells: list[Cell] = []
    live: list[tuple[int, Callable]] = []
    feeds: dict = {}   # one set of arrays per input signature: identical inputs for every model
    where = f"{rt.label}" + (f" batch {batch}" if batch else "")
    for m in prepared:
        shape, b, note = feed_shapes(m.inputs, batch, shapes)
        cell = Cell(runtime=rt.name, batch=batch or b, model=m.info.label, status="skipped", message=note)
        cells.append(cell)
        if shape is None:
            continue
        key = tuple((vi.name, vi.type.tensor_type.elem_type, tuple(shape[vi.name])) for vi in m.inputs.graph.input)
        if key not in feeds:
            feeds[key] = make_inputs(m.inputs, 1, seed, shape, batches=(1,))[0]
        feed = feeds[key]
        step(f"{where}: loading {m.info.label}")

        def load(path=m.path, feed=feed):
            runner = open_session(rt, path, feed, threads=threads, ov_device=ov_device)
            runner()  # the first run: lazy initialisation (TensorRT engines) belongs to loading
            return runner

        start = time.perf_counter()
        try:
            runner, memory = measure_memory(load)
        except Exception as exc:  # noqa: BLE001 -- a runtime that can't take this model: say so, go on
            cell.status, cell.message = "failed", f"cannot load: {_short(exc)}"
            continue
        cell.status, cell.load_s, cell.memory_bytes = "ok", time.perf_counter() - start, memory
        live.append((len(cells) - 1, runner))

    times, errors = time_alternating([r for _, r in live], warmup=warmup, min_runs=min_runs, min_time=min_time,
                                     timer=timer, on_round=lambda n: step(f"{where}: round {n}"))
    base = times[0] if live and live[0][0] == 0 else None   # the ratio needs the baseline to have run
    for k, ((index, _), seconds) in enumerate(zip(live, times)):
        cell = cells[index]
        for key, value in summarize(seconds, cell.batch).items():
            setattr(cell, key, value)
        if k in errors:
            cell.status, cell.message = "failed", f"failed after {len(seconds)} timed runs: {errors[k]}"
        if base is not None and base:
            ratios = pair_ratios(base, seconds)
            if ratios:
                cell.ratio, cell.pairs = float(np.median(ratios)), len(ratios)
    return cells   # the sessions go with `live`; the next measure_memory gives their memory back first
