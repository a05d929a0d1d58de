"""An NMS or layout adapter's final model is what the verification runs (verify(run_as=...)): its head tensor
is proven against the original directly, and the adapter's check reuses that run instead of running the whole
model again. What is written is what is proven, with one model run fewer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import numpy_helper

import models
import onnxrep
import onnxrep.verify as verify_module
from onnxrep.deploy import DeployOptions, apply, check
from onnxrep.deploy.checks import whole_run_outputs
from onnxrep.verify import verify


@pytest.fixture(scope="module")
def pair():
    original = models.build("yolov9-t", "bn", imgsz=160, batch="batch")
    result = onnxrep.optimize(original, verify=False)
    return original, result.model, result.report.outputs.get("dropped", [])


def _run_as(d, optimized):
    source = optimized.graph.output[d.head.index].name
    return d.model, whole_run_outputs(d.model, d), ({source: d.head.output} if source != d.head.output else {})


@pytest.mark.parametrize("options", [dict(nms="ort", conf=0.004), dict(nms="trt"),
                                     dict(output_layout="anchors-first"), dict(output_layout="split")])
def test_the_final_model_is_verified_and_its_run_is_reused(pair, options, monkeypatch):
    original, optimized, dropped = pair
    d = apply(optimized, DeployOptions(**options))
    v = verify(original, optimized, dropped=dropped, run_as=_run_as(d, optimized))
    assert v.ok and v.firsts == {1: "both"}, v.lines()
    assert set(v.ran_as) == {0} and all(n in v.ran_as[0] for n in whole_run_outputs(d.model, d))
    calls = []
    real = verify_module.run_outputs
    monkeypatch.setattr(verify_module, "run_outputs", lambda m, f, n: calls.append(len(m.graph.node)) or real(m, f, n))
    [c] = check(d, _feeds(original), values=v.values, final=v.ran_as)
    assert c["ok"] and "its head is the final model's own tensor, verified against the original" in c["line"], c["line"]
    assert not any(n == len(d.model.graph.node) for n in calls)   # the whole final model did not run again


def _feeds(original):
    from onnxrep.verify.inputs import make_inputs

    return make_inputs(original, 2, 0)


def test_a_final_model_broken_before_its_head_fails_the_verification(pair):
    """Run as the final model, the proof sees what the adapter's graph computes up to the head: a weight
    changed there (as a faulty adapter could) fails the output itself."""
    original, optimized, dropped = pair
    d = apply(optimized, DeployOptions(nms="ort"))
    broken = copy.deepcopy(d.model)
    w = next(t for t in broken.graph.initializer if len(t.dims) == 4 and t.dims[0] > 16)
    a = numpy_helper.to_array(w).copy()
    a[0] *= 1.01
    w.CopyFrom(numpy_helper.from_array(a, w.name))
    d.model = broken
    v = verify(original, optimized, dropped=dropped, run_as=_run_as(d, optimized))
    assert not v.ok and any("FAIL" in line for line in v.lines()), v.lines()


def test_without_the_layout_alias_the_transposed_output_is_caught(pair):
    """The layout adapter gives the transposed output the head's name: the alias to the head's own tensor
    is what makes the comparison right (without it the proof fails, it does not pass)."""
    original, optimized, dropped = pair
    d = apply(optimized, DeployOptions(output_layout="anchors-first"))
    model, outputs, aliases = _run_as(d, optimized)
    assert aliases
    assert not verify(original, optimized, dropped=dropped, run_as=(model, outputs, {})).ok


def test_optimize_with_nms_runs_the_final_model_once(tmp_path):
    """End to end: `optimize --nms ort` on a symbolic-batch model runs the original, its twin and the final
    model, each once (at batch 2), and the NMS's own nodes on the batch-1 sample."""
    import onnxrep.verify.runtime as runtime

    original = models.build("yolov9-t", "bn", imgsz=160, batch="batch")
    path = tmp_path / "m.onnx"
    models.save(original, path)
    sizes = []
    real = runtime.session

    def counting(model, outputs=None, transform=None, whole=False):
        sess = real(model, outputs, transform, whole)
        sizes.append(len(getattr(model, "graph", None).node) if hasattr(model, "graph") else -1)
        return sess

    import unittest.mock as mock

    with mock.patch.object(runtime, "session", counting), mock.patch.object(verify_module, "session", counting):
        result = onnxrep.optimize(str(path), nms="ort", conf=0.004)
    text = result.report.text()
    assert result.ok and "verify deploy NMS ort (conf 0.004, iou 0.45, max_det 100): ok" in text, text
    # the original, its twin, the final model; then the NMS alone (the adapter's tail) on the batch-1 sample
    assert len(sizes) == 4 and min(sizes[:3]) > 500 and sizes[3] < 100, sizes
