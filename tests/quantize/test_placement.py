"""quantize/placement.py: the float islands, the shared-scale groups and the Conv-fed rule, on the builder's
real head shapes and on random graphs against an independent oracle."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st
from onnx import helper

from onnxrep.quantize.placement import conv_fed, float_islands, producers, scale_groups
from tests.graphs import init, make_model, vi


def _ops(model, names):
    return sorted(n.op_type for n in model.graph.node if n.name in names)


def test_yolov9_islands_are_the_head_tail(optimized):
    m = optimized("yolov9-t")
    islands = float_islands(m)
    ops = _ops(m, islands)
    assert ops.count("Conv") == 1 and ops.count("Softmax") == 1 and ops.count("Sigmoid") == 1, ops
    (dfl,) = [n for n in m.graph.node if n.name in islands and n.op_type == "Conv"]
    assert "DFL expectation" in islands[dfl.name]
    out = m.graph.output[0].name
    (last,) = [n for n in m.graph.node if out in n.output]
    assert last.name in islands and "the output" in islands[last.name]
    # nothing upstream of a quantized Conv is an island: every island node reaches an output without a matrix layer
    prod = producers(m.graph)
    for n in m.graph.node:
        if n.op_type == "Conv" and n.name not in islands:
            x = prod.get(n.input[0])
            assert x is None or x.name not in islands or x.op_type == "Softmax", n.name


def test_classifier_keeps_no_matrix_layer_float():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "g", "b"], ["y"], name="fc", transB=1)]
    m = make_model(nodes, [vi("x", shape=[1, 3, 8, 8])], [vi("y", shape=[1, 5])],
                   [init("w", np.ones((4, 3, 3, 3), np.float32)), init("g", np.ones((5, 4), np.float32)),
                    init("b", np.zeros(5, np.float32))])
    assert float_islands(m) == {}


def test_softmax_not_feeding_a_conv_stops_nothing_else():
    """A Conv after a Softmax that is not the DFL pattern's (Softmax -> Reshape/Transpose -> Conv) is not kept."""
    nodes = [helper.make_node("Softmax", ["x"], ["s"], name="sm", axis=1),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["y"], name="conv")]
    m = make_model(nodes, [vi("x", shape=[1, 4, 4, 4])], [vi("y", shape=[1, 2, 4, 4])],
                   [init("w", np.ones((2, 4, 1, 1), np.float32))])
    assert float_islands(m) == {}


def _oracle(model, heads):
    """Independent: a node is an island iff some path from it to a graph output runs through no matrix layer
    (the DFL Conv aside, absent here) and, towards an output that is no head, through no node reading two or
    more distinct non-constant tensors (the node itself included)."""
    consts = {i.name for i in model.graph.initializer}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def joins(node):
        return len({i for i in node.input if i and i not in consts}) > 1

    def reaches(node, output, strict, seen=()):
        if node.op_type == "Conv" or (strict and joins(node)) or node.name in seen:
            return False
        if output in node.output:
            return True
        return any(reaches(c, output, strict, seen + (node.name,)) for o in node.output for c in consumers.get(o, []))

    return {n.name for n in model.graph.node
            if any(reaches(n, o.name, o.name not in heads) for o in model.graph.output)}
