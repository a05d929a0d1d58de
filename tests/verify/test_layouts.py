"""The verifier in every layout the project writes or reads: a mutation sweep per layout, float32 and float16.

Each layout is a pair (original, honest optimized) with the same outputs: the builder's gelan-t (one head)
with the deployment adapters applied to both sides (anchors-first, split), YOLOv7's decoded grid
[B, A, 5+nc], a segmentation-style prototype map [B, 32, H, W] and classifier logits [N, C]. Every Conv of
the optimized side is mutated in turn (kernel x1.01, or one bias element moved by 1 % of its range; x1.10 in
float16), and an independent judge says which mutations must be caught: those that move some output beyond
`must` times the honest rewrite's own deviation, measured along that output's true channel axis (which the
verifier is not told). In float32 every mutation must be caught; in float16 every one the judge marks.
Also the repros of ../shared/repros (verify_*.py) as regression tests.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.deploy import DeployOptions, apply
from onnxrep.verify import reference, run_outputs, verify
from onnxrep.verify.tolerance import NOISE_FACTOR, NOISE_FACTOR_FP16, levels, per_axis
from tests.verify.test_verify import _mutations

models = pytest.importorskip("models")


def _conv_net(head: str, seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-SiLU x4 on a 64 px image, then prototypes (a 1x1 Conv to 32 maps at 1/4) or logits (global
    pool, Flatten, Gemm to 10): the training form, BatchNormalization kept (eps 1e-3)."""
    rng = np.random.default_rng(seed)
    nodes, inits, t, c = [], [], "images", 3
    for i, (co, s) in enumerate([(16, 2), (32, 2), (32, 1), (48, 1)]):
        inits += [numpy_helper.from_array((rng.standard_normal((co, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, co).astype(np.float32), f"g{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, co).astype(np.float32), f"b{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.2, co).astype(np.float32), f"m{i}"),
                  numpy_helper.from_array(rng.uniform(0.5, 2, co).astype(np.float32), f"v{i}")]
        nodes += [helper.make_node("Conv", [t, f"w{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1] * 4, strides=[s, s]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"], epsilon=1e-3),
                  helper.make_node("Sigmoid", [f"n{i}"], [f"s{i}"]), helper.make_node("Mul", [f"n{i}", f"s{i}"], [f"a{i}"])]
        t, c = f"a{i}", co
    if head == "prototypes":
        inits += [numpy_helper.from_array((rng.standard_normal((32, c, 1, 1)) / np.sqrt(c)).astype(np.float32), "wp"),
                  numpy_helper.from_array(rng.normal(0, 0.1, 32).astype(np.float32), "bp")]
        nodes.append(helper.make_node("Conv", [t, "wp", "bp"], ["protos"]))
        out = helper.make_tensor_value_info("protos", TensorProto.FLOAT, [1, 32, 16, 16])
    else:
        inits += [numpy_helper.from_array((rng.standard_normal((10, c)) / np.sqrt(c)).astype(np.float32), "wl"),
                  numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "bl")]
        nodes += [helper.make_node("GlobalAveragePool", [t], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
                  helper.make_node("Gemm", ["flat", "wl", "bl"], ["logits"], transB=1)]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])], [out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


# layout -> (how to build the pair, {output: its true channel axis; None: no channel structure})
def _pair(layout: str, precision: str):
    if layout in ("prototypes", "logits"):
        original = _conv_net(layout)
    elif layout == "yolov7-grid":
        original = models.build("yolov7-tiny", "bn", imgsz=160, grid=True)
    else:
        original = models.build("gelan-t", "bn", imgsz=160)
    optimized = onnxrep.optimize(original, verify=False, precision=precision).model
    if layout in ("anchors-first", "split"):
        options = DeployOptions(output_layout=layout)
        original, optimized = apply(original, options).model, apply(optimized, options).model
    return original, optimized


AXES = {"anchors-last": 1, "anchors-first": 2, "split": 2, "prototypes": 1, "logits": 1,
        "yolov7-grid": {"output0": 2, None: 4}}   # decoded [B, A, 5+nc]; raw levels [B, na, H, W, 5+nc]
# Not here: NMS outputs. Two models' NMS rows can't be compared element by element (one near-tie that flips
# reorders every row after it); onnxrep proves its own NMS against numpy's reference NMS applied to the
# verified head tensor, exactly (tests/deploy).
LAYOUTS = list(AXES)


def _axis(layout, name):
    axes = AXES[layout]
    return axes if not isinstance(axes, dict) else axes.get(name, axes.get(None))


def _sweep(layout: str, precision: str, every: int):
    """(total, caught, must, missed labels)."""
    original, optimized = _pair(layout, precision)
    names = [o.name for o in optimized.graph.output]
    ref = reference(original, outputs=names, as_float16=precision == "fp16")
    honest = verify(original, optimized, ref=ref, precision=precision)
    assert honest.ok, honest.lines()
    half = precision == "fp16"
    clean = [{n: np.asarray(c[n]) for n in names} for c in ref.clean]
    got = run_outputs(optimized, ref.feeds, names)
    floors = {}
    for n in names:
        if not np.issubdtype(clean[0][n].dtype, np.floating):
            continue
        axis = _axis(layout, n)
        scale = np.max([per_axis(c[n], axis) for c in clean], axis=0)
        dev = np.max([per_axis(np.asarray(g[n], np.float64) - c[n], axis) for g, c in zip(got, clean)], axis=0)
        floors[n] = (axis, np.maximum(levels(dev, scale, "float16" if half else "float32"), (2.0 ** (-10 if half else -23)) * scale))
    must_factor = 4 * NOISE_FACTOR_FP16 if half else 2 * NOISE_FACTOR
    total = caught = must = 0
    missed = []
    for label, bad in _mutations(optimized, every, 0.10 if half else 0.01):
        total += 1
        outs = run_outputs(bad, ref.feeds, names)
        beyond = False
        for n in names:
            for o, c in zip(outs, clean):
                o = np.asarray(o[n])
                if n not in floors:
                    beyond |= not np.array_equal(o, c[n])
                    continue
                axis, floor = floors[n]
                if o.shape != c[n].shape:
                    beyond = True
                    continue
                beyond |= bool((per_axis(o.astype(np.float64) - c[n], axis) > must_factor * floor).any())
        is_caught = not verify(original, bad, ref=ref, precision=precision).ok
        caught += is_caught
        if beyond:
            must += 1
            if not is_caught:
                missed.append(label)
    return total, caught, must, missed


SAMPLE = [("anchors-first", "fp32"), ("split", "fp32"), ("yolov7-grid", "fp32"), ("logits", "fp32"),
          ("prototypes", "fp16")]   # float16 on the small net: a float16 YOLO runs slowly on a CPU


@pytest.mark.parametrize("layout,precision", SAMPLE)
def test_mutation_sweep_layouts_sample(layout, precision):
    """A sample for `make test`: five of the layouts, every 12th Conv (every 3rd of the small nets)."""
    total, caught, must, missed = _sweep(layout, precision, every=3 if layout in ("prototypes", "logits") else 12)
    assert total >= 3 and not missed, (total, caught, must, missed)
    if precision == "fp32":
        assert caught == total, (layout, caught, total)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mutation_sweep_every_layout_every_conv(layout, precision):
    total, caught, must, missed = _sweep(layout, precision, every=1)
    print(f"\nmutation sweep {layout} {precision}: {caught}/{total} caught; {must} beyond the judge's line, "
          f"{len(missed)} of those missed")
    assert not missed, missed
    if precision == "fp32":
        assert caught == total


# ------------------------------------------------------------------------- the repros, as regression tests


def _v7_head(factor: float, anchors_first: bool, depth=6, ch=32, nc=8, S=10, stride=32):
    """../shared/repros/verify_anchors_first.py's model: a YOLOv7-style decoded head, class 3's kernel x factor."""
    rng = np.random.default_rng(0)
    F = lambda n, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), n)  # noqa: E731
    nodes, inits, t, cin = [], [], "images", 3
    for i in range(depth):
        inits += [F(f"W{i}", rng.standard_normal((ch, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))), F(f"B{i}", rng.normal(0, 0.1, ch))]
        st = 2 if i < 5 else 1
        nodes += [helper.make_node("Conv", [t, f"W{i}", f"B{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1] * 4, strides=[st, st]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"]), helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"a{i}"])]
        t, cin = f"a{i}", ch
    wh = rng.standard_normal((5 + nc, ch, 1, 1)) * np.sqrt(1.0 / ch)
    wh[5 + 3] *= factor
    yv, xv = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    inits += [F("Wh", wh), F("bh", rng.normal(0, 0.5, 5 + nc)),
              numpy_helper.from_array(np.array([1, 5 + nc, S * S], np.int64), "shp"),
              numpy_helper.from_array(np.array([2, 2, 1 + nc], np.int64), "sp"),
              F("two", 2.0), F("half", 0.5), F("stride", float(stride)), F("grid", np.stack([xv, yv]).reshape(1, 2, S * S)),
              F("anchor", [[[116.], [90.]]])]
    nodes += [helper.make_node("Conv", [t, "Wh", "bh"], ["hd"], kernel_shape=[1, 1], name="head"),
              helper.make_node("Sigmoid", ["hd"], ["sg"]), helper.make_node("Reshape", ["sg", "shp"], ["r"]),
              helper.make_node("Split", ["r", "sp"], ["xy", "wh", "scores"], axis=1),
              helper.make_node("Mul", ["xy", "two"], ["xy2"]), helper.make_node("Sub", ["xy2", "half"], ["xy3"]),
              helper.make_node("Add", ["xy3", "grid"], ["xy4"]), helper.make_node("Mul", ["xy4", "stride"], ["xyp"]),
              helper.make_node("Mul", ["wh", "two"], ["wh2"]), helper.make_node("Mul", ["wh2", "wh2"], ["wh3"]),
              helper.make_node("Mul", ["wh3", "anchor"], ["whp"]),
              helper.make_node("Concat", ["xyp", "whp", "scores"], ["cat"], axis=1)]
    if anchors_first:
        nodes.append(helper.make_node("Transpose", ["cat"], ["y"], perm=[0, 2, 1]))
        shape = [1, S * S, 5 + nc]
    else:
        nodes.append(helper.make_node("Identity", ["cat"], ["y"]))
        shape = [1, 5 + nc, S * S]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 320, 320])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("anchors_first", [False, True])
