"""Outputs chosen through a selection (TopK, ArgMax, NMS index): verify/selection.py and noise.exact().

RT-DETR's query selection in miniature: x -> Conv -> BatchNormalization -> Flatten -> TopK -> Gather(table).
An honest BN fold re-rounds the scores, which may swap near-equal candidates: the gathered rows then move by
whole entries. The verifier must pass the fold (it compares the gathered output at its whole-output noise
level and the scores TopK chose by element by element) and must fail a 1 % change of the kernel, which the
scores show. The twin perturbs what a selection chooses by (the walk from a discrete use stops at it)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.verify import verify
from onnxrep.verify.noise import exact
from onnxrep.verify.selection import scored_inputs, selected_tensors


def topk_model(c: int = 16, h: int = 32, k: int = 256, named: bool = True, op: str = "TopK") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    n = h * h
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (1, c, 1, 1)).astype(np.float32), "w"),
             *(numpy_helper.from_array(np.array([v], np.float32), name)
               for v, name in ((1.37, "gamma"), (0.21, "beta"), (0.53, "mean"), (0.61, "var"))),
             numpy_helper.from_array(np.array([k], np.int64), "k"),
             numpy_helper.from_array(rng.normal(0, 50, (n, 4)).astype(np.float32), "table")]
    nm = (lambda s: s) if named else (lambda s: "")  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name=nm("conv"), kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name=nm("bn"),
                              epsilon=1e-3),
             helper.make_node("Flatten", ["b"], ["flat"], name=nm("flat"), axis=1)]
    if op == "TopK":
        nodes += [helper.make_node("TopK", ["flat", "k"], ["scores", "idx"], name=nm("topk"), axis=1),
                  helper.make_node("Gather", ["table", "idx"], ["picked"], name=nm("gather"), axis=0)]
        outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, k]),
                helper.make_tensor_value_info("picked", TensorProto.FLOAT, [1, k, 4])]
    else:   # ArgMax: the best position's row of the table, and the index as a float (RT-DETR's class column)
        nodes += [helper.make_node("ArgMax", ["flat"], ["idx"], name=nm("argmax"), axis=1, keepdims=0),
                  helper.make_node("Gather", ["table", "idx"], ["picked"], name=nm("gather"), axis=0),
                  helper.make_node("Cast", ["idx"], ["where"], name=nm("cast"), to=TensorProto.FLOAT)]
        outs = [helper.make_tensor_value_info("picked", TensorProto.FLOAT, [1, 4]),
                helper.make_tensor_value_info("where", TensorProto.FLOAT, [1])]
    g = helper.make_graph(nodes, "sel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])], outs,
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def test_the_twin_perturbs_what_a_selection_chooses_by():
    m = topk_model()
    fixed = exact(m.graph)
    assert "k" in fixed and "flat" not in fixed and "b" not in fixed   # TopK's k stays exact, its scores don't
    assert selected_tensors(m) >= {"idx", "picked"} and "scores" not in selected_tensors(m)


@pytest.mark.parametrize("named", [True, False])
def test_an_honest_fold_before_a_topk_passes_and_the_scores_are_compared(named):
    m = topk_model(named=named)
    r = onnxrep.optimize(m)
    assert r.ok, r.report.text()
    checks = {c.name: c for c in r.verification.outputs}
    assert "flat" in checks and "selects by" in checks["flat"].note         # the scores TopK chose by
    assert "loosest" in checks["picked"].note and checks["scores"].note == ""
    assert [p[:2] for p in scored_inputs(m, r.model)[0]] == [("flat", "flat")]


@pytest.mark.parametrize("op", ["TopK", "ArgMax"])
def test_a_one_percent_kernel_change_before_a_selection_is_caught(op):
    m = topk_model(op=op)
    r = onnxrep.optimize(m, verify=False)
    bad = copy.deepcopy(r.model)
    conv = next(n for n in bad.graph.node if n.op_type == "Conv")
    w = next(t for t in bad.graph.initializer if t.name == conv.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.01), w.name))
    v = verify(m, bad)
    assert not v.ok
    assert any(not c.ok and c.name == "flat" for c in v.outputs), v.lines()
    assert verify(m, r.model).ok


def _gathered_rows(ws, name_topk="topk"):
    """rows [B, K, D] = the feature rows of x @ Wf at the K best scores x @ ws (a symbolic batch): the
    review's model of an output chosen through a TopK, fed pairs of anchors with equal scores."""
    rng = np.random.default_rng(1)
    a, d, k = 64, 6, 8
    wf = (rng.standard_normal((d, d)) * 10).astype(np.float32)
    c = lambda n, v: numpy_helper.from_array(np.asarray(v), n)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "Wf"], ["feat"]), helper.make_node("MatMul", ["x", "ws"], ["s3"]),
             helper.make_node("Squeeze", ["s3", "ax2"], ["s"]),
             helper.make_node("TopK", ["s", "k"], ["vals", "idx"], name=name_topk, axis=1),
             helper.make_node("Unsqueeze", ["idx", "ax2"], ["idx3"]),
             helper.make_node("Expand", ["idx3", "eshape"], ["idxe"]),
             helper.make_node("GatherElements", ["feat", "idxe"], ["rows"], axis=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", a, d])],
                          [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", k, d])],
                          [c("Wf", wf), c("ws", ws), c("ax2", np.array([2], np.int64)), c("k", np.array([k], np.int64)),
                           c("eshape", np.array([1, k, d], np.int64))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    feeds = []
    for seed in (10, 11):
        x = np.random.default_rng(seed).standard_normal((1, a, d)).astype(np.float32)
        x[0, 1::2, :2] = x[0, 0::2, :2]
        feeds.append({"x": x})
    return m, feeds


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("renamed", [False, True])
def test_a_wrong_ranking_is_caught_batched_and_with_the_selection_renamed(stacked, renamed):
    """The scores a TopK ranks by, 50 % off on one weight: other rows are chosen. Caught through the scored
    input, also in the dynamic-batch proof (samples stacked) and when the optimized model's TopK has another
    name (the k-th TopK of both)."""
    ws = np.zeros((6, 1), np.float32)
    ws[0, 0], ws[1, 0] = 1.0, 0.5
    bad = ws.copy()
    bad[1, 0] *= 1.5
    m, feeds = _gathered_rows(ws)
    wrong, _ = _gathered_rows(bad, name_topk="TopK_0" if renamed else "topk")
    stack = ([[0], [1, 0]], {"x"}) if stacked else None
    v = verify(m, wrong, feeds=feeds, stack=stack)
    assert not v.ok and any(not c.ok and "selects by" in c.note for c in v.outputs), v.lines()
    assert verify(m, _gathered_rows(ws)[0], feeds=feeds, stack=stack).ok


def test_a_selection_missing_from_the_optimized_model_fails_the_proof():
    m, feeds = _gathered_rows(np.ones((6, 1), np.float32))
    other = copy.deepcopy(m)
    next(n for n in other.graph.node if n.op_type == "TopK").name = "renamed"
    other.graph.node.append(helper.make_node("TopK", ["s", "k"], ["v2", "i2"], name="extra", axis=1))
    other.graph.output.append(helper.make_tensor_value_info("v2", TensorProto.FLOAT, None))
    v = verify(m, other, feeds=feeds)   # no name in common, two TopK there and one here: not guessed
    assert not v.ok and any("not found in the optimized model" in c.message for c in v.outputs), v.lines()
