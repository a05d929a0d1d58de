"""cleanup (canonicalize + tidy): each rewrite positive and negative on tiny graphs, checked in onnxruntime.

End-to-end targets on the models builder at small sizes are at the bottom (larger ones are marked slow).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.verify import verify
from tests.graphs import count_ops, init, make_model, vi

CANON = ["canonicalize"]
TIDY = ["tidy"]
I64 = TensorProto.INT64


def run(model, passes=CANON):
    result = onnxrep.optimize(model, passes=passes, verify=False)
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, strict_mode=True)
    return result


def assert_same(original, optimized, shapes=None):
    v = verify(original, optimized, samples=2, seed=1, shapes=shapes)
    assert v.ran, v.skipped_reason
    assert v.ok, v.lines()


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def count(result, pass_name="canonicalize") -> int:
    return result.report.passes[pass_name]["count"]


def const_node(name, value=None, **attrs):
    if value is not None:
        attrs["value"] = numpy_helper.from_array(np.asarray(value), name)
    return helper.make_node("Constant", [], [name], **attrs)


def i64(name, shape=None):
    return helper.make_tensor_value_info(name, I64, shape)


# ------------------------------------------------------------------------------------------ Identity


def test_identity_between_nodes_removed():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["b"]),
             helper.make_node("Neg", ["b"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[1, 4])], [vi("y", shape=[1, 4])])
    result = run(model)
    assert ops(result.model) == ["Relu", "Neg"]
    assert_same(model, result.model)


def test_identity_to_graph_output_keeps_the_output_name():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[1, 4])], [vi("y", shape=[1, 4])])
    result = run(model)
    assert ops(result.model) == ["Relu"]
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert result.model.graph.node[0].output[0] == "y"
    assert_same(model, result.model)


def test_identity_to_output_whose_input_is_also_read_elsewhere():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"]),
             helper.make_node("Neg", ["a"], ["z"])]
    model = make_model(nodes, [vi("x", shape=[1, 4])], [vi("y", shape=[1, 4]), vi("z", shape=[1, 4])])
    result = run(model)
    assert ops(result.model) == ["Relu", "Neg"]
    assert [o.name for o in result.model.graph.output] == ["y", "z"]
    assert_same(model, result.model)


@pytest.mark.parametrize("case", ["input", "initializer", "output"])
def test_identity_kept_when_it_links_interface_tensors(case):
    inits = []
    if case == "input":
        nodes = [helper.make_node("Identity", ["x"], ["y"])]
        outputs = [vi("y", shape=[1, 4])]
    elif case == "initializer":
        inits = [init("w", np.ones((1, 4), np.float32))]
        nodes = [helper.make_node("Identity", ["w"], ["y"]), helper.make_node("Add", ["x", "w"], ["z"])]
        outputs = [vi("y", shape=[1, 4]), vi("z", shape=[1, 4])]
    else:
        nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
        outputs = [vi("a", shape=[1, 4]), vi("y", shape=[1, 4])]
    model = make_model(nodes, [vi("x", shape=[1, 4])], outputs, inits)
    result = run(model)
    assert count_ops(result.model, "Identity") == 1
    assert [o.name for o in result.model.graph.output] == [o.name for o in outputs]
    assert_same(model, result.model)


def test_identity_reshared_initializers_read_directly():
    """TorchScript re-shares a de-duplicated bias through Identity nodes: both Convs read the initializer."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Identity", ["b"], ["b1"]), helper.make_node("Identity", ["b"], ["b2"]),
             helper.make_node("Conv", ["x", "w", "b1"], ["c"]), helper.make_node("Conv", ["c", "w", "b2"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[1, 4, 3, 3])], [vi("y", shape=[1, 4, 3, 3])], [init("w", w), init("b", b)])
    result = run(model)
    assert ops(result.model) == ["Conv", "Conv"]
    assert {n.input[2] for n in result.model.graph.node} == {"b"}
    assert_same(model, result.model)


# ------------------------------------------------------------------------------------------- Dropout


def test_inference_dropout_removed():
    nodes = [helper.make_node("Dropout", ["x", "r"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[2, 4])], [vi("y", shape=[2, 4])],
                       [init("r", np.asarray(0.5, np.float32))], opset=13)
    result = run(model)
    assert ops(result.model) == ["Relu"]
    assert_same(model, result.model)


