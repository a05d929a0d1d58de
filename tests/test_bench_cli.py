"""`onnxrep bench` and `optimize --bench`: runtimes, the alternating timing loop (with a fake clock),
ratios, skips and failures, the JSON schema. Runs are tiny; nothing asserts on real timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import models
from onnxrep import bench
from onnxrep.cli import main
from onnxrep.io import OnnxrepError
from tests.graphs import conv_bn

FAST = ["--warmup", "0", "--runs", "2", "--min-time", "0"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Conv+BN graphs: two with a symbolic batch (same input signature), one static, one ORT can't load."""
    folder = tmp_path_factory.mktemp("tiny")
    paths = {}
    for name, model in (("a", conv_bn(batch="N", seed=0)), ("b", conv_bn(batch="N", seed=1)),
                        ("static", conv_bn(batch=1, seed=2))):
        paths[name] = folder / f"{name}.onnx"
        onnx.save(model, paths[name])
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    paths["bad"] = folder / "bad.onnx"
    onnx.save(bad, paths["bad"])
    return paths


@pytest.fixture(scope="module")
def gelan(tmp_path_factory) -> tuple[Path, Path]:
    """gelan-t at 64 px with a symbolic batch: training form (BN kept) and deployment form."""
    folder = tmp_path_factory.mktemp("gelan")
    bn = models.save(models.build("gelan-t", form="bn", imgsz=64, batch="N"), folder / "gelan-t.onnx")
    fused = models.save(models.build("gelan-t", form="fused", imgsz=64, batch="N"), folder / "gelan-t.fused.onnx")
    return Path(bn), Path(fused)


def only_cpu_and_missing_openvino(ov_device="CPU"):
    return [bench.Runtime("ort-cpu", "onnxruntime CPU", True, version="x"),
            bench.Runtime("ort-cuda", "onnxruntime CUDA", False, "no CUDA here", cpu=False),
            bench.Runtime("openvino", f"OpenVINO {ov_device}", False, "openvino is not installed")]


# ------------------------------------------------------------------------- timing loop, fake clock


class Clock:
    """A clock that moves only when a runner says how long it took."""

    def __init__(self):
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def runners_for(clock, log, durations):
    def make(name, seconds):
        def run():
            log.append(name)
            clock.now += seconds
        return run
    return [make(n, s) for n, s in durations.items()]


def test_alternates_run_by_run_and_warmup_is_untimed():
    clock, log = Clock(), []
    times, errors = bench.time_alternating(runners_for(clock, log, {"A": 0.25, "B": 0.5}), warmup=2, min_runs=3,
                                           min_time=0, timer=clock)
    assert log == ["A", "B"] * 5
    assert times == [[0.25] * 3, [0.5] * 3] and not errors
    assert clock.reads == 2 * 2 * 3   # start and stop of each timed run, none in warm-up


@pytest.mark.parametrize("min_runs, min_time, rounds", [(3, 0.5, 8), (12, 0.5, 12), (1, 0.0, 1)])
def test_stops_when_both_minimum_count_and_minimum_time_are_reached(min_runs, min_time, rounds):
    clock, log = Clock(), []
    times, _ = bench.time_alternating(runners_for(clock, log, {"A": 1 / 16, "B": 1 / 4}), warmup=0,
                                      min_runs=min_runs, min_time=min_time, timer=clock)
    assert [len(t) for t in times] == [rounds, rounds]   # A needs 8 runs of 1/16 s for 0.5 s


def test_max_runs_caps_the_rounds():
    clock, log = Clock(), []
    times, _ = bench.time_alternating(runners_for(clock, log, {"A": 0.0}), warmup=0, min_runs=1, min_time=1.0,
                                      timer=clock, max_runs=7)
    assert len(times[0]) == 7


def test_a_runner_that_fails_leaves_the_rotation_and_the_others_go_on():
    clock, log = Clock(), []
    calls = {"B": 0}
    a, b = runners_for(clock, log, {"A": 0.25, "B": 0.25})

    def flaky():
        calls["B"] += 1
        if calls["B"] == 4:
            raise RuntimeError("device lost")
        b()

    times, errors = bench.time_alternating([a, flaky], warmup=1, min_runs=5, min_time=0, timer=clock)
    assert errors == {1: "device lost"}
    assert len(times[0]) == 5 and len(times[1]) == 2


