"""merge_branches: RepConv/RepVGG/ACNet branch merging on tiny graphs, every decline reason, a hypothesis
sweep, and YOLOv9 models end to end. Every result is checked in onnxruntime with optimizations off."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.passes import Context, eliminate_dead_code
from onnxrep.passes.merge_branches import MergeBranches
from onnxrep.verify import verify

MERGE = ["merge_branches"]
ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


# ------------------------------------------------------------------------------------------ builders


def conv(k=3, **kw):
    """A Conv branch: k is an int (square) or a tuple; pads None means centred 'same' padding."""
    return dict(kind="conv", k=k, **kw)


def ident(bn=False, **kw):
    return dict(kind="identity", bn=bn, **kw)


def vi(name, dtype=np.float32, shape=None, rank=4):
    """A value info; without a shape, a symbolic one of `rank` (the checker wants a shape on graph I/O)."""
    shape = [f"{name}_d{i}" for i in range(rank)] if shape is None else shape
    return helper.make_tensor_value_info(name, ONNX_TYPE[np.dtype(dtype)], shape)


def bn_arrays(rng, c, dtype):
    scale = rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)
    stats = (scale, rng.normal(0, 1, c), rng.normal(0, 1, c), rng.uniform(0.3, 2.0, c))
    return [a.astype(dtype) for a in stats]


def branches_model(branches, *, cin=4, cout=None, spatial=2, size=6, group=1, dtype=np.float32, combine="add",
                   extra_terms=(), more_inputs=None, seed=0, opset=17, x_shape="static", outputs=("y",)):
    """x -> each branch -> one sum -> y.

    combine: "add" (left chain Add(Add(t0, t1), t2)), "add_right" (Add(t0, Add(t1, t2))), "sum" (one Sum).
    extra_terms: names of further graph inputs added into the sum (not branches of x).
    more_inputs: {name: shape} of further graph inputs (a branch may read one with input=name).
    """
    rng = np.random.default_rng(seed)
    cout = cin if cout is None else cout
    nodes, inits, terms = [], [], []
    for i, br in enumerate(branches):
        bn = br.get("bn", False)
        if br["kind"] == "identity":
            t = "x"
            if bn:
                names = [f"id{i}_{p}" for p in ("s", "b", "m", "v")]
                c = br.get("bn_channels", cin)
                inits += [numpy_helper.from_array(a, n) for a, n in zip(bn_arrays(rng, c, dtype), names)]
                attrs, outs = {"epsilon": 1e-3}, [f"t{i}"]
                if br.get("training"):
                    attrs["training_mode"], outs = 1, outs + [f"rm{i}", f"rv{i}"]
                nodes.append(helper.make_node("BatchNormalization", ["x", *names], outs, name=f"idbn{i}",
                                              **attrs))
                t = f"t{i}"
            terms.append(t)
            continue
        k = br["k"] if isinstance(br["k"], (tuple, list)) else (br["k"],) * spatial
        d = br.get("dilation", 1)
        s = br.get("stride", 1)
        g = br.get("group", group)
        co = br.get("cout", cout)
        w = rng.standard_normal((co, cin // g) + tuple(k)) / np.sqrt(np.prod(k) * cin // g)
        wname = br.get("weight", f"W{i}")
        if wname == f"W{i}":
            inits.append(numpy_helper.from_array(w.astype(dtype), wname))
        inputs = [br.get("input", "x"), wname]
        if br.get("bias"):
            inits.append(numpy_helper.from_array(rng.normal(0, 0.5, co).astype(dtype), f"B{i}"))
            inputs.append(f"B{i}")
        attrs = {"kernel_shape": list(k), "strides": [s] * spatial, "dilations": [d] * spatial, "group": g}
        if br.get("auto_pad"):
            attrs["auto_pad"] = br["auto_pad"]
        else:
            attrs["pads"] = br.get("pads") or [(kk - 1) // 2 * d for kk in k] * 2
        out = f"c{i}" if bn else f"t{i}"
        nodes.append(helper.make_node("Conv", inputs, [out], name=f"conv{i}", **attrs))
        if bn:
            names = [f"bn{i}_{p}" for p in ("s", "b", "m", "v")]
            inits += [numpy_helper.from_array(a, n) for a, n in zip(bn_arrays(rng, co, dtype), names)]
            nodes.append(helper.make_node("BatchNormalization", [out, *names], [f"t{i}"], name=f"bn{i}",
                                          epsilon=1e-3))
        terms.append(f"t{i}")
    terms += list(extra_terms)
    if combine == "sum":
        nodes.append(helper.make_node("Sum", terms, ["y"], name="sum"))
    elif combine == "add_right":
        acc = terms[-1]
        for j, t in enumerate(reversed(terms[:-1])):
            out = "y" if j == len(terms) - 2 else f"s{j}"
            nodes.append(helper.make_node("Add", [t, acc], [out], name=f"add{j}"))
            acc = out
    else:
        acc = terms[0]
        for j, t in enumerate(terms[1:]):
            out = "y" if j == len(terms) - 2 else f"s{j}"
            nodes.append(helper.make_node("Add", [acc, t], [out], name=f"add{j}"))
            acc = out
    spatial_dims = [size] * spatial if x_shape == "static" else [f"d{i}" for i in range(spatial)]
    xs = [1 if x_shape == "static" else "N", cin, *spatial_dims]
    inputs = [vi("x", dtype, xs)] + [vi(e, dtype, rank=2 + spatial) for e in extra_terms]
    inputs += [vi(name, dtype, shape) for name, shape in (more_inputs or {}).items()]
    graph = helper.make_graph(nodes, "g", inputs, [vi(o, dtype, rank=2 + spatial) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def merge(model, passes=MERGE):
    result = onnxrep.optimize(model, passes=passes, verify=False)
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, check_type=True, strict_mode=True)
    return result


def count_ops(model, op):
    return sum(n.op_type == op for n in model.graph.node)


def declined(result):
    return result.report.passes["merge_branches"]["declined"]


def merged_count(result):
    return result.report.passes["merge_branches"]["count"]


def run(model, feed):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def random_feed(model, seed=3, sizes=None):
    rng = np.random.default_rng(seed)
    feed = {}
    for i in model.graph.input:
        t = i.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if not t.HasField("shape") or None in shape:
            shape = sizes[i.name]
        feed[i.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def assert_same(original, optimized, dtype=np.float32, feed=None):
    """verify() with onnxruntime (optimizations off), then a direct comparison with explicit tolerances."""
    tol = {"rtol": 2e-2, "atol": 2e-2} if np.dtype(dtype) == np.float16 else {"rtol": 1e-4, "atol": 1e-5}
    v = verify(original, optimized, samples=2, seed=1, feeds=[feed] if feed else None, **tol)
    assert v.ran, v.skipped_reason
    assert v.ok, v.lines()
    feed = feed or random_feed(original)
    for a, b in zip(run(original, feed), run(optimized, feed)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), **tol)


def the_conv(model):
    (node,) = [n for n in model.graph.node if n.op_type == "Conv"]
    return node, {a.name: helper.get_attribute_value(a) for a in node.attribute}


# ------------------------------------------------------------------------------------------ positive


@pytest.mark.parametrize("order", ["add", "add_right"])
@pytest.mark.parametrize("bias", [(False, False), (True, False), (False, True), (True, True)])
def test_merges_repconvn_pair(order, bias):
    branches = [conv(3, bias=bias[0]), conv(1, bias=bias[1])]
    if order == "add_right":
        branches = branches[::-1]  # Add(Conv1x1, Conv3x3): the other operand order
    model = branches_model(branches, combine=order)
    result = merge(model)
    assert merged_count(result) == 1 and declined(result) == []
    assert count_ops(result.model, "Conv") == 1 and count_ops(result.model, "Add") == 0
    node, attrs = the_conv(result.model)
    assert attrs["kernel_shape"] == [3, 3] and attrs["pads"] == [1, 1, 1, 1]
    assert len(node.input) == (3 if any(bias) else 2)
    assert [o.name for o in result.model.graph.output] == ["y"] and node.output[0] == "y"
    assert_same(model, result.model)


@pytest.mark.parametrize("spatial,size", [(1, 9), (2, 6), (3, 4)])
def test_merges_1d_2d_3d(spatial, size):
    model = branches_model([conv(3, bias=True), conv(1, bias=True)], spatial=spatial, size=size)
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1
    assert the_conv(result.model)[1]["kernel_shape"] == [3] * spatial
    assert_same(model, result.model)


@pytest.mark.parametrize("combine", ["add", "add_right", "sum"])
def test_merges_acnet_square_and_asymmetric(combine):
    model = branches_model([conv(3), conv((1, 3), bias=True), conv((3, 1), bias=True)], combine=combine)
    result = merge(model)
    assert merged_count(result) == 1
    assert count_ops(result.model, "Conv") == 1
    assert count_ops(result.model, "Add") + count_ops(result.model, "Sum") == 0
    assert_same(model, result.model)


def test_merges_asymmetric_pair_into_their_envelope():
    # 1x3 + 3x1 alone: the merged kernel is 3x3 (neither branch's own shape)
    model = branches_model([conv((1, 3)), conv((3, 1))])
    result = merge(model)
    _, attrs = the_conv(result.model)
    assert attrs["kernel_shape"] == [3, 3] and attrs["pads"] == [1, 1, 1, 1]
    assert_same(model, result.model)


def test_merges_smaller_odd_kernels_into_the_largest():
    model = branches_model([conv(3, bias=True), conv(5), conv(1, bias=True)], combine="sum", size=7)
    result = merge(model)
    assert the_conv(result.model)[1]["kernel_shape"] == [5, 5]
    assert_same(model, result.model)


@pytest.mark.parametrize("stride,dilation,size", [(2, 1, 7), (1, 2, 8), (2, 2, 9)])
def test_merges_strided_and_dilated(stride, dilation, size):
    same = {"stride": stride, "dilation": dilation}
    model = branches_model([conv(3, **same), conv(1, bias=True, **same)], size=size)
    result = merge(model)
    _, attrs = the_conv(result.model)
    assert attrs["strides"] == [stride] * 2 and attrs["dilations"] == [dilation] * 2
    assert attrs["pads"] == [dilation] * 4
    assert_same(model, result.model)


def test_merges_uncentred_but_aligned_pads():
    # 3x3 padded (2 before, 1 after) and 1x1 padded (1, 0): not 'same', but the 1x1 sits in the centre
    model = branches_model([conv(3, pads=[2, 2, 1, 1]), conv(1, pads=[1, 1, 0, 0])], size=5)
    result = merge(model)
    assert the_conv(result.model)[1]["pads"] == [2, 2, 1, 1]
    assert_same(model, result.model)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("group,cin", [(1, 4), (2, 4), (4, 4), (3, 6)])
def test_merges_identity_branch(bn, group, cin):
    # RepVGG / YOLOv7 RepConv: 3x3 + 1x1 + identity (x itself or BN(x)), with groups and depthwise
    model = branches_model([conv(3, bias=True), conv(1, bias=True), ident(bn=bn)], cin=cin, group=group)
    result = merge(model)
    assert merged_count(result) == 1 and declined(result) == []
    assert count_ops(result.model, "Conv") == 1 and count_ops(result.model, "BatchNormalization") == 0
    assert count_ops(result.model, "Add") == 0
    assert the_conv(result.model)[1]["group"] == group
    assert_same(model, result.model)


def test_merges_identity_with_a_single_conv():
    # x + Conv3x3(x) (RepGhost-like BN branch + depthwise conv)
    model = branches_model([ident(bn=True), conv(3, group=4)], cin=4)
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1 and count_ops(result.model, "Add") == 0
    assert_same(model, result.model)


def test_merges_mobileone_block():
    # k parallel depthwise 3x3 branches + a 1x1 branch + identity BN, each conv with its BN still attached
    branches = [conv(3, bn=True), conv(3, bn=True), conv(3, bn=True), conv(1, bn=True), ident(bn=True)]
    model = branches_model(branches, cin=8, group=8, combine="sum")
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1 and count_ops(result.model, "BatchNormalization") == 0
    assert_same(model, result.model)


@pytest.mark.parametrize("passes", [["merge_branches"], ["fold_batchnorm", "merge_branches"]])
def test_merges_branches_that_still_carry_batchnorm(passes):
    model = branches_model([conv(3, bn=True), conv(1, bn=True, bias=True)], cin=4, cout=6)
    result = merge(model, passes)
    assert count_ops(result.model, "Conv") == 1 and count_ops(result.model, "BatchNormalization") == 0
    assert_same(model, result.model)


@pytest.mark.parametrize("mode,size", [("SAME_UPPER", 6), ("SAME_LOWER", 6), ("VALID", 6)])
def test_merges_auto_pad_stride_1(mode, size):
    # resolved to explicit pads; VALID centres only kernels of equal size (3x3 + 3x3)
    branches = [conv(3, auto_pad=mode), conv(1 if mode != "VALID" else 3, auto_pad=mode, bias=True)]
    model = branches_model(branches, size=size)
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1
    assert "auto_pad" not in the_conv(result.model)[1]
    assert_same(model, result.model)


def test_merges_auto_pad_same_strided_with_static_size():
    # odd size, stride 2: SAME pads 3x3 by (1, 1) and 1x1 by (0, 0): centred
    same = {"auto_pad": "SAME_UPPER", "stride": 2}
    model = branches_model([conv(3, **same), conv(1, **same)],
                           size=7)
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1
    assert_same(model, result.model)


@pytest.mark.parametrize("combine", ["add", "add_right", "sum"])
def test_keeps_non_branch_terms_of_the_sum(combine):
    # Add(Add(conv_a(x), conv_b(x)), z): the two branches merge, z stays in the sum
    model = branches_model([conv(3), conv(1, bias=True)], extra_terms=["z"], combine=combine)
    result = merge(model)
    assert merged_count(result) == 1
    assert count_ops(result.model, "Conv") == 1 and count_ops(result.model, "Add") == 1
    feed = random_feed(model, sizes={"z": [1, 4, 6, 6]})
    assert_same(model, result.model, feed=feed)


def test_keeps_broadcast_constant_term():
    # a bias-like constant added to the sum is not a branch: it stays, the two convs merge
    rng = np.random.default_rng(0)
    base = branches_model([conv(3), conv(1)])
    g = base.graph
    const = numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "cb")
    nodes = list(g.node)
    nodes[-1].output[0] = "s_last"
    nodes.append(helper.make_node("Add", ["s_last", "cb"], ["y"], name="add_const"))
    graph = helper.make_graph(nodes, "g", list(g.input), list(g.output), list(g.initializer) + [const])
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = 8
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1 and count_ops(result.model, "Add") == 1
    assert_same(model, result.model)


def test_merges_two_groups_in_one_sum():
    # conv_a(x) + conv_b(x) + conv_c(z) + conv_d(z): two merged groups, one Add left
    model = branches_model([conv(3), conv(1), conv(3, input="z"), conv(1, input="z", bias=True)],
                           combine="sum", more_inputs={"z": [1, 4, 6, 6]})
    result = merge(model)
    assert merged_count(result) == 2
    assert count_ops(result.model, "Conv") == 2 and count_ops(result.model, "Add") == 1
    assert_same(model, result.model)


@pytest.mark.parametrize("form", ["constant", "identity"])
def test_constant_node_and_identity_alias_weights(form):
    base = branches_model([conv(3, bias=True), conv(1, bias=True)])
    g = base.graph
    nodes, inits = [], []
    for t in g.initializer:
        if form == "constant":
            nodes.append(helper.make_node("Constant", [], [t.name], value=t))
        else:
            src = onnx.TensorProto()
            src.CopyFrom(t)
            src.name = t.name + "_src"
            inits.append(src)
            nodes.append(helper.make_node("Identity", [src.name], [t.name]))
    graph = helper.make_graph(nodes + list(g.node), "g", list(g.input), list(g.output), inits)
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = 8
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1
    assert_same(model, result.model)


def test_shared_weight_is_copied_never_mutated():
    # both branches and an outside Conv read W0 (a 3x3); the outside Conv must still see the original W0
    base = branches_model([conv(3, bias=True), conv(3, weight="W0")], outputs=("y",))
    g = base.graph
    w0 = numpy_helper.to_array(next(t for t in g.initializer if t.name == "W0")).copy()
    extra = helper.make_node("Conv", ["x", "W0"], ["z"], name="outside", kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1])
    graph = helper.make_graph(list(g.node) + [extra], "g", list(g.input), list(g.output) + [vi("z")],
                              list(g.initializer))
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = 8
    before = model.SerializeToString()
    result = merge(model)
    assert model.SerializeToString() == before
    assert count_ops(result.model, "Conv") == 2
    kept = next(t for t in result.model.graph.initializer if t.name == "W0")
    np.testing.assert_array_equal(numpy_helper.to_array(kept), w0)
    assert_same(model, result.model)


def test_float16():
    model = branches_model([conv(3, bias=True), conv(1), ident(bn=True)], dtype=np.float16)
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1
    assert all(t.data_type == TensorProto.FLOAT16 for t in result.model.graph.initializer)
    assert_same(model, result.model, dtype=np.float16)


def test_dynamic_shapes():
    model = branches_model([conv(3), conv(1), ident()], x_shape="dynamic")
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1
    feed = random_feed(model, sizes={"x": [2, 4, 5, 7]})
    assert_same(model, result.model, feed=feed)


def test_merges_inside_if_subgraph():
    inner = branches_model([conv(3, bias=True), conv(1)], outputs=("y",)).graph
    then = helper.make_graph(list(inner.node), "then", [], [vi("y")], list(inner.initializer))
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e")])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=other)
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    graph = helper.make_graph([node], "g", [vi("x", shape=[1, 4, 6, 6]), cond], [vi("out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = merge(model)
    assert merged_count(result) == 1
    then_after = next(a.g for a in result.model.graph.node[0].attribute if a.name == "then_branch")
    assert sum(n.op_type == "Conv" for n in then_after.node) == 1
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    feed = {"x": x, "cond": np.array(True)}
    assert_same(model, result.model, feed=feed)


def test_idempotent_and_in_default_pipeline():
    model = branches_model([conv(3, bn=True), conv(1, bn=True), ident(bn=True)])
    first = onnxrep.optimize(model, verify=True)
    assert first.ok and first.report.passes["merge_branches"]["count"] == 1
    second = onnxrep.optimize(first.model, verify=False)
    assert all(p["count"] == 0 for p in second.report.passes.values())
    assert second.model.SerializeToString() == first.model.SerializeToString()


def test_run_directly_on_a_graph():
    model = branches_model([conv(3), conv(1)])
    graph = gs.import_onnx(model)
    res = MergeBranches().run(graph, Context())
    assert res.changed and res.count == 1 and res.notes == []
    eliminate_dead_code(graph)
    assert [n.op for n in graph.nodes] == ["Conv"]
    assert graph.outputs[0].name == "y" and graph.outputs[0].inputs[0].op == "Conv"


# ------------------------------------------------------------------------------------------ negative


def assert_declined(model, reason, convs=None, passes=MERGE):
    """Nothing merges (or `convs` Convs are left), the notes carry `reason`, the numbers are unchanged."""
    result = merge(model, passes)
    before = count_ops(model, "Conv")
    assert count_ops(result.model, "Conv") == (before if convs is None else convs)
    notes = declined(result)
    assert any(reason in n for n in notes), notes
    assert_same(model, result.model)
    return result


@pytest.mark.parametrize("branches,size,reason", [
    # 3x3 pads 0 (stride 1) and 1x1 stride 2 both give 3x3 outputs on a 5x5 input
    ([conv(3, pads=[0, 0, 0, 0]), conv(1, stride=2, pads=[0, 0, 0, 0])], 5, "different strides"),
    ([conv(3), conv(3, dilation=2)], 6, "different dilations"),
    ([conv(3), conv(1, group=2)], 6, "different groups"),
])
def test_declines_different_attributes(branches, size, reason):
    assert_declined(branches_model(branches, size=size), reason)


def test_size_one_axis_ignores_dilation():
    # a 1x1 (or the 1-wide axis of a 1x3) reads one tap whatever its dilation: still merges
    model = branches_model([conv(3, dilation=2), conv(1, dilation=1), conv((1, 3), dilation=2)], size=7)
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1
    assert the_conv(result.model)[1]["dilations"] == [2, 2]
    assert_same(model, result.model)


def test_declines_pads_that_dont_centre():
    # 3x3 pads (2 before, 0 after) on H and a 1x1 without pads: same output size, shifted by one row
    model = branches_model([conv(3, pads=[2, 1, 0, 1]), conv(1, pads=[0, 0, 0, 0])], size=6)
    assert_declined(model, "don't centre")


def test_declines_even_kernel_with_odd():
    model = branches_model([conv(2, pads=[0, 0, 1, 1]), conv(1, pads=[0, 0, 0, 0])], size=6)
    assert_declined(model, "odd and even")


def test_declines_auto_pad_same_strided_misaligned():
    # even size, stride 2: SAME pads the 3x3 by (0, 1) but the 1x1 by (0, 0): the centres differ
    same = {"auto_pad": "SAME_UPPER", "stride": 2}
    model = branches_model([conv(3, **same), conv(1, **same)],
                           size=6)
    assert_declined(model, "don't centre")


def test_declines_auto_pad_same_strided_unknown_size():
    same = {"auto_pad": "SAME_UPPER", "stride": 2}
    model = branches_model([conv(3, **same), conv(1, **same)],
                           x_shape="dynamic")
    result = merge(model)
    assert count_ops(result.model, "Conv") == 2
    assert any("isn't static" in n for n in declined(result))
    assert_same(model, result.model, feed=random_feed(model, sizes={"x": [1, 4, 7, 7]}))


def test_declines_intermediate_with_another_consumer():
    base = branches_model([conv(3), conv(1)])
    g = base.graph
    extra = helper.make_node("Relu", ["t1"], ["r"])
    graph = helper.make_graph(list(g.node) + [extra], "g", list(g.input), list(g.output) + [vi("r")],
                              list(g.initializer))
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = 8
    assert_declined(model, "2 consumers")


def test_declines_intermediate_that_is_a_graph_output():
    base = branches_model([conv(3), conv(1)])
    g = base.graph
    graph = helper.make_graph(list(g.node), "g", list(g.input), [*g.output, vi("t0")], list(g.initializer))
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = 8
    assert_declined(model, "graph output")


def test_declines_inner_add_with_another_consumer():
    # Add(Add(a, b), c) where Add(a, b) is also read elsewhere: the inner sum merges on its own, c stays
    base = branches_model([conv(3), conv(1), conv(1)])
    g = base.graph
    extra = helper.make_node("Relu", ["s0"], ["r"])
    graph = helper.make_graph(list(g.node) + [extra], "g", list(g.input), list(g.output) + [vi("r")],
                              list(g.initializer))
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = 8
    result = merge(model)
    assert count_ops(result.model, "Conv") == 2 and merged_count(result) == 1
    assert_same(model, result.model)


def test_declines_non_constant_weight():
    base = branches_model([conv(3), conv(1)])
    g = base.graph
    inits = [t for t in g.initializer if t.name != "W1"]
    graph = helper.make_graph(list(g.node), "g", [*g.input, vi("W1", shape=[4, 4, 1, 1])], list(g.output),
                              inits)
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = 8
    result = merge(model)
    assert count_ops(result.model, "Conv") == 2
    assert any("weight is not constant" in n for n in declined(result))
    feed = random_feed(model)
    assert_same(model, result.model, feed=feed)


def test_declines_broadcast_add_of_different_channels():
    # a 1-channel conv broadcast against a 4-channel conv is not a sum of kernels
    model = branches_model([conv(3), conv(1, cout=1)])
    assert_declined(model, "broadcast Add")


def test_conv_of_another_input_is_not_a_branch():
    model = branches_model([conv(3), conv(1, input="z")], more_inputs={"z": [1, 4, 6, 6]})
    result = merge(model)
    assert count_ops(result.model, "Conv") == 2 and declined(result) == [] and merged_count(result) == 0


def test_declines_identity_without_same_padding():
    # two 3x3 convs padded (2, 0): same output size as x, but shifted by one pixel against it
    model = branches_model([conv(3, pads=[2, 2, 0, 0]), conv(3, pads=[2, 2, 0, 0]), ident()], size=6)
    result = assert_declined(model, "'same' pads", convs=1)
    assert count_ops(result.model, "Add") == 1


def test_declines_identity_with_channels_mismatch():
    # 1 input channel, 4 output channels: x broadcasts over the conv outputs, it is no identity kernel
    model = branches_model([conv(3), conv(1), ident()], cin=1, cout=4)
    result = assert_declined(model, "as many output as input channels", convs=1)
    assert count_ops(result.model, "Add") == 1


def test_declines_training_mode_identity_batchnorm():
    model = branches_model([conv(3), conv(1), ident(bn=True, training=True)], opset=15)
    result = merge(model)
    assert count_ops(result.model, "Conv") == 1 and count_ops(result.model, "BatchNormalization") == 1
    assert any("training mode" in n for n in declined(result))


def test_declines_stride_with_identity():
    # stride 2 convs + x: the original only runs when output and x shapes broadcast; with a 1x1 spatial x
    # (size 1, pads centred) they do, which is where the identity must still be refused
    model = branches_model([conv(3, stride=2), conv(1, stride=2), ident()], size=1)
    result = assert_declined(model, "identity branch needs stride 1", convs=1)
    assert count_ops(result.model, "Add") == 1


# ---------------------------------------------------------------------------------------- properties


@st.composite
def repconv_cases(draw):
    group = draw(st.sampled_from([1, 2]))
    cin = group * draw(st.integers(1, 2))
    stride = draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    big = draw(st.sampled_from([3, 5]))
    identity = draw(st.sampled_from([None, "x", "bn"])) if stride == 1 else None
    cout = cin if identity else group * draw(st.integers(1, 2))
    smalls = [(1, 1), (1, big), (big, 1)] + ([(3, 3)] if big == 5 else [])
    kernels = draw(st.lists(st.sampled_from(smalls), min_size=1, max_size=2))
    offsets = [max((big - k[i]) // 2 * dilation for k in kernels) for i in range(2)]
    # merged pads: 'same' when there is an identity, else anything that keeps every branch's pads >= 0
    if identity:
        pads = [(big - 1) // 2 * dilation] * 4
    else:
        pads = [(big - 1) // 2 * dilation + draw(st.integers(-1, 1)) for _ in range(4)]
        pads = [max(p, offsets[i % 2]) for i, p in enumerate(pads)]
    misalign = draw(st.booleans()) and not identity
    branches = [conv(big, pads=pads, stride=stride, dilation=dilation, bias=draw(st.booleans()),
                     bn=draw(st.booleans()))]
    expect_left = 0
    for n, k in enumerate(kernels):
        own = [pads[i] - (big - k[i % 2]) // 2 * dilation for i in range(4)]
        if misalign and n == 0:  # shift one unit from begin to end (or back): same output size, misaligned
            if own[0] >= 1:
                own[0], own[2] = own[0] - 1, own[2] + 1
                expect_left = 1
            elif own[2] >= 1:
                own[0], own[2] = own[0] + 1, own[2] - 1
                expect_left = 1
        branches.append(conv(k, pads=own, stride=stride, dilation=dilation, bias=draw(st.booleans()),
                             bn=draw(st.booleans()), misaligned=bool(expect_left) and n == 0))
    if identity:
        branches.append(ident(bn=identity == "bn"))
    order = draw(st.permutations(range(len(branches))))
    # every axis, padded, must hold the dilated big kernel
    size = draw(st.integers(max(1, (big - 1) * dilation + 1 - min(pads[0] + pads[2], pads[1] + pads[3])), 9))
    return {"branches": [branches[i] for i in order], "cin": cin, "cout": cout, "group": group, "size": size,
            "combine": draw(st.sampled_from(["add", "add_right", "sum"])),
            "dtype": draw(st.sampled_from([np.float32, np.float16])), "seed": draw(st.integers(0, 1000)),
            "expect_left": expect_left,
            "passes": draw(st.sampled_from([MERGE, ["fold_batchnorm", "merge_branches"]]))}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repconv_cases())
def test_property_merge_is_exact(case):
    expect_left, passes, dtype = case.pop("expect_left"), case.pop("passes"), case["dtype"]
    model = branches_model(**case)
    result = merge(model, passes)
    merges = len(case["branches"]) - expect_left >= 2
    assert count_ops(result.model, "Conv") == (1 + expect_left if merges else 2)
    assert merged_count(result) == int(merges)
    # a BN on a branch is folded inside the merge (or by fold_batchnorm); a declined branch keeps its own
    left_bn = sum(b.get("bn", False) and (b.get("misaligned") or not merges) for b in case["branches"])
    assert count_ops(result.model, "BatchNormalization") == (0 if passes != MERGE else left_bn)
    if expect_left:
        assert any("don't centre" in n for n in declined(result))
    else:
        assert declined(result) == []
    assert_same(model, result.model, dtype=dtype)


# ------------------------------------------------------------------------------------ YOLOv9 models

IMGSZ = 64


def yolo(model_file, name, form):
    pytest.importorskip("models")
    return onnx.load(model_file(name, form, imgsz=IMGSZ, nc=8))  # built once per session (conftest)


def run_with(model, feed, extra_outputs):
    """Run with ORT optimizations off, also returning the named intermediate tensors."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs)
    return dict(zip([o.name for o in m.graph.output], run(m, feed)))


