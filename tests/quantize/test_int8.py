"""quantize/int8.py and lint.py: ranges read from one calibration, the Q/DQ model per target, and a lint
that fails on each rule it states (mutations of a clean model)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import helper, numpy_helper

from onnxrep.quantize import int8
from onnxrep.quantize.lint import lint
from onnxrep.quantize.placement import float_islands
from tests.graphs import init, make_model, vi
from tests.quantize.conftest import images


def _run(model, feed, names=None):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(names, feed)


@pytest.fixture(scope="module")
def yolo(optimized):
    m = optimized("yolov9-t")
    feeds = [{m.graph.input[0].name: x[None]} for x in images(12, 64)]
    return m, int8.calibrate(m, feeds), feeds


def test_minmax_ranges_are_the_tensors_extremes(yolo):
    """Oracle: onnxruntime run with the tensors as outputs, numpy's min and max over the calibration images."""
    m, hist, feeds = yolo
    ranges = hist.ranges("minmax")
    names = [n.output[0] for n in m.graph.node if n.op_type in ("Conv", "Concat", "Mul")][:12]
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names)
    values = [_run(probe, f, names) for f in feeds]
    for k, t in enumerate(names):
        lo = min(float(v[k].min()) for v in values)
        hi = max(float(v[k].max()) for v in values)
        assert ranges[t] == pytest.approx((lo, hi), rel=1e-6, abs=1e-7), t


def test_percentiles_are_inside_minmax_and_ordered(yolo):
    _, hist, _ = yolo
    mm, p4, p5 = (hist.ranges(m) for m in ("minmax", "percentile-99.99", "percentile-99.999"))
    width = lambda r: r[1] - r[0]  # noqa: E731
    for t in mm:
        assert mm[t][0] <= p5[t][0] + 1e-6 and p5[t][1] <= mm[t][1] + 1e-6, t
        assert width(p4[t]) <= width(p5[t]) + 1e-6, t
    assert sum(width(p4[t]) < 0.95 * width(mm[t]) for t in mm) >= 10   # clipping does something


def test_unify_gives_each_group_the_union():
    ranges = {"a": (-1.0, 2.0), "b": (-3.0, 1.0), "c": (0.0, 0.5), "d": (-9.0, 9.0)}
    out = int8.unify(ranges, [{"a", "b", "c", "absent"}])
    assert out["a"] == out["b"] == out["c"] == (-3.0, 2.0) and out["d"] == (-9.0, 9.0) and "absent" not in out


@pytest.mark.parametrize("target", ["trt", "openvino", "ort"])
def test_each_target_quantizes_runs_and_passes_its_lint(yolo, target):
    m, hist, feeds = yolo
    islands = float_islands(m)
    q = int8.quantize(m, hist.ranges("percentile-99.999"), target, islands)
    onnx.checker.check_model(q, full_check=True)
    assert lint(q, m, target) == []
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    # the islands compute in float: nothing quantizes their outputs; for trt/openvino their inputs are float
    # too (onnxruntime's QLinearConv needs its output quantized, so the ort target's last Convs emit Q/DQ)
    prod = {o: n for n in q.graph.node for o in n.output}
    readers = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    for n in q.graph.node:
        if n.name in islands:
            assert "QuantizeLinear" not in [op for o in n.output for op in readers.get(o, [])], n.name
            if target != "ort":
                assert all(prod.get(i) is None or prod[i].op_type != "DequantizeLinear" for i in n.input), n.name
    zps = [numpy_helper.to_array(i) for i in q.graph.initializer if i.name.endswith("zero_point")]
    if target == "ort":
        assert any(z.dtype == np.uint8 for z in zps)
    else:
        assert all(z.dtype == np.int8 and not z.any() for z in zps)
    y, yq = _run(m, feeds[0])[0], _run(q, feeds[0])[0]
    assert np.isfinite(yq).all() and np.abs(yq[:, :4] - y[:, :4]).max() < 0.25 * np.abs(y[:, :4]).max()


