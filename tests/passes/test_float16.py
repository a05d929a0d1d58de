"""--precision fp16: the float16 conversion (passes/float16.py) and its accuracy report (verify/detections.py).

The converter-failure tests reproduce, each on the smallest graph that shows it, the bugs the common
float16 converters have on YOLO graphs: Resize scales made float16 (invalid model), keep_io_types breaking
topological order, Cast of a Cast, overflow to inf, ReduceMean in float16. The YOLO tests convert builder
models in every form and check validity, size, onnxruntime / OpenVINO loading and detection agreement.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import models
import onnxrep
from onnxrep.cli import main
from onnxrep.verify import verify
from onnxrep.verify.detections import agreement, detect, top_anchor_errors
from tests.graphs import conv_bn, init, make_model, vi
from tests.passes.test_random_graphs import random_models

F16 = TensorProto.FLOAT16


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _valid(model: onnx.ModelProto) -> None:
    """Full checker (types, topological order), strict shape inference, and onnxruntime loads it."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _casts_of_casts(model: onnx.ModelProto) -> list[str]:
    made_by = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "Cast" and n.input[0] in made_by
            and made_by[n.input[0]].op_type == "Cast"]


def _elem(model: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if v.name == name:
            return v.type.tensor_type.elem_type
    for t in model.graph.initializer:
        if t.name == name:
            return t.data_type
    raise KeyError(name)


def _half(model, **kw):
    return onnxrep.optimize(model, precision="fp16", **kw)


def _conv(name, x, y, c, rng, scale=0.3):
    return (helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[1, 1, 1, 1]),
            [init(f"{name}.w", (rng.normal(0, scale, (c, c, 3, 3))).astype(np.float32)),
             init(f"{name}.b", rng.normal(0, 0.1, c).astype(np.float32))])


# ---------------------------------------------------------------- the common converters' failures

def test_resize_scales_stay_float32_and_the_model_is_valid():
    rng = np.random.default_rng(0)
    conv, inits = _conv("c", "x", "y", 4, rng)
    resize = helper.make_node("Resize", ["y", "", "scales"], ["z"], name="up", mode="nearest")
    model = make_model([conv, resize], [vi("x", shape=[1, 4, 8, 8])], [vi("z")],
                       inits + [init("scales", np.array([1, 1, 2, 2], np.float32))])
    result = _half(model)
    _valid(result.model)
    node = next(n for n in result.model.graph.node if n.op_type == "Resize")
    assert _elem(result.model, node.input[0]) == F16        # the data is float16 ...
    assert _elem(result.model, node.input[2]) == TensorProto.FLOAT   # ... its scales, by the spec, are not
    assert result.ok, result.verification.lines()


def test_keep_io_types_keeps_topological_order_and_one_cast_per_boundary():
    """An input read by several float16 nodes, one of them listed before the input's other reader."""
    rng = np.random.default_rng(1)
    a, ia = _conv("a", "x", "ya", 4, rng)
    b, ib = _conv("b", "x", "yb", 4, rng)
    add = helper.make_node("Add", ["ya", "yb"], ["s"], name="add")
    soft = helper.make_node("Softmax", ["s"], ["p"], name="soft", axis=1)
    mul = helper.make_node("Mul", ["p", "x"], ["out"], name="mul")
    model = make_model([a, b, add, soft, mul], [vi("x", shape=[1, 4, 6, 6])], [vi("out"), vi("s")], ia + ib)
    result = _half(model)
    _valid(result.model)   # the full checker rejects a node reading a tensor made after it
    casts = [n for n in result.model.graph.node if n.op_type == "Cast"]
    assert sum(1 for n in casts if n.input[0] == "x") == 1                 # x cast once, shared by both convs
    assert [o.type.tensor_type.elem_type for o in result.model.graph.output] == [TensorProto.FLOAT] * 2
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert not _casts_of_casts(result.model)
    assert result.ok, result.verification.lines()