@st.composite
def random_graphs(draw):
    """Random DAGs of Conv, Relu, Add, MaxPool over [1, 4, 8, 8] tensors, one or two outputs."""
    n = draw(st.integers(2, 12))
    tensors, nodes, inits = ["x"], [], []
    for k in range(n):
        op = draw(st.sampled_from(["Conv", "Relu", "Add", "MaxPool"]))
        a = draw(st.sampled_from(tensors))
        out = f"t{k}"
        if op == "Conv":
            inits.append(init(f"w{k}", np.ones((4, 4, 1, 1), np.float32)))
            nodes.append(helper.make_node("Conv", [a, f"w{k}"], [out], name=f"n{k}"))
        elif op == "Add":
            nodes.append(helper.make_node("Add", [a, draw(st.sampled_from(tensors))], [out], name=f"n{k}"))
        elif op == "MaxPool":
            nodes.append(helper.make_node("MaxPool", [a], [out], name=f"n{k}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        else:
            nodes.append(helper.make_node("Relu", [a], [out], name=f"n{k}"))
        tensors.append(out)
    outs = draw(st.lists(st.sampled_from(tensors[1:]), min_size=1, max_size=2, unique=True))
    return make_model(nodes, [vi("x", shape=[1, 4, 8, 8])], [vi(o, shape=[1, 4, 8, 8]) for o in outs], inits)


@settings(max_examples=60, deadline=None)
@given(random_graphs(), st.booleans())
def test_islands_match_the_oracle_on_random_graphs(model, first_is_a_head):
    heads = {model.graph.output[0].name} if first_is_a_head else set()
    assert set(float_islands(model, heads)) == _oracle(model, heads)


def test_a_residual_trunk_output_keeps_only_its_own_tail():
    """A feature extractor whose output ends in a residual block: walking back through the skip connection's
    Add reached every earlier block (found by review); only the tail after the join stays float."""
    nodes, inits, x = [], [], "x"
    for k in range(3):
        inits.append(init(f"w{k}", np.ones((4, 4, 3, 3), np.float32)))
        nodes += [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], name=f"conv{k}", pads=[1] * 4),
                  helper.make_node("Add", [f"c{k}", x], [f"s{k}"], name=f"add{k}"),
                  helper.make_node("Relu", [f"s{k}"], [f"r{k}"], name=f"relu{k}")]
        x = f"r{k}"
    m = make_model(nodes, [vi("x", shape=[1, 4, 8, 8])], [vi(x, shape=[1, 4, 8, 8])], inits)
    assert float_islands(m) == {"relu2": float_islands(m)["relu2"]}
    assert "no recognised detection head" in float_islands(m)["relu2"]


def test_scale_groups_join_concat_and_movers_transitively():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r1"),
             helper.make_node("Relu", ["x"], ["b"], name="r2"),
             helper.make_node("Concat", ["a", "b"], ["c"], name="cat", axis=1),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2]),
             helper.make_node("Concat", ["p", "k"], ["d"], name="cat2", axis=1),
             helper.make_node("Relu", ["d"], ["y"], name="r3"),
             helper.make_node("Reshape", ["y", "shape"], ["z"], name="reshape")]
    m = make_model(nodes, [vi("x", shape=[1, 2, 4, 4])], [vi("z", shape=[1, 48])],
                   [init("k", np.ones((1, 4, 2, 2), np.float32)), init("shape", np.array([1, 48], np.int64))])
    groups = scale_groups(m)
    assert {"a", "b", "c", "p", "d"} in groups   # through the MaxPool; the constant k joins nothing
    assert {"y", "z"} in groups                  # Reshape's data input and output; its shape input is not a tensor of values
    assert not any("k" in g or "shape" in g for g in groups)
    assert all({"a", "b"} - g for g in scale_groups(m, skip={"cat"}))   # a skipped (float) Concat joins nothing


def _chain(ops):
    x = "x"
    nodes, inits = [], [init("w", np.ones((2, 2, 1, 1), np.float32))]
    for k, op in enumerate(ops):
        out = f"t{k}"
        if op == "Conv":
            nodes.append(helper.make_node("Conv", [x, "w"], [out], name=f"n{k}"))
        elif op == "SiLU":
            nodes.append(helper.make_node("Sigmoid", [x], [f"s{k}"], name=f"s{k}"))
            nodes.append(helper.make_node("Mul", [x, f"s{k}"], [out], name=f"n{k}"))
        elif op == "MulOther":
            nodes.append(helper.make_node("Sigmoid", ["x"], [f"s{k}"], name=f"s{k}"))
            nodes.append(helper.make_node("Mul", [x, f"s{k}"], [out], name=f"n{k}"))
        else:
            nodes.append(helper.make_node(op, [x], [out], name=f"n{k}"))
        x = out
    m = make_model(nodes, [vi("x", shape=[1, 2, 4, 4])], [vi(x, shape=[1, 2, 4, 4])], inits)
    return producers(m.graph), x


def test_conv_fed():
    assert conv_fed(*_chain(["Conv"]))
    assert conv_fed(*_chain(["Conv", "SiLU"]))
    assert conv_fed(*_chain(["Conv", "Relu"]))
    assert not conv_fed(*_chain(["Relu"]))
    assert not conv_fed(*_chain(["Conv", "MulOther"]))       # x * Sigmoid(another tensor) is not SiLU
    assert not conv_fed(*_chain(["Conv", "Relu", "Relu"]))   # one activation, not a chain
    assert not conv_fed(*_chain(["Conv", "MaxPool"]))