def test_a_one_percent_class_kernel_change_is_caught_in_either_layout(anchors_first):
    """Regression (verify_anchors_first.py): axis 1 was taken as the channel; in [B, A, 5+nc] each anchor's
    tolerance was its box's, and a 1 % change of one class kernel passed at 0.96 of it."""
    v = verify(_v7_head(1.0, anchors_first), _v7_head(1.01, anchors_first))
    assert not v.ok and v.outputs[0].used > 50, v.lines()
    assert v.outputs[0].axis == (2 if anchors_first else 1)


def test_a_float16_class_logit_shift_is_caught_anchors_first():
    """Regression (verify_fp16_anchors_first.py): a +2 class-3 logit in a float16 result passed in
    [B, A, 5+nc], and no detection agreement was computed for that layout."""
    original = _v7_head(1.0, True)
    result = onnxrep.optimize(original, precision="fp16")
    assert result.verified and len(result.verification.agreements) == 1, result.verification.lines()
    # this tiny head is no real YOLOv7 decode (deploy/head.py does not take it for one): anchors-first by shape
    assert next(iter(result.verification.agreements.values()))["layout"] == "anchors-first"
    bad = onnx.ModelProto()
    bad.CopyFrom(result.model)
    inits = {t.name: t for t in bad.graph.initializer}
    head = next(n for n in bad.graph.node if n.op_type == "Conv" and len(n.input) > 2
                and numpy_helper.to_array(inits[n.input[2]]).shape == (13,))
    b = numpy_helper.to_array(inits[head.input[2]]).copy()
    b[5 + 3] += 2
    inits[head.input[2]].CopyFrom(numpy_helper.from_array(b, head.input[2]))
    v = verify(original, bad, precision="fp16")
    assert not v.ok and len(v.agreements) == 1, v.lines()


