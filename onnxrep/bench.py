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

import gc
import importlib.metadata
import importlib.util
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxrep.io import OnnxrepError

SCHEMA = "onnxrep.bench/1"

# name -> (onnxruntime provider, label); CPU is always there, the others only in some builds.
_ORT = {
    "ort-cpu": ("CPUExecutionProvider", "onnxruntime CPU"),
    "ort-cuda": ("CUDAExecutionProvider", "onnxruntime CUDA"),
    "ort-tensorrt": ("TensorrtExecutionProvider", "onnxruntime TensorRT"),
}
RUNTIME_NAMES = (*_ORT, "openvino")
_ALIASES = {"cpu": "ort-cpu", "ort": "ort-cpu", "onnxruntime": "ort-cpu", "cuda": "ort-cuda",
            "tensorrt": "ort-tensorrt", "trt": "ort-tensorrt", "ort-trt": "ort-tensorrt", "ov": "openvino"}


# ------------------------------------------------------------------------------------------ runtimes


@dataclass(frozen=True)
class Runtime:
    name: str
    label: str
    available: bool
    reason: str = ""      # why not available
    version: str = ""
    cpu: bool = True      # --threads applies


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def discover(ov_device: str = "CPU") -> list[Runtime]:
    """Every runtime bench knows, each marked available or not (with the reason)."""
    import onnxruntime as ort

    offered = set(ort.get_available_providers())
    found = []
    for name, (provider, label) in _ORT.items():
        ok = provider in offered
        found.append(Runtime(name, label, ok, "" if ok else f"this onnxruntime {ort.__version__} does not offer {provider}",
                             ort.__version__, cpu=name == "ort-cpu"))
    on_cpu = ov_device.upper().startswith("CPU")
    if importlib.util.find_spec("openvino") is not None:  # find_spec: don't pay openvino's import here
        found.append(Runtime("openvino", f"OpenVINO {ov_device}", True, "", _dist_version("openvino"), cpu=on_cpu))
    else:
        found.append(Runtime("openvino", f"OpenVINO {ov_device}", False,
                             "openvino is not installed (pip install 'onnxrep[openvino]')", cpu=on_cpu))
    return found


def parse_runtimes(values: Sequence[str] | None) -> list[str]:
    """--runtime values (repeatable, comma-separated, aliases allowed) as canonical names, in order."""
    names: list[str] = []
    for value in values or ():
        for raw in value.split(","):
            key = raw.strip().lower()
            if not key:
                continue
            name = _ALIASES.get(key, key)
            if name not in RUNTIME_NAMES:
                raise OnnxrepError(f"--runtime {raw.strip()!r}: unknown runtime (known: {', '.join(RUNTIME_NAMES)})")
            if name not in names:
                names.append(name)
    return names


def select_runtimes(requested: Sequence[str] | None, found: list[Runtime]) -> tuple[list[Runtime], list[Runtime]]:
    """(runtimes to run, unavailable ones skipped). Nothing requested: every available one."""
    by_name = {r.name: r for r in found}
    wanted = [by_name[n] for n in requested] if requested else found
    chosen = [r for r in wanted if r.available]
    skipped = [r for r in wanted if not r.available]
    if not chosen:
        raise OnnxrepError("no runtime to bench: " + "; ".join(f"{r.name}: {r.reason}" for r in skipped))
    return chosen, skipped


def parse_batches(value: str | None) -> list[int] | None:
    """--batch 1,8,32 -> [1, 8, 32]; None when not given (each model at its own batch)."""
    if not value:
        return None
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s <= 0 for s in sizes):
        raise OnnxrepError(f"--batch {value!r}: expected positive sizes, e.g. 1,8,32")
    return list(dict.fromkeys(sizes))


# ------------------------------------------------------------------------------------------ sessions


_OV_CORE = None


def _ov_core():
    global _OV_CORE
    if _OV_CORE is None:
        import openvino as ov

        _OV_CORE = ov.Core()
    return _OV_CORE