def check_yolo(model_file, name, form):
    original, fused = yolo(model_file, name, form), yolo(model_file, name, "fused")
    result = merge(original, ["fold_batchnorm", "merge_branches"])
    count_convs = pytest.importorskip("models").count_convs
    assert count_convs(result.model) == count_convs(fused)  # Conv nodes and weight+bias elements
    assert result.report.passes["merge_branches"]["declined"] == []
    # every merged sum kept its tensor name: compare each one where it is made, then the heads
    adds = {n.output[0] for n in original.graph.node if n.op_type == "Add"}
    merged = [n.output[0] for n in result.model.graph.node if n.op_type == "Conv" and n.output[0] in adds]
    removed = count_ops(original, "Conv") - count_ops(result.model, "Conv")
    assert len(merged) == merged_count(result) == removed
    image = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    feed = {original.graph.input[0].name: image}
    ref, got = run_with(original, feed, merged), run_with(result.model, feed, merged)
    for n in merged:  # float32 rounding, relative to the tensor's scale
        assert np.abs(got[n] - ref[n]).max() <= 1e-4 * np.abs(ref[n]).max(), n
    # the heads, with verify()'s default float32 tolerances, against the original and the builder's fused form
    for reference in (original, fused):
        v = verify(reference, result.model, feeds=[feed])
        assert v.ran and v.ok, v.lines()
    return result


@pytest.mark.parametrize("form", ["folded", "bn"])
def test_yolov9_t_reaches_the_fused_conv_count(model_file, form):
    result = check_yolo(model_file, "yolov9-t", form)
    assert merged_count(result) == 54  # 42 RepConvN in the main branch, 12 in the aux neck


@pytest.mark.slow  # ~15-20 s: two 51M-parameter builds written to disk
@pytest.mark.parametrize("form", ["folded", "bn"])
def test_yolov9_c_reaches_the_fused_conv_count(model_file, form):
    result = check_yolo(model_file, "yolov9-c", form)
    assert merged_count(result) == 24  # 16 RepConvN in the main branch, 8 in the aux backbone
