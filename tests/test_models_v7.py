"""The builder's YOLOv7 presets (models/yolov7.py, layer tables models/arch7.py) and what onnxrep makes of them.

Every training form (bn: BatchNormalization; folded: TorchScript/dynamo; fused: the official fuse(), aux
head kept) optimizes to the deploy model (`converted`, cfg/deploy) exactly: Conv count and parameters,
no implicit Add/Mul left at the head Convs, IAuxDetect's aux outputs dropped, and the same numbers as
the deploy model (which the builder computes in float64, independently of onnxrep). The counts are the
ones the official code gives for the same tables (tests/real, `make test-real`).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import models
import onnxrep
from tests.real.test_real_exports import _affine_next_to_conv

# (Conv nodes, Conv parameters): training form (bn) and deploy form, as the official code exports them
COUNTS = {"yolov7-tiny": ((58, 6_212_317), (58, 6_219_709)),
          "yolov7": ((95, 37_570_397), (92, 36_905_341)),
          "yolov7-w6": ((115, 82_238_584), (107, 70_394_300))}


def _run(model, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"images": x})


def _check(name, form, imgsz=128):
    deploy = models.build(name, "converted", imgsz=imgsz)
    assert models.count_convs(deploy) == COUNTS[name][1]
    source = models.build(name, form, imgsz=imgsz)
    if form == "bn":
        assert models.count_convs(source) == COUNTS[name][0]
    r = onnxrep.optimize(source)
    assert r.ok, r.report.text()
    assert models.count_convs(r.model) == COUNTS[name][1]
    assert len(r.model.graph.output) == len(deploy.graph.output)
    assert not _affine_next_to_conv(r.model)
    x = np.random.default_rng(1).random((1, 3, imgsz, imgsz), dtype=np.float32)
    for got, want in zip(_run(r.model, x), _run(deploy, x)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("form", ["bn", "folded", "fused"])
def test_yolov7_tiny_every_form_becomes_the_deploy_model(form):
    _check("yolov7-tiny", form)


@pytest.mark.parametrize("name", ["yolov7", "yolov7-w6"])
def test_yolov7_and_w6_training_form_becomes_the_deploy_model(name):
    _check(name, "bn")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov7", "yolov7-w6"])
@pytest.mark.parametrize("form", ["folded", "fused"])
def test_yolov7_and_w6_other_forms(name, form):
    _check(name, form, imgsz=256)


def test_forms_compute_the_same_and_implicit_is_far_from_identity():
    x = np.random.default_rng(2).random((1, 3, 128, 128), dtype=np.float32)
    outs = {f: _run(models.build("yolov7-tiny", f, imgsz=128), x) for f in ("bn", "folded", "fused", "converted")}
    for f in ("folded", "fused", "converted"):
        for a, b in zip(outs["bn"], outs[f]):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
    m = models.build("yolov7-tiny", "bn", imgsz=128)
    implicit = [t for t in m.graph.initializer if t.name.endswith("implicit")]
    assert len(implicit) == 6   # ImplicitA and ImplicitM per level
    from onnx import numpy_helper

    values = np.concatenate([numpy_helper.to_array(t).ravel() for t in implicit])
    assert np.abs(values).max() > 0.5 and np.abs(values - 1).max() > 0.3


def test_w6_aux_outputs_and_bad_options():
    m = models.build("yolov7-w6", "folded", imgsz=128)
    assert len(m.graph.output) == 8          # 4 lead then 4 aux levels
    with pytest.raises(ValueError, match="multiple of 64"):
        models.build("yolov7-w6", "bn", imgsz=96)
    with pytest.raises(ValueError, match="exporter options are YOLOv9's"):
        models.build("yolov7", "bn", exporter="torchscript")


def test_grid_output_is_the_yolov7_decode_of_the_raw_levels():
    """grid=True: output 0 is IDetect's eval-mode decode of the raw levels (checked in numpy here)."""
    from models.arch7 import v7_cfg

    m = models.build("yolov7-tiny", "converted", imgsz=128, grid=True)
    x = np.random.default_rng(3).random((1, 3, 128, 128), dtype=np.float32)
    decoded, *levels = _run(m, x)
    anchors = v7_cfg("yolov7-tiny")["anchors"]
    parts = []
    for i, raw in enumerate(levels):
        _, na, ny, nx, no = raw.shape
        s = 128 // ny
        y = 1 / (1 + np.exp(-raw.astype(np.float64)))
        yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        grid = np.stack((xv, yv), 2).reshape(1, 1, ny, nx, 2)
        y[..., 0:2] = (y[..., 0:2] * 2 - 0.5 + grid) * s
        y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * np.asarray(anchors[i], np.float64).reshape(1, na, 1, 1, 2)
        parts.append(y.reshape(1, -1, no))
    np.testing.assert_allclose(decoded, np.concatenate(parts, 1), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="grid is a YOLOv7 option"):
        models.build("yolov9-t", "bn", grid=True)