def test_no_cast_of_a_cast_when_a_float32_node_sits_between_float16_ones():
    rng = np.random.default_rng(2)
    a, ia = _conv("a", "x", "ya", 4, rng)
    red = helper.make_node("ReduceMean", ["ya"], ["m"], name="mean", axes=[2, 3], keepdims=1)   # float32
    b, ib = _conv("b", "ya", "yb", 4, rng)
    add = helper.make_node("Add", ["yb", "m"], ["out"], name="add")
    model = make_model([a, red, b, add], [vi("x", shape=[1, 4, 6, 6])], [vi("out"), vi("ya")], ia + ib)
    result = _half(model)
    _valid(result.model)
    assert not _casts_of_casts(result.model)
    kept = result.report.passes["to_float16"]["float16"]["kept_nodes"]
    assert any("mean" in nodes for nodes in kept.values())


def test_values_beyond_float16_range_stay_float32_and_do_not_overflow():
    """x * 10000 -> Conv: about 94000, fine in float32, inf in float16 (largest 65504)."""
    rng = np.random.default_rng(3)
    scale = helper.make_node("Mul", ["x", "k"], ["big"], name="scale")
    a, ia = _conv("a", "big", "y", 4, rng, scale=1.0)
    shrink = helper.make_node("Mul", ["y", "small"], ["out"], name="shrink")
    model = make_model([scale, a, shrink], [vi("x", shape=[1, 4, 6, 6])], [vi("out")],
                       ia + [init("k", np.array(10000, np.float32)), init("small", np.array(1e-4, np.float32))])
    naive = onnxrep.optimize(model, precision="fp16", verify=False, passes=[])   # to see what it keeps
    kept = naive.report.passes["to_float16"]["float16"]["kept_nodes"]
    assert any(r.startswith("its values reach") for r in kept), kept
    result = _half(model, passes=[])
    x = np.random.default_rng(0).uniform(0, 1, (1, 4, 6, 6)).astype(np.float32)
    got = _run(result.model, {"x": x})[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _run(model, {"x": x})[0], rtol=1e-2, atol=1e-2)
    assert result.ok, result.verification.lines()


def test_weights_beyond_float16_range_stay_float32_and_tiny_ones_are_reported():
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = 1e-9                                   # becomes 0 in float16
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])
    mul = helper.make_node("Mul", ["y", "huge"], ["z"], name="mulhuge")
    div = helper.make_node("Div", ["z", "huge"], ["out"], name="divhuge")
    model = make_model([conv, mul, div], [vi("x", shape=[1, 4, 5, 5])], [vi("out")],
                       [init("w", w), init("huge", np.array(1e5, np.float32))])
    result = _half(model, passes=[])
    info = result.report.passes["to_float16"]["float16"]
    assert info["weights_flushed_to_zero"] == 1
    assert any(n.startswith("mulhuge") for r, nodes in info["kept_nodes"].items() if "weight" in r or "reach" in r
               for n in nodes)
    assert "became 0" in result.report.text()
    x = np.random.default_rng(0).normal(0, 1, (1, 4, 5, 5)).astype(np.float32)
    assert np.isfinite(_run(result.model, {"x": x})[0]).all()


def test_reducemean_stays_float32_and_gives_no_nan():
    """A mean over 64x64 large values: float16 accumulation overflows (inf, then NaN after x - mean)."""
    red = helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[2, 3], keepdims=1)
    sub = helper.make_node("Sub", ["x", "m"], ["out"], name="center")
    model = make_model([red, sub], [vi("x", shape=[1, 2, 64, 64])], [vi("out")])
    result = _half(model, passes=[])
    kept = result.report.passes["to_float16"]["float16"]["kept_nodes"]
    assert "mean" in sum(kept.values(), [])
    x = np.full((1, 2, 64, 64), 30000, np.float32)
    assert np.isfinite(_run(result.model, {"x": x})[0]).all()