@pytest.mark.parametrize("why", ["training", "mask"])
def test_dropout_kept_in_training_or_with_its_mask_read(why):
    if why == "training":
        nodes = [helper.make_node("Dropout", ["x", "r", "t"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
        outputs = [vi("y", shape=[2, 4])]
    else:
        nodes = [helper.make_node("Dropout", ["x"], ["a", "m"]), helper.make_node("Relu", ["a"], ["y"])]
        outputs = [vi("y", shape=[2, 4]), helper.make_tensor_value_info("m", TensorProto.BOOL, [2, 4])]
    inits = [init("r", np.asarray(0.5, np.float32)), init("t", np.asarray(True))] if why == "training" else []
    model = make_model(nodes, [vi("x", shape=[2, 4])], outputs, inits, opset=13)
    result = run(model)
    assert count_ops(result.model, "Dropout") == 1


# ------------------------------------------------------------------------------------- no-op nodes


def _unary(op, extra_inputs=(), inits=(), shape=(2, 3, 4), out_dtype=np.float32, opset=17, **attrs):
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node(op, ["a", *extra_inputs], ["b"], **attrs),
             helper.make_node("Neg", ["b"], ["y"])]
    return make_model(nodes, [vi("x", shape=list(shape))], [vi("y", out_dtype)], list(inits), opset=opset)


NOOPS = {
    "reshape-same": lambda: _unary("Reshape", ["s"], [init("s", np.array([2, 3, 4]))]),
    "reshape-0-and-minus-1": lambda: _unary("Reshape", ["s"], [init("s", np.array([0, -1, 4]))], shape=("N", 3, 4)),
    "transpose-identity": lambda: _unary("Transpose", perm=[0, 1, 2]),
    "cast-same-type": lambda: _unary("Cast", to=TensorProto.FLOAT),
    "concat-of-one": lambda: _unary("Concat", axis=1),
    "slice-everything": lambda: _unary("Slice", ["st", "en"], [init("st", np.array([0, 0])),
                                                              init("en", np.array([2**63 - 1, 3]))]),
    "expand-same-shape": lambda: _unary("Expand", ["s"], [init("s", np.array([1, 3, 1]))], shape=("N", 3, 4)),
    "pad-zero": lambda: _unary("Pad", ["p"], [init("p", np.zeros(6, np.int64))]),
    "tile-ones": lambda: _unary("Tile", ["r"], [init("r", np.ones(3, np.int64))]),
    "add-zero": lambda: _unary("Add", ["z"], [init("z", np.zeros((3, 1), np.float32))]),
    "mul-one": lambda: _unary("Mul", ["o"], [init("o", np.ones(4, np.float32))]),
    "split-into-one": lambda: _unary("Split", axis=1, opset=18, num_outputs=1),
}


@pytest.mark.parametrize("case", sorted(NOOPS))
def test_noop_removed(case):
    model = NOOPS[case]()
    result = run(model)
    assert ops(result.model) == ["Relu", "Neg"], case
    shapes = {"x": [3, 3, 4]} if case in ("reshape-0-and-minus-1", "expand-same-shape") else None
    assert_same(model, result.model, shapes=shapes)


NOT_NOOPS = {
    "reshape-changes": lambda: _unary("Reshape", ["s"], [init("s", np.array([6, 4]))]),
    "reshape-minus-1-twice-symbolic": lambda: _unary("Reshape", ["s"], [init("s", np.array([-1, 3, 4]))],
                                                     shape=("N", "M", 4)),
    "transpose-permutes": lambda: _unary("Transpose", perm=[0, 2, 1]),
    "cast-changes-type": lambda: _unary("Cast", to=TensorProto.FLOAT16, out_dtype=np.float16),
    "slice-part": lambda: _unary("Slice", ["st", "en"], [init("st", np.array([0, 1])), init("en", np.array([2, 3]))]),
    "slice-unknown-end": lambda: _unary("Slice", ["st", "en"], [init("st", np.array([0])), init("en", np.array([2]))],
                                        shape=("N", 3, 4)),
    "expand-broadcasts": lambda: _unary("Expand", ["s"], [init("s", np.array([2, 2, 3, 4]))]),
    "expand-symbolic-dim": lambda: _unary("Expand", ["s"], [init("s", np.array([2, 3, 4]))], shape=("N", 3, 4)),
    "add-zero-broadcasts": lambda: _unary("Add", ["z"], [init("z", np.zeros((5, 2, 3, 4), np.float32))]),
    "add-nonzero": lambda: _unary("Add", ["z"], [init("z", np.full((3, 1), 1e-7, np.float32))]),
    "sub-zero-from-const": lambda: _sub_from_zero(),
    "pad-nonzero": lambda: _unary("Pad", ["p"], [init("p", np.array([0, 0, 1, 0, 0, 0]))]),
}


def _sub_from_zero():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sub", ["z", "a"], ["b"]),
             helper.make_node("Neg", ["b"], ["y"])]
    return make_model(nodes, [vi("x", shape=[2, 3, 4])], [vi("y")], [init("z", np.zeros(4, np.float32))])


@pytest.mark.parametrize("case", sorted(NOT_NOOPS))
def test_not_a_noop_kept(case):
    model = NOT_NOOPS[case]()
    result = run(model)
    assert len(result.model.graph.node) == 3, case
    shapes = {"x": [2, 3, 4]} if "symbolic" in case or "unknown" in case else None
    assert_same(model, result.model, shapes=shapes)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dims=st.lists(st.one_of(st.integers(1, 4), st.sampled_from(["N", "M"])), min_size=1, max_size=4),
       choice=st.lists(st.sampled_from(["copy", "same", "minus1", "other", "one"]), min_size=4, max_size=4),
       op=st.sampled_from(["Reshape", "Expand"]))
