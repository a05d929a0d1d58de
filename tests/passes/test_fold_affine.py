"""fold_batchnorm's other affine nodes: Mul, Add, Sub, Div by a per-channel constant, on either side of a Conv,
Gemm or MatMul (YOLOv7 implicit knowledge, PP-YOLOE+ alpha, a /255 before the first Conv, averaged heads)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import onnxrep
from tests.graphs import count_ops, init, make_model, vi

C_IN, C_OUT, SIZE = 4, 6, 6


def conv_node(x, y, inits, rng, *, k=3, pad=1, group=1, cin=C_IN, cout=C_OUT, bias=True, name="conv",
              dtype=np.float32):
    inits.append(init(f"{name}_w", (rng.standard_normal((cout, cin // group, k, k)) / k).astype(dtype)))
    ins = [x, f"{name}_w"]
    if bias:
        inits.append(init(f"{name}_b", rng.normal(0, 0.3, cout).astype(dtype)))
        ins.append(f"{name}_b")
    return helper.make_node("Conv", ins, [y], kernel_shape=[k, k], pads=[pad] * 4, group=group, name=name)


def affine_node(op, x, y, c_name, const_first=False):
    return helper.make_node(op, [c_name, x] if const_first else [x, c_name], [y], name=f"{op.lower()}_{y}")


def optimize(model, **kw):
    result = onnxrep.optimize(model, **kw)
    assert result.verified, result.report.text(verbose=True)
    onnx.checker.check_model(result.model, full_check=True)
    return result


def declined(result):
    return result.report.passes["fold_batchnorm"]["declined"]


# ------------------------------------------------------------------------------------------- after


@pytest.mark.parametrize("op,const_first", [("Mul", False), ("Mul", True), ("Add", False), ("Add", True),
                                            ("Sub", False), ("Sub", True), ("Div", False)])
@pytest.mark.parametrize("shape", [(1, C_OUT, 1, 1), (C_OUT, 1, 1), (), (1,)])
def test_conv_then_affine_folds(op, const_first, shape):
    rng = np.random.default_rng(0)
    inits = [init("c", rng.uniform(0.5, 2.0, shape).astype(np.float32))]
    nodes = [conv_node("x", "h", inits, rng), affine_node(op, "h", "y", "c", const_first)]
    result = optimize(make_model(nodes, [vi("x", shape=[2, C_IN, SIZE, SIZE])], [vi("y")], inits))
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_chains_collapse_and_yolov7_idetect_becomes_one_conv():
    """IDetect: Conv1x1(x + ImplicitA) * ImplicitM, then a Mul/Add/Mul chain behind it: one Conv."""
    rng = np.random.default_rng(1)
    inits = [init("a", rng.normal(0, 1, (1, C_IN, 1, 1)).astype(np.float32)),
             init("m", rng.uniform(0.5, 1.5, (1, C_OUT, 1, 1)).astype(np.float32)),
             init("m2", np.float32(1.5)), init("t2", rng.normal(0, 1, (C_OUT, 1, 1)).astype(np.float32))]
    nodes = [affine_node("Add", "x", "xa", "a"), conv_node("xa", "h", inits, rng, k=1, pad=0),
             affine_node("Mul", "h", "hm", "m"), affine_node("Add", "hm", "ht", "t2"), affine_node("Mul", "ht", "y", "m2")]
    result = optimize(make_model(nodes, [vi("x", shape=["N", C_IN, SIZE, SIZE])], [vi("y")], inits))
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]
    assert result.report.passes["fold_batchnorm"]["count"] == 4


def test_scale_before_a_padded_conv_folds_shift_does_not():
    """Mul(c) -> Conv is exact with zero padding (a scaled zero is zero); Add(c) -> padded Conv is not."""
    rng = np.random.default_rng(2)
    inits = [init("s", rng.uniform(0.5, 2, (1, C_IN, 1, 1)).astype(np.float32)),
             init("t", rng.normal(0, 1, (1, C_IN, 1, 1)).astype(np.float32))]
    scaled = optimize(make_model([affine_node("Mul", "x", "xs", "s"), conv_node("xs", "y", inits, rng)],
                                 [vi("x", shape=[1, C_IN, SIZE, SIZE])], [vi("y")], inits))
    assert [n.op_type for n in scaled.model.graph.node] == ["Conv"]
    inits2 = [inits[1]]
    shifted = optimize(make_model([affine_node("Add", "x", "xs", "t"), conv_node("xs", "y", inits2, rng)],
                                  [vi("x", shape=[1, C_IN, SIZE, SIZE])], [vi("y")], inits2))
    assert count_ops(shifted.model, "Add") == 1
    assert any("pads its input" in d for d in declined(shifted))


def test_ppyoloe_alpha_branch_merges():
    """PP-YOLOE+ RepVGG block: Conv3x3 + alpha * Conv1x1 (a learned scalar): one 3x3 Conv."""
    rng = np.random.default_rng(3)
    inits = [init("alpha", np.float32(0.7))]
    nodes = [conv_node("x", "a", inits, rng, cin=C_OUT, name="c3"),
             conv_node("x", "b", inits, rng, k=1, pad=0, cin=C_OUT, name="c1"),
             affine_node("Mul", "b", "ba", "alpha"), helper.make_node("Add", ["a", "ba"], ["y"])]
    result = optimize(make_model(nodes, [vi("x", shape=[1, C_OUT, SIZE, SIZE])], [vi("y")], inits))
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_gemm_then_div_folds():
    rng = np.random.default_rng(4)
    inits = [init("W", rng.standard_normal((5, 3)).astype(np.float32)), init("b", rng.standard_normal(3).astype(np.float32)),
             init("two", np.float32(2.0))]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["g"]), helper.make_node("Div", ["g", "two"], ["y"])]
    result = optimize(make_model(nodes, [vi("x", shape=[2, 5])], [vi("y")], inits))
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]


def test_first_conv_absorbs_the_input_scaling():
    """x / 255 -> Conv: the scaling lands in the first Conv's weights (exact)."""
    rng = np.random.default_rng(5)
    inits = [init("k", np.float32(255.0))]
    nodes = [affine_node("Div", "x", "xs", "k"), conv_node("xs", "y", inits, rng)]
    result = optimize(make_model(nodes, [vi("x", shape=[1, C_IN, SIZE, SIZE])], [vi("y")], inits))
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