def test_shape_and_index_tensors_are_untouched():
    rng = np.random.default_rng(5)
    a, ia = _conv("a", "x", "y", 4, rng)
    nodes = [a, helper.make_node("Shape", ["y"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"], name="unsq"),
             helper.make_node("Concat", ["n1", "rest"], ["target"], name="cat", axis=0),
             helper.make_node("Reshape", ["y", "target"], ["out"], name="reshape")]
    model = make_model(nodes, [vi("x", shape=["N", 4, 6, 6])], [vi("out")],
                       ia + [init("zero", np.array(0, np.int64)), init("zero1", np.array([0], np.int64)),
                             init("rest", np.array([-1], np.int64))])
    result = _half(model, passes=[])
    _valid(result.model)
    for name in ("s", "n", "target"):
        assert _elem(result.model, name) == TensorProto.INT64
    assert result.ok, result.verification.lines()


def test_float16_io_when_keep_io_types_is_off_and_options_keep_more_float32():
    rng = np.random.default_rng(6)
    a, ia = _conv("a", "x", "y", 4, rng)
    sig = helper.make_node("Sigmoid", ["y"], ["out"], name="sig")
    model = make_model([a, sig], [vi("x", shape=[2, 4, 6, 6])], [vi("out")], ia)
    result = _half(model, keep_io_types=False, passes=[])
    _valid(result.model)
    assert result.model.graph.input[0].type.tensor_type.elem_type == F16
    assert result.model.graph.output[0].type.tensor_type.elem_type == F16
    assert result.ok, result.verification.lines()
    kept = _half(model, fp32_ops=["Sigmoid"], fp32_nodes=["a"], passes=[])
    info = kept.report.passes["to_float16"]["float16"]["kept_nodes"]
    assert sum(info.values(), []) == ["a", "sig"] or sorted(sum(info.values(), [])) == ["a", "sig"]
    assert kept.ok
    with pytest.raises(onnxrep.OnnxrepError, match="no node named 'nope'"):
        _half(model, fp32_nodes=["nope"], passes=[])


def test_weight_names_are_kept():
    rng = np.random.default_rng(7)
    a, ia = _conv("a", "x", "y", 4, rng)
    model = make_model([a], [vi("x", shape=[1, 4, 6, 6])], [vi("y")], ia)
    result = _half(model, passes=[])
    assert sorted(t.name for t in result.model.graph.initializer) == ["a.b", "a.w"]
    assert {t.data_type for t in result.model.graph.initializer} == {F16}


def _init_types(model: onnx.ModelProto) -> dict:
    return {t.name: t.data_type for t in model.graph.initializer}


def _cast_readers(model: onnx.ModelProto, name: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "Cast" and n.input[0] == name)


def test_exact_tables_are_stored_in_float16_and_read_through_one_cast():
    """YOLO's decode: float32 Sub/Mul after the DFL Softmax read the anchor grid (halves) and the strides
    (powers of two); float16 holds them exactly, so they are stored in float16 and cast back once. A table
    float16 can't hold exactly, and a small one, stay float32; a table a float16 node reads too is one copy."""
    rng = np.random.default_rng(8)
    grid = np.stack(np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5))            # [2, 32, 32] halves
    anchors = np.concatenate([grid, grid])[None].astype(np.float32)                   # [1, 4, 32, 32]
    strides = np.full((1, 1, 32, 32), 8.0, np.float32)
    a, ia = _conv("a", "x", "y", 4, rng)
    nodes = [a, helper.make_node("Add", ["y", "anchors"], ["y2"], name="shift"),      # float16: reads anchors too
             helper.make_node("Softmax", ["y2"], ["p"], name="soft", axis=1),
             helper.make_node("Sub", ["p", "anchors"], ["d"], name="sub"),             # float32 from here on
             helper.make_node("Mul", ["d", "strides"], ["e"], name="mul"),
             helper.make_node("Add", ["e", "inexact"], ["f"], name="add_inexact"),
             helper.make_node("Add", ["f", "small"], ["out"], name="add_small")]
    tables = [init("anchors", anchors), init("strides", strides),
              init("inexact", rng.normal(0, 1, (1, 4, 32, 32)).astype(np.float32)),
              init("small", np.full((1, 4, 1, 1), 0.5, np.float32))]
    model = make_model(nodes, [vi("x", shape=[1, 4, 32, 32])], [vi("out")], ia + tables)
    result = _half(model, passes=[])
    _valid(result.model)
    types = _init_types(result.model)
    assert types["anchors"] == types["strides"] == F16 and types["inexact"] == types["small"] == TensorProto.FLOAT
    assert sum(1 for t in result.model.graph.initializer if t.name.startswith("anchors")) == 1   # one copy
    assert _cast_readers(result.model, "anchors") == _cast_readers(result.model, "strides") == 1
    assert not _casts_of_casts(result.model)
    info = result.report.passes["to_float16"]["float16"]["exact_tables"]
    # anchors: its float16 copy was there for `shift` already, so all of its float32 bytes are saved
    assert info == {"tables": 2, "bytes_saved": anchors.nbytes + strides.size * 2}
    assert "2 float32 tables that float16 holds exactly" in result.report.text()
    assert result.ok, result.verification.lines()


def test_a_float16_result_with_tables_is_a_fixed_point():
    """A second optimize changes nothing: canonicalize leaves the tables' Casts (folding doubles the bytes)."""
    model = models.build("yolov9-t", "bn", imgsz=320)   # anchors [1, 2, 2100], strides [1, 2100]
    first = _half(model, verify=False)
    again = onnxrep.optimize(first.model, verify=False)
    assert first.report.passes["to_float16"]["float16"]["exact_tables"]["tables"] == 2
    assert again.model.ByteSize() == first.model.ByteSize()
    assert sorted((t.name, t.data_type) for t in again.model.graph.initializer) == \
           sorted((t.name, t.data_type) for t in first.model.graph.initializer)
    assert "Cast not folded: a float16 table read as float32" in again.report.text()


def test_a_table_another_float32_op_reads_stays_float32_once():
    """Sub and Max read one exact table in float32: storing it in float16 would keep both copies."""
    table = init("t", (np.arange(2048, dtype=np.float32) / 2).reshape(1, 2048))
    nodes = [helper.make_node("Softmax", ["x"], ["p"], name="soft", axis=1),
             helper.make_node("Sub", ["p", "t"], ["d"], name="sub"),
             helper.make_node("Max", ["p", "t"], ["m"], name="max")]
    model = make_model(nodes, [vi("x", shape=[2, 2048])], [vi("d"), vi("m")], [table])
    result = _half(model, passes=[])
    _valid(result.model)
    assert [(t.name, t.data_type) for t in result.model.graph.initializer] == [("t", TensorProto.FLOAT)]
    assert result.report.passes["to_float16"]["float16"]["exact_tables"] == {"tables": 0, "bytes_saved": 0}


def test_an_initializer_that_is_a_graph_output_keeps_its_type():
    rng = np.random.default_rng(9)
    a, ia = _conv("a", "x", "y", 4, rng)
    model = make_model([a], [vi("x", shape=[1, 4, 6, 6])], [vi("y"), vi("a.b", shape=[4])], ia)
    result = _half(model, passes=[])
    _valid(result.model)
    assert [o.type.tensor_type.elem_type for o in result.model.graph.output] == [TensorProto.FLOAT] * 2
    assert result.ok, result.verification.lines()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["halves", "powers", "normal", "huge", "tiny"]), st.integers(0, 2 ** 31),
       st.sampled_from(["Add", "Sub", "Mul", "Div", "Max"]), st.sampled_from([1023, 1024, 3000]))