def test_trt_rewires_conv_fed_add_inputs(optimized):
    """RepNBottleneck's residual Add: the Conv branch reads float (fusable), the residual keeps its Q/DQ."""
    m = optimized("gelan-s")
    feeds = [{m.graph.input[0].name: x[None]} for x in images(4, 64)]
    hist = int8.calibrate(m, feeds)
    adds = [n for n in m.graph.node if n.op_type == "Add"]
    q = int8.quantize(m, hist.ranges("minmax"), "trt", float_islands(m))
    prod = {o: n for n in q.graph.node for o in n.output}
    rewired = [n for n in q.graph.node if n.op_type == "Add" and n.name in {a.name for a in adds}
               and sum(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in n.input) == 1]
    assert len(rewired) >= 3, len(rewired)
    assert lint(q, m, "trt") == []


@pytest.fixture(scope="module")
def clean(yolo):
    m, hist, _ = yolo
    return m, int8.quantize(m, hist.ranges("minmax"), "trt", float_islands(m))


def _copy(q):
    c = onnx.ModelProto()
    c.CopyFrom(q)
    return c


def _set(q, name, value):
    for i in q.graph.initializer:
        if i.name == name:
            i.CopyFrom(numpy_helper.from_array(value, name))
            return
    raise KeyError(name)


def _first(q, op, pred=lambda n: True):
    return next(n for n in q.graph.node if n.op_type == op and pred(n))


def _consts(q):
    return {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}


def test_lint_catches_a_nonzero_zero_point(clean):
    m, q = clean
    q = _copy(q)
    node = _first(q, "QuantizeLinear")
    _set(q, node.input[2], np.array(3, np.int8))
    assert any(line.startswith("int8, zero point 0") for line in lint(q, m))


def test_lint_catches_a_uint8_activation(clean):
    m, q = clean
    q = _copy(q)
    node = _first(q, "QuantizeLinear")
    _set(q, node.input[2], np.array(128, np.uint8))
    assert any("zero point is uint8" in line for line in lint(q, m))
    assert lint(_mut_zp_uint8(clean), m, "ort") == []   # the ort target allows uint8 activations


def _mut_zp_uint8(clean):
    m, q = clean
    q = _copy(q)
    consts = _consts(q)
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in consts:
            _set(q, n.input[2], np.array(128, np.uint8))
    return q


def test_lint_catches_a_bad_scale(clean):
    m, q = clean
    for bad in (-0.1, 0.0, np.nan, np.inf):
        mutated = _copy(q)
        node = _first(mutated, "QuantizeLinear")
        _set(mutated, node.input[1], np.array(bad, np.float32))
        assert any(line.startswith("scales") for line in lint(mutated, m)), bad


def test_lint_catches_a_per_tensor_weight(clean):
    m, q = clean
    q = _copy(q)
    consts = _consts(q)
    conv = _first(q, "Conv", lambda n: consts.get(_producer(q, n.input[1]).input[1], np.zeros(1)).size > 1)
    dq = _producer(q, conv.input[1])
    _set(q, dq.input[1], np.array(consts[dq.input[1]].max(), np.float32))
    _set(q, dq.input[2], np.array(0, np.int8))
    assert any(line.startswith("per-channel weights") and conv.name in line for line in lint(q, m))


def _producer(q, tensor):
    return next(n for n in q.graph.node if tensor in n.output)


def test_lint_catches_a_concat_with_two_scales(clean):
    m, q = clean
    q = _copy(q)
    consts = _consts(q)
    cat = _first(q, "Concat", lambda n: all(_producer_or_none(q, i) is not None
                                             and _producer_or_none(q, i).op_type == "DequantizeLinear" for i in n.input))
    dq = _producer(q, cat.input[0])
    name = dq.input[1] + "_mutated"
    q.graph.initializer.append(numpy_helper.from_array(consts[dq.input[1]] * np.float32(1.5), name))
    dq.input[1] = name
    assert any(line.startswith("one scale per Concat group") and cat.name in line for line in lint(q, m))


def _producer_or_none(q, tensor):
    return next((n for n in q.graph.node if tensor in n.output), None)


def test_lint_catches_qdq_on_a_conv_fed_add_input(optimized):
    m = optimized("gelan-s")
    feeds = [{m.graph.input[0].name: x[None]} for x in images(2, 64)]
    hist = int8.calibrate(m, feeds)
    islands = float_islands(m)
    q = int8.quantize(m, hist.ranges("minmax"), "trt", islands)
    assert lint(q, m) == []
    # undo the rule: quantize_static's own placement (both Add inputs Q/DQ'd)
    original = int8.fuse_residuals
    try:
        int8.fuse_residuals = lambda q, m: 0
        unfused = int8.quantize(m, hist.ranges("minmax"), "trt", islands)
    finally:
        int8.fuse_residuals = original
    assert any(line.startswith("Conv+Add fusion") for line in lint(unfused, m))


