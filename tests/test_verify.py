"""The verifier itself: tolerance semantics, NaN/Inf handling, and that it catches a corrupted weight."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxrep
from onnxrep.cli import main
from onnxrep.verify import compare, make_inputs, parse_shapes


def test_elementwise_tolerance():
    ref = np.array([1.0, 100.0], np.float32)
    assert compare("y", ref, ref + np.float32(5e-5), None, None, 0.0).ok
    assert not compare("y", ref, ref + np.array([1e-3, 0], np.float32), None, None, 0.0).ok


def test_scale_term_forgives_rounding_of_large_outputs_only():
    # a small coordinate computed from ~600 px terms: 2e-3 px is float32 rounding (3e-6 of the range)
    ref = np.array([-1.7, 640.0], np.float32)
    assert compare("box", ref, ref + np.array([2e-3, 0], np.float32), None, None).ok
    assert not compare("box", ref, ref + np.array([5e-2, 0], np.float32), None, None).ok
    # no large term in the output: the same 2e-3 fails
    small = np.array([-1.7, 1.0], np.float32)
    assert not compare("y", small, small + np.array([2e-3, 0], np.float32), None, None).ok


def test_nan_and_inf_positions_must_match():
    ref = np.array([np.nan, np.inf, 1.0])
    assert compare("y", ref, ref.copy(), None, None).ok
    assert not compare("y", ref, np.array([0.0, np.inf, 1.0]), None, None).ok
    assert not compare("y", ref, np.array([np.nan, -np.inf, 1.0]), None, None).ok


def test_shape_mismatch_fails():
    assert not compare("y", np.zeros((2, 3)), np.zeros((3, 2)), None, None).ok


def test_symbolic_dims_and_overrides():
    from tests.graphs import conv_bn

    model = conv_bn(batch="N")
    (feed,) = make_inputs(model)
    assert feed["x"].shape == (1, 4, 8, 8) and feed["x"].dtype == np.float32
    assert 0 <= feed["x"].min() and feed["x"].max() < 1
    (feed,) = make_inputs(model, shapes=parse_shapes(["x=3x4x8x8"]))
    assert feed["x"].shape == (3, 4, 8, 8)


def _corrupt_one_folded_weight(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    conv = next(n for n in bad.graph.node if n.op_type == "Conv" and n.input[1].endswith("weight_bnfold"))
    w = next(t for t in bad.graph.initializer if t.name == conv.input[1])
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[0] *= factor  # one output channel's kernel
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    return bad


@pytest.mark.parametrize("factor", [1.01, 0.9])
def test_mutation_of_a_folded_weight_is_caught(tmp_path, model_file, factor):
    """Corrupt one folded weight of an optimized yolov9-t: `onnxrep verify` must exit 1 at default tolerances."""
    original = model_file("yolov9-t", "bn", imgsz=160)
    result = onnxrep.optimize(str(original))
    assert result.ok and result.verification.ran
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(result.model, good)
    onnx.save(_corrupt_one_folded_weight(result.model, factor), bad)
    runner = CliRunner()
    assert runner.invoke(main, ["verify", str(original), str(good)]).exit_code == 0
    caught = runner.invoke(main, ["verify", str(original), str(bad)])
    assert caught.exit_code == 1 and "FAIL" in caught.output
