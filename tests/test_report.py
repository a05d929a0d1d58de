"""Report figures against independent arithmetic (and the YOLOv9 paper's published FLOPs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnxrep
from onnxrep.report import count_macs, model_stats
from tests.graphs import conv_bn


@pytest.mark.parametrize("transpose", [False, True])
def test_parameters_and_macs_of_one_conv(transpose):
    model = conv_bn(cin=4, cout=8, k=3, group=2, size=8, bias=True, transpose=transpose, stride=1)
    stats = model_stats(model)
    weight = 8 * (4 // 2) * 9 if not transpose else 4 * (8 // 2) * 9
    assert stats.parameters == weight + 8 + 2 * 8  # W + bias + BN gamma and beta (not running stats)
    assert stats.conv == 1 and stats.batchnorm == 1 and stats.nodes == 2
    if transpose:
        assert stats.macs == (1 * 4 * 8 * 8) * (8 // 2) * 9  # every input pixel meets M/g kernels
    else:
        assert stats.macs == (1 * 8 * 8 * 8) * (4 // 2) * 9


def test_gelan_c_macs_match_the_published_flops():
    models = pytest.importorskip("models")
    macs = count_macs(models.build("gelan-c", form="fused", imgsz=640))
    # YOLOv9 README: gelan-c / yolov9-c (converted) 102.1 GFLOPs at 640 = 51.05 GMACs
    assert abs(2 * macs / 1e9 - 102.1) < 0.5


def test_report_text_and_json():
    result = onnxrep.optimize(conv_bn(), verify=True)
    text = result.report.text()
    for label in ("nodes", "Conv nodes", "BatchNormalization", "parameters", "MACs", "pass fold_batchnorm", "verify y: ok"):
        assert label in text
    data = json.loads(json.dumps(result.report.to_dict()))
    assert data["before"]["batchnorm"] == 1 and data["after"]["batchnorm"] == 0
    assert np.isfinite(data["verification"]["outputs"][0]["max_abs"])


def test_linear_counts_the_same_as_gemm_or_matmul_plus_add():
    from onnx import helper

    from tests.graphs import init, make_model, vi

    w, b = np.ones((5, 3), np.float32), np.ones(3, np.float32)
    gemm = make_model([helper.make_node("Gemm", ["x", "W", "b"], ["y"])], [vi("x", shape=[2, 5])], [vi("y")],
                      [init("W", w), init("b", b)])
    matmul = make_model([helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                        [vi("x", shape=[2, 5])], [vi("y")], [init("W", w), init("b", b)])
    assert model_stats(gemm).parameters == model_stats(matmul).parameters == 5 * 3 + 3


def _torchscript_like(batch="N"):
    """What a TorchScript export with a dynamic batch writes (yolov9-t): chunk() as Slice with its end
    computed by Shape -> Gather -> Add -> Div -> Mul (ONNX data propagation does not follow Div), Resize
    scales and every small constant as Constant nodes. The shapes after them are static all the same."""
    from onnx import helper

    from tests.graphs import init, make_model, vi

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value), name))

    import onnx

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),      # [N, 8, 8, 8]
        helper.make_node("Shape", ["a"], ["s"]),
        const("one", np.array([1], np.int64)), const("two", np.array([2], np.int64)),
        const("zero", np.array([0], np.int64)),
        helper.make_node("Gather", ["s", "one"], ["c"], axis=0),
        helper.make_node("Add", ["c", "one"], ["c1"]),
        helper.make_node("Div", ["c1", "two"], ["half"]),
        helper.make_node("Mul", ["half", "one"], ["end"]),
        helper.make_node("Slice", ["a", "zero", "end", "one"], ["lo"]),                            # [N, 4, 8, 8]
        const("scales", np.array([1, 1, 2, 2], np.float32)),
        helper.make_node("Resize", ["lo", "", "scales"], ["up"], mode="nearest"),                  # [N, 4, 16, 16]
        helper.make_node("Conv", ["up", "w2"], ["y"], kernel_shape=[1, 1]),                       # [N, 6, 16, 16]
    ]
    inits = [init("w1", rng.normal(size=(8, 3, 3, 3)).astype(np.float32)),
             init("w2", rng.normal(size=(6, 4, 1, 1)).astype(np.float32))]
    return make_model(nodes, [vi("x", shape=[batch, 3, 8, 8])], [vi("y")], inits)


@pytest.mark.parametrize("batch", ["N", 1])
def test_macs_through_constant_nodes_and_shape_arithmetic(batch):
    """Regression: TorchScript exports reported 2-4% of their MACs (shapes after a Constant-node Resize or a
    Div-computed chunk were unknown, so those Convs counted as 1 pixel)."""
    model = _torchscript_like(batch)
    first = 8 * 8 * 8 * (3 * 9)        # [1, 8, 8, 8] outputs, 27 MACs each
    second = 6 * 16 * 16 * 4           # [1, 6, 16, 16] outputs, 4 MACs each
    assert count_macs(model) == first + second
    assert model_stats(model).macs == first + second