# ---------------------------------------------------------------------------------------- declines


def _after(c, op="Mul", extra_output=False, const_first=False):
    rng = np.random.default_rng(6)
    inits = [init("c", np.asarray(c, np.float32))]
    nodes = [conv_node("x", "h", inits, rng), affine_node(op, "h", "y", "c", const_first)]
    outputs = [vi("y")] + ([vi("h")] if extra_output else [])
    return make_model(nodes, [vi("x", shape=[1, C_IN, SIZE, SIZE])], outputs, inits)


@pytest.mark.parametrize("model,reason", [
    (_after(np.linspace(1, 2, SIZE * SIZE).reshape(1, 1, SIZE, SIZE)), "varies along another axis"),
    (_after(np.linspace(1, 2, C_OUT).reshape(1, 1, 1, 1, C_OUT)), "constant of shape"),
    (_after(np.linspace(1, 2, 1).reshape(1, 1, 1, 1, 1) * 2), "constant of shape"),
    (_after(np.linspace(1, 2, C_OUT).reshape(1, C_OUT, 1, 1), extra_output=True), "graph output"),
    (_after(np.full((1, C_OUT, 1, 1), 2.0), op="Div", const_first=True), None),
    (_after(np.zeros((1, C_OUT, 1, 1)), op="Div"), "zeros"),
])
def test_declines(model, reason):
    result = optimize(model)
    assert count_ops(result.model, "Conv") == 1 and len(result.model.graph.node) == 2
    if reason:
        assert any(reason in d for d in declined(result)), declined(result)


def test_shared_conv_output_declines():
    rng = np.random.default_rng(7)
    inits = [init("c", np.full((1, C_OUT, 1, 1), 2.0, np.float32))]
    nodes = [conv_node("x", "h", inits, rng), affine_node("Mul", "h", "y", "c"), helper.make_node("Relu", ["h"], ["z"])]
    result = optimize(make_model(nodes, [vi("x", shape=[1, C_IN, SIZE, SIZE])], [vi("y"), vi("z")], inits))
    assert count_ops(result.model, "Mul") == 1
    assert any("consumers" in d for d in declined(result))


def test_non_constant_operand_is_not_a_candidate():
    rng = np.random.default_rng(8)
    inits = []
    nodes = [conv_node("x", "h", inits, rng), affine_node("Mul", "h", "y", "s")]
    model = make_model(nodes, [vi("x", shape=[1, C_IN, SIZE, SIZE]), vi("s", shape=[1, C_OUT, 1, 1])], [vi("y")], inits)
    result = optimize(model)
    assert count_ops(result.model, "Mul") == 1 and declined(result) == []


