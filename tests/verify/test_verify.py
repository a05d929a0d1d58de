"""The verifier is code under test too: its tolerance rule, its inputs, its honesty, and its power to catch
wrong rewrites (mutation sweeps: a verifier that passes everything would pass every other test)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import onnxrep
from onnxrep.cli import main
from onnxrep.verify import NOISE_FACTOR, compare, make_inputs, parse_shapes, reference, resolve_shapes, verify
from onnxrep.verify.tolerance import levels, per_channel
from tests.graphs import conv_bn, init, make_model, vi


# ---------------------------------------------------------------------------------------- the rule


def test_tolerance_is_per_channel():
    """Regression: the box rows of a YOLO output (hundreds of px) must not set the class rows' tolerance."""
    ref = np.zeros((1, 6, 50), np.float32)
    ref[:, :4] = np.linspace(0, 640, 200).reshape(4, 50)
    ref[:, 4:] = np.linspace(0.01, 0.99, 100).reshape(2, 50)
    noise = np.array([1e-3] * 4 + [1e-7] * 2)            # box noise from ~600 px sums, scores from O(1) sums
    level = levels(noise, per_channel(ref), "float32")
    boxes = ref.copy()
    boxes[0, 0, 3] += 5e-3                                  # 5 noise levels on a box: rounding
    assert compare("y", ref, boxes, level).ok
    scores = ref.copy()
    scores[0, 4, 7] *= 1.01                                 # a 1 % change of one score
    bad = compare("y", ref, scores, level)
    assert not bad.ok and bad.where == [0, 4, 7] and "channel 4" in bad.message


def test_a_quiet_channel_borrows_its_neighbours_noise():
    """A channel whose noise happened to be tiny in the samples gets the typical relative noise (90th
    percentile) of the channels of like magnitude: the per-channel maximum of a noisy estimate is noisy."""
    scale = np.array([1.0] * 40 + [600.0] * 4)
    noise = np.array([1e-4] * 40 + [1e-3] * 4)      # class rows noisy relative to 1, box rows quiet relative to 600
    noise[3] = 1e-9
    level = levels(noise, scale, "float32")
    assert level[3] == pytest.approx(1e-4) and level[0] == pytest.approx(1e-4)
    assert level[40] == pytest.approx(1e-3)         # box rows don't pool with the class rows
    noise[5] = 5e-2                                 # one loud channel doesn't raise the others'
    assert levels(noise, scale, "float32")[3] == pytest.approx(1e-4)


def test_fixed_share_without_noise():
    ref = np.array([[1.0, 1000.0]], np.float32)
    level = levels(None, per_channel(ref), "float32")
    np.testing.assert_allclose(level * NOISE_FACTOR, [2e-5 * 1000] * 2)


def test_nan_and_inf_positions_must_match():
    ref = np.array([np.nan, np.inf, 1.0])
    assert compare("y", ref, ref.copy()).ok
    assert not compare("y", ref, np.array([0.0, np.inf, 1.0])).ok
    assert not compare("y", ref, np.array([np.nan, -np.inf, 1.0])).ok


def test_shape_dtype_and_integer_mismatches_fail():
    assert not compare("y", np.zeros((2, 3)), np.zeros((3, 2))).ok
    assert not compare("y", np.zeros(3, np.float32), np.zeros(3, np.float64)).ok
    assert not compare("y", np.arange(3), np.arange(3) + np.array([0, 0, 1])).ok
    assert compare("y", np.arange(3), np.arange(3)).ok


# -------------------------------------------------------------------------------------- the inputs


def _two_inputs(dims_a, dims_b, elem=TensorProto.FLOAT):
    a, b = helper.make_tensor_value_info("a", elem, dims_a), helper.make_tensor_value_info("b", elem, dims_b)
    nodes = [helper.make_node("Identity", ["a"], ["ya"]), helper.make_node("Identity", ["b"], ["yb"])]
    return make_model(nodes, [a, b], [vi("ya"), vi("yb")])


