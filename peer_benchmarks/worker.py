"""Measurements that run in a process of their own, so that a model that crashes onnxruntime, or the
memory of a dozen sessions, never touches the benchmark driver (peer_benchmarks/run.py).

    python peer_benchmarks/worker.py quality SPEC.json OUT.jsonl   # counts, loads?, error of the main output
    python peer_benchmarks/worker.py latency SPEC.json OUT.jsonl   # alternating onnxruntime CPU latency

Each writes one JSON object per line as it goes (flushed), so after a crash the driver knows how far
it got and restarts it on the rest.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without installing


def _emit(fh, obj) -> None:
    fh.write(json.dumps(obj, default=float) + "\n")
    fh.flush()


def _session(path: str, level: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _feed(path: str, seed: int) -> dict:
    """The seeded input (as onnxrep verify makes its batch-1 sample), from the model's declared inputs."""
    import onnx

    from onnxrep.verify import make_inputs

    skeleton = onnx.load(path, load_external_data=False)
    inits = {t.name for t in skeleton.graph.initializer}
    del skeleton.graph.initializer[:]
    del skeleton.graph.node[:]
    kept = [vi for vi in skeleton.graph.input if vi.name not in inits]
    del skeleton.graph.input[:]
    skeleton.graph.input.extend(kept)
    return make_inputs(skeleton, 1, seed, batches=(1,))[0]


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300] + ("..." if len(text) > 300 else "")


def main_output(names: list[str], original_names: list[str], original_main: str) -> str | None:
    """The result's main output: the original's main by name, else by position (same output count),
    else the only output."""
    if original_main in names:
        return original_main
    if len(names) == len(original_names):
        return names[original_names.index(original_main)]
    if len(names) == 1:
        return names[0]
    return None


def compare(ref: np.ndarray, out: np.ndarray) -> dict:
    """Max abs error of the boxes (channels 0..3 of [B, 4+nc, A], in pixels), of the scores, of the whole
    output; the boxes' error also relative to the largest box coordinate."""
    if ref.shape != out.shape:
        return {"ok": False, "message": f"shape {list(out.shape)} != original {list(ref.shape)}"}
    a, b = ref.astype(np.float64), out.astype(np.float64)
    if (np.isnan(a) != np.isnan(b)).any():
        return {"ok": False, "message": "NaN where the original has none (or the reverse)"}
    diff = np.nan_to_num(np.abs(a - b), nan=0.0)
    boxes, scores = diff[:, :4], diff[:, 4:]
    scale = float(np.abs(a[:, :4]).max()) or 1.0
    return {"ok": True, "boxes_px": float(boxes.max()), "boxes_rel": float(boxes.max()) / scale,
            "scores_abs": float(scores.max()) if scores.size else 0.0, "output_abs": float(diff.max()),
            "boxes_scale_px": scale}


def stored_weights(model) -> dict:
    """Elements of every float tensor stored in the file (initializers, Constant nodes), and the Conv nodes
    whose weight is not such a tensor but computed at run time (e.g. onnxoptimizer's BN fusion emits
    Mul/Sqrt/Add over the BN statistics instead of folding them): model_stats counts no parameters for those."""
    import onnx

    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    total = sum(int(np.prod(t.dims)) for t in consts.values() if t.data_type in float_types)
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input}
    runtime = 0
    for node in g.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            w = node.input[1]
            while w in alias:
                w = alias[w]
            runtime += w not in consts
    return {"stored_weights": total, "conv_runtime_weights": runtime}