def test_a_table_read_in_float32_is_stored_in_float16_only_when_exact(kind, seed, op, size):
    """x -> Softmax -> op(., table): all float32. The table becomes float16 exactly when float16 holds every
    value, it has 1024 or more, and an Add/Sub/Mul/Div reads it; either way the output is bit-equal."""
    rng = np.random.default_rng(seed)
    table = {"halves": rng.integers(-2048, 2048, size) / 2, "powers": 2.0 ** rng.integers(-14, 15, size),
             "normal": rng.normal(0, 10, size), "huge": np.full(size, 70000.0), "tiny": np.full(size, 2.0 ** -25)}
    value = table[kind].astype(np.float32).reshape(1, size)
    nodes = [helper.make_node("Softmax", ["x"], ["p"], name="soft", axis=1),
             helper.make_node(op, ["p", "table"], ["out"], name="read")]
    model = make_model(nodes, [vi("x", shape=[2, size])], [vi("out")], [init("table", value)])
    result = _half(model, passes=[])
    _valid(result.model)
    stored16 = _init_types(result.model)["table"] == F16
    with np.errstate(over="ignore"):
        exact = np.array_equal(value.astype(np.float16).astype(np.float32), value)
    assert stored16 == (exact and size >= 1024 and op != "Max")
    assert exact == (kind in ("halves", "powers"))
    x = rng.normal(0, 3, (2, size)).astype(np.float32)
    np.testing.assert_array_equal(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_models())
