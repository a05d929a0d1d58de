"""scatter_slices (passes/cleanup/scatter.py): a ScatterND that writes one contiguous slice becomes a Concat.

Positive: the two forms PyTorch writes for ``y[..., a:b] = f(y[..., a:b])`` (TorchScript's full element
indices, dynamo's leading-axis rows), any slice position, by hypothesis over shapes and slices; the result
is bit-equal. Negative: indices that skip, repeat or reorder, a reduction, non-constant indices, a
symbolic dim, two partial axes.

Chains (the repro ``shared/repros/scatter_chain.py``): a table written in place slice by slice, as PyTorch
exports ``t[:, i] = v`` in a loop and transformers' RT-DETR builds its position embedding from constants.
fold_constants folds a constant ScatterND earlier in the same sweep and leaves it disconnected in
``graph.nodes`` until dead-code elimination; the rewrite must skip it (it crashed reading its cleared
inputs). A hypothesis generator sweeps chains: table shapes, 1..5 writes, constant or input data and updates,
rows/columns/elements, intermediates read twice; the whole pipeline must keep every output bit-equal.
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


def _optimized_all(model):
    return onnxrep.optimize(model, verify=False).model


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


# ------------------------------------------------------------------------------------------ chains


def _repro_chain(const: bool) -> onnx.ModelProto:
    """shared/repros/scatter_chain.py: four ScatterNDs writing rows 0..3 of a [1, 4, 3] table (indices
    [1, 3, 3], TorchScript's form of ``t[:, i] = v``); with `const` the table starts as ConstantOfShape and
    every update is a Constant times a scale, so the whole chain is computed from constants."""
    h, nh = helper, numpy_helper
    nodes, inits = [], []
    prev, upd = "x", "u"
    if const:
        nodes.append(h.make_node("ConstantOfShape", ["shp"], ["t0"], value=nh.from_array(np.array([0.5], np.float32))))
        inits.append(nh.from_array(np.array([1, 4, 3], np.int64), "shp"))
        nodes.append(h.make_node("Constant", [], ["uc"], value=nh.from_array(np.arange(3, dtype=np.float32).reshape(1, 3))))
        prev, upd = "t0", "uc"
    for i in range(4):
        inits.append(nh.from_array(np.array([[[0, i, j] for j in range(3)]], np.int64), f"idx{i}"))
        inits.append(nh.from_array(np.array([float(i + 1)], np.float32), f"s{i}"))
        nodes.append(h.make_node("Mul", [upd, f"s{i}"], [f"upd{i}"]))
        nodes.append(h.make_node("ScatterND", [prev, f"idx{i}", f"upd{i}"], [f"sc{i}"], name=f"ScatterND_{i}"))
        prev = f"sc{i}"
    nodes.append(h.make_node("Add", [prev, "x"], ["y"]))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3]),
                                  h.make_tensor_value_info("u", TensorProto.FLOAT, [1, 3])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def _run_all(model, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


def _assert_same(model, feeds):
    out = _optimized_all(model)
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    for a, b in zip(_run_all(out, feeds), _run_all(model, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
    return out


@pytest.mark.parametrize("const", [True, False], ids=["const", "input"])
def test_the_repro_chain_keeps_its_outputs(const):
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((1, 4, 3), dtype=np.float32), "u": rng.random((1, 3), dtype=np.float32)}
    out = _assert_same(_repro_chain(const), feeds)
    if const:   # the table is one constant now: nothing left to scatter
        assert not any(n.op_type == "ScatterND" for n in out.graph.node)


def test_a_scatter_folded_earlier_in_the_sweep_is_skipped():
    """fold_constants runs before scatter_slices in each sweep: the constant ScatterND it folds stays in
    graph.nodes (disconnected) until the next sweep's dead-code elimination."""
    m = _repro_chain(True)
    r = onnxrep.optimize(m, passes=["canonicalize"], verify=False)
    info = r.report.passes["canonicalize"]
    assert not any(n.op_type == "ScatterND" for n in r.model.graph.node), info
    assert not any("ScatterND" in d for d in info.get("declined", [])), info


_PATTERNS = ("rows", "slice", "column", "element", "scattered")


def _indices(draw, shape, pattern):
    """Constant indices for one write into a table of `shape`, and the updates' shape."""
    r = len(shape)
    if pattern == "rows":           # dynamo's t[a:b] = v: one index per row of axis 0
        a = draw(st.integers(0, shape[0] - 1))
        b = draw(st.integers(a + 1, shape[0]))
        return np.arange(a, b, dtype=np.int64)[:, None], [b - a, *shape[1:]]
    if pattern == "slice":          # TorchScript's t[..., a:b, ...] = v: full element indices
        axis = draw(st.integers(0, r - 1))
        a = draw(st.integers(0, shape[axis] - 1))
        b = draw(st.integers(a + 1, shape[axis]))
        idx = _box(shape, axis, a, b)
        return idx, list(idx.shape[:-1])
    if pattern == "column":         # t[..., j, ...] = v: the written axis dropped from the indices' box
        axis = draw(st.integers(0, r - 1))
        j = draw(st.integers(0, shape[axis] - 1))
        idx = np.squeeze(_box(shape, axis, j, j + 1), axis) if r > 1 else np.array([[j]], np.int64)
        return idx, list(idx.shape[:-1])
    if pattern == "element":        # t[i, j, ...] = v: one element, as [1, r] or as a box of ones
        point = [draw(st.integers(0, n - 1)) for n in shape]
        idx = np.array(point, np.int64).reshape([1] * (draw(st.integers(1, r))) + [r])
        return idx, list(idx.shape[:-1])
    # a few distinct rows of axis 0 in any order, some counted from the end: the rewrite declines
    rows = draw(st.permutations(range(shape[0])))[:draw(st.integers(1, shape[0]))]
    rows = [i - shape[0] if draw(st.booleans()) else i for i in rows]
    return np.asarray(rows, np.int64)[:, None], [len(rows), *shape[1:]]


@st.composite
def _chains(draw):
    """A ScatterND chain as a model, its feeds, and labels saying what kind of chain it is."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = [draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3)))]
    start = draw(st.sampled_from(["input", "initializer", "ConstantOfShape", "Constant"]))
    nodes, inits, inputs, feeds, outputs = [], [], [], {}, []

    def f32(dims):
        return rng.integers(-8, 8, size=dims).astype(np.float32)   # small integers: any copy is exact

    def graph_input(name, dims):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        feeds[name] = f32(dims)

    if start == "input":
        graph_input("x", shape)
    elif start == "initializer":
        inits.append(numpy_helper.from_array(f32(shape), "x"))
    elif start == "ConstantOfShape":
        inits.append(numpy_helper.from_array(np.array(shape, np.int64), "x_shape"))
        nodes.append(helper.make_node("ConstantOfShape", ["x_shape"], ["x"],
                                      value=numpy_helper.from_array(np.array([0.5], np.float32))))
    else:
        nodes.append(helper.make_node("Constant", [], ["x"], value=numpy_helper.from_array(f32(shape))))
    tables = ["x"]
    constant = {"x": start != "input"}     # table -> computed from constants only
    labels = {"constant table" if constant["x"] else "input table"}
    for k in range(draw(st.integers(1, 5))):
        data = tables[-1] if draw(st.integers(0, 3)) else draw(st.sampled_from(tables))   # a branch: read twice
        idx, udims = _indices(draw, shape, draw(st.sampled_from(_PATTERNS)))
        inits.append(numpy_helper.from_array(idx, f"i{k}"))
        source = draw(st.sampled_from(["input", "initializer", "Constant", "computed"]))
        if source == "input":
            graph_input(f"u{k}", udims)
        elif source == "initializer":
            inits.append(numpy_helper.from_array(f32(udims), f"u{k}"))
        elif source == "Constant":
            nodes.append(helper.make_node("Constant", [], [f"u{k}"], value=numpy_helper.from_array(f32(udims))))
        else:   # RT-DETR's way: arithmetic on constants
            nodes.append(helper.make_node("Constant", [], [f"c{k}"], value=numpy_helper.from_array(f32(udims))))
            inits.append(numpy_helper.from_array(np.array([float(k + 2)], np.float32), f"s{k}"))
            nodes.append(helper.make_node("Mul", [f"c{k}", f"s{k}"], [f"u{k}"]))
        nodes.append(helper.make_node("ScatterND", [data, f"i{k}", f"u{k}"], [f"t{k}"], name=f"ScatterND_{k}"))
        tables.append(f"t{k}")
        constant[f"t{k}"] = constant[data] and source != "input"
        labels.add("a constant write" if constant[f"t{k}"] else "a write on input")
        if data != tables[-2]:
            labels.add("a table read twice")
    # the last table is an output, as is (when drawn) an intermediate or a reader of one
    outputs.append(tables[-1])
    for t in tables[1:-1]:
        how = draw(st.sampled_from(["none", "none", "output", "reader"]))
        if how == "output":
            outputs.append(t)
        elif how == "reader":
            nodes.append(helper.make_node("Neg", [t], [f"{t}_neg"]))
            outputs.append(f"{t}_neg")
    if draw(st.booleans()):     # read the last table too, as the repro's Add does
        if "x" not in feeds:
            graph_input("z", shape)
        nodes.append(helper.make_node("Add", [tables[-1], "x" if "x" in feeds else "z"], ["y"]))
        outputs.append("y")
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape)
                                                for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    labels.add(f"{len(tables) - 1} writes")
    return m, feeds, labels


def _check_chain(case):
    from hypothesis import event

    m, feeds, labels = case
    for label in sorted(labels):
        event(label)
    _assert_same(m, feeds)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_chains())
def test_scatter_chains_keep_their_outputs(case):
    _check_chain(case)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_chains())
def test_scatter_chains_keep_their_outputs_many(case):
    _check_chain(case)
