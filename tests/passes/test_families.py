"""RepVGG-style families beyond YOLOv9: onnxrep's output against each family's own re-parameterization.

For every block of tests/families.py, in training form (Conv -> BN everywhere) and TorchScript form
(Conv -> BN folded by the exporter, the other BNs and all branches left), `onnxrep.optimize` must reach
the family's deploy form built independently in numpy: no BatchNormalization, the same ops (so the same
Conv count), the same parameter count, outputs equal in onnxruntime with optimizations off. Then the
decline cases, the reasons `inspect` shows for a BN that stays, hypothesis over channels, groups,
kernels and strides, and small whole networks (RepVGG-A0, MobileOne-S0, RepViT).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import onnxrep
from onnxrep.inspect import inspect
from onnxrep.report import model_stats
from tests import families as F

SETTINGS = {"max_examples": 10, "deadline": None, "suppress_health_check": [HealthCheck.too_slow],
            "derandomize": True}


# ------------------------------------------------------------------------------------------ helpers


def run(model, feed):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def feed_for(model, seed=7):
    rng = np.random.default_rng(seed)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def assert_close(got, want):
    """Equal to float32 rounding: the error relative to the output's scale (float32 re-association)."""
    for a, b in zip(got, want):
        assert a.shape == b.shape
        scale = max(1.0, float(np.abs(b).max()))
        assert float(np.abs(a.astype(np.float64) - b).max()) <= 1e-5 * scale, float(np.abs(a - b).max())


def optimize(model, **kw):
    result = onnxrep.optimize(model, **kw)
    assert result.ok, result.verification.lines()
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, check_type=True, strict_mode=True)
    return result


def ops(model):
    return Counter(n.op_type for n in model.graph.node)


def declined(result, name="fold_batchnorm"):
    return result.report.passes[name]["declined"]


def _scales_into_linear(model) -> int:
    """Mul-by-a-constant nodes whose only reader is a Conv or Gemm (fold_batchnorm folds those too; the
    families' deploy forms, written like timm's reparameterize_model(), keep them)."""
    consts = {t.name for t in model.graph.initializer}
    readers = Counter(i for n in model.graph.node for i in n.input)
    by_input = {}
    for n in model.graph.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    count = 0
    for n in model.graph.node:
        if n.op_type == "Mul" and sum(i in consts for i in n.input) == 1 and readers[n.output[0]] == 1:
            if by_input[n.output[0]][0].op_type in ("Conv", "Gemm") and by_input[n.output[0]][0].input[0] == n.output[0]:
                count += 1
    return count


def assert_reaches_deploy(forms, form):
    """onnxrep(forms[form]) has the deploy form's ops, Conv count and parameter count, and its outputs."""
    deploy = forms["deploy"]
    result = optimize(forms[form])
    out = result.model
    assert F.counts(out) == (F.counts(deploy)[0], 0)
    want = ops(deploy)
    want["Mul"] -= _scales_into_linear(deploy)   # GELU's final *0.5 before a Conv folds into its weights
    assert ops(out) == +want
    assert model_stats(out).parameters == model_stats(deploy).parameters
    feed = feed_for(deploy)
    assert_close(run(out, feed), run(deploy, feed))
    assert_close(run(forms[form], feed), run(deploy, feed))  # the reference itself is right
    return result


# ------------------------------------------------------------------------------------------ blocks


@pytest.mark.parametrize("form", F.FORMS)
@pytest.mark.parametrize("name", sorted(F.BLOCKS))
def test_block_reaches_its_deploy_form(name, form):
    forms = F.block_forms(name)
    assert F.counts(forms["training"])[1] > 0 and sum(F.counts(forms[form])) > sum(F.counts(forms["deploy"]))
    result = assert_reaches_deploy(forms, form)
    assert result.report.passes["merge_branches"]["count"] >= 1
    # a second run has nothing left to do
    again = onnxrep.optimize(result.model, verify=False)
    assert all(p["count"] == 0 for n, p in again.report.passes.items() if n not in ("canonicalize", "tidy"))