def test_random_graphs_convert_to_valid_float16_models_that_agree(case):
    """Shapes, groups, strides, dtypes (float16 inputs too), symbolic batch, intermediate graph outputs."""
    model, _dtype = case
    result = _half(model)
    _valid(result.model)
    assert not _casts_of_casts(result.model)
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    assert [o.type.tensor_type.elem_type for o in result.model.graph.output] == \
           [o.type.tensor_type.elem_type for o in model.graph.output]
    assert result.verification.ran and result.ok, result.verification.lines()


# ---------------------------------------------------------------- YOLO models

def _check_yolo(name, form, imgsz, tmp_path):
    model = models.build(name, form, imgsz=imgsz)
    fp32 = onnxrep.optimize(model, verify=False)
    result = _half(model)
    assert result.ok, result.verification.lines()
    _valid(result.model)
    assert not _casts_of_casts(result.model)
    ratio = result.model.ByteSize() / fp32.model.ByteSize()
    # half, within 2 %: the anchor and stride tables are stored in float16 too (exact), the graph itself is
    # what is not halved (yolov9-t 640: 0.508; yolov9-c/e: 0.501)
    assert 0.49 <= ratio <= 0.51, ratio
    (agree,) = result.verification.agreements.values()
    assert agree["rate"] >= 0.99 and agree["matched"] >= 20, agree["line"]
    # against the float32 model: no more than 2.5x what float16 rounding alone moves it (the noisy twin's
    # level, which verify measures; 57 models measured at most 2.2x), far from a broken conversion (tests below)
    (check,) = result.verification.outputs
    assert check.used * check.noise_factor <= 2.5, check
    kept = result.report.passes["to_float16"]["float16"]["kept_nodes"]
    assert any(r.startswith("Softmax") for r in kept)
    path = tmp_path / "half.onnx"
    onnx.save(result.model, str(path))
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    # f32 compute: OpenVINO's CPU default is bfloat16 where the CPU has it (8-bit mantissa, not this test's point)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled([x])[compiled.outputs[0]])
    ref = _run(fp32.model, {"images": x})[0]
    assert got.shape == ref.shape
    assert agreement([ref], [got]).rate >= 0.99
    return result


@pytest.mark.parametrize("form", ["bn", "folded", "fused", "converted"])
@pytest.mark.parametrize("name", ["yolov9-t", "gelan-t"])
def test_small_yolo_models_in_float16(name, form, tmp_path):
    _check_yolo(name, form, 320, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["bn", "folded", "fused", "converted"])
@pytest.mark.parametrize("name", ["yolov9-t", "yolov9-c", "yolov9-e", "gelan-c"])
def test_yolo_models_in_float16_at_640(name, form, tmp_path):
    _check_yolo(name, form, 640, tmp_path)


def _mutated(result, build):
    """The float16 model with `build(inner, out)` -> nodes, initializers spliced in front of its output."""
    bad = onnx.ModelProto()
    bad.CopyFrom(result.model)
    out = bad.graph.output[0].name
    inner = out + "_mutated"
    for n in bad.graph.node:
        n.output[:] = [inner if o == out else o for o in n.output]
    channels = bad.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    nodes, inits = build(inner, out, channels)
    bad.graph.node.extend(nodes)
    bad.graph.initializer.extend(inits)
    return bad


def test_halved_scores_fail_verification_and_agreement():
    """Mutation: class scores halved in the float16 model -> detections disagree -> verify fails, names one.
    (A random-weight model's scores are all near 0.01 and float16 itself moves them by a few percent: smaller
    changes are within its own noise.)"""
    model = models.build("yolov9-t", "converted", imgsz=160)
    result = _half(model)
    assert result.ok

    def scale(inner, out, channels):
        k = np.ones((1, channels, 1), np.float32)
        k[0, 4:] = 0.5
        return [helper.make_node("Mul", [inner, "k"], [out])], [onnx.numpy_helper.from_array(k, "k")]

    v = verify(model, _mutated(result, scale), precision="fp16", dropped=result.report.outputs.get("dropped", ()))
    assert not v.ok
    (agree,) = v.agreements.values()
    assert agree["rate"] < 0.99 and "found by only the reference model" in agree["worst"], agree