def quality(spec: dict, fh) -> None:
    import onnx

    from onnxrep.report import model_stats

    threads = spec.get("threads", 2)
    original, main = spec["original"], spec["main"]
    feed = _feed(original, spec.get("seed", 0))
    ref_session = _session(original, "off", threads)
    original_names = [o.name for o in ref_session.get_outputs()]
    ref = ref_session.run([main], feed)[0]
    del ref_session
    if spec.get("floor"):   # the original itself under ORT's own (deployment) optimizations
        start = time.perf_counter()
        deployed = _session(original, "all", threads).run([main], feed)[0]
        _emit(fh, {"label": "@ort-all", "error": compare(ref, deployed), "seconds": time.perf_counter() - start})
    for item in spec["items"]:
        start = time.perf_counter()
        row: dict = {"label": item["label"]}
        if item["path"] == original:   # the reference itself: its counts, and no second session
            model = onnx.load(original)
            row.update(stats=vars(model_stats(model, None, macs=True)), outputs=[o.name for o in model.graph.output],
                       loads=True, main=main, error=compare(ref, ref))
            row["stats"].update(stored_weights(model))
            del model
            row["seconds"] = time.perf_counter() - start
            _emit(fh, row)
            continue
        try:
            model = onnx.load(item["path"])
            row["stats"] = vars(model_stats(model, None, macs=True))
            row["stats"].update(stored_weights(model))
            row["outputs"] = [o.name for o in model.graph.output]
            del model
        except Exception as exc:  # noqa: BLE001 -- a file onnx can't read is a finding, not a crash
            row["stats"], row["stats_error"] = None, _short(exc)
        try:
            session = _session(item["path"], "off", threads)
        except Exception as exc:  # noqa: BLE001
            row.update(loads=False, load_error=_short(exc), seconds=time.perf_counter() - start)
            _emit(fh, row)
            continue
        row["loads"] = True
        names = [o.name for o in session.get_outputs()]
        name = main_output(names, original_names, main)
        if name is None:
            row["error"] = {"ok": False, "message": f"no output matches the original's main {main!r}: {names}"}
        else:
            row["main"] = name
            try:
                row["error"] = compare(ref, session.run([name], feed)[0])
            except Exception as exc:  # noqa: BLE001
                row["error"] = {"ok": False, "message": f"run failed: {_short(exc)}"}
        del session
        row["seconds"] = time.perf_counter() - start
        _emit(fh, row)


def latency(spec: dict, fh) -> None:
    threads = spec.get("threads", 2)
    feed = _feed(spec["items"][0]["path"], spec.get("seed", 0))
    runners, labels = [], []
    for item in spec["items"]:
        start = time.perf_counter()
        try:
            session = _session(item["path"], "all", threads)
            def run(s=session, n=item["main"]):
                return s.run([n], feed)
        except Exception as exc:  # noqa: BLE001
            _emit(fh, {"label": item["label"], "loaded": False, "error": _short(exc)})
            continue
        _emit(fh, {"label": item["label"], "loaded": True, "load_s": time.perf_counter() - start})
        runners.append(run)
        labels.append(item["label"])
    # Warm-up: whole alternating rounds once every session is open. A session's first *two* runs are up to
    # 2x slow on yolov9-c/e (the first records onnxruntime's memory pattern, the second allocates and first
    # touches the planned buffer), so peer_benchmarks/run.py asks for two.
    times, errors = alternate(runners, warmup=max(1, spec.get("warmup", 2)), min_rounds=spec.get("min_runs", 2),
                              max_rounds=spec.get("runs", 5), deadline=spec.get("deadline"))
    _emit(fh, {"times": dict(zip(labels, times)), "errors": {labels[i]: e for i, e in errors.items()}})


def alternate(runners, *, warmup: int, min_rounds: int, max_rounds: int, deadline: float | None):
    """onnxrep.bench.time_alternating one round at a time: at least `min_rounds`, at most `max_rounds`,
    and no round started that would end after `deadline` (epoch seconds) once the minimum is reached."""
    from onnxrep.bench import time_alternating

    times: list[list[float]] = [[] for _ in runners]
    _, errors = time_alternating(runners, warmup=warmup, min_runs=0, min_time=0.0)
    active = [i for i in range(len(runners)) if i not in errors]
    rounds = 0
    while active and rounds < max_rounds:
        start = time.time()
        got, errs = time_alternating([runners[i] for i in active], warmup=0, min_runs=1, min_time=0.0, max_runs=1)
        for j, i in enumerate(active):
            times[i].extend(got[j])
        errors.update({active[j]: msg for j, msg in errs.items()})
        active = [i for j, i in enumerate(active) if j not in errs]
        rounds += 1
        if rounds >= min_rounds and deadline and time.time() + (time.time() - start) > deadline:
            break
    return times, errors


def main(argv: list[str]) -> int:
    command, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    with open(out_path, "a") as fh:
        {"quality": quality, "latency": latency}[command](spec, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