def test_two_samples_symbolic_batch_two_then_one():
    model = conv_bn(batch="N")
    feeds = make_inputs(model)
    assert [f["x"].shape for f in feeds] == [(2, 4, 8, 8), (1, 4, 8, 8)]
    assert all(f["x"].dtype == np.float32 for f in feeds)
    (feed,) = make_inputs(model, 1, shapes=parse_shapes(["x=3x4x8x8"]))
    assert feed["x"].shape == (3, 4, 8, 8)
    assert parse_shapes(["x:3,4,8,8"]) == {"x": [3, 4, 8, 8]}


def test_the_batch_one_sample_is_the_batch_two_samples_first_item():
    """Two pictures with a symbolic batch as without one: (A, B) at batch 2, then A alone; inputs without the
    batch are the same in both."""
    model = conv_bn(batch="N")
    a, b = make_inputs(model)
    assert np.array_equal(b["x"], a["x"][:1]) and not np.array_equal(a["x"][0], a["x"][1])
    static = make_inputs(conv_bn(), 2)
    assert not np.array_equal(static[0]["x"], static[1]["x"])


def _batch_specialised(kind: str, wrong: bool):
    """An original whose batch-1 behaviour is not its batch-2 behaviour item by item, and an 'optimized' twin
    that behaves at batch 1 as the original does at batch 2 (wrong) or as the original itself (not wrong):
    squeeze: Squeeze without axes (it drops the batch axis too at batch 1) against Squeeze(axes=[1]);
    divide: a division by the batch size against a division by 2."""
    rng = np.random.default_rng(0)
    w = init("W", rng.normal(size=(4, 4)).astype(np.float32))
    if kind == "squeeze":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4])
        nodes = [helper.make_node("MatMul", ["x", "W"], ["c"]),
                 helper.make_node("Squeeze", ["c", "ax"] if wrong else ["c"], ["y"])]
        inits = [w, init("ax", np.array([1], np.int64))]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
        nodes = [helper.make_node("MatMul", ["x", "W"], ["c"])]
        if wrong:
            nodes.append(helper.make_node("Div", ["c", "two"], ["y"]))
            inits = [w, init("two", np.array(2.0, np.float32))]
        else:
            nodes += [helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
                      helper.make_node("Cast", ["s"], ["n"], to=TensorProto.FLOAT),
                      helper.make_node("Div", ["c", "n"], ["y"])]
            inits = [w]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return make_model(nodes, [x], [out], inits, opset=17)


@pytest.mark.parametrize("kind", ["squeeze", "divide"])
def test_the_batch_one_sample_is_proven_against_the_original_at_batch_one(kind):
    """Regression (an outside review): with the original's batch-1 outputs taken from its batch-2 run, a model
    that computes at batch 1 what the original computes at batch 2 passed. The original runs on the batch-1
    sample itself: such a model fails there, and the original's own batch-1 behaviour passes."""
    original = _batch_specialised(kind, wrong=False)
    assert verify(original, original).ok
    bad = verify(original, _batch_specialised(kind, wrong=True))
    assert not bad.ok, bad.lines()
    assert any("FAIL" in line for line in bad.lines())


def test_the_twin_runs_once_per_picture():
    """The batch-1 sample is the batch-2 sample's first picture: the twin's deviation there comes from the
    batch-2 run, the original's outputs from its own batch-1 run."""
    model = conv_bn(batch="N")
    ref = reference(model)
    assert ref.derived == {1: 0}
    assert [np.shape(f["x"])[0] for f in ref.feeds] == [2, 1]
    assert verify(model, model).ok