def test_shifted_boxes_are_caught():
    """Mutation: the float16 model's x shifted by 10 % of the image -> verification fails (pixels, per channel)."""
    model = models.build("yolov9-t", "converted", imgsz=160)
    result = _half(model)

    def shift(inner, out, channels):
        d = np.zeros((1, channels, 1), np.float32)
        d[0, 0] = 16.0
        return [helper.make_node("Add", [inner, "d"], [out])], [onnx.numpy_helper.from_array(d, "d")]

    v = verify(model, _mutated(result, shift), precision="fp16", dropped=result.report.outputs.get("dropped", ()))
    assert not v.ok and not v.outputs[0].ok, v.lines()


# ---------------------------------------------------------------- detection agreement

def _yolo(boxes, scores):
    """[1, 4+nc, A] from boxes (A, 4) xywh and scores (A, nc)."""
    return np.concatenate([np.asarray(boxes, np.float32).T, np.asarray(scores, np.float32).T])[None]


def test_agreement_identical_outputs():
    rng = np.random.default_rng(0)
    y = _yolo(rng.uniform(20, 200, (50, 4)), rng.uniform(0, 1, (50, 3)))
    a = agreement([y], [y.copy()], conf=0.25)
    assert a.rate == 1.0 and a.disagreements == 0 and a.matched > 0 and a.mean_iou == pytest.approx(1.0)


def test_agreement_counts_a_missing_detection_and_names_it():
    boxes = [[50, 50, 20, 20], [150, 150, 20, 20], [250, 50, 20, 20]]
    ref = _yolo(boxes, [[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]])
    new = _yolo(boxes, [[0.9, 0.0], [0.8, 0.0], [0.1, 0.0]])     # the third box is gone: a real difference
    a = agreement([ref], [new], conf=0.25, min_detections=1, eps=1e-3)
    assert a.disagreements == 1 and a.rate == pytest.approx(2 / 3) and "anchor 2" in a.worst


def test_agreement_tie_at_the_cut_is_not_a_disagreement():
    boxes = [[50, 50, 20, 20], [150, 150, 20, 20]]
    ref = _yolo(boxes, [[0.9, 0.0], [0.2501, 0.0]])
    new = _yolo(boxes, [[0.9002, 0.0], [0.2499, 0.0]])           # crosses conf 0.25 by float16 noise
    a = agreement([ref], [new], conf=0.25, min_detections=1, eps=1e-3)
    assert a.disagreements == 0 and a.ties == 1 and a.rate == 1.0
    # the same crossing by more than the score error is a disagreement
    far = _yolo(boxes, [[0.9, 0.0], [0.2, 0.0]])
    assert agreement([ref], [far], conf=0.25, min_detections=1, eps=1e-3).disagreements == 1


def test_agreement_tie_between_classes_is_not_a_disagreement():
    boxes = [[50, 50, 20, 20]]
    ref = _yolo(boxes, [[0.6001, 0.5999]])
    new = _yolo(boxes, [[0.5999, 0.6001]])                       # the best class flips within the error
    a = agreement([ref], [new], conf=0.25, min_detections=1, max_det=1, eps=1e-3)
    assert a.disagreements == 0 and a.ties == 2
    new = _yolo(boxes, [[0.3, 0.6001]])              # class 0 really dropped: one disagreement, one tie
    a = agreement([ref], [new], conf=0.25, min_detections=1, max_det=1, eps=1e-3)
    assert a.disagreements == 1 and a.ties == 1 and "the other scored it 0.3" in a.worst