def test_lint_of_a_float_model_says_there_is_no_qdq(optimized):
    m = optimized("yolov9-t")
    assert lint(m, m) and lint(m, m)[0].startswith("no Q/DQ")


@st.composite
def conv_nets(draw):
    """Small conv nets: channels, groups (depthwise too), strides, kernels, a residual Add, a Concat, a
    MaxPool, Relu or SiLU, at opsets 13..21."""
    c = draw(st.sampled_from([4, 8]))
    layers = draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    nodes, inits, x, size = [], [], "x", 16
    inits_c = 3
    for k in range(layers):
        stride = draw(st.sampled_from([1, 2])) if size > 4 else 1
        kern = draw(st.sampled_from([1, 3]))
        group = draw(st.sampled_from([1, c])) if k and inits_c == c else 1
        w = rng.normal(0, 1 / np.sqrt(inits_c * kern * kern / group), (c, inits_c // group, kern, kern)).astype(np.float32)
        inits += [init(f"w{k}", w), init(f"b{k}", rng.normal(0, 0.1, c).astype(np.float32))]
        nodes.append(helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", group=group,
                                      strides=[stride] * 2, pads=[kern // 2] * 4, kernel_shape=[kern] * 2))
        size //= stride
        act = draw(st.sampled_from(["Relu", "SiLU"]))
        if act == "Relu":
            nodes.append(helper.make_node("Relu", [f"c{k}"], [f"a{k}"], name=f"act{k}"))
        else:
            nodes += [helper.make_node("Sigmoid", [f"c{k}"], [f"s{k}"], name=f"sig{k}"),
                      helper.make_node("Mul", [f"c{k}", f"s{k}"], [f"a{k}"], name=f"act{k}")]
        out = f"a{k}"
        if k and stride == 1 and inits_c == c and draw(st.booleans()):
            nodes.append(helper.make_node("Add", [x, out], [f"r{k}"], name=f"res{k}"))
            out = f"r{k}"
        if draw(st.booleans()):
            nodes += [helper.make_node("MaxPool", [out], [f"p{k}"], name=f"pool{k}", kernel_shape=[3, 3], pads=[1] * 4),
                      helper.make_node("Concat", [out, f"p{k}"], [f"cat{k}"], name=f"cat{k}", axis=1)]
            w = rng.normal(0, 1 / np.sqrt(2 * c), (c, 2 * c, 1, 1)).astype(np.float32)
            inits.append(init(f"m{k}", w))
            nodes.append(helper.make_node("Conv", [f"cat{k}", f"m{k}"], [f"o{k}"], name=f"mix{k}"))
            out = f"o{k}"
        x, inits_c = out, c
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flat"))
    inits += [init("fc", rng.normal(0, 1 / np.sqrt(c), (c, 6)).astype(np.float32))]
    nodes.append(helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc"))
    opset = draw(st.sampled_from([13, 17, 21]))
    return make_model(nodes, [vi("x", shape=[1, 3, 16, 16])], [vi("y", shape=[1, 6])], inits, opset=opset)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_nets(), st.sampled_from(["trt", "ort"]))
def test_random_conv_nets_quantize_cleanly(model, target):
    onnx.checker.check_model(model, full_check=True)
    feeds = [{"x": x[None]} for x in images(8, 16, seed=3)]
    hist = int8.calibrate(model, feeds)
    q = int8.quantize(model, hist.ranges("minmax"), target, float_islands(model))
    onnx.checker.check_model(q, full_check=True)
    assert lint(q, model, target) == []
    assert [x.version for x in q.opset_import if x.domain in ("", "ai.onnx")] == \
        [x.version for x in model.opset_import if x.domain in ("", "ai.onnx")]
    y = np.concatenate([_run(model, f)[0] for f in feeds])
    yq = np.concatenate([_run(q, f)[0] for f in feeds])
    sqnr = 10 * np.log10(np.sum(y.astype(np.float64) ** 2) / max(np.sum((y - yq).astype(np.float64) ** 2), 1e-30))
    assert sqnr > 15, sqnr


def test_an_opset_11_model_is_quantized_at_opset_13():
    """onnxruntime's quantizer writes per-channel DequantizeLinear (axis, opset 13) whatever the model's opset:
    found here, an opset 11 model came out invalid."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    m = make_model(nodes, [vi("x", shape=[1, 3, 8, 8])], [vi("y", shape=[1, 4, 8, 8])],
                   [init("w", rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32))], opset=11)
    feeds = [{"x": x[None]} for x in images(4, 8)]
    q = int8.quantize(m, int8.calibrate(m, feeds).ranges("minmax"), "trt", {})
    onnx.checker.check_model(q, full_check=True)
    assert int8.opset(q) == 13 and lint(q, m) == []
    y, yq = _run(m, feeds[0])[0], _run(q, feeds[0])[0]
    assert np.abs(y - yq).max() < 0.05 * np.abs(y).max()


def test_optimizing_an_int8_model_keeps_it_int8(clean):
    """A second onnxrep run over a Q/DQ model: constant folding must not fold a weight's DequantizeLinear (it
    once only failed to by accident: the reference evaluation raised)."""
    import onnxrep

    _, q = clean
    again = onnxrep.optimize(q)
    assert again.ok, again.report.text()
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    for op in ("QuantizeLinear", "DequantizeLinear"):
        assert count(again.model, op) == count(q, op), op
    def int8_weights(m):   # DequantizeLinear nodes reading an int8 weight of more than one element
        inits = {i.name: i for i in m.graph.initializer}
        return sorted(n.name for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                      and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims))

    assert int8_weights(again.model) == int8_weights(q) and len(int8_weights(q)) > 50
    assert "DequantizeLinear not folded: a Q/DQ pair states the precision" in again.report.text(verbose=True)


def test_onnxruntime_quantization_imports_beside_a_foreign_float16_module(tmp_path, monkeypatch):
    """onnxruntime.transformers imports a top-level `float16`; a float16.py earlier on the path (our own
    peer_benchmarks/float16.py in a test run) broke every int8 run of that process."""
    import subprocess
    import sys

    (tmp_path / "float16.py").write_text("MINE = True\n")
    code = ("import float16, sys; from onnxrep.quantize.int8 import ort_quantization; q = ort_quantization(); "
            "assert q.quantize_static and sys.modules['float16'].MINE; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_layer_sqnr_is_each_layers_own_error():
    """The second layer's input range is blown up at calibration by a spike that only one calibration image
    triggers (a pixel above 1), so its int8 grid is coarse on ordinary images: it must come out the sensitive
    one, while the first layer, reading the image, stays precise. The second's output is the model's own
    output (a layer whose output was already an output once got it twice)."""
    from onnxrep.quantize.sensitivity import layer_sqnr

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="first"),
             helper.make_node("Sub", ["x", "one"], ["over"], name="over"),
             helper.make_node("Relu", ["over"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "big"], ["spike"], name="spike"),
             helper.make_node("Add", ["a", "spike"], ["b"], name="add"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="second")]
    m = make_model(nodes, [vi("x", shape=[1, 3, 4, 4])], [vi("y", shape=[1, 4, 4, 4])],
                   [init("w1", rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32)), init("one", np.float32(1.0)),
                    init("big", np.full((4, 3, 1, 1), 1000, np.float32)),
                    init("w2", rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32))])
    ordinary = [{"x": x[None]} for x in images(6, 4)]
    outlier = images(1, 4, seed=9)
    outlier[0, 0, 0, 0] = 2.0
    q = int8.quantize(m, int8.calibrate(m, ordinary + [{"x": outlier}]).ranges("minmax"), "trt", {})
    scores = layer_sqnr(m, q, ordinary)
    assert {"first", "second"} <= set(scores)
    assert scores["second"] < scores["first"] - 10, scores


def _tiny(nodes, inits, out_shape=(1, 4, 8, 8), cin=3):
    return make_model(nodes, [vi("x", shape=[1, cin, 8, 8])], [vi(nodes[-1].output[0], shape=list(out_shape))], inits)


def test_unnamed_nodes_are_named_before_placement(tmp_path):
    """Found by review: islands and nodes_to_exclude go by node name; unnamed nodes all matched '' and the whole
    model stayed float."""
    from onnxrep.quantize import named

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1] * 4)]
    m = _tiny(nodes, [init("w", rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)),
                      init("w2", rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32))])
    n = named(m)
    names = [x.name for x in n.graph.node]
    assert all(names) and len(set(names)) == 3 and not any(x.name for x in m.graph.node)   # the input untouched
    np.savez(tmp_path / "c.npz", images=images(32, 8))
    import onnxrep

    r = onnxrep.optimize(m, precision="int8", calib=str(tmp_path / "c.npz"), min_agreement=0)
    assert sum(x.op_type == "QuantizeLinear" for x in r.model.graph.node) >= 2, r.report.text()
    assert r.report.int8["lint"] == []


def test_float16_and_quantized_models_are_refused_before_any_run(clean):
    from onnxrep.io import OnnxrepError
    from onnxrep.quantize import refuse_unfit

    m, q = clean
    refuse_unfit(m)
    with pytest.raises(OnnxrepError, match="already quantized"):
        refuse_unfit(q)
    half = onnx.ModelProto()
    half.CopyFrom(m)
    half.graph.node.append(helper.make_node("Cast", [m.graph.output[0].name], ["h"], to=onnx.TensorProto.FLOAT16))
    with pytest.raises(OnnxrepError, match="computes in float16"):
        refuse_unfit(half)


def test_histograms_stay_bounded_when_later_images_widen_the_range():
    """Found by review: ORT's histogram merge keeps the bin width and adds bins; a dark first image grew them to
    600k bins. The extremes must still be exact."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    m = make_model(nodes, [vi("x", shape=[1, 3, 8, 8])], [vi("y", shape=[1, 3, 8, 8])])
    feeds = [{"x": np.full((1, 3, 8, 8), v, np.float32) * np.linspace(0, 1, 192, dtype=np.float32).reshape(1, 3, 8, 8)}
             for v in (1e-4, 1.0, 1000.0)]
    hist = int8.calibrate(m, feeds)
    assert all(len(h[0]) <= 2 * int8.BINS for h in hist.collector.histogram_dict.values())
    assert hist.ranges("minmax")["y"] == pytest.approx((0.0, 1000.0))
    lo, hi = hist.ranges("percentile-99.99")["y"]
    assert 0 <= lo < hi <= 1000.0


def test_a_collapsed_percentile_falls_back_to_the_extremes():
    """A sparse tensor (all zeros but a few values): its percentile range collapsed to (0, 0), and onnxruntime
    used scale 1 whatever the data."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    m = make_model(nodes, [vi("x", shape=[1, 3, 32, 32])], [vi("y", shape=[1, 3, 32, 32])])
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 0, 0, 0] = 5.0
    hist = int8.calibrate(m, [{"x": x}])
    assert hist.ranges("percentile-99.9")["y"] == pytest.approx((0.0, 5.0))


def test_grouped_conv_transpose_stays_float_in_every_target(tmp_path):
    """Found by review: onnxruntime's per-channel scales for a grouped ConvTranspose follow Cout/group and its
    bias quantization crashed (ort target)."""
    import onnxrep

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("ConvTranspose", ["c", "wt", "b"], ["y"], name="up", group=2, strides=[2, 2])]
    m = _tiny(nodes, [init("w", rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)),
                      init("wt", rng.normal(0, 0.3, (4, 3, 2, 2)).astype(np.float32)),
                      init("b", rng.normal(0, 0.1, 6).astype(np.float32))], out_shape=(1, 6, 16, 16))
    np.savez(tmp_path / "c.npz", images=images(32, 8))
    for target in ("ort", "trt"):
        r = onnxrep.optimize(m, precision="int8", int8_target=target, calib=str(tmp_path / "c.npz"), min_agreement=0)
        assert r.report.int8["lint"] == [], r.report.int8["lint"]
        assert any("grouped ConvTranspose" in why for why in r.report.int8["float_islands"])
        onnx.checker.check_model(r.model, full_check=True)


def test_lint_catches_a_maxpool_that_changes_the_scale(clean):
    m, q = clean
    q = _copy(q)
    consts = _consts(q)
    readers = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    pool = _first(q, "MaxPool", lambda n: any(r.op_type == "QuantizeLinear" for r in readers.get(n.output[0], [])))
    qn = next(r for r in readers[pool.output[0]] if r.op_type == "QuantizeLinear")
    name = qn.input[1] + "_mutated"
    q.graph.initializer.append(numpy_helper.from_array(consts[qn.input[1]] * np.float32(2), name))
    qn.input[1] = name
    assert any(line.startswith("one scale across MaxPool") and pool.name in line for line in lint(q, m))