def test_a_shared_constant_is_not_modified():
    """The same scale read by two Mul nodes after two Convs: both fold, the constant's readers get new tensors."""
    rng = np.random.default_rng(9)
    inits = [init("c", np.full((1, C_OUT, 1, 1), 3.0, np.float32))]
    nodes = [conv_node("x", "h1", inits, rng, name="a"), conv_node("x", "h2", inits, rng, name="b"),
             affine_node("Mul", "h1", "y1", "c"), affine_node("Mul", "h2", "y2", "c")]
    result = optimize(make_model(nodes, [vi("x", shape=[1, C_IN, SIZE, SIZE])], [vi("y1"), vi("y2")], inits))
    assert count_ops(result.model, "Mul") == 0


# ---------------------------------------------------------------------------------------- property


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(op=st.sampled_from(["Mul", "Add", "Sub", "Div"]), side=st.sampled_from(["before", "after"]),
       per_channel=st.booleans(), const_first=st.booleans(), group=st.sampled_from([1, 2]),
       pad=st.sampled_from([0, 1]), k=st.sampled_from([1, 3]), dtype=st.sampled_from([np.float32, np.float16]),
       seed=st.integers(0, 2**16))
def test_property_affine_folds_are_exact(op, side, per_channel, const_first, group, pad, k, dtype, seed):
    rng = np.random.default_rng(seed)
    if op == "Div":
        const_first = False
    c = C_IN if side == "before" else C_OUT
    value = rng.uniform(0.5, 2.0, (1, c, 1, 1) if per_channel else ()).astype(dtype)
    inits = [init("c", value)]
    if side == "before":
        nodes = [affine_node(op, "x", "xs", "c", const_first), conv_node("xs", "y", inits, rng, k=k, pad=pad,
                                                                         group=group, dtype=dtype)]
    else:
        nodes = [conv_node("x", "h", inits, rng, k=k, pad=pad, group=group, dtype=dtype),
                 affine_node(op, "h", "y", "c", const_first)]
    x = helper.make_tensor_value_info("x", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [2, C_IN, SIZE, SIZE])
    result = optimize(make_model(nodes, [x], [vi("y", dtype=dtype)], inits))
    shift_into_padding = side == "before" and pad and (op in ("Add", "Sub"))
    assert len(result.model.graph.node) == (2 if shift_into_padding else 1)


# -------------------------------------------------------------------------------- Gemm/MatMul branches


def _two_heads(op_a="Gemm", op_b="Gemm", same_x=True, trans_b=1, bias=True, extra_reader=False):
    """RepViT's classifier with distillation head: (head(x) + head_dist(x)) / 2."""
    rng = np.random.default_rng(10)
    inits, nodes = [init("two", np.float32(2.0))], []
    for name, op, x in (("h", op_a, "x"), ("d", op_b, "x" if same_x else "x2")):
        w = rng.standard_normal((3, 5) if (op == "Gemm" and trans_b) else (5, 3)).astype(np.float32)
        inits.append(init(f"{name}_w", w))
        if op == "Gemm":
            ins = [x, f"{name}_w"] + ([f"{name}_b"] if bias else [])
            if bias:
                inits.append(init(f"{name}_b", rng.standard_normal(3).astype(np.float32)))
            nodes.append(helper.make_node("Gemm", ins, [name], transB=trans_b, alpha=0.8, beta=1.2))
        else:
            nodes.append(helper.make_node("MatMul", [x, f"{name}_w"], [name]))
    nodes += [helper.make_node("Add", ["h", "d"], ["s"]), helper.make_node("Div", ["s", "two"], ["y"])]
    inputs = [vi("x", shape=[2, 5])] + ([] if same_x else [vi("x2", shape=[2, 5])])
    outputs = [vi("y")] + ([vi("h")] if extra_reader else [])
    return make_model(nodes, inputs, outputs, inits)


@pytest.mark.parametrize("ops", [("Gemm", "Gemm"), ("Gemm", "MatMul"), ("MatMul", "MatMul")])
def test_averaged_linear_heads_become_one(ops):
    result = optimize(_two_heads(*ops))
    kinds = sorted(n.op_type for n in result.model.graph.node)
    assert kinds in (["Gemm"], ["MatMul"], ["Add", "MatMul"]), kinds


@pytest.mark.parametrize("model,reason", [
    (_two_heads(same_x=False), None),                     # different inputs: not branches of one tensor
    (_two_heads(extra_reader=True), "graph output"),
])
def test_linear_branches_declines(model, reason):
    result = optimize(model)
    assert sum(n.op_type == "Gemm" for n in result.model.graph.node) == 2
    if reason:
        assert any(reason in d for d in result.report.passes["merge_branches"]["declined"])