def test_per_pair_ratio_cancels_drift_that_hits_both_models():
    # B is 0.6x A; the machine slows down 50% more each round and one round is 5x slower for both.
    drift = [1 + 0.5 * r for r in range(9)]
    drift[3] *= 5
    a = [0.010 * d for d in drift]
    b = [0.006 * d for d in drift]
    ratios = bench.pair_ratios(a, b)
    assert float(np.median(ratios)) == pytest.approx(0.6, rel=1e-12)
    # timed one after the other, the same drift would make B look 1.5x *slower* than A
    sequential_a = [0.010 * (1 + 0.5 * r) for r in range(9)]
    sequential_b = [0.006 * (1 + 0.5 * r) for r in range(9, 18)]
    assert np.median(sequential_b) / np.median(sequential_a) == pytest.approx(1.5)


class ScriptedTimer:
    """For run_bench with real sessions: run k (models alternating) takes durations[k % n] * drift(round)."""

    def __init__(self, durations):
        self.durations, self.calls, self.now = durations, 0, 0.0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:   # the stop of a run
            k = self.calls // 2 - 1
            n = len(self.durations)
            self.now += self.durations[k % n] * (1 + (k // n) ** 1.5)
        return self.now


def test_run_bench_reports_the_median_pair_ratio_from_an_injected_timer(tiny):
    timer = ScriptedTimer([0.010, 0.004])
    report = bench.run_bench([tiny["a"], tiny["b"]], runtimes=["ort-cpu"], warmup=1, min_runs=6, min_time=0,
                             timer=timer)
    a, b = report.results
    assert (a.model, b.model, a.status, b.status) == ("a.onnx", "b.onnx", "ok", "ok")
    assert a.runs == b.runs == b.pairs == 6
    assert a.ratio == pytest.approx(1.0) and b.ratio == pytest.approx(0.4)
    assert a.median_ms > 10 and a.min_ms == pytest.approx(10.0)   # drift shows in the latencies...
    assert b.images_per_s == pytest.approx(1 / (b.median_ms / 1e3))  # ...and throughput is batch / median


def test_labels_are_unique():
    assert bench._labels(["x/a.onnx", "y/b.onnx"], None) == ["a.onnx", "b.onnx"]
    assert bench._labels(["x/a.onnx", "y/a.onnx"], None) == ["x/a.onnx", "y/a.onnx"]
    assert bench._labels(["a.onnx", "a.onnx"], None) == ["a.onnx", "a.onnx #2"]   # an A/A run
    assert bench._labels([onnx.ModelProto(), "a.onnx"], ["before", "before"]) == ["before", "before #2"]


def test_summarize():
    s = bench.summarize([0.001 * i for i in range(1, 11)], batch=8)
    assert s["runs"] == 10 and s["median_ms"] == pytest.approx(5.5) and s["min_ms"] == pytest.approx(1.0)
    assert s["p90_ms"] == pytest.approx(9.1) and s["images_per_s"] == pytest.approx(8 / 0.0055)
    assert bench.summarize([], 1)["median_ms"] is None


# ------------------------------------------------------------------------------ options, runtimes


def test_parse_runtimes_and_batches():
    assert bench.parse_runtimes(["cpu,ov", "trt", "cpu"]) == ["ort-cpu", "openvino", "ort-tensorrt"]
    assert bench.parse_runtimes(None) == []
    assert bench.parse_batches("1,8,32") == [1, 8, 32] and bench.parse_batches(None) is None
    for bad in ("0", "x", "1,-2"):
        with pytest.raises(OnnxrepError, match="--batch"):
            bench.parse_batches(bad)
    with pytest.raises(OnnxrepError, match="--runtime 'tpu': unknown runtime"):
        bench.parse_runtimes(["tpu"])


def test_discover_always_has_onnxruntime_cpu():
    found = {r.name: r for r in bench.discover()}
    assert set(found) == set(bench.RUNTIME_NAMES)
    assert found["ort-cpu"].available
    assert all(r.available or r.reason for r in found.values())


@pytest.mark.parametrize("name", bench.RUNTIME_NAMES)
def test_bench_command_works_in_each_available_runtime(name, gelan, tmp_path):
    runtime = {r.name: r for r in bench.discover()}[name]
    if not runtime.available:
        pytest.skip(f"{name}: {runtime.reason}")
    bn, fused = gelan
    extra = ["--batch", "1,2"] if name == "ort-cpu" else []
    result = run("bench", bn, fused, "--runtime", name, "--threads", 1, *FAST, *extra, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    assert runtime.label in result.output and "baseline" in result.output
    data = json.loads((tmp_path / "b.json").read_text())
    cells = data["results"]
    assert {c["status"] for c in cells} == {"ok"} and {c["runtime"] for c in cells} == {name}
    assert [c["batch"] for c in cells] == ([1, 1, 2, 2] if extra else [1, 1])
    before, after = data["models"]
    assert after["parameters"] < before["parameters"] and after["macs"] < before["macs"]
    assert before["inputs"]["images"] == ["N", 3, 64, 64]


def test_unavailable_runtimes_are_skipped_with_a_message(tiny, monkeypatch):
    monkeypatch.setattr(bench, "discover", only_cpu_and_missing_openvino)
    result = run("bench", tiny["a"], "--runtime", "ort-cpu,openvino", *FAST)
    assert result.exit_code == 0, result.output
    assert "skipped OpenVINO CPU: openvino is not installed" in result.output
    default = run("bench", tiny["a"], *FAST)   # the default lists what it could not run, too
    assert default.exit_code == 0 and "skipped onnxruntime CUDA: no CUDA here" in default.output
    nothing = CliRunner().invoke(main, ["bench", str(tiny["a"]), "--runtime", "openvino"])
    assert nothing.exit_code == 2
    assert nothing.output.strip() == "onnxrep: error: no runtime to bench: openvino: openvino is not installed"


def test_a_model_the_runtime_cannot_load_is_reported_not_a_crash(tiny, tmp_path):
    result = run("bench", tiny["bad"], tiny["a"], "--runtime", "ort-cpu", *FAST, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    assert "failed: cannot load" in result.output
    bad, good = json.loads((tmp_path / "b.json").read_text())["results"]
    assert bad["status"] == "failed" and bad["runs"] == 0 and bad["median_ms"] is None
    assert good["status"] == "ok" and good["runs"] == 2 and good["ratio"] is None  # no baseline, no ratio


def test_batches_override_a_symbolic_batch_skip_static_ones_and_inputs_are_shared(tiny, monkeypatch):
    seen = []
    real = bench.open_session

    def spy(runtime, path, feed, **kw):
        seen.append((Path(path).name, feed))
        return real(runtime, path, feed, **kw)

    monkeypatch.setattr(bench, "open_session", spy)
    report = bench.run_bench([tiny["a"], tiny["b"], tiny["static"]], runtimes=["ort-cpu"], batches=[1, 3],
                             warmup=0, min_runs=1, min_time=0)
    cells = {(c.model, c.batch): c for c in report.results}
    assert cells["static.onnx", 3].status == "skipped"
    assert cells["static.onnx", 3].message == "static batch 1: not run at batch 3"
    assert cells["b.onnx", 3].status == "ok" and cells["b.onnx", 3].images_per_s == pytest.approx(
        3e3 / cells["b.onnx", 3].median_ms)
    feeds = {(name, feed["x"].shape[0]): feed for name, feed in seen if name != "prime.onnx"}
    assert feeds["a.onnx", 3]["x"].shape == (3, 4, 8, 8)
    assert feeds["a.onnx", 3] is feeds["b.onnx", 3]           # the very same arrays for every model
    assert feeds["a.onnx", 1] is feeds["static.onnx", 1]


def test_input_shape_and_in_memory_models(tiny):
    proto = onnx.load(tiny["a"])
    report = bench.run_bench([proto, tiny["b"]], labels=["mem", "file"], runtimes=["ort-cpu"],
                             shapes={"x": [2, 4, 8, 8]}, warmup=0, min_runs=1, min_time=0)
    mem, file = report.models
    assert mem.source == "<in memory>" and mem.file_bytes > 0 and file.source == str(tiny["b"])
    assert mem.macs == 8 * 4 * 9 * 8 * 8     # per image: the bench shape, batch 1
    assert [c.batch for c in report.results] == [2, 2]
    bad = CliRunner().invoke(main, ["bench", str(tiny["a"]), "--input-shape", "nope=1x2", *FAST])
    assert bad.exit_code == 2 and "unknown input(s) ['nope']" in bad.output


def test_memory_is_measured_on_linux_and_none_elsewhere(monkeypatch):
    value, grown = bench.measure_memory(lambda: bytearray(32 << 20))
    if Path("/proc/self/status").exists():
        assert grown >= 16 << 20
    del value
    monkeypatch.setattr(bench.timing, "_proc_status", lambda: None)
    assert bench.measure_memory(lambda: 7) == (7, None)


# ------------------------------------------------------------------------------ output


EXPECTED_KEYS = {
    "top": {"schema", "settings", "environment", "runtimes", "models", "results"},
    "settings": {"warmup", "min_runs", "min_time_s", "threads", "batches", "seed", "ov_device", "input_shapes",
                 "baseline"},
    "environment": {"python", "platform", "cpu", "cpu_count", "onnxruntime", "openvino"},
    "runtimes": {"name", "label", "version", "ran", "reason"},
    "models": {"label", "source", "file_bytes", "parameters", "macs", "inputs"},
    "results": {"runtime", "batch", "model", "status", "message", "load_s", "memory_bytes", "runs", "median_ms",
                "p90_ms", "min_ms", "mean_ms", "images_per_s", "ratio", "pairs"},
}


def test_json_schema_is_stable(tiny, tmp_path):
    result = run("bench", tiny["a"], tiny["b"], "--runtime", "cpu", *FAST, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["schema"] == "onnxrep.bench/1"
    assert set(data) == EXPECTED_KEYS["top"]
    for key in ("settings", "environment"):
        assert set(data[key]) == EXPECTED_KEYS[key]
    for key in ("runtimes", "models", "results"):
        assert data[key] and all(set(item) == EXPECTED_KEYS[key] for item in data[key])
    assert data["settings"]["baseline"] == "a.onnx"
    piped = run("bench", tiny["a"], "--runtime", "cpu", *FAST, "--json", "-")
    assert json.loads(piped.output)["schema"] == "onnxrep.bench/1"   # JSON alone on stdout


def test_text_table():
    cell = {"runtime": "ort-cpu", "batch": 1, "status": "ok", "runs": 5, "median_ms": 10.0, "p90_ms": 12.0,
            "min_ms": 9.0, "mean_ms": 10.5, "images_per_s": 100.0, "load_s": 0.1, "memory_bytes": 2_500_000,
            "pairs": 5}
    report = bench.BenchReport(
        settings={"warmup": 3, "min_runs": 10, "min_time_s": 2.0, "threads": None, "baseline": "base"},
        environment={}, runtimes=[{"name": "ort-cpu", "label": "onnxruntime CPU", "version": "1.0", "ran": True,
                                   "reason": ""},
                                  {"name": "openvino", "label": "OpenVINO CPU", "version": "", "ran": False,
                                   "reason": "openvino is not installed"}],
        models=[bench.ModelInfo("base", "base.onnx", 2_000_000, 1_500_000, 3_000_000_000)],
        results=[bench.Cell(model="base", ratio=1.0, **cell), bench.Cell(model="fast", ratio=0.5, **cell),
                 bench.Cell(model="slow", ratio=2.0, **cell),
                 bench.Cell("ort-cpu", 1, "broken", "failed", "cannot load: nope")])
    text = report.text()
    assert "base       2.0 MB       1.50 M     3.00 G  base.onnx" in text
    assert "onnxruntime CPU 1.0, threads default" in text
    assert "baseline" in text and "0.500 (2.00x faster)" in text and "2.000 (2.00x slower)" in text
    assert "2.5 MB" in text and "broken  failed: cannot load: nope" in text
    assert "skipped OpenVINO CPU: openvino is not installed" in text


def test_plot_needs_matplotlib_and_says_so(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "plot_available", lambda: False)
    result = CliRunner().invoke(main, ["bench", str(tiny["a"]), *FAST, "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2
    assert result.output.strip() == "onnxrep: error: --plot needs matplotlib: pip install 'onnxrep[plot]'"


def test_plot_writes_a_png(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    result = run("bench", tiny["a"], tiny["b"], "--runtime", "ort-cpu", *FAST, "--plot", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ optimize --bench


def test_optimize_bench_times_before_and_after(tmp_path, monkeypatch):
    real = bench.run_bench
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: real(*a, **{**k, "warmup": 0, "min_runs": 2,
                                                                         "min_time": 0}))
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn(cin=4, cout=8, size=8), src)
    result = run("optimize", src, "-o", tmp_path / "m.opt.onnx", "--bench", "--runtime", "ort-cpu", "--threads", 1,
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "onnxruntime CPU" in result.output and "baseline" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert "bench" not in data["passes"] and data["bench"]["schema"] == "onnxrep.bench/1"
    before, after = data["bench"]["models"]
    assert (before["label"], after["label"]) == ("before", "after")
    assert after["source"] == str(tmp_path / "m.opt.onnx")
    assert data["bench"]["settings"]["threads"] == 1
    assert [c["model"] for c in data["bench"]["results"]] == ["before", "after"]