def test_property_noop_reshape_expand_removed_only_when_exact(dims, choice, op):
    """Random targets against random static/symbolic dims: whatever is removed, results are unchanged."""
    concrete = [d if isinstance(d, int) else 2 + k for k, d in enumerate(dims)]
    pick = {"copy": lambda d, c: 0, "same": lambda d, c: c, "minus1": lambda d, c: -1, "other": lambda d, c: c + 1,
            "one": lambda d, c: 1}
    target = [pick[ch](d, c) for ch, d, c in zip(choice, dims, concrete)]
    if op == "Expand":
        target = [max(t, 1) for t in target]
    model = _unary(op, ["s"], [init("s", np.array(target))], shape=dims)
    ref = verify(model, model, shapes={"x": concrete})
    assume(ref.ran and ref.ok)   # the random target must be valid for the original
    result = run(model)
    assert_same(model, result.model, shapes={"x": concrete})
    other = [d if isinstance(d, int) else 5 + k for k, d in enumerate(dims)]   # other symbolic values
    if verify(model, model, shapes={"x": other}).ran:
        v = verify(model, result.model, shapes={"x": other})
        assert v.ok, v.lines()


# ------------------------------------------------------------------------------- Constant nodes


@pytest.mark.parametrize("attr,value,dtype", [
    ("value_floats", [2.0, 3.0], np.float32), ("value_ints", [2, 3], np.int64),
    ("value_float", 2.0, np.float32), ("value_int", 3, np.int64),
])
def test_constant_list_attributes_become_initializers_of_spec_type(attr, value, dtype):
    onnx_type = TensorProto.FLOAT if dtype == np.float32 else I64
    nodes = [helper.make_node("Constant", [], ["c"], **{attr: value}), helper.make_node("Add", ["x", "c"], ["y"])]
    shape = [1, 2] if isinstance(value, list) else [1]
    model = make_model(nodes, [helper.make_tensor_value_info("x", onnx_type, shape)],
                       [helper.make_tensor_value_info("y", onnx_type, shape)])
    result = run(model)
    assert ops(result.model) == ["Add"]
    (c,) = result.model.graph.initializer
    assert c.name == "c" and c.data_type == onnx_type
    assert numpy_helper.to_array(c).dtype == dtype
    assert_same(model, result.model)


def test_raw_dynamo_resize_scales_from_value_floats():
    """Raw dynamo writes Resize scales as Constant(value_floats): the initializer must be float32."""
    nodes = [const_node("scales", value_floats=[1.0, 1.0, 2.0, 2.0]),
             helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")]
    model = make_model(nodes, [vi("x", shape=[1, 2, 4, 4])], [vi("y", shape=[1, 2, 8, 8])], opset=18)
    result = run(model)
    assert ops(result.model) == ["Resize"]
    assert result.model.graph.initializer[0].data_type == TensorProto.FLOAT
    assert_same(model, result.model)


def test_constant_value_tensor_keeps_its_dtype():
    nodes = [const_node("c", np.arange(4, dtype=np.float16)), helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(nodes, [vi("x", np.float16, [1, 4])], [vi("y", np.float16, [1, 4])])
    result = run(model)
    assert result.model.graph.initializer[0].data_type == TensorProto.FLOAT16
    assert_same(model, result.model)


def test_constant_that_is_a_graph_output_stays_a_node():
    nodes = [const_node("c", np.arange(4, dtype=np.float32)), helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[1, 4])], [vi("y", shape=[1, 4]), vi("c", shape=[4])])
    result = run(model)
    assert count_ops(result.model, "Constant") == 1
    assert_same(model, result.model)


# ------------------------------------------------------------------------------ constant folding


def test_constant_subgraph_folded():
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Sqrt", ["ab"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["y"])]
    inits = [init("a", np.full(4, 3.0, np.float32)), init("b", np.ones(4, np.float32))]
    model = make_model(nodes, [vi("x", shape=[1, 4])], [vi("y", shape=[1, 4])], inits)
    result = run(model)
    assert ops(result.model) == ["Mul"]
    np.testing.assert_array_equal(numpy_helper.to_array(result.model.graph.initializer[0]), np.full(4, 2.0))
    assert_same(model, result.model)


def test_folding_uses_the_models_opset():
    """ReduceSum takes axes as an attribute at opset 11 and as an input since 13: evaluated at opset 11."""
    nodes = [helper.make_node("ReduceSum", ["c"], ["r"], axes=[1], keepdims=0), helper.make_node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[2])], [vi("y", shape=[2])],
                       [init("c", np.arange(6, dtype=np.float32).reshape(2, 3))], opset=11)
    result = run(model)
    assert ops(result.model) == ["Add"]
    assert_same(model, result.model)


def test_multi_output_split_folded_at_opset_18():
    nodes = [helper.make_node("Split", ["c"], ["p", "q"], axis=0, num_outputs=2),
             helper.make_node("Sub", ["p", "q"], ["d"]), helper.make_node("Add", ["x", "d"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[3])], [vi("y", shape=[3])],
                       [init("c", np.arange(6, dtype=np.float32))], opset=18)
    result = run(model)
    assert ops(result.model) == ["Add"]
    assert_same(model, result.model)


def test_big_constant_of_shape_not_folded():
    """A tiny shape vector making a 4 MiB tensor for an Add: folding would bloat the file."""
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["big"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("Add", ["x", "big"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[1, 1024])], [vi("y", shape=[1024, 1024])],
                       [init("s", np.array([1024, 1024]))])
    result = run(model)
    assert count_ops(result.model, "ConstantOfShape") == 1
    assert any("much larger" in n for n in result.report.passes["canonicalize"]["declined"])


