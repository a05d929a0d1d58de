"""fold_batchnorm: positive cases, every decline reason, and a hypothesis sweep, checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import onnxrep
from onnxrep.verify import verify
from tests.graphs import conv_bn, count_ops, init, make_model, vi

FOLD = ["fold_batchnorm"]


def fold(model):
    result = onnxrep.optimize(model, passes=FOLD, verify=False)
    onnx.checker.check_model(result.model, full_check=True)
    return result


def assert_same(original, optimized, rtol=None, atol=None):
    v = verify(original, optimized, samples=2, seed=1, rtol=rtol, atol=atol)
    assert v.ran, v.skipped_reason
    assert v.ok, v.lines()
    return v


def declined(result) -> list[str]:
    return result.report.passes["fold_batchnorm"]["declined"]


# ------------------------------------------------------------------------------------------ positive


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_folds_conv_bn(spatial, bias):
    model = conv_bn(spatial=spatial, bias=bias, size=6)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    assert count_ops(result.model, "Conv") == 1
    assert result.report.passes["fold_batchnorm"]["count"] == 1
    assert_same(model, result.model)


@pytest.mark.parametrize("group,cin,cout", [(1, 4, 6), (2, 4, 6), (4, 4, 8)])
@pytest.mark.parametrize("stride", [1, 2])
def test_folds_conv_transpose_bn_with_groups(group, cin, cout, stride):
    model = conv_bn(transpose=True, group=group, cin=cin, cout=cout, stride=stride, pad=1, bias=True)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    assert count_ops(result.model, "ConvTranspose") == 1
    assert_same(model, result.model)


def test_folds_depthwise():
    model = conv_bn(cin=8, cout=8, group=8, k=3)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    assert_same(model, result.model)


@pytest.mark.parametrize("param_form", ["constant", "identity"])
def test_folds_constant_node_and_identity_parameters(param_form):
    model = conv_bn(param_form=param_form, bias=True)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    assert_same(model, result.model)


def test_uses_each_nodes_epsilon():
    # eps 1e-3 vs the default 1e-5 changes results visibly on small variances
    model = conv_bn(eps=0.5)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    assert_same(model, result.model)


def test_float16_model():
    model = conv_bn(dtype=np.float16)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    assert result.model.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    assert_same(model, result.model)


def dynamo_bias_model():
    """Raw dynamo (optimize=False): the Conv bias is Expand(CastLike(Constant 0, x), Shape(W)[0:1])."""
    base = conv_bn(bias=False)
    g = base.graph
    zero = helper.make_node("Constant", [], ["zero"], value=onnx.numpy_helper.from_array(np.array(0.0, np.float64), "z"))
    cast = helper.make_node("CastLike", ["zero", "x"], ["zero_f"])
    shape = helper.make_node("Shape", ["W"], ["w_shape"], start=0, end=1)
    expand = helper.make_node("Expand", ["zero_f", "w_shape"], ["conv_bias"])
    conv = next(n for n in g.node if n.op_type == "Conv")
    conv.input.append("conv_bias")
    nodes = [zero, cast, shape, expand] + list(g.node)
    return make_model(nodes, list(g.input), list(g.output), list(g.initializer), opset=18)


def test_folds_raw_dynamo_bias_chain():
    model = dynamo_bias_model()
    onnx.checker.check_model(model, full_check=True)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    # the computed zero bias chain is gone with the fold: the Conv now has a real bias initializer
    assert count_ops(result.model, "Expand") == 0 and count_ops(result.model, "CastLike") == 0
    assert_same(model, result.model)


def test_shared_weight_is_copied_never_mutated():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    stats = [init(f"{p}{i}", v) for i in range(2) for p, v in
             zip(("s", "b", "m", "v"), (rng.uniform(.5, 2, 4), rng.normal(0, 1, 4), rng.normal(0, 1, 4), rng.uniform(.5, 2, 4)))]
    stats = [init(t.name, onnx.numpy_helper.to_array(t).astype(np.float32)) for t in stats]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "s0", "b0", "m0", "v0"], ["y0"]),
        helper.make_node("Conv", ["x", "W"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s1", "b1", "m1", "v1"], ["y1"]),
    ]
    model = make_model(nodes, [vi("x", shape=[1, 4, 5, 5])], [vi("y0"), vi("y1")], [init("W", w)] + stats)
    before = model.SerializeToString()
    result = fold(model)
    assert model.SerializeToString() == before  # the input model object is untouched
    assert count_ops(result.model, "BatchNormalization") == 0
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] != convs[1].input[1] and "W" not in (convs[0].input[1], convs[1].input[1])
    assert_same(model, result.model)


def test_weight_shared_with_a_node_that_stays():
    # W also feeds a Conv without BN: that Conv must still see the original W
    base = conv_bn()
    g = base.graph
    extra = helper.make_node("Conv", ["x", "W"], ["z"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    model = make_model(list(g.node) + [extra], list(g.input), list(g.output) + [vi("z")], list(g.initializer))
    result = fold(model)
    names = {t.name for t in result.model.graph.initializer}
    assert "W" in names and count_ops(result.model, "BatchNormalization") == 0
    assert_same(model, result.model)


def test_folds_inside_if_subgraph():
    inner = conv_bn(cin=2, cout=2, size=4).graph
    then = helper.make_graph(list(inner.node), "then", [], [vi("y")], list(inner.initializer))
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e")])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=other)
    model = make_model([node], [vi("x", shape=[1, 2, 4, 4]), helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                       [vi("out")])
    result = fold(model)
    assert result.report.passes["fold_batchnorm"]["count"] == 1
    assert result.report.after.batchnorm == 0
    feeds = [{"x": np.random.default_rng(0).random((1, 2, 4, 4), dtype=np.float32), "cond": np.array(True)}]
    v = verify(model, result.model, feeds=feeds)
    assert v.ran and v.ok, v.lines()


# ------------------------------------------------------------------------------------------ negative


def test_declines_training_mode():
    model = conv_bn(training_mode=1)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("training mode" in d for d in declined(result))


def test_declines_when_running_stat_outputs_are_used():
    model = conv_bn(bn_outputs=5, opset=13)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("running-statistics" in d for d in declined(result))


def test_declines_conv_output_with_another_consumer():
    base = conv_bn()
    g = base.graph
    extra = helper.make_node("Relu", ["c"], ["r"])
    model = make_model(list(g.node) + [extra], list(g.input), list(g.output) + [vi("r")], list(g.initializer))
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("2 consumers" in d for d in declined(result))
    assert_same(model, result.model)


def test_declines_conv_output_that_is_a_graph_output():
    base = conv_bn()
    g = base.graph
    model = make_model(list(g.node), list(g.input), list(g.output) + [vi("c")], list(g.initializer))
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("graph output" in d for d in declined(result))


@pytest.mark.parametrize("param", ["W", "bn_mean", "bn_scale"])
def test_declines_parameter_that_is_a_graph_input(param):
    base = conv_bn()
    g = base.graph
    inits = [t for t in g.initializer if t.name != param]
    source = next(t for t in g.initializer if t.name == param)
    extra_input = helper.make_tensor_value_info(param, source.data_type, list(source.dims))
    model = make_model(list(g.node), list(g.input) + [extra_input], list(g.output), inits)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("not constant" in d for d in declined(result))


def test_declines_initializer_that_is_also_a_graph_input():
    # IR < 4 style: an initializer listed as input is a default the user may override
    base = conv_bn()
    g = base.graph
    w = next(t for t in g.initializer if t.name == "W")
    model = make_model(list(g.node), list(g.input) + [helper.make_tensor_value_info("W", w.data_type, list(w.dims))],
                       list(g.output), list(g.initializer))
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 1
    assert [i.name for i in result.model.graph.input] == ["x", "W"]  # the interface is kept


def test_standalone_batchnorm_stays_and_says_why():
    rng = np.random.default_rng(0)
    params = [init(n, rng.uniform(0.5, 1.5, 3).astype(np.float32)) for n in ("s", "b", "m", "v")]
    model = make_model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
                       [vi("x", shape=[1, 3, 4, 4])], [vi("y")], params)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 1
    assert result.report.passes["fold_batchnorm"]["count"] == 0
    assert declined(result) == ["BatchNormalization: nothing to fold into (input from a graph input, read by graph output)"]


def test_idempotent():
    model = conv_bn(bias=True)
    first = onnxrep.optimize(model, verify=False)
    second = onnxrep.optimize(first.model, verify=False)
    assert all(p["count"] == 0 for p in second.report.passes.values())
    assert second.model.SerializeToString() == first.model.SerializeToString()


# ---------------------------------------------------------------------------------------- properties


@st.composite
def conv_bn_cases(draw):
    spatial = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 4]))
    transpose = draw(st.booleans())
    cin = group * draw(st.integers(1, 3))
    cout = group * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 2, 3]))
    dilation = draw(st.integers(1, 2))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, max(0, (k - 1) * dilation)))
    size = draw(st.integers((k - 1) * dilation + 1, 7)) if spatial < 3 else draw(st.integers((k - 1) * dilation + 1, 5))
    return dict(spatial=spatial, group=group, transpose=transpose, cin=cin, cout=cout, k=k, dilation=dilation,
                stride=stride, pad=pad, size=size, bias=draw(st.booleans()),
                eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
                dtype=draw(st.sampled_from([np.float32, np.float16])), seed=draw(st.integers(0, 1000)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_bn_cases())
def test_property_fold_is_exact(case):
    model = conv_bn(**case)
    result = fold(model)
    assert count_ops(result.model, "BatchNormalization") == 0
    if case["dtype"] == np.float16:
        # float16: the folded weights are rounded once, the original rounds after each op
        assert_same(model, result.model, rtol=2e-2, atol=2e-2)
    else:
        assert_same(model, result.model)


def test_constant_chains_are_evaluated_at_the_models_opset():
    """Regression: const_value ran its chains at the newest opset. At opset 11 Unsqueeze takes its axes as
    an attribute (an input from 13), so a weight computed by Unsqueeze was 'not constant' and the BN stayed."""
    from onnx import helper

    from tests.graphs import bn_params, init, make_model, vi

    rng = np.random.default_rng(0)
    bn = bn_params(rng, 1)
    nodes = [helper.make_node("Unsqueeze", ["w3"], ["w"], axes=[0]),
             helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], epsilon=1e-3)]
    inits = [init("w3", rng.normal(size=(2, 3, 3)).astype(np.float32)),
             *(init(k, bn[n]) for k, n in (("s", "scale"), ("b", "bias"), ("m", "mean"), ("v", "var")))]
    model = make_model(nodes, [vi("x", shape=[1, 2, 5, 5])], [vi("y")], inits, opset=11)
    result = onnxrep.optimize(model, passes=["fold_batchnorm"])
    assert result.verified, result.report.text()
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph.node), result.report.text()