def test_equal_dim_params_get_equal_sizes_and_different_ones_differ():
    model = _two_inputs(["N", "T", 5], ["N", "S", "T"])
    for k in range(2):
        shapes = resolve_shapes(model, k)
        a, b = shapes["a"], shapes["b"]
        assert a[0] == b[0] and a[1] == b[2]          # N and T unified across inputs
        assert a[1] not in (1, 2) and a[0] != a[1]    # a symbolic dim is not fed as 1, nor as the batch
        assert b[1] not in (1, 2, a[1])               # S and T differ: confusing them shows
    user = resolve_shapes(model, 0, {"a": [4, 7, 5]})
    assert user["b"][0] == 4 and user["b"][2] == 7    # what the user fixed for a's N and T holds in b
    assert user["b"][1] not in (1, 2, 7)


def test_symbolic_height_and_width_differ():
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])
    model = make_model([helper.make_node("Identity", ["images"], ["y"])], [images], [vi("y")])
    onnx.helper.set_model_props(model, {"imgsz": "[320, 320]"})
    shape = resolve_shapes(model, 0)["images"]
    assert shape[0] == 2 and shape[2] == 320 and shape[3] not in (320, 1)


def test_image_inputs_look_like_images():
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    model = make_model([helper.make_node("Identity", ["images"], ["y"])], [images], [vi("y")])
    x = make_inputs(model, 1)[0]["images"]
    assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.05
    assert np.mean((x == 0) | (x == 1)) < 0.05                 # not a clipped mess
    # smooth: neighbouring pixels differ by far less than i.i.d. uniform noise's 1/3
    assert np.abs(np.diff(x, axis=3)).mean() < 0.1


def test_integer_indices_stay_in_range():
    table = init("table", np.arange(12, dtype=np.float32).reshape(6, 2))
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 50])
    model = make_model([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)], [ids], [vi("y")], [table])
    for feed in make_inputs(model):
        assert 0 <= feed["ids"].min() and feed["ids"].max() < 6


# ------------------------------------------------------------------------------------------ honesty