def test_big_result_folded_when_it_is_a_weight_anyway():
    nodes = [helper.make_node("Mul", ["w", "two"], ["w2"]), helper.make_node("Conv", ["x", "w2"], ["y"])]
    rng = np.random.default_rng(0)
    inits = [init("w", rng.standard_normal((512, 512, 1, 1)).astype(np.float32)), init("two", np.float32(2.0))]
    model = make_model(nodes, [vi("x", shape=[1, 512, 2, 2])], [vi("y", shape=[1, 512, 2, 2])], inits)
    result = run(model)
    assert ops(result.model) == ["Conv"]


def test_random_ops_not_folded():
    nodes = [helper.make_node("RandomUniformLike", ["c"], ["r"], seed=1.0), helper.make_node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[4])], [vi("y", shape=[4])], [init("c", np.zeros(4, np.float32))])
    result = run(model)
    assert count_ops(result.model, "RandomUniformLike") == 1


def test_dynamo_zero_bias_chain_folded():
    """Raw dynamo: Conv bias = Expand(CastLike(0, x), Shape(w)[0:1]): a constant zero, so no bias at all."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("CastLike", ["zero", "x"], ["z"]), helper.make_node("Shape", ["w"], ["ws"], start=0, end=1),
             helper.make_node("Expand", ["z", "ws"], ["b"]), helper.make_node("Conv", ["x", "w", "b"], ["y"])]
    inits = [init("w", rng.standard_normal((4, 2, 1, 1)).astype(np.float32)), init("zero", np.array(0.0, np.float64))]
    model = make_model(nodes, [vi("x", shape=[1, 2, 3, 3])], [vi("y", shape=[1, 4, 3, 3])], inits, opset=18)
    result = run(model)
    assert ops(result.model) == ["Conv"]
    assert list(result.model.graph.node[0].input) == ["x", "w"]
    assert_same(model, result.model)


@pytest.mark.parametrize("case", ["activation", "same-type"])
def test_castlike_on_activation(case):
    target = "t16" if case == "activation" else "t32"
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("CastLike", ["a", target], ["y"])]
    out_type = np.float16 if case == "activation" else np.float32
    model = make_model(nodes, [vi("x", shape=[2, 3])], [vi("y", out_type, [2, 3])],
                       [init("t16", np.zeros(1, np.float16)), init("t32", np.zeros(1, np.float32))], opset=18)
    result = run(model)
    assert ops(result.model) == (["Relu", "Cast"] if case == "activation" else ["Relu"])
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert_same(model, result.model)


# ---------------------------------------------------------------------------------- shape chains


def _view_chain(shape, shape_vi=None):
    """TorchScript's view(): Reshape(x, Concat(Unsqueeze(Shape(x)[0]), Unsqueeze(Shape(x)[1]), [-1]))."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Shape", ["a"], ["s"]),
        const_node("i0", np.array(0)), const_node("i1", np.array(1)), const_node("ax", np.array([0])),
        helper.make_node("Gather", ["s", "i0"], ["g0"], axis=0), helper.make_node("Gather", ["s", "i1"], ["g1"], axis=0),
        helper.make_node("Unsqueeze", ["g0", "ax"], ["u0"]), helper.make_node("Unsqueeze", ["g1", "ax"], ["u1"]),
        const_node("m1", np.array([-1])),
        helper.make_node("Concat", ["u0", "u1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["a", "shape"], ["y"]),
    ]
    return make_model(nodes, [vi("x", shape=list(shape))], [vi("y", shape=shape_vi)])


def test_static_shape_chain_folded():
    model = _view_chain([2, 8, 4, 4])
    result = run(model)
    assert ops(result.model) == ["Relu", "Reshape"]
    shape = numpy_helper.to_array(next(t for t in result.model.graph.initializer
                                       if t.name == result.model.graph.node[1].input[1]))
    np.testing.assert_array_equal(shape, [2, 8, -1])
    assert_same(model, result.model)


def test_reshape_to_a_batch_dependent_shape_gets_a_constant_target_that_stays_dynamic():
    """view(x.shape[0], x.shape[1], -1) on a symbolic batch: the target becomes [0, 8, -1] (0 copies the batch)."""
    model = _view_chain(["N", 8, 4, 4])
    result = run(model)
    assert ops(result.model) == ["Relu", "Reshape"]
    target = numpy_helper.to_array(result.model.graph.initializer[0])
    np.testing.assert_array_equal(target, [0, 8, -1])
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    for batch in (1, 3):
        assert_same(model, result.model, shapes={"x": [batch, 8, 4, 4]})


def _batch_view(data_from, extra=()):
    """YOLO's head: every level reshaped with the batch taken from level 0's shape."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Sigmoid", ["b"], ["s"]), helper.make_node("Mul", ["b", "s"], ["c"]),
             helper.make_node("Shape", ["a"], ["sh"]), helper.make_node("Gather", ["sh", "i0"], ["g"], axis=0),
             helper.make_node("Unsqueeze", ["g", "ax"], ["u"]),
             helper.make_node("Concat", ["u", "eight", "m1"], ["t"], axis=0),
             helper.make_node("Reshape", [data_from, "t"], ["y"])]
    inits = [init("w", rng.standard_normal((8, 4, 3, 3)).astype(np.float32)), init("i0", np.array(0)),
             init("ax", np.array([0])), init("eight", np.array([8])), init("m1", np.array([-1]))]
    return make_model(nodes, [vi("x", shape=["N", 4, 4, 4]), *extra], [vi("y")], inits)


def test_reshape_target_with_a_batch_taken_from_another_tensor():
    """Shape(a)[0] sizes c's reshape: c = SiLU(MaxPool(a)) keeps a's batch, so the target is [0, 8, -1]."""
    model = _batch_view("c")
    result = run(model)
    assert count_ops(result.model, "Shape") == 0
    for batch in (1, 3):
        assert_same(model, result.model, shapes={"x": [batch, 4, 4, 4]})


def test_reshape_target_with_a_dim_of_an_unrelated_input_kept():
    """z's batch M is not provably a's batch N: with the -1 already used, the target stays computed."""
    model = _batch_view("z", extra=[vi("z", shape=["M", 8, 2, 2])])
    result = run(model)
    assert count_ops(result.model, "Shape") == 1
    assert_same(model, result.model, shapes={"x": [2, 4, 4, 4], "z": [2, 8, 2, 2]})


def test_shape_chain_on_a_symbolic_dim_stays_computed():
    """Shape(x)[0] feeding arithmetic (not a Reshape target): nothing about it is static."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["g"], axis=0),
             helper.make_node("Unsqueeze", ["g", "ax"], ["u"]), helper.make_node("Concat", ["u", "four"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["z"], value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Add", ["x", "z"], ["y"])]
    inits = [init("i0", np.array(0)), init("ax", np.array([0])), init("four", np.array([4]))]
    model = make_model(nodes, [vi("x", shape=["N", 4])], [vi("y", shape=["N", 4])], inits)
    result = run(model)
    assert ops(result.model) == ops(model)
    for batch in (1, 3):
        assert_same(model, result.model, shapes={"x": [batch, 4]})


def test_reshape_with_two_unknown_dims_keeps_its_computed_target():
    """[N, M, 4] -> [M, N, 4] (a computed permutation of symbolic dims): no constant target can say that."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "perm"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    model = make_model(nodes, [vi("x", shape=["N", "M", 4])], [vi("y")], [init("perm", np.array([1, 0, 2]))])
    result = run(model)
    assert ops(result.model) == ["Shape", "Gather", "Reshape"]
    assert_same(model, result.model, shapes={"x": [2, 3, 4]})


def test_shape_with_start_on_a_symbolic_tensor_folds_the_static_part():
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1),
             helper.make_node("ReduceProd", ["s"], ["p"], keepdims=1),
             helper.make_node("Concat", ["m1", "p"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    model = make_model(nodes, [vi("x", shape=["N", 3, 4])], [vi("y")], [init("m1", np.array([-1]))])
    result = run(model)
    assert ops(result.model) == ["Reshape"]
    assert_same(model, result.model, shapes={"x": [5, 3, 4]})


def test_full_shape_of_a_symbolic_tensor_not_folded():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ConstantOfShape", ["s"], ["z"]),
             helper.make_node("Add", ["x", "z"], ["y"])]
    model = make_model(nodes, [vi("x", shape=["N", 3])], [vi("y", shape=["N", 3])])
    result = run(model)
    assert count_ops(result.model, "Shape") == 1
    assert_same(model, result.model, shapes={"x": [4, 3]})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dims=st.lists(st.one_of(st.integers(1, 5), st.sampled_from(["N", "M"])), min_size=2, max_size=4),
       pick=st.integers(0, 3))
def test_property_shape_pick_folds_exactly_the_static_dims(dims, pick):
    pick = pick % len(dims)
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["g"], axis=0),
             helper.make_node("Cast", ["g"], ["gf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "gf"], ["y"])]
    model = make_model(nodes, [vi("x", shape=dims)], [vi("y")], [init("i", np.array(pick))])
    result = run(model)
    static = isinstance(dims[pick], int)
    assert (count_ops(result.model, "Shape") == 0) == static
    assert [d.dim_param or d.dim_value for d in result.model.graph.input[0].type.tensor_type.shape.dim] == dims
    concrete = [d if isinstance(d, int) else 2 + k for k, d in enumerate(dims)]
    assert_same(model, result.model, shapes={"x": concrete})


# ------------------------------------------------------------------------------ SplitToSequence


def _seq_model(split=None, picks=(0, 1), keepdims=None, reader="SequenceAt", shape=(1, 4, 3)):
    nodes, inits = [], []
    inputs = ["x"]
    if split is not None:
        inits.append(init("split", np.asarray(split, np.int64)))
        inputs.append("split")
    attrs = {"axis": 1}
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    nodes.append(helper.make_node("SplitToSequence", inputs, ["seq"], **attrs))
    outs = []
    for k, i in enumerate(picks):
        nodes.append(const_node(f"i{k}", np.array(i, np.int64)))
        nodes.append(helper.make_node(reader, ["seq", f"i{k}"], [f"p{k}"]) if reader == "SequenceAt"
                     else helper.make_node(reader, ["seq"], [f"p{k}"], axis=1))
        nodes.append(helper.make_node("Neg", [f"p{k}"], [f"y{k}"]))
        outs.append(vi(f"y{k}"))
    return make_model(nodes, [vi("x", shape=list(shape))], outs, inits, opset=18)


@pytest.mark.parametrize("split,picks,keepdims", [
    ([2, 2], (0, 1), None), ([1, 3], (1, -2), None), (2, (0, -1), None), (3, (1,), None),
    (None, (0, 3, 2), 1), (None, (1, 2), 0),
])
def test_split_to_sequence_becomes_split(split, picks, keepdims):
    model = _seq_model(split, picks, keepdims)
    result = run(model)
    kinds = ops(result.model)
    assert "SplitToSequence" not in kinds and "SequenceAt" not in kinds and kinds.count("Split") == 1
    assert kinds.count("Squeeze") == (len(picks) if keepdims == 0 else 0)
    assert_same(model, result.model)


def test_split_to_sequence_read_by_concat_from_sequence_kept():
    model = _seq_model([2, 2], picks=(0,), reader="ConcatFromSequence")
    result = run(model)
    assert count_ops(result.model, "SplitToSequence") == 1
    assert any("ConcatFromSequence" in n for n in result.report.passes["canonicalize"]["declined"])


def test_split_to_sequence_with_symbolic_split_axis_and_no_sizes_kept():
    model = _seq_model(None, picks=(0,), shape=(1, "C", 3))
    result = run(model)
    assert count_ops(result.model, "SplitToSequence") == 1


# ------------------------------------------------------------------------------------------ chains


def test_concat_of_concat_on_the_same_axis_flattened():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             helper.make_node("Concat", ["x", "ab"], ["y"], axis=-1)]
    model = make_model(nodes, [vi("x", shape=[1, 2])], [vi("y", shape=[1, 6])])
    result = run(model)
    assert ops(result.model) == ["Relu", "Neg", "Concat"]
    assert list(result.model.graph.node[-1].input) == ["x", "a", "b"]
    assert_same(model, result.model)


@pytest.mark.parametrize("why", ["other-axis", "shared"])
def test_concat_of_concat_kept(why):
    inner_axis = 0 if why == "other-axis" else 1
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Concat", ["a", "x"], ["ab"], axis=inner_axis),
             helper.make_node("Concat", ["ab", "ab"], ["y"], axis=1)]
    outs = [vi("y")]
    model = make_model(nodes, [vi("x", shape=[2, 2])], outs)
    result = run(model)
    assert count_ops(result.model, "Concat") == 2
    assert_same(model, result.model)


def test_reshape_of_reshape_and_transpose_of_transpose_merged():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Reshape", ["a", "s1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "s2"], ["r2"]),
             helper.make_node("Transpose", ["r2"], ["t1"], perm=[1, 2, 0]),
             helper.make_node("Transpose", ["t1"], ["y"], perm=[0, 2, 1])]
    model = make_model(nodes, [vi("x", shape=[2, 3, 4])], [vi("y")],
                       [init("s1", np.array([6, 4])), init("s2", np.array([3, -1, 2]))])
    result = run(model)
    assert ops(result.model) == ["Relu", "Reshape", "Transpose"]
    assert_same(model, result.model)


def test_transposes_that_cancel_disappear():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Transpose", ["t"], ["b"], perm=[0, 2, 1]), helper.make_node("Neg", ["b"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[2, 3, 4])], [vi("y")])
    result = run(model)
    assert ops(result.model) == ["Relu", "Neg"]
    assert_same(model, result.model)


def test_reshape_copying_an_intermediate_dim_not_merged():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Reshape", ["a", "s1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "s2"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[2, 3, 4])], [vi("y")],
                       [init("s1", np.array([6, 4])), init("s2", np.array([0, 2, 2]))])
    result = run(model)
    assert count_ops(result.model, "Reshape") == 2
    assert_same(model, result.model)


# ------------------------------------------------------------------------------------ tidy: dedup


def test_equal_initializers_deduplicated():
    nodes = [helper.make_node("Add", ["x", "a"], ["p"]), helper.make_node("Add", ["p", "b"], ["q"]),
             helper.make_node("Mul", ["q", "c"], ["y"])]
    inits = [init("a", np.arange(4, dtype=np.float32)), init("b", np.arange(4, dtype=np.float32)),
             init("c", np.arange(4, dtype=np.int32).astype(np.float32).reshape(1, 4))]  # same bytes, other shape
    model = make_model(nodes, [vi("x", shape=[1, 4])], [vi("y", shape=[1, 4])], inits)
    result = run(model, TIDY)
    assert sorted(t.name for t in result.model.graph.initializer) == ["a", "c"]
    assert_same(model, result.model)
    assert count(run(result.model, TIDY), "tidy") == 0


def test_same_bytes_different_dtype_not_merged():
    nodes = [helper.make_node("Add", ["x", "a"], ["p"]), helper.make_node("Cast", ["p"], ["pi"], to=TensorProto.INT32),
             helper.make_node("Add", ["pi", "b"], ["y"])]
    inits = [init("a", np.zeros(4, np.float32)), init("b", np.zeros(4, np.int32))]
    model = make_model(nodes, [vi("x", shape=[1, 4])], [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])],
                       inits)
    result = run(model, TIDY)
    assert len(result.model.graph.initializer) == 2


def test_duplicate_nodes_merged():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s1"]), helper.make_node("Sigmoid", ["x"], ["s2"]),
             helper.make_node("Mul", ["s1", "x"], ["m1"]), helper.make_node("Mul", ["s2", "x"], ["m2"]),
             helper.make_node("Softmax", ["x"], ["t1"], axis=0), helper.make_node("Softmax", ["x"], ["t2"], axis=1),
             helper.make_node("Sum", ["m1", "m2", "t1", "t2"], ["y"])]
    model = make_model(nodes, [vi("x", shape=[2, 4])], [vi("y", shape=[2, 4])])
    result = run(model, TIDY)
    assert sorted(ops(result.model)) == ["Mul", "Sigmoid", "Softmax", "Softmax", "Sum"]
    assert_same(model, result.model)


def test_duplicate_node_whose_output_is_a_graph_output_kept():
    nodes = [helper.make_node("Relu", ["x"], ["y1"]), helper.make_node("Relu", ["x"], ["y2"])]
    model = make_model(nodes, [vi("x", shape=[2])], [vi("y1", shape=[2]), vi("y2", shape=[2])])
    result = run(model, TIDY)
    assert len(result.model.graph.node) == 2


# ------------------------------------------------------------------------------- tidy: value_info


def test_stale_value_info_replaced_and_dead_value_info_dropped():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["b"]),
             helper.make_node("Neg", ["b"], ["y"])]
    value_info = [vi("a", shape=[1, 7]), vi("b", shape=[2, 4]), vi("ghost", shape=[3])]
    model = make_model(nodes, [vi("x", shape=["N", 4])], [vi("y", shape=["N", 4])], value_info=value_info)
    result = run(model, CANON + TIDY)
    infos = {v.name: v for v in result.model.graph.value_info}
    assert "ghost" not in infos and "b" not in infos
    dims = infos["a"].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 4
    assert_same(model, result.model, shapes={"x": [3, 4]})
    assert count(run(result.model, CANON + TIDY), "tidy") == 0


def test_consistent_value_info_left_alone():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])]
    model = make_model(nodes, [vi("x", shape=["N", 4])], [vi("y", shape=["N", 4])], value_info=[vi("a", shape=["N", 4])])
    result = run(model, TIDY)
    assert count(result, "tidy") == 0
    assert [v.name for v in result.model.graph.value_info] == ["a"]


# ---------------------------------------------------------------------------- the whole pipeline


def _messy_model():
    """A bit of every kind of clutter on one graph, with a symbolic batch."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("Identity", ["x"], ["xi"]),
        const_node("w", w),
        helper.make_node("Conv", ["xi", "w", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["c"], ["ci"]),
        helper.make_node("Sigmoid", ["ci"], ["s"]), helper.make_node("Mul", ["ci", "s"], ["act"]),
        helper.make_node("Dropout", ["act"], ["d"]),
        helper.make_node("Shape", ["d"], ["sh"]),
        const_node("i0", np.array(0)), const_node("i1", np.array(1)), const_node("ax", np.array([0])),
        helper.make_node("Gather", ["sh", "i0"], ["g0"], axis=0), helper.make_node("Gather", ["sh", "i1"], ["g1"], axis=0),
        helper.make_node("Unsqueeze", ["g0", "ax"], ["u0"]), helper.make_node("Unsqueeze", ["g1", "ax"], ["u1"]),
        const_node("m1", value_ints=[-1]),
        helper.make_node("Concat", ["u0", "u1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["d", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1, 2]),
        helper.make_node("Add", ["t", "b2"], ["y0"]),
        helper.make_node("Identity", ["y0"], ["y"]),
    ]
    inits = [init("b1", np.full(8, 0.1, np.float32)), init("b2", np.full((8, 1), 0.1, np.float32)),
             init("unused", np.ones(100, np.float32))]
    return make_model(nodes, [vi("x", shape=["N", 4, 6, 6])], [vi("y", shape=["N", 8, 36])], inits)


def test_pipeline_cleans_everything_and_is_idempotent():
    model = _messy_model()
    result = onnxrep.optimize(model, input_shapes={"x": [2, 4, 6, 6]})
    assert result.ok, result.verification.lines()
    onnx.checker.check_model(result.model, full_check=True)
    kinds = ops(result.model)
    assert not {"Identity", "Constant", "Dropout", "Transpose"} & set(kinds), kinds
    assert "unused" not in {t.name for t in result.model.graph.initializer}
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {d.domain for d in result.model.opset_import} <= {"", "ai.onnx"}
    assert {n.domain for n in result.model.graph.node} <= {""}
    again = onnxrep.optimize(result.model, verify=False)
    assert {k: v["count"] for k, v in again.report.passes.items() if v["count"]} == {}
    assert again.model.SerializeToString() == result.model.SerializeToString()


def test_subgraph_bodies_are_cleaned_without_breaking_outer_scope_reads():
    then_g = helper.make_graph(
        [const_node("c", np.float32(2.0)), helper.make_node("Mul", ["a", "c"], ["t1"]),
         helper.make_node("Identity", ["t1"], ["then_out"])], "then", [], [vi("then_out", shape=[2, 3])])
    else_g = helper.make_graph([helper.make_node("Identity", ["a"], ["else_out"])], "else", [],
                               [vi("else_out", shape=[2, 3])])
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    model = make_model(nodes, [vi("x", shape=[2, 3]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                       [vi("y", shape=[2, 3])])
    result = run(model)
    if_node = next(n for n in result.model.graph.node if n.op_type == "If")
    branches = {a.name: a.g for a in if_node.attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Mul"]
    assert [n.op_type for n in branches["else_branch"].node] == ["Identity"]   # reads the outer `a`: stays
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    feeds = [{"x": x, "cond": np.array(True)}, {"x": x, "cond": np.array(False)}]
    v = verify(model, result.model, feeds=feeds)
    assert v.ran and v.ok, v.lines()


# ------------------------------------------------------------------ end to end on the models builder

E2E_SIZE = 64
E2E_VARIANTS = {"bn": {"form": "bn"}, "folded": {"form": "folded"}, "fused": {"form": "fused"},
                "official": {"exporter": "official"}}


@functools.cache
def _build(name, imgsz, items=()):
    models = pytest.importorskip("models")
    return models.build(name, imgsz=imgsz, **dict(items))


def _built(name, imgsz, **kw):
    model = _build(name, imgsz, tuple(sorted(kw.items())))
    try:
        import onnxruntime as ort

        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:   # the builder's own output must load: that is the builder's test, not ours
        pytest.skip(f"models.build({name!r}, {kw}) is not a loadable model: {str(exc)[:160]}")
    return model


def _slim_nodes(model, outputs) -> int | None:
    try:
        import onnxslim
    except ImportError:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return len(onnxslim.slim(copy, outputs=list(outputs)).graph.node)


def _check_targets(name, imgsz, kw):
    models = pytest.importorskip("models")
    model = _built(name, imgsz, **kw)
    result = onnxrep.optimize(model)
    assert result.ok, result.verification.lines()
    onnx.checker.check_model(result.model, full_check=True)
    out = result.model
    assert {n.domain for n in out.graph.node} <= {""}
    assert list(out.opset_import) == list(model.opset_import)
    converted = models.count_convs(_build(name.replace("yolov9", "gelan"), imgsz, (("form", "fused"),)))[0]
    assert models.count_convs(out)[0] == converted
    again = onnxrep.optimize(out, verify=False)
    assert {k: v["count"] for k, v in again.report.passes.items() if v["count"]} == {}
    assert again.model.SerializeToString() == out.SerializeToString()
    slim = _slim_nodes(model, result.report.outputs["kept"])
    if slim is not None:
        assert len(out.graph.node) <= slim, (len(out.graph.node), slim)
    return result


@pytest.mark.parametrize("variant", sorted(E2E_VARIANTS))
def test_e2e_smallest_graph_same_convs_as_converted_and_idempotent(variant):
    _check_targets("yolov9-t", E2E_SIZE, E2E_VARIANTS[variant])


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo-raw"])
def test_e2e_raw_exports_cleaned(exporter):
    result = _check_targets("yolov9-t", E2E_SIZE, {"exporter": exporter})
    kinds = set(ops(result.model))
    assert not kinds & {"Identity", "Constant", "Shape", "Gather", "Unsqueeze", "Expand", "CastLike",
                        "SplitToSequence", "SequenceAt", "BatchNormalization"}, kinds


@pytest.mark.parametrize("kw", [{"exporter": "torchscript", "batch": "N"}, {"exporter": "dynamo-raw", "batch": "N"},
                                {"exporter": "mit"}], ids=["torchscript", "dynamo-raw", "mit"])
def test_e2e_dynamic_batch_survives(kw):
    model = _built("yolov9-t", E2E_SIZE, **kw)
    name = model.graph.input[0].name
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    result = onnxrep.optimize(model, verify=False)
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == batch
    for b in (1, 3):
        v = verify(model, result.model, shapes={name: [b, 3, E2E_SIZE, E2E_SIZE]})
        assert v.ran and v.ok, v.lines()
    assert count_ops(result.model, "Shape") == 0   # every view() target became a constant with 0 / -1


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(E2E_VARIANTS) + ["torchscript", "dynamo-raw"])
@pytest.mark.parametrize("name,imgsz", [("yolov9-c", 160), ("yolov9-t", 320), ("gelan-t", 64), ("gelan-c", 160)])
def test_e2e_larger_models(name, imgsz, variant):
    kw = E2E_VARIANTS.get(variant, {"exporter": variant})
    _check_targets(name, imgsz, kw)


def test_zero_bias_is_dropped_and_nonzero_kept():
    from onnx import helper as h

    from tests.graphs import init, make_model, vi

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "W", "zero"], ["a"], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["a", "W2", "b"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [vi("x", shape=[1, 3, 5, 5])], [vi("y")],
                       [init("W", w), init("zero", np.zeros(4, np.float32)),
                        init("W2", rng.standard_normal((2, 4, 3, 3)).astype(np.float32)),
                        init("b", np.array([0.0, 1e-3], np.float32))])
    result = onnxrep.optimize(model)
    assert result.ok and result.verification.ran
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert [len(n.input) for n in convs] == [2, 3]