@pytest.mark.parametrize("form", F.FORMS)
@pytest.mark.parametrize("cfg", [
    {"name": "repvgg", "group": 2}, {"name": "repvgg", "group": 8}, {"name": "repvgg", "k": 5},
    {"name": "repvgg_down", "group": 4}, {"name": "acnet", "k": 5, "stride": 2},
    {"name": "mobileone_dw", "stride": 2, "branches": 2}, {"name": "mobileone", "cout": 12, "stride": 2},
    {"name": "mobileone_pw", "cout": 12, "branches": 1}, {"name": "dbb", "group": 2, "stride": 2},
    {"name": "dbb", "k": 5}, {"name": "dbb_dw", "stride": 2}, {"name": "repghost", "cin": 4, "dw": 5},
    {"name": "repvit", "se": False},
])
def test_block_variants(cfg, form):
    cfg = dict(cfg)
    assert_reaches_deploy(F.block_forms(cfg.pop("name"), size=9, **cfg), form)


def test_repvit_bn_after_the_sum_folds_after_the_merge():
    # BN(dw3x3(x) + dw1x1(x) + x): round 1 has nothing to fold it into (its input is an Add), the merge
    # turns the Add into a Conv, round 2 folds the BN into it
    model = F.block_model("repvit_dw", "torchscript")
    result = optimize(model)
    assert F.counts(result.model) == (1, 0)
    assert result.report.passes["fold_batchnorm"]["count"] == 1
    assert result.report.passes["merge_branches"]["count"] == 1
    assert declined(result) == []  # notes of the last round: nothing left


@pytest.mark.parametrize("reader", ["conv1x1", "conv3x3", "two"])
def test_bn_after_a_sum_whatever_reads_it(reader):
    # the BN after the sum may also fold forward into an unpadded Conv first: either way one Conv, no BN
    net = F.Net("torchscript")
    block = F.RepVGGDW.make(np.random.default_rng(3), 8)
    y = block.emit(net, "x")
    rng = np.random.default_rng(4)
    if reader == "conv1x1":
        y = net.conv(y, F.rand_conv(rng, 8, 8, 1), rng.normal(size=8), pads=[0] * 4)
    elif reader == "conv3x3":
        y = net.conv(y, F.rand_conv(rng, 8, 8, 3), rng.normal(size=8))
    else:
        y = net.node("Add", [net.act(y, "relu"), y])
    model = net.model("x", y, [1, 8, 8, 8])
    result = optimize(model)
    assert F.counts(result.model)[1] == 0
    assert F.counts(result.model)[0] == (1 if reader == "two" else 2)


@pytest.mark.parametrize("layout", [
    "bn_gemm", "gemm_bn", "matmul_add_bn", "bn_matmul_add",
])
def test_classifier_head_bn_folds_into_the_linear(layout):
    # RepViT's head: GlobalAveragePool -> Flatten -> BN1d -> Linear (Gemm transB=1 from TorchScript,
    # MatMul + Add from other exporters); and the Linear -> BN1d order of other heads
    rng = np.random.default_rng(5)
    head = F.BNLinear.make(rng, 8, 5)
    bn_after = F.rand_bn(rng, 5)
    s, t = (head.bn if layout.startswith("bn") else bn_after).scale_shift()
    forms = {}
    for form in F.ALL_FORMS:
        net = F.Net(form)
        x = net.head("x")
        if form == "deploy":
            w, b = head.w.astype(np.float64), head.b.astype(np.float64)
            if layout.startswith("bn"):
                w, b = w * s[None, :], t @ w.T + b
            else:
                w, b = w * s[:, None], b * s + t
        else:
            if layout.startswith("bn"):
                x = net.bn(x, head.bn)
            w, b = head.w, head.b
        if "matmul" in layout:
            y = net.node("Add", [net.node("MatMul", [x, net.const("fc.wT", w.T)]), net.const("fc.b", b)])
        else:
            y = net.gemm(x, w, b)
        if form != "deploy" and not layout.startswith("bn"):
            y = net.bn(y, bn_after)
        forms[form] = net.model("x", y, [2, 8, 4, 4], y_rank=2)
    deploy = forms["deploy"]
    result = optimize(forms["training"])
    assert F.counts(result.model)[1] == 0 and result.report.passes["fold_batchnorm"]["count"] == 1
    assert model_stats(result.model).parameters == model_stats(deploy).parameters
    assert ops(result.model) == ops(deploy)
    feed = feed_for(deploy)
    assert_close(run(result.model, feed), run(deploy, feed))


