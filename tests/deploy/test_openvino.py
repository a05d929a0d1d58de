"""The optimized model is portable: OpenVINO (CPU, float32) reads it unchanged and agrees with onnxruntime.

openvino is a test extra: without it these tests skip. The raw dynamo export is here because its Resize scales
come as Constant(value_floats): read as float64 (as onnxslim once did), the model stops loading anywhere.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxrep

ov = pytest.importorskip("openvino")
models = pytest.importorskip("models")

IMGSZ = 64
EPS32 = float(np.finfo(np.float32).eps)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _openvino(path, x: np.ndarray) -> list[np.ndarray]:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled([x])
    return [np.asarray(result[o]) for o in compiled.outputs]


def _assert_float32_close(ref: np.ndarray, got: np.ndarray, name: str) -> None:
    # two float32 engines summing in different orders: a few dozen ulps of the output's scale
    scale = float(np.abs(ref).max()) or 1.0
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=32 * EPS32 * scale, err_msg=name)


@pytest.mark.parametrize("kw", [{"form": "bn"}, {"exporter": "official"}, {"exporter": "dynamo-raw"},
                                {"exporter": "mit"}], ids=["bn", "official", "dynamo-raw", "mit"])
def test_optimized_yolov9t_runs_in_openvino_like_in_onnxruntime(kw, tmp_path):
    model = models.build("yolov9-t", imgsz=IMGSZ, **kw)
    result = onnxrep.optimize(model)
    assert result.ok, result.verification.lines()
    path = tmp_path / "optimized.onnx"
    onnx.save(result.model, str(path))
    batch = 2 if kw.get("exporter") == "mit" else 1   # mit has a dynamic batch: use it
    x = np.random.default_rng(0).random((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)
    ref = _ort(result.model, x)
    got = _openvino(path, x)
    assert len(got) == len(ref)
    for out, r, g in zip(result.model.graph.output, ref, got):
        assert r.shape == g.shape, out.name
        _assert_float32_close(r, g, out.name)