def open_session(runtime: Runtime, path: str | os.PathLike, feed: dict, *, threads: int | None = None,
                 ov_device: str = "CPU") -> Callable[[], object]:
    """A session for `path` in `runtime`, as a no-argument function that runs it once on `feed`."""
    if runtime.name == "openvino":
        core = _ov_core()
        model = core.read_model(str(path))
        if any(not p.get_partial_shape().is_static for p in model.inputs):
            model.reshape({name: list(a.shape) for name, a in feed.items()})  # compile static, as deployed
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads and runtime.cpu:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(model, ov_device, config)
        request = compiled.create_infer_request()
        return lambda: request.infer(feed)

    import onnxruntime as ort

    provider = _ORT[runtime.name][0]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads and runtime.cpu:
        options.intra_op_num_threads = threads
    providers = {"CPUExecutionProvider": [provider],
                 "CUDAExecutionProvider": [provider, "CPUExecutionProvider"],
                 "TensorrtExecutionProvider": [provider, "CUDAExecutionProvider", "CPUExecutionProvider"]}[provider]
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != provider:  # ORT falls back silently: timing that would be a lie
        raise RuntimeError(f"{provider} did not initialise (onnxruntime fell back to {session.get_providers()[0]})")
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, feed)


def _proc_status() -> dict[str, int] | None:
    try:
        with open("/proc/self/status") as fh:
            return {k: int(v.split()[0]) * 1024 for k, _, v in (ln.partition(":") for ln in fh)
                    if k in ("VmRSS", "VmHWM")}
    except (OSError, ValueError):
        return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    gc.collect()
    try:  # glibc keeps freed heap; give it back so the next RSS growth is this session's own
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_memory(fn: Callable[[], object]) -> tuple[object, int | None]:
    """fn()'s result and how much this process's peak RSS grew while it ran (None off Linux)."""
    _release_freed_memory()
    before = _proc_status()
    reset = _reset_peak()
    result = fn()
    after = _proc_status()
    if not before or not after or "VmRSS" not in before:
        return result, None
    top = after.get("VmHWM") if reset else None
    top = after.get("VmRSS", 0) if top is None else top
    return result, max(0, top - before["VmRSS"])


# ------------------------------------------------------------------------------------------ timing


def time_alternating(runners: Sequence[Callable[[], object]], *, warmup: int = 3, min_runs: int = 10,
                     min_time: float = 2.0, timer: Callable[[], float] = time.perf_counter,
                     max_runs: int | None = None, on_round: Callable[[int], None] | None = None
                     ) -> tuple[list[list[float]], dict[int, str]]:
    """Run the runners in turn, A B A B ...: `warmup` untimed rounds, then timed rounds until every
    runner has `min_runs` runs and `min_time` seconds of them (or `max_runs` rounds).

    Returns (seconds per run for each runner, aligned by round; {index: error} for runners that
    raised, which leave the rotation and keep the runs they had)."""
    errors: dict[int, str] = {}
    active = list(range(len(runners)))

    def call(i: int) -> bool:
        try:
            runners[i]()
            return True
        except Exception as exc:  # noqa: BLE001 -- a runtime error mid-way: report it, time the others
            errors[i] = _short(exc)
            active.remove(i)
            return False

    for _ in range(warmup):
        for i in list(active):
            call(i)
    times: list[list[float]] = [[] for _ in runners]
    rounds = 0
    while active and (rounds < min_runs or min(sum(times[i]) for i in active) < min_time):
        if max_runs is not None and rounds >= max_runs:
            break
        for i in list(active):
            start = timer()
            if call(i):
                times[i].append(timer() - start)
        rounds += 1
        if on_round:
            on_round(rounds)
    return times, errors


def pair_ratios(base: Sequence[float], other: Sequence[float]) -> list[float]:
    """other's run / base's run, round by round (both lists aligned from the first round)."""
    return [o / b for b, o in zip(base, other) if b > 0]


def summarize(seconds: Sequence[float], batch: int) -> dict:
    if not len(seconds):
        return {"runs": 0, "median_ms": None, "p90_ms": None, "min_ms": None, "mean_ms": None, "images_per_s": None}
    a = np.asarray(seconds, dtype=np.float64)
    median = float(np.median(a))
    return {"runs": int(a.size), "median_ms": median * 1e3, "p90_ms": float(np.percentile(a, 90)) * 1e3,
            "min_ms": float(a.min()) * 1e3, "mean_ms": float(a.mean()) * 1e3,
            "images_per_s": batch / median if median > 0 else None}


# ------------------------------------------------------------------------------------------ models


@dataclass
class ModelInfo:
    label: str
    source: str                 # the path given, or "<in memory>"
    file_bytes: int | None
    parameters: int
    macs: int | None            # at the bench input shape, batch 1 where the batch is symbolic
    inputs: dict = field(default_factory=dict)   # name -> dims as declared (symbolic dims as names)


@dataclass
class _Model:
    info: ModelInfo
    path: Path                  # what the runtimes load
    inputs: onnx.ModelProto     # a weightless skeleton: the real graph inputs and metadata (make_inputs)