def test_agreement_without_a_measured_error_is_not_widened_by_a_few_wrong_scores():
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(np.arange(20) * 30 + 15, np.arange(20) * 30 + 15), -1).reshape(-1, 2)
    boxes = np.concatenate([grid, np.full((400, 2), 20)], 1)          # 400 boxes, none overlapping
    ref = _yolo(boxes, rng.uniform(0.3, 1, (400, 1)))
    new = ref + rng.normal(0, 1e-4, ref.shape).astype(np.float32)
    new[0, 4, :2] = 0.0                                                # two detections lost
    a = agreement([ref], [new], conf=0.25, max_det=1000)
    assert a.eps < 1e-3 and a.disagreements == 2 and a.matched == 398 and a.ties == 0, a


def test_agreement_with_nothing_detected_and_overlapping_boxes():
    empty = _yolo([[10, 10, 5, 5]], [[0.0, 0.0]])
    assert agreement([empty], [empty], conf=0.25, min_detections=0).rate == 1.0
    # two overlapping boxes of one class: NMS keeps one in both models
    ref = _yolo([[50, 50, 40, 40], [52, 52, 40, 40]], [[0.9, 0], [0.8, 0]])
    assert len(detect(ref[0], 0.25, 0.45, 300)) == 1
    a = agreement([ref], [ref.copy()], conf=0.25, min_detections=0)
    assert a.matched == 1 and a.rate == 1.0


def test_top_anchor_errors_look_only_at_the_best_anchors_and_their_best_class():
    boxes = [[50, 50, 20, 20], [150, 150, 20, 20], [250, 50, 20, 20]]
    ref = _yolo(boxes, [[0.9, 0.1], [0.1, 0.5], [0.05, 0.0]])
    new = ref.copy()
    new[0, 0, 2] += 40.0           # a large box error at the worst anchor: outside the top 2
    new[0, 4, 2] = 0.5             # and a large score error there
    assert top_anchor_errors(ref, new, top=2) == (0.0, 0.0, 2)
    new[0, 1, 1] += 0.75           # a box error at the second best anchor
    new[0, 5, 1] = 0.49            # its best class (1) moves 2 %; class 0 (not its best) moves a lot
    new[0, 4, 1] = 0.9
    px, rel, checked = top_anchor_errors(ref, new, top=2)
    assert px == pytest.approx(0.75) and rel == pytest.approx(0.02, rel=1e-5) and checked == 2
    assert top_anchor_errors(ref, new, top=3)[0] == pytest.approx(40.0)
    # a floor on the score drops the third anchor (0.05) even within the top 3, then the second (0.5)
    assert top_anchor_errors(ref, new, top=3, min_score=0.1)[::2] == (pytest.approx(0.75), 2)
    assert top_anchor_errors(ref, new, top=3, min_score=0.6) == (0.0, 0.0, 1)
    assert top_anchor_errors(ref, new, top=3, min_score=0.95) == (0.0, 0.0, 0)   # nothing checked: says so


def test_top_anchor_errors_never_hide_nan_or_a_changed_zero_score():
    boxes = [[50, 50, 20, 20], [150, 150, 20, 20]]
    ref = _yolo(boxes, [[0.9, 0.0], [0.0, 0.0]])     # the second anchor scores 0
    nan_box = ref.copy()
    nan_box[0, 1, 1] = np.nan
    nan_box[0, 0, 0] += 50.0
    assert top_anchor_errors(ref, nan_box)[0] == np.inf
    nan_score = ref.copy()
    nan_score[0, 4, 0] = np.nan
    assert top_anchor_errors(ref, nan_score)[1] == np.inf
    zero = ref.copy()
    assert top_anchor_errors(ref, zero) == (0.0, 0.0, 2)    # 0 -> 0 is no change
    zero[0, 4, 1] = 0.01
    zero[0, 4, 0] *= 1.5
    assert top_anchor_errors(ref, zero)[1] == np.inf        # 0 -> 0.01 is no finite relative change


# ---------------------------------------------------------------- command line

