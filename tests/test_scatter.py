"""scatter_slices (passes/cleanup/scatter.py): a ScatterND that writes one contiguous slice becomes a Concat.

Positive: the two forms PyTorch writes for ``y[..., a:b] = f(y[..., a:b])`` (TorchScript's full element
indices, dynamo's leading-axis rows), any slice position, by hypothesis over shapes and slices; the result
is bit-equal. Negative: indices that skip, repeat or reorder, a reduction, non-constant indices, a
symbolic dim, two partial axes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxrep


def _box(shape, axis, a, b):
    """TorchScript's indices for data[..., a:b, ...] on `axis` (full element indices)."""
    ranges = [np.arange(n) if j != axis else np.arange(a, b) for j, n in enumerate(shape)]
    return np.stack(np.meshgrid(*ranges, indexing="ij"), -1).astype(np.int64)


def _model(shape, indices, update_shape, reduction=None, dims=None, indices_input=False) -> onnx.ModelProto:
    attrs = {"reduction": reduction} if reduction else {}
    nodes = [helper.make_node("Sigmoid", ["x"], ["y"]),
             helper.make_node("Neg", ["u"], ["un"]),
             helper.make_node("ScatterND", ["y", "i", "un"], ["z"], **attrs)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims or list(shape)),
              helper.make_tensor_value_info("u", TensorProto.FLOAT, list(update_shape))]
    inits = [numpy_helper.from_array(np.asarray(indices, np.int64), "i")]
    if indices_input:
        inputs.append(helper.make_tensor_value_info("i", TensorProto.INT64, list(np.shape(indices))))
        inits = []
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("z", TensorProto.FLOAT, dims or list(shape))],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18 if reduction else 17)])


def _run(model, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _optimized(model):
    r = onnxrep.optimize(model, passes=["canonicalize"], verify=False)
    return r.model, r.report.passes["canonicalize"]


@st.composite
def _cases(draw):
    rank = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 5)) for _ in range(rank)]
    axis = draw(st.integers(0, rank - 1))
    a = draw(st.integers(0, shape[axis] - 1))
    b = draw(st.integers(a + 1, shape[axis]))
    rows = draw(st.booleans()) and axis == 0        # dynamo's form: one index per row of axis 0
    return shape, axis, a, b, rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases())
def test_a_slice_write_becomes_a_concat_bit_for_bit(case):
    shape, axis, a, b, rows = case
    indices = np.arange(a, b, dtype=np.int64)[:, None] if rows else _box(shape, axis, a, b)
    update = [b - a] + shape[1:] if rows else list(indices.shape[:-1])
    m = _model(shape, indices, update)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=shape).astype(np.float32), "u": rng.normal(size=update).astype(np.float32)}
    out, info = _optimized(m)
    onnx.checker.check_model(out, full_check=True)
    assert not any(n.op_type == "ScatterND" for n in out.graph.node), info
    np.testing.assert_array_equal(_run(out, feeds), _run(m, feeds))


@pytest.mark.parametrize("mutate,reason", [
    (lambda i: i[::-1].copy(), "not one contiguous slice in order"),        # reversed rows
    (lambda i: np.concatenate([i[:1], i[:1]]), "not one contiguous slice in order"),   # a repeat
    (lambda i: i[[0, 2]], "not one contiguous slice in order"),              # a gap
])
def test_rows_that_are_not_a_slice_decline(mutate, reason):
    indices = mutate(np.arange(0, 3, dtype=np.int64)[:, None])
    m = _model([4, 2], indices, [len(indices), 2])
    out, info = _optimized(m)
    assert any(n.op_type == "ScatterND" for n in out.graph.node)
    assert any(reason in d for d in info["declined"]), info


def test_other_scatters_decline():
    cases = [
        (_model([4, 2], np.arange(0, 2)[:, None], [2, 2], reduction="add"), "reduction add"),
        (_model([4, 2], np.arange(0, 2)[:, None], [2, 2], indices_input=True), "indices are not constant"),
        (_model([4, 2], np.arange(0, 2)[:, None], [2, 2], dims=["N", 2]), "data dim 0 is not static"),
        (_model([3, 4], _box([3, 4], 1, 1, 3)[:2], [2, 2]), "partial on more than one axis"),
    ]
    for m, reason in cases:
        out, info = _optimized(m)
        assert any(n.op_type == "ScatterND" for n in out.graph.node), reason
        assert any(reason in d for d in info["declined"]), (reason, info)


def test_a_scatter_inside_a_subgraph_is_left_alone():
    """Inside an If branch the dims would come from the branch's own value_info, which nothing checks
    (a stale [3, 2] for a [5, 2] tensor made a full range look full): only the top-level graph is rewritten."""
    branch_nodes = [helper.make_node("ScatterND", ["x", "i", "u"], ["z_then"])]
    then = helper.make_graph(branch_nodes, "then", [], [helper.make_tensor_value_info("z_then", TensorProto.FLOAT, [5, 2])],
                             value_info=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z_else"])], "else", [],
                              [helper.make_tensor_value_info("z_else", TensorProto.FLOAT, [5, 2])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other)], "g",
                          [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2]),
                           helper.make_tensor_value_info("u", TensorProto.FLOAT, [3, 2])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [5, 2])],
                          [numpy_helper.from_array(np.arange(3, dtype=np.int64)[:, None], "i")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out, _ = _optimized(m)
    branches = {a.name: a.g for a in next(n for n in out.graph.node if n.op_type == "If").attribute}
    assert any(n.op_type == "ScatterND" for n in branches["then_branch"].node)
