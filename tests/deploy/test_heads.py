"""Head recognition beyond YOLOv9/v7 (deploy/head.py): YOLOv6's [B, A, 5+nc] with a constant-1 objectness,
and split heads (boxes [B, A, 4] or [B, 4, A] + scores [B, A, nc] or [B, nc, A], YOLO-NAS and PP-YOLOE), built
here the way those families' decoders write them (distances from anchor points, `-lt + points`, centre-size
or corners, Mul by strides), by a generator over codings, orientations, sizes and opsets; every recognised
head then gets --nms / --output-layout, proven by the deploy checks against the reference NMS; near misses
(scores not a Sigmoid's, objectness not 1, boxes not a decode) are refused with a reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxrep.deploy import DeployOptions, apply, check
from onnxrep.deploy.head import find_heads
from onnxrep.deploy.nms_reference import reference_nms
from onnxrep.io import OnnxrepError


def _c(name, value, inits):
    inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def head_model(kind: str, coding: str = "xyxy", nc: int = 3, anchors: int = 24, boxes_first: bool = True,
               scores_first: bool = True, opset: int = 17, obj: str = "ones", score_op: str = "Sigmoid",
               neg: bool | str = True, batch="B") -> onnx.ModelProto:
    """A decoder over x [B, 4+nc, A] (distances, then class logits), as the families write it:
    kind "v6": Concat(-1)(boxes*strides [B, A, 4], objectness [B, A, 1], Sigmoid(cls)^T [B, A, nc]);
    kind "split": outputs boxes ([B, A, 4] or [B, 4, A]) and scores ([B, A, nc] or [B, nc, A])."""
    rng = np.random.default_rng(anchors * 7 + nc)
    inits, nodes = [], []
    n = lambda op, ins, outs, **kw: nodes.append(helper.make_node(op, ins, outs, **kw))  # noqa: E731
    axes = _c("ax1", np.array([1], np.int64), inits)
    if batch != "B":   # a static export: the batch baked into a Reshape target (what --dynamic-batch rewrites)
        n("Reshape", ["x", _c("target", np.array([batch, 4 + nc, anchors], np.int64), inits)], ["xr"])
    else:
        n("Identity", ["x"], ["xr"])
    n("Slice", ["xr", _c("s0", np.array([0], np.int64), inits), _c("e4", np.array([4], np.int64), inits), axes], ["dist"])
    n("Slice", ["xr", _c("s4", np.array([4], np.int64), inits), _c("eN", np.array([4 + nc], np.int64), inits), axes],
      ["logits"])
    n("Transpose", ["dist"], ["dist_t"], perm=[0, 2, 1])                                    # [B, A, 4]
    n("Exp", ["dist_t"], ["d"])
    n("Split", ["d", _c("sp", np.array([2, 2], np.int64), inits)], ["lt", "rb"], axis=2)
    points = _c("points", (rng.random((anchors, 2)) * 20).astype(np.float32), inits)
    if neg == "mul":   # paddle2onnx's -lt: Mul by -1
        n("Mul", ["lt", _c("minus1", np.float32(-1), inits)], ["nlt"])
        n("Add", ["nlt", points], ["x1y1"])
    elif neg:
        n("Neg", ["lt"], ["nlt"])
        n("Add", ["nlt", points], ["x1y1"])
    else:
        n("Sub", [points, "lt"], ["x1y1"])
    n("Add", ["rb", points], ["x2y2"])
    if neg == "four":   # YOLO-NAS: each corner coordinate apart, Unsqueeze(anchor_x - Gather(d, 0)) ...
        px = _c("px", (rng.random(anchors) * 20).astype(np.float32), inits)
        py = _c("py", (rng.random(anchors) * 20).astype(np.float32), inits)
        for k, (op, p) in enumerate([("Sub", px), ("Sub", py), ("Add", px), ("Add", py)]):
            n("Gather", ["d", _c(f"i{k}", np.int64(k), inits)], [f"g{k}"], axis=2)
            n(op, [p, f"g{k}"] if op == "Sub" else [f"g{k}", p], [f"c{k}"])
            n("Unsqueeze", [f"c{k}", _c(f"u{k}", np.array([2], np.int64), inits)], [f"cu{k}"])
        n("Concat", [f"cu{k}" for k in range(4)], ["dec"], axis=-1)
    elif coding == "xyxy":
        n("Concat", ["x1y1", "x2y2"], ["dec"], axis=-1)
    else:
        n("Add", ["x1y1", "x2y2"], ["sum"])
        n("Div", ["sum", _c("two", np.float32(2), inits)], ["cxy"])
        n("Sub", ["x2y2", "x1y1"], ["wh"])
        n("Concat", ["cxy", "wh"], ["dec"], axis=-1)
    strides = np.repeat(np.array([8, 16, 32], np.float32), [anchors - anchors // 2 - anchors // 4, anchors // 2,
                                                            anchors // 4])[:, None]
    n("Mul", ["dec", _c("strides", strides, inits)], ["boxes_af"])                           # [B, A, 4]
    n(score_op, ["logits"], ["cls"])                                                        # [B, nc, A]
    n("Transpose", ["cls"], ["cls_af"], perm=[0, 2, 1])                                     # [B, A, nc]
    if kind == "pp":   # PP-YOLOE without NMS: boxes and scores on the last axis, no objectness
        n("Concat", ["boxes_af", "cls_af"], ["y"], axis=-1)
        outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", anchors, 4 + nc])]
    elif kind == "v6":
        n("Shape", ["boxes_af"], ["shp"])
        n("Slice", ["shp", _c("z", np.array([0], np.int64), inits), _c("two_i", np.array([2], np.int64), inits)],
          ["ba"])
        n("Concat", ["ba", _c("one_i", np.array([1], np.int64), inits)], ["oshape"], axis=0)
        if obj == "const":   # the static export's ones [1, A, 1]: a constant
            n("Identity", [_c("ones", np.ones((1, anchors, 1), np.float32), inits)], ["objness"])
        elif obj == "ones":
            n("ConstantOfShape", ["oshape"], ["objness"], value=numpy_helper.from_array(np.array([1], np.float32)))
        else:   # a constant 0.5: not YOLOv6's 1, not a Sigmoid
            n("ConstantOfShape", ["oshape"], ["objness"], value=numpy_helper.from_array(np.array([0.5], np.float32)))
        n("Concat", ["boxes_af", "objness", "cls_af"], ["y"], axis=-1)
        outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", anchors, 5 + nc])]
    else:
        if boxes_first:
            n("Identity", ["boxes_af"], ["boxes"])
        else:
            n("Transpose", ["boxes_af"], ["boxes"], perm=[0, 2, 1])
        n("Identity" if not scores_first else "Transpose", ["cls"], ["scores"],
          **({} if not scores_first else {"perm": [0, 2, 1]}))
        outs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", anchors, 4] if boxes_first else ["B", 4, anchors]),
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", anchors, nc] if scores_first else ["B", nc, anchors])]
    for o in outs:
        o.type.tensor_type.shape.dim[0].Clear()
        if batch == "B":
            o.type.tensor_type.shape.dim[0].dim_param = "B"
        else:
            o.type.tensor_type.shape.dim[0].dim_value = batch
    g = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4 + nc, anchors])],
                          outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


def _feeds(nc, anchors, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (batch, 4 + nc, anchors)).astype(np.float32)
    x[:, 4:] *= 3   # scores spread over (0, 1): many above conf
    return [{"x": x}]


def _run(m, feed):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))


@pytest.mark.parametrize("coding", ["xyxy", "xywh"])
def test_yolov6_head_is_anchors_first_with_objectness(coding):
    m = head_model("v6", coding)
    [h], _ = find_heads(m)
    assert (h.layout, h.box_coding, h.nc, h.strides) == ("anchors-first-obj", coding, 3, [8, 16, 32])


def test_ppyoloe_head_is_anchors_first():
    [h], _ = find_heads(head_model("pp", "xyxy", nc=5))
    assert (h.layout, h.box_coding, h.nc) == ("anchors-first", "xyxy", 5)
    with pytest.raises(OnnxrepError, match=r"\[B, A, 4\+nc\] \(anchors first\)"):
        apply(head_model("pp"), DeployOptions(output_layout="split"))


def test_a_constant_objectness_other_than_one_is_not_yolov6s():
    heads, reasons = find_heads(head_model("v6", obj="half"))
    assert not heads and "objectness" in reasons["y"]


@pytest.mark.parametrize("boxes_first,scores_first", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("coding,neg", [("xyxy", True), ("xyxy", False), ("xyxy", "mul"), ("xyxy", "four"),
                                       ("xywh", True)])
def test_split_heads_are_recognised_in_every_orientation(boxes_first, scores_first, coding, neg):
    m = head_model("split", coding, boxes_first=boxes_first, scores_first=scores_first, neg=neg)
    [h], reasons = find_heads(m)
    assert not reasons
    assert (h.layout, h.output, h.scores, h.nc, h.anchors, h.box_coding) == ("split", "boxes", "scores", 3, 24, coding)
    assert (h.boxes_first, h.scores_first) == (boxes_first, scores_first)


def test_four_coordinates_in_another_order_are_not_corners():
    m = head_model("split", "xyxy", neg="four")
    concat = next(n for n in m.graph.node if n.output[0] == "dec")
    concat.input[:] = [concat.input[2], concat.input[3], concat.input[0], concat.input[1]]   # x2, y2, x1, y1
    heads, reasons = find_heads(m)
    assert not heads and "four box coordinates" in " ".join(reasons.values())


def test_scores_that_are_not_a_sigmoid_make_no_split_head():
    heads, reasons = find_heads(head_model("split", score_op="Relu"))
    assert not heads and set(reasons) == {"boxes", "scores"}
    with pytest.raises(OnnxrepError, match="no YOLO detection head"):
        apply(head_model("split", score_op="Relu"), DeployOptions(nms="ort"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["v6", "pp", "split"]), coding=st.sampled_from(["xyxy", "xywh"]), nc=st.integers(1, 5),
       anchors=st.integers(8, 60), boxes_first=st.booleans(), scores_first=st.booleans(),
       opset=st.sampled_from([13, 17, 18]), nms=st.sampled_from(["ort", "trt"]), multi=st.booleans(),
       neg=st.sampled_from([True, False, "mul", "four"]))
def test_nms_on_generated_heads_equals_the_reference(kind, coding, nc, anchors, boxes_first, scores_first, opset,
                                                      nms, multi, neg):
    coding = "xyxy" if neg == "four" else coding
    m = head_model(kind, coding, nc, anchors, boxes_first, scores_first, opset, neg=neg)
    feeds = _feeds(nc, anchors)
    d = apply(m, DeployOptions(nms=nms, conf=0.3, max_det=20, multi_label=multi))
    onnx.checker.check_model(d.model, full_check=nms == "ort")
    [c] = check(d, feeds, values=[_run(m, f) for f in feeds])
    assert c["ok"], c["line"]
    if nms == "ort":   # and by hand: the reference NMS of the head's numbers, rebuilt here from the outputs
        got = _run(d.model, feeds[0])
        out = _run(m, feeds[0])
        if kind in ("v6", "pp"):
            y, layout = out["y"], "anchors-first-obj" if kind == "v6" else "anchors-first"
        else:
            b = out["boxes"] if not boxes_first else out["boxes"].transpose(0, 2, 1)
            s = out["scores"] if not scores_first else out["scores"].transpose(0, 2, 1)
            y, layout = np.concatenate([b, s], axis=1), "anchors-last"
        want = reference_nms(y, coding, 0.3, 0.45, 20, layout=layout, multi_label=multi)
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_split_head_join_is_checked():
    """The join of a split head is part of the proof: a join in the wrong order fails it."""
    m = head_model("split", "xyxy", nc=4, anchors=30)
    feeds = _feeds(4, 30)
    values = [_run(m, f) for f in feeds]
    d = apply(m, DeployOptions(nms="ort", conf=0.3))
    assert d.info["split"] == {"boxes": "boxes", "scores": "scores", "joined": d.head.output}
    [c] = check(d, feeds, values=values)
    assert c["ok"], c["line"]
    bad = apply(m, DeployOptions(nms="ort", conf=0.3))
    concat = next(n for n in bad.model.graph.node if n.name.startswith("onnxrep_head/y"))
    concat.input[:] = list(concat.input)[::-1]    # scores first: the NMS reads class scores as boxes
    [c] = check(bad, feeds, values=values)
    assert not c["ok"], c["line"]


def test_output_layout_on_a_split_head():
    m = head_model("split", "xywh", nc=2, anchors=16)
    feeds = _feeds(2, 16)
    d = apply(m, DeployOptions(output_layout="anchors-first"))
    [c] = check(d, feeds, values=[_run(m, f) for f in feeds])
    assert c["ok"], c["line"]
    out = _run(m, feeds[0])
    got = _run(d.model, feeds[0])
    [y] = got.values()
    np.testing.assert_array_equal(y, np.concatenate([out["boxes"], out["scores"]], axis=2))


@pytest.mark.parametrize("opset", [13, 17])
def test_a_static_yolov6_export_made_dynamic_keeps_its_head(opset):
    """--dynamic-batch on a static YOLOv6 export: the objectness constant [1, A, 1] is expanded to the batch
    (deploy/batch.py) and the head is still recognised, at opset 13 too (where ONNX's shape inference can't
    see through the batch read at run time), and its NMS proven at batch 2."""
    from onnxrep.deploy.batch import make_dynamic_batch

    m = head_model("v6", "xywh", nc=3, anchors=24, obj="const", batch=1, opset=opset)
    dyn, info = make_dynamic_batch(m)
    [h], reasons = find_heads(dyn)
    assert (h.layout, h.nc) == ("anchors-first-obj", 3), reasons
    feeds = _feeds(3, 24, batch=2)
    d = apply(dyn, DeployOptions(nms="ort", conf=0.3))
    [c] = check(d, feeds, values=[_run(dyn, f) for f in feeds])
    assert c["ok"], c["line"]


def test_a_split_head_with_another_output_of_its_anchors_is_not_guessed():
    """Boxes, all-Sigmoid 'quality' [B, A, 1] and scores that are no Sigmoid's (a Softmax): pairing the boxes
    with the quality map would run NMS on the wrong numbers, so nothing is recognised, with the reason."""
    m = head_model("split", "xyxy", nc=3, anchors=24, score_op="Softmax")
    m.graph.node.append(helper.make_node("Slice", ["cls_af", "q0", "q1", "q2"], ["qs"]))
    m.graph.node.append(helper.make_node("Sigmoid", ["qs"], ["quality"]))
    m.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "q0"),
                                numpy_helper.from_array(np.array([1], np.int64), "q1"),
                                numpy_helper.from_array(np.array([2], np.int64), "q2")])
    m.graph.output.append(helper.make_tensor_value_info("quality", TensorProto.FLOAT, ["B", 24, 1]))
    heads, reasons = find_heads(m)
    assert not heads and "is not guessed" in reasons["boxes"], reasons


def test_split_outputs_of_two_element_types_are_no_head():
    m = head_model("split", "xyxy")
    m.graph.node.append(helper.make_node("Cast", ["scores"], ["scores16"], to=TensorProto.FLOAT16))
    m.graph.output[1].CopyFrom(helper.make_tensor_value_info("scores16", TensorProto.FLOAT16, ["B", 24, 3]))
    heads, reasons = find_heads(m)
    assert not heads and "float32, the scores float16" in reasons["boxes"], reasons


@pytest.mark.parametrize("multi", [False, True])
def test_the_nms_check_probes_for_two_labels_on_confident_scores(multi):
    """Scores where every anchor has one class far above conf and the others far below: best class and
    multi-label agree there, so the check probes a conf where anchors have two labels, and a graph of the
    other mode fails it (a check that can't tell the two apart would pass either)."""
    import dataclasses

    m = head_model("split", "xyxy", nc=3, anchors=40)
    x = np.random.default_rng(3).normal(0, 1, (2, 7, 40)).astype(np.float32)
    x[:, 4:] = -6.0 + np.random.default_rng(4).normal(0, 0.5, (2, 3, 40)).astype(np.float32)
    x[:, 4, :] = 6.0                               # class 0 confident everywhere
    feeds = [{"x": x}]
    d = apply(m, DeployOptions(nms="ort", multi_label=multi))
    [c] = check(d, feeds, values=[_run(m, f) for f in feeds])
    assert c["ok"] and "no anchor has two classes above" in c["line"], c["line"]
    d.options = dataclasses.replace(d.options, multi_label=not multi)
    [c] = check(d, feeds, values=[_run(m, f) for f in feeds])
    assert not c["ok"], c["line"]