def test_cli_precision_fp16_writes_a_float16_model(tmp_path):
    from click.testing import CliRunner

    src = tmp_path / "m.onnx"
    models.save(models.build("yolov9-t", "bn", imgsz=160), src)
    out = tmp_path / "m16.onnx"
    r = CliRunner().invoke(main, ["optimize", str(src), "-o", str(out), "--precision", "fp16"])
    assert r.exit_code == 0, r.output
    assert "pass to_float16" in r.output and "float32: " in r.output and "detections:" in r.output
    assert F16 in {t.data_type for t in onnx.load(str(out)).graph.initializer}
    r = CliRunner().invoke(main, ["optimize", str(src), "-o", str(tmp_path / "x.onnx"), "--precision", "fp16",
                                  "--fp32-nodes", "nope"])
    assert r.exit_code == 2 and "no node named 'nope'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.onnx").exists()
    r = CliRunner().invoke(main, ["optimize", str(src), "--precision", "fp8"])
    assert r.exit_code == 2


def test_ranges_that_could_not_be_measured_are_reported(monkeypatch):
    """measure_ranges used to return {} on any failure, silently switching the float16 range rules off."""
    import onnxrep.verify.runtime as runtime
    from onnxrep.verify.ranges import measure_ranges

    real = runtime.session

    def failing(model, outputs=None, transform=None):
        if transform is not None and type(transform).__name__ == "_Probes":
            raise RuntimeError("no kernel for this op")
        return real(model, outputs, transform)

    monkeypatch.setattr(runtime, "session", failing)
    peaks, why = measure_ranges(conv_bn(), [{"x": np.ones((1, 4, 8, 8), np.float32)}])
    assert peaks == {} and "no kernel for this op" in why
    result = onnxrep.optimize(conv_bn(), precision="fp16", verify=False)
    assert "float16 range rules off: the float32 model could not be run" in result.report.text()


@pytest.mark.parametrize("attention", [True, "mul", False, "runtime"])
def test_an_attention_softmax_does_not_keep_the_rest_of_the_network_float32(attention):
    """YOLO11's C2PSA: Softmax(q k) weights v (another activation) in a MatMul: what follows is an ordinary
    activation and goes float16 (the Softmax itself stays float32). A DFL Softmax times a constant projection
    keeps its tail float32, and so does a Softmax times a constant in MatMul form."""
    rng = np.random.default_rng(7)
    a, ia = _conv("a", "x", "ya", 4, rng)                                           # [1, 4, 6, 6]
    nodes = [a, helper.make_node("Reshape", ["ya", "shape"], ["v"], name="flat"),   # [1, 4, 36]
             helper.make_node("Softmax", ["v"], ["p"], name="soft", axis=-1)]
    inits = ia + [init("shape", np.array([1, 4, 36], np.int64))]
    if attention == "mul":   # RT-DETR's deformable attention: sampled values x weights, then summed
        nodes.append(helper.make_node("Mul", ["p", "v"], ["mix"], name="mix"))
    elif attention == "runtime":   # a factor made at run time from a shape (strides of a dynamic export): no activation
        nodes += [helper.make_node("Shape", ["p"], ["pshape"], name="pshape"),
                  helper.make_node("ConstantOfShape", ["pshape"], ["twos"], name="twos",
                                   value=numpy_helper.from_array(np.array([2.0], np.float32))),
                  helper.make_node("Mul", ["p", "twos"], ["mix"], name="mix")]
    elif attention:
        nodes.append(helper.make_node("MatMul", ["v", "pt"], ["mix"], name="mix"))   # v [1,4,36] x p^T [1,36,4]
        nodes.insert(3, helper.make_node("Transpose", ["p"], ["pt"], name="pt", perm=[0, 2, 1]))
    else:
        inits.append(init("proj", rng.normal(size=(36, 4)).astype(np.float32)))
        nodes.append(helper.make_node("MatMul", ["p", "proj"], ["mix"], name="mix"))
    nodes.append(helper.make_node("Add", ["mix", "bias"], ["out"], name="after"))
    inits.append(init("bias", np.ones((1, 1, 36 if attention in ("mul", "runtime") else 4), np.float32)))
    model = make_model(nodes, [vi("x", shape=[1, 4, 6, 6])], [vi("out")], inits)
    result = _half(model)
    _valid(result.model)
    kept = {n.split(" (")[0] for nodes_ in result.report.passes["to_float16"]["float16"]["kept_nodes"].values()
            for n in nodes_}
    assert "soft" in kept
    attends = attention in (True, "mul")
    assert ("after" in kept) == (not attends) and ("mix" in kept) == (not attends), kept
    assert result.ok, result.verification.lines()