def _custom_op_model():
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    model = make_model([node], [vi("x", shape=[1, 4])], [vi("y", shape=[1, 4])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def test_unverifiable_is_not_verified():
    result = onnxrep.optimize(_custom_op_model())
    assert result.status == "unverified" and not result.verified and not result.ok
    assert "could not run" in result.report.text()
    allowed = onnxrep.optimize(_custom_op_model(), allow_unverified=True)
    assert allowed.ok and not allowed.verified
    assert onnxrep.optimize(_custom_op_model(), verify=False).status == "not verified"


def test_cli_unverifiable_exits_4_and_writes_nothing(tmp_path):
    path, out = tmp_path / "custom.onnx", tmp_path / "o.onnx"
    onnx.save(_custom_op_model(), path)
    runner = CliRunner()
    res = runner.invoke(main, ["optimize", str(path), "-o", str(out)])
    assert res.exit_code == 4 and not out.exists() and "could not run" in res.output
    res = runner.invoke(main, ["optimize", str(path), "-o", str(out), "--allow-unverified"])
    assert res.exit_code == 0 and out.exists()
    assert runner.invoke(main, ["verify", str(path), str(out)]).exit_code == 4


def _two_outputs():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"])]
    return make_model(nodes, [vi("x", shape=[1, 4])], [vi("a"), vi("b")])


def test_a_lost_output_fails_unless_dropped_on_purpose():
    model = _two_outputs()
    lost = _two_outputs()
    del lost.graph.output[1]
    v = verify(model, lost, strict_outputs=True)
    assert v.ran and not v.ok and v.missing == ["b"]
    assert verify(model, lost, strict_outputs=True, dropped=["b"]).ok
    # the verify command (no record of what was dropped) lists it and compares the rest
    loose = verify(model, lost)
    assert loose.ok and loose.not_compared == ["b"]


def test_an_output_from_nowhere_fails():
    model = _two_outputs()
    more = _two_outputs()
    more.graph.node.append(helper.make_node("Tanh", ["x"], ["c"]))
    more.graph.output.append(vi("c"))
    v = verify(model, more, strict_outputs=True)
    assert not v.ok and v.unexpected == ["c"]


def test_renamed_outputs_are_followed():
    model = _two_outputs()
    renamed = _two_outputs()
    renamed.graph.node[1].output[0] = "output0"
    renamed.graph.output[1].name = "output0"
    assert verify(model, renamed, strict_outputs=True, renamed={"b": "output0"}).ok
    assert not verify(model, renamed, strict_outputs=True).ok


# ------------------------------------------------------------------------- power: mutation sweeps


def _mutations(model: onnx.ModelProto, every: int = 1, size: float = 0.01):
    """(label, mutated copy): each Conv's kernel x(1 + size), and separately one bias element + size x its range."""
    inits = {t.name: k for k, t in enumerate(model.graph.initializer)}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for k, conv in enumerate(convs[::every]):
        for slot, what in ((1, f"kernel x{1 + size:g}"), (2, f"bias +{size:.0%} of range")):
            if len(conv.input) <= slot or conv.input[slot] not in inits:
                continue
            bad = onnx.ModelProto()
            bad.CopyFrom(model)
            t = bad.graph.initializer[inits[conv.input[slot]]]
            arr = onnx.numpy_helper.to_array(t).copy()
            if slot == 1:
                arr = arr * arr.dtype.type(1 + size)
            else:
                arr.flat[0] += arr.dtype.type(size * max(float(np.ptp(arr)), float(np.abs(arr).max()), 1e-3))
            t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
            yield f"{conv.name or k} {what}", bad


def _run_all(model, feeds):
    """Every output of `model` on every feed, feed by feed, as float64."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [np.asarray(v, np.float64) for f in feeds for v in sess.run(None, f)]


def _sweep(original, optimized, every, size=0.01, must_factor=2 * NOISE_FACTOR):
    """Verify every mutation; judge independently which ones a verifier must catch: those moving some output
    channel by more than `must_factor` times what the honest rewrite moved it (its float rounding, measured
    here by running both models, not by the verifier). Returns (total, detected, must, missed)."""
    ref = reference(original)
    honest = verify(original, optimized, ref=ref)
    assert honest.ok, honest.lines()
    names = [o.name for o in optimized.graph.output]
    clean = [np.asarray(c[n], np.float64) for c in ref.clean for n in names]
    scale = np.max([per_channel(c) for c in clean], axis=0)
    ulp = 2.0 ** -10 if ref.clean[0][names[0]].dtype == np.float16 else 2.0 ** -23
    honest_dev = np.max([per_channel(o - c) for o, c in zip(_run_all(optimized, ref.feeds), clean)], axis=0)
    # pooled over channels of like magnitude as the verifier pools its noise (one channel's maximum is noisy),
    # but from the honest rewrite's deviation: an estimate of float rounding independent of the verifier's
    floor = np.maximum(levels(honest_dev, scale, "float16" if ulp > 2.0 ** -23 else "float32"), ulp * scale)
    total = detected = must = 0
    missed = []
    for label, bad in _mutations(optimized, every, size):
        total += 1
        effect = np.max([per_channel(b - c) for b, c in zip(_run_all(bad, ref.feeds), clean)], axis=0)
        caught = not verify(original, bad, ref=ref).ok
        detected += caught
        if (effect > must_factor * floor).any():
            must += 1
            if not caught:
                missed.append(label)
    return total, detected, must, missed


# float32: 1 % changes; every one is far beyond the float32 noise of the builder's (well-conditioned) model.
# float16: a 1 % kernel change is inside float16 rounding for most Convs, so the sweep uses 10 %; the noisy
# twin over-estimates float16 rounding ~2-3x (it perturbs every op by a whole float16 step), so the
# independent 'must catch' line sits at 4x the noise factor.
SWEEPS = {"float32": dict(size=0.01, must_factor=2 * NOISE_FACTOR),
          "float16": dict(size=0.10, must_factor=4 * NOISE_FACTOR)}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mutation_sweep_fast(dtype):
    """A sample of the sweep (every 12th Conv of the optimized builder yolov9-t)."""
    models = pytest.importorskip("models")
    original = models.build("yolov9-t", "bn", imgsz=160, dtype=dtype)
    optimized = onnxrep.optimize(original, verify=False).model
    total, detected, must, missed = _sweep(original, optimized, every=12, **SWEEPS[dtype])
    assert total >= 20 and not missed and detected >= must
    if dtype == "float32":
        assert must == detected == total, (detected, must, total)


@pytest.mark.parametrize("every", [12, pytest.param(1, marks=pytest.mark.slow)])
def test_mutation_sweep_dynamic_batch(every):
    """A symbolic batch: the twin runs on the batch-2 sample only (the batch-1 sample is its first item, the
    twin's deviation there taken from it), and the sweep is still caught whole (every 12th Conv in
    `make test`, every Conv in `make test-all`)."""
    models = pytest.importorskip("models")
    original = models.build("yolov9-t", "bn", imgsz=160, batch="batch")
    optimized = onnxrep.optimize(original, verify=False).model
    assert reference(original).derived == {1: 0}
    total, detected, must, missed = _sweep(original, optimized, every=every, **SWEEPS["float32"])
    print(f"\nmutation sweep yolov9-t float32, symbolic batch (every {every}): {detected}/{total} detected; "
          f"{must} beyond {SWEEPS['float32']['must_factor']:g}x the honest rewrite's deviation, all caught")
    assert total >= 20 and not missed and detected == total, (detected, must, total)


def test_derived_twin_matches_a_twin_run():
    """The twin's deviation on the batch-1 sample, taken from the batch-2 run's first item, gives the levels a
    twin run on that sample gives (within rounding of rounding), output by output."""
    models = pytest.importorskip("models")
    original = models.build("yolov9-t", "bn", imgsz=160, batch="batch")
    ref = reference(original)
    assert ref.derived == {1: 0} and [np.shape(f["images"])[0] for f in ref.feeds] == [2, 1]
    ran = reference(original, feeds=[ref.feeds[1]])   # the twin run on the batch-1 sample itself
    assert not ran.derived
    for name in ref.outputs:
        derived = np.abs(np.asarray(ref.noisy[1][name], np.float64) - ref.clean[1][name])
        own = np.abs(np.asarray(ran.noisy[0][name], np.float64) - ran.clean[0][name])
        assert 0.5 * own.max() <= derived.max() <= 2 * own.max(), (name, derived.max(), own.max())
        # the original's batch-1 outputs are the batch-2 run's first item (its graph computes item by item);
        # onnxruntime's own batch-1 run differs from them by less than the twin's one step of rounding
        assert ref.proven == {1: 0} and np.array_equal(ref.clean[1][name], ref.clean[0][name][:1])
        gap = np.abs(np.asarray(ref.clean[1][name], np.float64) - ran.clean[0][name]).max()
        assert gap <= own.max(), (name, gap, own.max())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mutation_sweep_every_conv(dtype):
    models = pytest.importorskip("models")
    original = models.build("yolov9-t", "bn", imgsz=160, dtype=dtype)
    optimized = onnxrep.optimize(original, verify=False).model
    total, detected, must, missed = _sweep(original, optimized, every=1, **SWEEPS[dtype])
    print(f"\nmutation sweep yolov9-t {dtype} ({SWEEPS[dtype]['size']:.0%}): {detected}/{total} detected; "
          f"{must} beyond {SWEEPS[dtype]['must_factor']:g}x the honest rewrite's deviation, all caught")
    assert not missed and detected >= must
    if dtype == "float32":
        assert detected == total


def test_class_kernel_changes_are_caught():
    """Regression (the per-output scale term passed these): the last class Conv of the main head scaled by
    1.05 or negated on the optimized builder yolov9-t (float32), x1.5 or negated (float16)."""
    models = pytest.importorskip("models")
    for dtype, factors in (("float32", (1.05, -1.0)), ("float16", (1.5, -1.0))):
        original = models.build("yolov9-t", "bn", imgsz=160, dtype=dtype)
        optimized = onnxrep.optimize(original, verify=False).model
        ref = reference(original)
        conv = [n for n in optimized.graph.node if n.op_type == "Conv"
                and next(t for t in optimized.graph.initializer if t.name == n.input[1]).dims[0] == 80][-1]
        for factor in factors:
            bad = onnx.ModelProto()
            bad.CopyFrom(optimized)
            t = next(t for t in bad.graph.initializer if t.name == conv.input[1])
            arr = onnx.numpy_helper.to_array(t)
            t.CopyFrom(onnx.numpy_helper.from_array((arr * arr.dtype.type(factor)).astype(arr.dtype), t.name))
            v = verify(original, bad, ref=ref)
            assert not v.ok, (dtype, factor, v.lines())


def test_cli_verify_catches_a_corrupted_weight(tmp_path, model_file):
    original = model_file("yolov9-t", "bn", imgsz=160)
    result = onnxrep.optimize(str(original))
    assert result.verified
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(result.model, good)
    _, mutated = next(_mutations(result.model, every=40))
    onnx.save(mutated, bad)
    runner = CliRunner()
    assert runner.invoke(main, ["verify", str(original), str(good)]).exit_code == 0
    caught = runner.invoke(main, ["verify", str(original), str(bad)])
    assert caught.exit_code == 1 and "FAIL" in caught.output


# ---------------------------------------------------------------------------------- the verify command


def test_cli_verify_reads_float16_from_the_second_model(tmp_path):
    """`onnxrep verify ORIGINAL FP16` failed a model `optimize --precision fp16` had just verified: the command
    had no float16 mode. It now takes float16 rules from the second model's types, and says so."""
    models = pytest.importorskip("models")
    original = models.build("gelan-t", "bn", imgsz=160)
    half = onnxrep.optimize(original, precision="fp16")
    assert half.verified
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(original, a)
    onnx.save(half.model, b)
    result = CliRunner().invoke(main, ["verify", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "the second model is float16" in result.output and "detections:" in result.output


def test_cli_verify_names_the_adapter_when_inputs_differ_before_running(tmp_path, monkeypatch):
    models = pytest.importorskip("models")
    original = models.build("gelan-t", "bn", imgsz=160)
    uint8 = onnxrep.optimize(original, input_format="uint8-nchw", verify=False)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(original, a)
    onnx.save(uint8.model, b)
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *x, **k: (_ for _ in ()).throw(AssertionError("ran")))
    result = CliRunner().invoke(main, ["verify", str(a), str(b)])
    assert result.exit_code == 2, result.output
    assert "is uint8 in the second model" in result.output and "--input-format" in result.output


def test_no_output_in_common_fails_before_running(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *x, **k: (_ for _ in ()).throw(AssertionError("ran")))
    a = _two_outputs()
    b = _two_outputs()
    for o in b.graph.output:
        o.name += "_other"
    for n in b.graph.node:
        n.output[0] += "_other"
    v = verify(a, b)
    assert not v.ok and "no output of the original" in v.skipped_reason


# ------------------------------------------- the twin leaves exact arithmetic alone (review of issue 28)


def _index_model(scale=1.0, through_shape=False):
    """y = x[:, idx] * w where idx comes from float arithmetic: a position table [1, 2, 3] + 0 (or the
    input's width, cast to float), Floor, Cast to int64. Moving that arithmetic by one step moves the index."""
    from onnx import numpy_helper as nh

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    inits = [nh.from_array(np.array([[1.5, 2.5, 3.5]], np.float32) * np.float32(scale), "w"),
             nh.from_array(np.array([1.0, 2.0, 3.0], np.float32), "p"), nh.from_array(np.zeros(3, np.float32), "off"),
             nh.from_array(np.array(1, np.int64), "i1"), nh.from_array(np.array([-1.0, -2.0, -3.0], np.float32), "back")]
    if through_shape:   # the width, as a float, minus 1..3: indices 7, 6, 5
        nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i1"], ["n"], axis=0),
                 helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
                 helper.make_node("Add", ["nf", "back"], ["q"])]
    else:
        nodes = [helper.make_node("Add", ["p", "off"], ["q"])]
    nodes += [helper.make_node("Floor", ["q"], ["fq"]), helper.make_node("Cast", ["fq"], ["i"], to=TensorProto.INT64),
              helper.make_node("Gather", ["x", "i"], ["gx"], axis=1), helper.make_node("Mul", ["gx", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("through_shape", [False, True])
def test_the_twin_does_not_move_exact_index_arithmetic(through_shape):
    """Regression: the twin perturbed a float position table (and the Add after it) that a Floor/Cast turned
    into Gather indices; its 'noise' became a jump between elements, and a 1 % wrong model was verified."""
    feeds = [{"x": np.arange(8, dtype=np.float32)[None] * 10 + 1}, {"x": np.arange(8, dtype=np.float32)[None] * 7 + 3}]
    ref = reference(_index_model(through_shape=through_shape), feeds=feeds)
    assert ref.noise_error == "" and all(np.array_equal(np.floor(c["y"] / 1e9), np.floor(n["y"] / 1e9))
                                         for c, n in zip(ref.clean, ref.noisy))
    assert all(np.allclose(c["y"], n["y"], rtol=1e-5) for c, n in zip(ref.clean, ref.noisy))
    v = verify(_index_model(through_shape=through_shape), _index_model(1.01, through_shape), feeds=feeds)
    assert not v.ok and v.outputs[0].used > 100, v.lines()


def test_a_twin_that_jumps_is_reported_not_trusted(monkeypatch):
    """The safety net: a twin that moves an output by more than JUMP of its range measured no rounding. With
    the exact-arithmetic analysis switched off, the integer positions 1, 2, 3 move a step down for this seed
    (deterministic), Floor moves the index, and the noise is reported as not measured instead of used."""
    import onnxrep.verify.noise as noise

    monkeypatch.setattr(noise, "exact", lambda graph: set())
    feeds = [{"x": np.array([[1, 1000] * 4], np.float32)}]   # a neighbouring index is a thousand times larger or smaller
    ref = reference(_index_model(), feeds=feeds)
    assert not ref.noise_measured and "jumped" in ref.noise_error, ref.noise_error


def test_a_reference_for_other_outputs_is_a_clear_error():
    model = _two_outputs()
    ref = reference(model, outputs=["a"])
    with pytest.raises(ValueError, match="lacks"):
        verify(model, model, ref=ref)
    with pytest.raises(ValueError, match="step"):
        verify(model, model, ref=reference(model), precision="fp16")


def test_constant_node_weights_are_perturbed_by_the_twin():
    """Regression: a Constant node's tensor was looked up by the attribute's own (empty) name, never moved."""
    from onnxrep.verify.noise import Perturbation
    from onnxrep.verify.runtime import Cut

    model = conv_bn()
    w = next(t for t in model.graph.initializer if len(t.dims) == 4)
    model.graph.initializer.remove(w)
    value = onnx.TensorProto()
    value.CopyFrom(w)
    value.name = ""
    model.graph.node.insert(0, helper.make_node("Constant", [], [w.name], value=value))
    twin = Perturbation(model, 1)
    head = Cut(model).head(twin)
    const = next(n for n in head.graph.node if n.op_type == "Constant")
    moved = onnx.numpy_helper.to_array(const.attribute[0].t)
    assert twin.moved >= 1 and not np.array_equal(moved, onnx.numpy_helper.to_array(value))
