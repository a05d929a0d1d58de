"""fold_batchnorm rules beyond Conv -> BN: Gemm/MatMul on either side, BN before an unpadded Conv."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import onnxrep
from onnxrep.verify import verify
from tests.graphs import bn_params, count_ops, init, make_model, vi


def bn_node(x, y, prefix, rng, c, inits, eps=1e-3):
    for k, v in bn_params(rng, c).items():
        inits.append(init(f"{prefix}_{k}", v))
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")],
                            [y], epsilon=eps, name=prefix)


def fold(model):
    result = onnxrep.optimize(model, passes=["fold_batchnorm"], verify=False)
    onnx.checker.check_model(result.model, full_check=True)
    v = verify(model, result.model, samples=2, seed=2)
    assert v.ran and v.ok, v.lines()
    return result


def declined(result):
    return result.report.passes["fold_batchnorm"]["declined"]


def gemm_model(*, bn_side="after", trans_a=0, trans_b=0, alpha=1.0, beta=1.0, bias="vector", n=3, k=5, m=4, seed=0,
               extra_consumer=False):
    rng = np.random.default_rng(seed)
    inits = [init("B", rng.standard_normal((m, k) if trans_b else (k, m)).astype(np.float32))]
    gemm_in = ["xa" if bn_side == "before" else "x", "B"]
    if bias == "vector":
        inits.append(init("C", rng.standard_normal(m).astype(np.float32)))
        gemm_in.append("C")
    elif bias == "matrix":
        inits.append(init("C", rng.standard_normal((n, m)).astype(np.float32)))
        gemm_in.append("C")
    a_shape = [k, n] if trans_a else [n, k]
    nodes = []
    if bn_side == "before":
        nodes.append(bn_node("x", "xa", "bn", rng, a_shape[1], inits))
    nodes.append(helper.make_node("Gemm", gemm_in, ["g" if bn_side == "after" else "y"], transA=trans_a, transB=trans_b,
                                  alpha=alpha, beta=beta, name="gemm"))
    if bn_side == "after":
        nodes.append(bn_node("g", "y", "bn", rng, m, inits))
    outputs = [vi("y")]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["g" if bn_side == "after" else "xa"], ["r"]))
        outputs.append(vi("r"))
    return make_model(nodes, [vi("x", shape=a_shape)], outputs, inits)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", ["none", "vector", "matrix"])
@pytest.mark.parametrize("bn_side", ["after", "before"])
def test_gemm(trans_b, bias, bn_side):
    model = gemm_model(bn_side=bn_side, trans_b=trans_b, bias=bias, alpha=0.7, beta=1.3)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0 and count_ops(result.model, "Gemm") == 1


def test_gemm_after_bn_with_trans_a_declines():
    result = fold(gemm_model(bn_side="before", trans_a=1, k=5, n=3))
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("transA=1" in d for d in declined(result))


@pytest.mark.parametrize("bn_side", ["after", "before"])
def test_gemm_with_consumer_in_the_middle_declines(bn_side):
    result = fold(gemm_model(bn_side=bn_side, extra_consumer=True))
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("2 consumers" in d for d in declined(result))


def matmul_model(*, bn_side="after", add=False, rank=2, seed=0):
    rng = np.random.default_rng(seed)
    k, m = 6, 4
    inits = [init("W", rng.standard_normal((k, m)).astype(np.float32))]
    nodes = []
    x_shape = [3, k] if rank == 2 else [2, 3, k]
    src = "x"
    if bn_side == "before":
        nodes.append(bn_node("x", "xb", "bn", rng, x_shape[1], inits))
        src = "xb"
    nodes.append(helper.make_node("MatMul", [src, "W"], ["mm"]))
    last = "mm"
    if add:
        inits.append(init("b", rng.standard_normal(m).astype(np.float32)))
        nodes.append(helper.make_node("Add", ["b", "mm"], ["mma"]))
        last = "mma"
    if bn_side == "after":
        nodes.append(bn_node(last, "y", "bn", rng, m if rank == 2 else 3, inits))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    return make_model(nodes, [vi("x", shape=x_shape)], [vi("y")], inits)


@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("bn_side", ["after", "before"])
def test_matmul(add, bn_side):
    result = fold(matmul_model(bn_side=bn_side, add=add))
    assert count_ops(result.model, "BatchNormalization") == 0
    # the bias always ends up in one Add: the existing one, or a new one carrying the BN's shift
    assert count_ops(result.model, "MatMul") == 1 and count_ops(result.model, "Add") == 1


def test_matmul_rank3_declines():
    result = fold(matmul_model(bn_side="after", rank=3))
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("not rank 2" in d for d in declined(result))


def bn_conv_model(*, c=4, m=6, k=1, group=1, pads=0, bias=True, seed=0, size=5, spatial=2, auto_pad=None):
    rng = np.random.default_rng(seed)
    inits = [init("W", (rng.standard_normal((m, c // group) + (k,) * spatial) / np.sqrt(c * k)).astype(np.float32))]
    conv_in = ["xb", "W"]
    if bias:
        inits.append(init("B", rng.standard_normal(m).astype(np.float32)))
        conv_in.append("B")
    attrs = dict(kernel_shape=[k] * spatial, group=group)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = [pads] * (2 * spatial)
    nodes = [bn_node("x", "xb", "bn", rng, c, inits), helper.make_node("Conv", conv_in, ["y"], name="conv", **attrs)]
    return make_model(nodes, [vi("x", shape=[1, c] + [size] * spatial)], [vi("y")], inits)


@pytest.mark.parametrize("k,group,bias", [(1, 1, True), (1, 2, False), (3, 1, True), (3, 4, True)])
def test_bn_before_unpadded_conv(k, group, bias):
    result = fold(bn_conv_model(k=k, group=group, bias=bias, c=4, m=8))
    assert count_ops(result.model, "BatchNormalization") == 0 and count_ops(result.model, "Conv") == 1


@pytest.mark.parametrize("kw", [dict(pads=1, k=3), dict(auto_pad="SAME_UPPER", k=3)])
def test_bn_before_padded_conv_declines(kw):
    result = fold(bn_conv_model(**kw))
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("pads its input" in d for d in declined(result))


def test_non_constant_statistics_decline():
    model = bn_conv_model()
    mean = next(t for t in model.graph.initializer if t.name == "bn_mean")
    model.graph.initializer.remove(mean)
    model.graph.input.append(helper.make_tensor_value_info("bn_mean", onnx.TensorProto.FLOAT, [4]))
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("not constant" in d for d in declined(result))


def test_shared_weight_between_folded_and_plain_conv():
    model = bn_conv_model()
    g = model.graph
    g.node.append(helper.make_node("Conv", ["x", "W", "B"], ["z"], kernel_shape=[1, 1]))
    model = make_model(list(g.node), list(g.input), list(g.output) + [vi("z")], list(g.initializer))
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    assert "W" in {t.name for t in result.model.graph.initializer}  # the plain Conv still reads the original


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 2, 4]), st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 2, 3]),
       st.integers(1, 3), st.booleans(), st.integers(0, 99))
def test_property_bn_before_conv(group, c_mult, m_mult, spatial, k, bias, seed):
    model = bn_conv_model(c=group * c_mult, m=group * m_mult, k=k, group=group, bias=bias, seed=seed,
                          spatial=spatial, size=max(k, 4))
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["after", "before"]), st.integers(0, 1), st.sampled_from(["none", "vector", "matrix"]),
       st.floats(0.25, 2.0), st.floats(0.25, 2.0), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))
def test_property_gemm(bn_side, trans_b, bias, alpha, beta, n, k, m):
    result = fold(gemm_model(bn_side=bn_side, trans_b=trans_b, bias=bias, alpha=alpha, beta=beta, n=n, k=k, m=m))
    assert count_ops(result.model, "BatchNormalization") == 0


@pytest.mark.parametrize("bias_shape", [(1, 1, 4), (1, 4), (4,)])
def test_bn_then_matmul_add_keeps_the_bias_rank(bias_shape):
    """Regression: BN -> MatMul -> Add with a [1, 1, M] bias reshaped the bias to [M], so the output lost a rank."""
    rng = np.random.default_rng(0)
    inits = [init("W", rng.standard_normal((5, 4)).astype(np.float32)),
             init("c", rng.standard_normal(bias_shape).astype(np.float32))]
    nodes = [bn_node("x", "xa", "bn", rng, 5, inits), helper.make_node("MatMul", ["xa", "W"], ["m"]),
             helper.make_node("Add", ["m", "c"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[3, 5])], [vi("y")], inits)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    out = onnx.shape_inference.infer_shapes(result.model).graph.output[0]
    assert len(out.type.tensor_type.shape.dim) == max(2, len(bias_shape))


@pytest.mark.parametrize("form", ["pooled", "unsqueezed"])
def test_classifier_bn1d_as_exporters_write_it(form):
    """Regression (timm RepViT TorchScript exports kept both head BNs): BatchNorm1d after a global pool, as
    ReduceMean(keepdims=0) -> BN -> Gemm (rank 2 known only from shape inference) or, from the legacy
    exporter, Unsqueeze -> BN on [N, C, 1] -> Squeeze -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [init("W", rng.standard_normal((6, 5)).astype(np.float32)), init("b", rng.standard_normal(6).astype(np.float32)),
             init("axes", np.array([2], np.int64))]
    nodes = [helper.make_node("ReduceMean", ["x"], ["p"], axes=[2, 3], keepdims=0)]
    if form == "pooled":
        nodes.append(bn_node("p", "q", "bn", rng, 5, inits))
    else:
        nodes += [helper.make_node("Unsqueeze", ["p", "axes"], ["p3"]), bn_node("p3", "q3", "bn", rng, 5, inits),
                  helper.make_node("Squeeze", ["q3", "axes"], ["q"])]
    nodes.append(helper.make_node("Gemm", ["q", "W", "b"], ["y"], transB=1))
    model = make_model(nodes, [vi("x", shape=["N", 5, 4, 4])], [vi("y")], inits)
    result = onnxrep.optimize(model)
    assert result.verified, result.report.text()
    assert count_ops(result.model, "BatchNormalization") == 0, result.report.text(verbose=True)
    assert count_ops(result.model, "Squeeze") + count_ops(result.model, "Unsqueeze") == 0


def test_unsqueeze_onto_the_channel_axis_is_left_alone():
    """Unsqueeze(x, [1]) -> BN -> Squeeze: the BN's channels are the new unit axis, not x's features."""
    rng = np.random.default_rng(0)
    inits = [init("axes", np.array([1], np.int64))]
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["x3"]), bn_node("x3", "y3", "bn", rng, 1, inits),
             helper.make_node("Squeeze", ["y3", "axes"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[2, 5])], [vi("y")], inits)
    result = onnxrep.optimize(model, passes=["canonicalize"])
    assert result.verified and count_ops(result.model, "Squeeze") == count_ops(result.model, "Unsqueeze") == 1