def _declared(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _symbolic_batch(vi: onnx.ValueInfoProto) -> bool:
    dims = vi.type.tensor_type.shape.dim
    return bool(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    inits = {t.name for t in model.graph.initializer}
    skel = onnx.ModelProto()
    skel.graph.input.extend(vi for vi in model.graph.input if vi.name not in inits)
    skel.metadata_props.extend(model.metadata_props)
    return skel


def feed_shapes(skeleton: onnx.ModelProto, batch: int | None, shapes: dict | None) -> tuple[dict | None, int, str]:
    """(input shapes, batch, note) for one model at `batch`: the batch overrides dim 0 of inputs with a
    symbolic batch; a static-batch model at another size is (None, its batch, why it is skipped)."""
    from onnxrep.verify import make_inputs

    known = {vi.name for vi in skeleton.graph.input}
    base = {n: list(a.shape) for n, a in make_inputs(skeleton, 1, 0, batches=(1,), shapes={k: v for k, v in (shapes or {}).items()
                                                                      if k in known})[0].items()}
    first = next((s for s in base.values() if s), [1])
    if batch is None:
        return base, first[0], ""
    dynamic = [vi.name for vi in skeleton.graph.input if _symbolic_batch(vi) and base.get(vi.name)]
    if dynamic:
        for name in dynamic:
            base[name][0] = batch
        return base, batch, ""
    if first[0] == batch:
        return base, batch, ""
    return None, first[0], f"static batch {first[0]}: not run at batch {batch}"


def _macs_at(model: onnx.ModelProto, shapes: dict) -> int | None:
    """MACs with symbolic input dims set to the bench shape (batch 1): count_macs counts a symbolic dim as 1."""
    from onnxrep.report import count_macs

    saved = []
    try:
        for vi in model.graph.input:
            if vi.name in shapes and len(vi.type.tensor_type.shape.dim) == len(shapes[vi.name]):
                saved.append((vi, onnx.TypeProto.FromString(vi.type.SerializeToString())))
                for axis, (d, n) in enumerate(zip(vi.type.tensor_type.shape.dim, shapes[vi.name])):
                    if not (d.HasField("dim_value") and d.dim_value > 0):
                        d.dim_value = 1 if axis == 0 else n
        return count_macs(model) or None
    finally:
        for vi, typ in saved:
            vi.type.CopyFrom(typ)


def _labels(items: Sequence, labels: Sequence[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(items):
            raise ValueError("one label per model")
        names = list(labels)
    else:
        names = [Path(m).name if isinstance(m, (str, os.PathLike)) else f"model{i + 1}" for i, m in enumerate(items)]
    if not labels and len(set(names)) < len(names):  # same names in different folders: use the paths
        names = [str(m) if isinstance(m, (str, os.PathLike)) else n for m, n in zip(items, names)]
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # the same file twice (an A/A run to see the noise) still needs two labels
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


def prepare_models(items: Sequence, workdir: Path, *, labels: Sequence[str] | None = None,
                   shapes: dict | None = None, step: Callable[[str], None] = lambda _m: None) -> list[_Model]:
    """Paths or ModelProtos -> what bench needs; in-memory models are written to `workdir` for the runtimes."""
    from onnxrep import io
    from onnxrep.report import count_parameters

    prepared = []
    for label, item in zip(_labels(items, labels), items):
        step(f"loading {label}")
        if isinstance(item, onnx.ModelProto):
            model, source = item, "<in memory>"
            path = workdir / f"m{len(prepared)}.onnx"
            file_bytes = io.save(model, path)
        elif isinstance(item, (str, os.PathLike)):
            model, info = io.load(item, check=False)
            source, path, file_bytes = str(item), Path(item), info.file_bytes
        else:
            raise TypeError("bench takes paths or onnx.ModelProto")
        skeleton = _skeleton(model)
        base, _, _ = feed_shapes(skeleton, 1, shapes)
        step(f"counting {label}")
        info = ModelInfo(label=label, source=source, file_bytes=file_bytes, parameters=count_parameters(model.graph),
                         macs=_macs_at(model, base or {}), inputs={vi.name: _declared(vi) for vi in skeleton.graph.input})
        prepared.append(_Model(info, path, skeleton))
        del model
    unknown = set(shapes or {}) - {n for m in prepared for n in m.info.inputs}
    if unknown:
        raise OnnxrepError(f"--input-shape names unknown input(s) {sorted(unknown)}; "
                           f"inputs are {sorted({n for m in prepared for n in m.info.inputs})}")
    return prepared


# ------------------------------------------------------------------------------------------ the run


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


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300] + ("..." if len(text) > 300 else "")


# ------------------------------------------------------------------------------------------ output


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
