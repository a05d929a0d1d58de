"""--precision fp16 never writes an invalid model (issue 25, classes 2 and 3): every tensor of one type
variable gets one type (passes/float16_types.py), and subgraphs that read an outer-scope tensor that became
float16 read its float32 Cast. Each test: full onnx.checker, onnxruntime (optimizations off) loads and runs
it, and the outputs are near the float32 original's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import onnxrep


def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _vi(name, shape, elem=TP.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits, opset=17):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _run(model, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _converted_matches(model, feeds, **kw):
    """The float16 model: valid, runs, near the float32 one; returned for structural checks."""
    half = onnxrep.optimize(model, precision="fp16", verify=False, **kw).model
    onnx.checker.check_model(half, full_check=True)
    ref, got = _run(model, feeds), _run(half, feeds)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b.astype(np.float32), a, rtol=2e-2, atol=2e-2)
    return half


def _conv(rng):
    return (helper.make_node("Conv", ["x", "W"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            _f("W", rng.standard_normal((4, 3, 3, 3)) * 0.3))


# ---------------------------------------------------------------- class 2: one type per type variable

@pytest.mark.parametrize("op", ["Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual"])
@pytest.mark.parametrize("threshold", [0.5, 0.3])   # 0.5: float16 holds it exactly; 0.3: it doesn't
def test_comparison_of_a_float16_activation_with_a_float32_constant(op, threshold):
    rng = np.random.default_rng(1)
    conv, w = _conv(rng)
    nodes = [conv, helper.make_node(op, ["h", "thr"], ["g"]), helper.make_node("Where", ["g", "h", "zero"], ["y"])]
    model = _model(nodes, [_vi("x", [1, 3, 16, 16])], [_vi("y", [1, 4, 16, 16])], [w, _f("thr", threshold),
                                                                                      _f("zero", 0.0)])
    half = _converted_matches(model, {"x": rng.random((1, 3, 16, 16), dtype=np.float32)})
    cmp = next(n for n in half.graph.node if n.op_type == op)
    consts = {t.name: t.data_type for t in half.graph.initializer}
    if threshold == 0.5:   # read in float16: the constant is converted, no Cast is added for the comparison
        assert consts[cmp.input[1]] == TP.FLOAT16
    else:                  # 0.3 would round: the comparison reads the activation cast back to float32
        assert consts[cmp.input[1]] == TP.FLOAT


def test_comparison_of_a_float16_activation_with_a_float32_graph_input():
    rng = np.random.default_rng(2)
    conv, w = _conv(rng)
    nodes = [conv, helper.make_node("Less", ["h", "t"], ["g"]), helper.make_node("Where", ["g", "h", "t"], ["y"])]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8]), _vi("t", [1, 4, 8, 8])], [_vi("y", [1, 4, 8, 8])], [w])
    feeds = {"x": rng.random((1, 3, 8, 8), dtype=np.float32), "t": rng.random((1, 4, 8, 8), dtype=np.float32)}
    _converted_matches(model, feeds)


@pytest.mark.parametrize("keep", [(), ("Pow",)])
def test_pow_with_exponent_of_its_own_type_variable(keep):
    """Pow(X: T, Y: T1): kept float32 (or not) while its exponent is a float16 activation."""
    rng = np.random.default_rng(3)
    conv, w = _conv(rng)
    nodes = [conv, helper.make_node("Relu", ["h"], ["e"]),
             helper.make_node("Pow", ["base", "e"], ["y"])]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])],
                   [w, _f("base", rng.uniform(0.5, 1.5, (1, 4, 8, 8)))])
    _converted_matches(model, {"x": rng.random((1, 3, 8, 8), dtype=np.float32)}, fp32_ops=keep)


def test_bool_graph_output_is_not_cast_when_io_types_become_float16():
    rng = np.random.default_rng(4)
    conv, w = _conv(rng)
    model = _model([conv, helper.make_node("Greater", ["h", "x2"], ["g"])],
                   [_vi("x", [1, 3, 8, 8]), _vi("x2", [1, 4, 8, 8])], [_vi("g", [1, 4, 8, 8], TP.BOOL)], [w])
    half = onnxrep.optimize(model, precision="fp16", verify=False, keep_io_types=False).model
    onnx.checker.check_model(half, full_check=True)
    assert half.graph.output[0].type.tensor_type.elem_type == TP.BOOL
    _run(half, {"x": np.zeros((1, 3, 8, 8), np.float16), "x2": np.zeros((1, 4, 8, 8), np.float16)})


# ---------------------------------------------------------------- class 3: outer-scope reads in subgraphs

def _branch(name, op, const, value, out):
    return helper.make_graph([helper.make_node(op, ["h", const], [out])], name, [], [_vi(out, [1, 4, 16, 16])],
                             [_f(const, value)])


def test_if_branch_reading_a_float16_outer_tensor():
    """The repro: If kept float32, its branch computes Add(h, c) with h made float16 outside."""
    rng = np.random.default_rng(1)
    conv, w = _conv(rng)
    node = helper.make_node("If", ["cond"], ["y"], then_branch=_branch("then", "Add", "c1", 1.0, "t"),
                            else_branch=_branch("else", "Mul", "c2", 2.0, "e"))
    model = _model([conv, node], [_vi("x", [1, 3, 16, 16]), _vi("cond", [], TP.BOOL)], [_vi("y", [1, 4, 16, 16])],
                   [w])
    x = rng.random((1, 3, 16, 16), dtype=np.float32)
    for cond in (True, False):
        _converted_matches(model, {"x": x, "cond": np.array(cond)})


def test_loop_in_an_if_branch_reads_the_outer_tensor_two_levels_down():
    rng = np.random.default_rng(5)
    conv, w = _conv(rng)
    shape = [1, 4, 8, 8]
    body = helper.make_graph([helper.make_node("Add", ["acc", "h"], ["acc_out"]),
                              helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
                             [_vi("i", [], TP.INT64), _vi("c_in", [], TP.BOOL), _vi("acc", shape)],
                             [_vi("c_out", [], TP.BOOL), _vi("acc_out", shape)])
    then_g = helper.make_graph([helper.make_node("Loop", ["n", "", "h"], ["t"], body=body)], "then", [],
                               [_vi("t", shape)])
    else_g = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [], [_vi("e", shape)])
    nodes = [conv, helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8]), _vi("cond", [], TP.BOOL)], [_vi("y", shape)],
                   [w, numpy_helper.from_array(np.asarray(3, np.int64), "n")])
    feeds = {"x": rng.random((1, 3, 8, 8), dtype=np.float32), "cond": np.array(True)}
    _converted_matches(model, feeds)