# ------------------------------------------------------------------------------------------ AvgPool (DBB)


def avgpool_sum(*, k=3, pool_k=None, stride=1, pad=None, pool_pad=None, count_include_pad=1, ceil_mode=0,
                group=1, c=6, bn=True, size=7, pool_stride=None):
    """x -> Conv_k(x) + [BN](AveragePool(x)): the DBB avg branch beside a conv."""
    net = F.Net("torchscript")
    rng = np.random.default_rng(11)
    pad = k // 2 if pad is None else pad
    pool_k = k if pool_k is None else pool_k
    conv = net.conv("x", F.rand_conv(rng, c, c, k, group), rng.normal(size=c), stride=stride, pads=[pad] * 4,
                    group=group)
    pool = net.avgpool("x", pool_k, stride if pool_stride is None else pool_stride,
                       pool_k // 2 if pool_pad is None else pool_pad, count_include_pad, ceil_mode)
    if bn:
        pool = net.bn(pool, F.rand_bn(rng, c))
    return net.model("x", net.add(conv, pool), [1, c, size, size])


@pytest.mark.parametrize("cfg", [
    {}, {"bn": False}, {"group": 2}, {"group": 6}, {"stride": 2}, {"k": 5, "size": 9},
    {"pad": 0, "pool_pad": 0, "count_include_pad": 0},     # no padding: count_include_pad doesn't matter
    {"k": 5, "pool_k": 3, "size": 9},                        # a smaller pool sits in the Conv's centre
])
def test_avgpool_branch_merges(cfg):
    model = avgpool_sum(**cfg)
    result = optimize(model)
    assert ops(result.model) == Counter({"Conv": 1})
    assert result.report.passes["merge_branches"]["declined"] == []
    feed = feed_for(model)
    assert_close(run(result.model, feed), run(model, feed))


@pytest.mark.parametrize("cfg,reason", [
    ({"count_include_pad": 0}, "count_include_pad=0"),
    ({"ceil_mode": 1, "size": 7, "stride": 2}, "ceil_mode=1"),
    ({"k": 1, "pool_k": 3}, "larger than the Convs' 1x1"),
    ({"k": 3, "pool_k": 2, "pool_pad": [0, 0, 1, 1]}, "odd and even"),
])
def test_avgpool_branch_declines(cfg, reason):
    model = avgpool_sum(**cfg)
    result = optimize(model)
    notes = " | ".join(declined(result, "merge_branches"))
    assert reason in notes
    assert ops(result.model)["AveragePool"] == 1
    assert F.counts(result.model)[1] == 1  # the pool's BN has nothing to fold into, and says so
    assert "nothing to fold into (input from AveragePool" in " | ".join(declined(result))


def test_avgpool_branch_declines_different_stride():
    # equal output sizes from different strides: Conv k3 s2 p1 on 8 -> 4, AvgPool k5 s1 p0 on 8 -> 4
    net = F.Net("torchscript")
    rng = np.random.default_rng(2)
    conv = net.conv("x", F.rand_conv(rng, 4, 4, 3), rng.normal(size=4), stride=2, pads=[1] * 4)
    pool = net.avgpool("x", 5, 1, 0)
    model = net.model("x", net.add(conv, pool), [1, 4, 8, 8])
    result = optimize(model)
    assert "different strides" in " | ".join(declined(result, "merge_branches"))
    assert F.counts(result.model)[0] == 1 and ops(result.model)["AveragePool"] == 1


def test_avgpool_without_a_conv_is_left_alone():
    net = F.Net("torchscript")
    y = net.add("x", net.avgpool("x", 3, 1, 1))
    model = net.model("x", y, [1, 4, 6, 6])
    result = optimize(model)
    assert ops(result.model) == Counter({"AveragePool": 1, "Add": 1})


# ------------------------------------------------------------------------------------------ declines


def test_bn_before_a_padded_conv_stays_and_inspect_says_why():
    # BN -> Conv3x3 pad 1: zero padding would meet the BN's shift; BN -> Conv1x1 pad 0 folds
    net = F.Net("torchscript")
    rng = np.random.default_rng(9)
    a = net.conv(net.bn("x", F.rand_bn(rng, 6), "pre_bn"), F.rand_conv(rng, 6, 6, 3), rng.normal(size=6))
    b = net.conv(net.bn(a, F.rand_bn(rng, 6), "pre_bn1x1"), F.rand_conv(rng, 6, 6, 1), rng.normal(size=6),
                 pads=[0] * 4)
    model = net.model("x", b, [1, 6, 8, 8])
    result = optimize(model)
    assert F.counts(result.model) == (2, 1)
    (note,) = declined(result)
    assert "the Conv pads its input" in note
    report = inspect(model)
    assert report.passes["fold_batchnorm"]["count"] == 1
    assert any("the Conv pads its input" in d for d in report.passes["fold_batchnorm"]["declined"])
    assert "the Conv pads its input" in report.text()


def test_bn_with_nothing_to_fold_into_stays_and_inspect_says_why():
    # BN(Conv(x) + y): the sum's terms read different tensors, so no merge makes it a Conv
    net = F.Net("torchscript")
    rng = np.random.default_rng(10)
    s = net.add(net.conv("x", F.rand_conv(rng, 4, 4, 3), rng.normal(size=4)), net.node("Relu", ["x"]))
    y = net.act(net.bn(s, F.rand_bn(rng, 4), "post_bn"), "relu")
    model = net.model("x", y, [1, 4, 6, 6])
    result = optimize(model)
    assert F.counts(result.model)[1] == 1
    assert any("nothing to fold into (input from Add, read by Relu)" in d for d in declined(result))
    text = inspect(model).text(verbose=True)
    assert "nothing to fold into (input from Add, read by Relu)" in text
    assert "declined /post_bn" in text


@pytest.mark.parametrize("form", F.FORMS)
def test_non_constant_identity_bn_stats_decline(form):
    # the identity BN's running mean is a graph input: the 3x3 and 1x1 merge, the BN stays, with its reason
    model = F.block_model("repvgg", form)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization" and "rbr_identity" in n.name)
    mean = bn.input[3]
    init = next(t for t in model.graph.initializer if t.name == mean)
    model.graph.initializer.remove(init)
    model.graph.input.append(helper.make_tensor_value_info(mean, onnx.TensorProto.FLOAT, [8]))
    result = onnxrep.optimize(model, input_data=[{**feed_for(F.block_model("repvgg", form)),
                                                   mean: np.linspace(-1, 1, 8).astype(np.float32)}])
    assert result.ok
    assert F.counts(result.model) == (1, 1)
    assert ops(result.model)["Add"] == 1
    assert any("parameters are not constant" in d for d in declined(result, "merge_branches"))
    assert any("BatchNormalization parameters are not constant" in d for d in declined(result))
    assert "parameters are not constant" in inspect(model).text()


def test_shared_weights_are_copied_never_mutated():
    # two RepVGG blocks with the very same parameters, de-duplicated to one set of initializers (as the
    # TorchScript exporter writes them): each merge builds new tensors; the input model is untouched
    block = F.block_params("repvgg", seed=3)
    forms = {}
    for form in F.ALL_FORMS:
        net = F.Net(form)
        y = block.emit(net, block.emit(net, "x"))
        model = net.model("x", y, [1, 8, 8, 8])
        first = {}
        for t in list(model.graph.initializer):
            key = (tuple(t.dims), t.raw_data)
            if key in first:
                for n in model.graph.node:
                    n.input[:] = [first[key] if i == t.name else i for i in n.input]
                model.graph.initializer.remove(t)
            else:
                first[key] = t.name
        forms[form] = model
    for form in F.FORMS:
        single = F.block_model("repvgg", form, seed=3)
        assert len(forms[form].graph.initializer) == len(single.graph.initializer)
        snapshot = forms[form].SerializeToString()
        result = assert_reaches_deploy(forms, form)
        assert forms[form].SerializeToString() == snapshot
        assert F.counts(result.model) == (2, 0)


@pytest.mark.parametrize("form", F.FORMS)
def test_branch_with_a_second_consumer_is_left_out(form):
    # the 1x1 branch's output is also a graph output: the 3x3 and the identity merge, the 1x1 stays
    model = F.block_model("repvgg", form)
    inner_add = next(n for n in model.graph.node if n.op_type == "Add")
    one = inner_add.input[1]  # Add(Add(dense, 1x1), identity): the inner Add's second input
    model.graph.output.append(helper.make_tensor_value_info(one, onnx.TensorProto.FLOAT, [1, 8, 8, 8]))
    result = optimize(model)
    assert F.counts(result.model) == (2, 0)
    notes = " | ".join(declined(result, "merge_branches"))
    assert "is a graph output" in notes


def test_sum_with_a_second_consumer_keeps_its_bn():
    # RepViT's BN after the sum, when the sum itself is also read elsewhere: the branches merge (the sum
    # keeps its name), but the merged Conv's output has two readers, so its BN stays, and says why
    net = F.Net("torchscript")
    block = F.RepVGGDW.make(np.random.default_rng(6), 8)
    y = block.emit(net, "x")
    bn = net.nodes[-1]
    s = bn.input[0]
    y = net.add(net.act(y, "relu"), net.act(s, "relu"))
    model = net.model("x", y, [1, 8, 8, 8])
    result = optimize(model)
    assert F.counts(result.model) == (1, 1)
    assert any("Conv output has 2 consumers" in d for d in declined(result))


def test_training_mode_bn_is_never_folded_or_merged():
    model = F.block_model("repghost", "torchscript")
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    bn.output.extend([bn.output[0] + "_rm", bn.output[0] + "_rv"])
    result = onnxrep.optimize(model, verify=False)
    assert F.counts(result.model)[1] == 1
    assert any("training mode" in d for d in declined(result, "merge_branches"))


# ------------------------------------------------------------------------------------------ hypothesis


def _groups(c):
    return st.sampled_from([g for g in (1, 2, 4, c) if c % g == 0])


@st.composite
def family_case(draw, name):
    c = draw(st.sampled_from([2, 4, 6, 8]))
    size = draw(st.integers(5, 9))
    form = draw(st.sampled_from(F.FORMS))
    seed = draw(st.integers(0, 2 ** 16))
    if name == "repvgg":
        cfg = {"c": c, "cout": draw(st.sampled_from([c, 2 * c])), "stride": draw(st.sampled_from([1, 2])),
                   "group": draw(_groups(c)), "k": draw(st.sampled_from([3, 5])),
                   "identity": draw(st.booleans()), "act": draw(st.sampled_from(["relu", "silu"]))}
        if cfg["cout"] % cfg["group"]:
            cfg["group"] = 1
    elif name == "acnet":
        cfg = {"c": c, "k": draw(st.sampled_from([3, 5])), "stride": draw(st.sampled_from([1, 2])),
               "group": draw(_groups(c))}
    elif name == "mobileone":
        cfg = {"c": c, "cout": draw(st.sampled_from([c, c + 2])), "stride": draw(st.sampled_from([1, 2])),
                   "branches": draw(st.integers(1, 4)), "k": draw(st.sampled_from([3, 5]))}
    elif name == "repvit_dw":
        cfg = {"c": c, "k": draw(st.sampled_from([3, 5]))}
    elif name == "repghost":
        cfg = {"c": c, "cin": draw(st.sampled_from([2, 4, 8])), "dw": draw(st.sampled_from([3, 5]))}
    elif name == "dbb":
        cfg = {"c": c, "k": draw(st.sampled_from([3, 5])), "stride": draw(st.sampled_from([1, 2])),
               "group": draw(_groups(c))}
    else:
        raise ValueError(name)
    return name, form, size, seed, cfg


@pytest.mark.parametrize("name", ["repvgg", "acnet", "mobileone", "repvit_dw", "repghost", "dbb"])
def test_property_family_blocks_reach_deploy(name):
    @settings(**SETTINGS)
    @given(family_case(name))
    def check(case):
        name, form, size, seed, cfg = case
        assert_reaches_deploy(F.block_forms(name, seed=seed, size=size, **cfg), form)

    check()


# ------------------------------------------------------------------------------------------ networks


@pytest.mark.parametrize("form", F.FORMS)
@pytest.mark.parametrize("name", sorted(F.NETWORKS))
def test_network_reaches_its_deploy_form(name, form):
    forms = F.network_forms(name)
    result = assert_reaches_deploy(forms, form)
    # the whole default pipeline, verified in onnxruntime by optimize itself
    assert result.verification is not None and result.verification.ok
    assert result.report.after.batchnorm == 0
    assert result.report.after.conv == F.counts(forms["deploy"])[0]
