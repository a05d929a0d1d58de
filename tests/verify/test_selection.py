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
    assert "whole-output" in checks["picked"].note and checks["scores"].note == ""
    assert [p[:2] for p in scored_inputs(m, r.model)] == [("flat", "flat")]


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