def test_yolov7_decoded_output_is_read_with_its_objectness():
    from onnxrep.verify.detections import anchors_last, head_layouts

    m = models.build("yolov7-tiny", "bn", imgsz=160, grid=True)
    y = run_outputs(m, [{"images": np.random.default_rng(0).random((1, 3, 160, 160), np.float32)}], ["output0"])[0]["output0"]
    assert head_layouts(m, {"output0": y.shape}) == {"output0": "anchors-first-obj"}
    boxes_scores = anchors_last(y, "anchors-first-obj")
    assert boxes_scores.shape == (1, y.shape[2] - 1, y.shape[1])
    np.testing.assert_allclose(boxes_scores[0, 4:, 7], y[0, 7, 4] * y[0, 7, 5:], rtol=1e-6)


def test_an_empty_output_verifies(tmp_path):
    """Regression (verify_empty_output.py): detections [0, 6] (a threshold nothing reaches) crashed verify."""
    rng = np.random.default_rng(1)
    F = lambda n, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), n)  # noqa: E731
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"]), helper.make_node("Mul", ["h", "s"], ["rows"]),
             helper.make_node("Gather", ["rows", "i4"], ["score"], axis=1),
             helper.make_node("Greater", ["score", "thr"], ["keep"]),
             helper.make_node("Compress", ["rows", "keep"], ["dets"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
                          [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [None, 6])],
                          [F("W", rng.standard_normal((4, 6))), F("b", rng.standard_normal(6)), F("s", rng.uniform(.5, 2, 6)),
                           numpy_helper.from_array(np.array(4, np.int64), "i4"), F("thr", 50.0)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    result = onnxrep.optimize(m)
    assert result.verified, result.verification.lines()
    assert result.verification.outputs[0].shape[0] == 0
