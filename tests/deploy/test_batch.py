"""--dynamic-batch, --static-batch, --overwrite-input-shape (onnxrep/deploy/batch.py).

Positive: the official (fused, static batch 1) export of the builder's models runs at batch 1, 2 and 5,
each sample equal to its batch-1 result; a dynamic TorchScript export fixed to a batch loses its Shape
chains. Negative: the batch folded into another axis, split or tiled along, inputs that disagree, a
symbolic batch, bad shapes. The check itself by mutation: a model that mixes samples, a constant batch
left behind.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import models
import onnxrep
from onnxrep.cli import main
from onnxrep.deploy.batch import check_batches, fix_input_shapes, make_dynamic_batch
from onnxrep.export import from_graph
from onnxrep.ir.graph import import_model
from onnxrep.io import OnnxrepError
from onnxrep.verify.inputs import make_inputs


def _session(model):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _conv_reshape(b0: int, c: int = 4, hw: int = 6, target=None, extra=(), opset: int = 17) -> onnx.ModelProto:
    """x [b0, 3, hw, hw] -> Conv -> Reshape(target, default [b0, c, -1]) -> (extra nodes) -> y."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(c, 3, 3, 3)).astype(np.float32), "w")
    t = numpy_helper.from_array(np.asarray(target if target is not None else [b0, c, -1], np.int64), "t")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "t"], ["r"])]
    last = "r"
    inits = [w, t]
    for k, (op, const, attrs) in enumerate(extra):
        inits.append(numpy_helper.from_array(np.asarray(const), f"k{k}"))
        nodes.append(helper.make_node(op, [last, f"k{k}"], [f"e{k}"], **attrs))
        last = f"e{k}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b0, 3, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b0, c, hw * hw] if target is None
                                                         and all(e[0] == "Expand" for e in extra) else None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(model):
    return make_inputs(model, 1, 0)


# ------------------------------------------------------------------------------------------- positive


@st.composite
def _cases(draw):
    b0 = draw(st.integers(1, 3))
    c = draw(st.integers(1, 5))
    hw = draw(st.integers(2, 7))
    expand = draw(st.booleans())
    extra = [("Expand", np.array([b0, c, hw * hw], np.int64), {})] if expand else []
    return b0, c, hw, extra, draw(st.sampled_from([13, 17, 18]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases())
def test_dynamic_batch_on_small_graphs(case):
    b0, c, hw, extra, opset = case
    m = _conv_reshape(b0, c, hw, extra=extra, opset=opset)
    dyn, info = make_dynamic_batch(m)
    onnx.checker.check_model(dyn, full_check=True)
    assert dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert len(info["rewritten"]) == 1 + len(extra)
    result = check_batches(dyn, _feeds(m))
    assert result["ok"], result["line"]


@pytest.mark.parametrize("axis", [1, 2, -1])
@pytest.mark.parametrize("b0", [1, 2])
def test_a_constant_joined_off_the_batch_axis_follows_the_batch(axis, b0):
    """YOLOv6's head: Concat(-1)(boxes [B, A, 4], ones [1, A, 1] (a constant at export), scores). The constant
    is expanded to the batch read at run time; a constant holding a batch > 1 can't be, and is refused."""
    c, hw = 3, 4
    m = _conv_reshape(b0, c, hw)
    shape = [b0, 2, hw * hw] if axis == 1 else [b0, c, 2]
    m.graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), "ones"))
    m.graph.node[-1].CopyFrom(helper.make_node("Concat", ["r", "ones"], ["y"], axis=axis))
    del m.graph.output[0].type.tensor_type.shape.dim[:]
    if b0 > 1:
        with pytest.raises(OnnxrepError, match=f"holds the batch {b0} in a constant"):
            make_dynamic_batch(m)
        return
    dyn, info = make_dynamic_batch(m)
    onnx.checker.check_model(dyn, full_check=True)
    assert any("follows the batch" in r for r in info["rewritten"]), info
    result = check_batches(dyn, _feeds(m))
    assert result["ok"], result["line"]
    x = np.random.default_rng(0).random((3, 3, hw, hw), dtype=np.float32)
    y = _session(dyn).run(None, {"x": x})[0]
    want = [3, c + 2, hw * hw] if axis == 1 else [3, c, hw * hw + 2]
    assert list(y.shape) == want and np.all(y[:, c:] == 1 if axis == 1 else y[..., hw * hw:] == 1)
    r = onnxrep.optimize(m, dynamic_batch=True)   # the report tells the expanded constant from shape constants
    assert r.ok and "1 constant joined to the batch expanded to it" in r.report.text(), r.report.text()


@pytest.mark.parametrize("name", ["yolov9-t", "gelan-t"])
def test_official_exports_become_dynamic(name):
    m = models.build(name, exporter="official", imgsz=160)
    r = onnxrep.optimize(m, dynamic_batch=True)
    assert r.ok, r.report.text()
    [c] = r.verification.deploy
    assert c["check"] == "batch" and c["ok"] and "sample 0 at batch 1; samples 1, 0 at batch 2" in c["line"]
    assert [d.dim_param or d.dim_value for d in r.model.graph.output[0].type.tensor_type.shape.dim] == ["batch", 84, 525]
    x = np.random.default_rng(0).random((3, 3, 160, 160), dtype=np.float32)
    assert _session(r.model).run(None, {"images": x})[0].shape == (3, 84, 525)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.NAMES)
def test_every_builder_model_official_export_becomes_dynamic(name):
    r = onnxrep.optimize(models.build(name, exporter="official", imgsz=160), dynamic_batch=True, nms="ort")
    assert r.ok, r.report.text()
    assert all(c["ok"] for c in r.verification.deploy)


def test_static_batch_folds_the_shape_chains_of_a_dynamic_export():
    m = models.build("yolov9-t", exporter="torchscript", imgsz=160, batch="batch")
    assert any(n.op_type == "Shape" for n in m.graph.node)
    r = onnxrep.optimize(m, static_batch=2)
    assert r.ok, r.report.text()
    assert not any(n.op_type in ("Shape", "Gather", "Unsqueeze") for n in r.model.graph.node)
    dims = [[d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in (r.model.graph.input[0], r.model.graph.output[0])]
    assert dims == [[2, 3, 160, 160], [2, 84, 525]]
    assert r.verification.shapes[0]["images"] == [2, 3, 160, 160]
    assert "input shapes fixed before the passes: images 2x3x160x160" in r.report.text()


# ------------------------------------------------------------------------------------------- negative


def test_a_batch_folded_into_another_axis_is_refused():
    """b0 = 2: Conv -> Reshape [8, -1] (batch and channels merged) -> Reshape [2, 4, -1]."""
    m = _conv_reshape(2, target=[8, -1], extra=[("Reshape", np.array([2, 4, -1], np.int64), {})])
    with pytest.raises(OnnxrepError, match="folds the batch into another axis"):
        make_dynamic_batch(m)


@pytest.mark.parametrize("op,const,attrs,message", [
    ("Split", np.array([1, 1], np.int64), {"axis": 0}, "Split .* along the batch axis"),
    ("Tile", np.array([2, 1, 1], np.int64), {}, "Tile .* repeats the batch axis"),
])
def test_split_or_tile_along_the_batch_is_refused(op, const, attrs, message):
    m = _conv_reshape(2, extra=[(op, const, attrs)])
    if op == "Split":   # Split has two outputs: keep the first
        node = m.graph.node[2]
        node.output.append("e0_second")
    with pytest.raises(OnnxrepError, match=message):
        make_dynamic_batch(m)


def test_inputs_must_share_one_static_batch():
    m = _conv_reshape(1)
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(OnnxrepError, match="the same static batch"):
        make_dynamic_batch(m)


@pytest.mark.parametrize("shapes,message", [
    ({"nope": [1, 3, 6, 6]}, "no input named 'nope'"),
    ({"x": [1, 3, 6]}, "rank 4, 3 dims given"),
    ({"x": [1, 3, 6, 7]}, "dim 6 cannot become 7"),
])
def test_fix_input_shapes_errors(shapes, message):
    with pytest.raises(OnnxrepError, match=message):
        fix_input_shapes(_conv_reshape(1), shapes, "--overwrite-input-shape")


def test_static_batch_needs_the_other_dims_static():
    m = _conv_reshape(1)
    m.graph.input[0].type.tensor_type.shape.dim[2].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(OnnxrepError, match="symbolic dims besides the batch"):
        onnxrep.optimize(m, static_batch=2, verify=False)


# ------------------------------------------------------------------------------- the check, mutated


def test_the_batch_check_catches_a_model_that_mixes_samples():
    """Subtracting the batch mean: runs at any batch, but a sample's result depends on the others."""
    m = _conv_reshape(1)
    dyn, _ = make_dynamic_batch(m)
    g = dyn.graph
    mean = helper.make_node("ReduceMean", ["r_mixed_in"], ["mixed_mean"], axes=[0], keepdims=1)
    ident = next(n for n in g.node if n.op_type == "Identity")
    src = ident.input[0]
    ident.input[0] = "mixed"
    g.node.extend([helper.make_node("Identity", [src], ["r_mixed_in"]), mean,
                   helper.make_node("Sub", ["r_mixed_in", "mixed_mean"], ["mixed"])])
    graph = import_model(dyn)
    graph.toposort()
    dyn = from_graph(graph, dyn)
    result = check_batches(dyn, _feeds(m))
    assert not result["ok"] and "sample" in result["line"], result["line"]


def test_the_batch_check_catches_a_batch_left_behind():
    dyn, _ = make_dynamic_batch(_conv_reshape(1))
    concat = next(n for n in dyn.graph.node if n.op_type == "Concat")
    dyn.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "still_one"))
    concat.input[0] = "still_one"
    result = check_batches(dyn, _feeds(_conv_reshape(1)))
    assert not result["ok"] and "output y has shape [1, 4, 108]" in result["line"], result["line"]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_batch_options(tmp_path):
    src = tmp_path / "off.onnx"
    models.save(models.build("gelan-t", exporter="official", imgsz=160), src)
    out = tmp_path / "dyn.onnx"
    r = CliRunner().invoke(main, ["optimize", str(src), str(out), "--dynamic-batch"])
    assert r.exit_code == 0, r.output
    assert "verify deploy dynamic batch: ok" in r.output and "deploy batch: dynamic (exported at 1)" in r.output
    r = CliRunner().invoke(main, ["optimize", str(out), str(tmp_path / "s.onnx"), "--overwrite-input-shape",
                                  "images:3,3,160,160"])
    assert r.exit_code == 0, r.output
    assert onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    for args, message in ((["--dynamic-batch", "--static-batch", "2"], "contradict"),
                          (["--overwrite-input-shape", "images:3x3"], "rank 4, 2 dims given"),
                          (["--overwrite-input-shape", "images"], "--overwrite-input-shape 'images': expected")):
        r = CliRunner().invoke(main, ["optimize", str(out), str(tmp_path / "bad.onnx"), *args])
        assert r.exit_code == 2 and message in r.output, r.output
        assert not (tmp_path / "bad.onnx").exists()


# ------------------------------------------------------------------------------- review findings


def _tiny(nodes, inputs, inits, opset=18, ir=8):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def test_shape_constants_whose_first_entry_is_not_the_batch_are_refused():
    expand = _tiny([helper.make_node("Expand", ["x", "s"], ["y"])], [("x", [2, 2, 4])],
                   [numpy_helper.from_array(np.array([2, 4], np.int64), "s")])        # right-aligned: not the batch
    with pytest.raises(OnnxrepError, match="does not name every axis"):
        make_dynamic_batch(expand)
    resize = _tiny([helper.make_node("Resize", ["x", "", "", "s"], ["y"], axes=[2, 3])], [("x", [2, 1, 4, 4])],
                   [numpy_helper.from_array(np.array([2, 8], np.int64), "s")])
    with pytest.raises(OnnxrepError, match=r"sizes are for axes \[2, 3\]"):
        make_dynamic_batch(resize)


def test_an_initializer_listed_among_the_inputs_is_not_the_batch():
    """IR 3 lists initializers among the graph inputs: neither the batch source nor renamed."""
    m = _tiny([helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Reshape", ["a", "s"], ["y"])],
              [("w", [1, 3]), ("x", [1, 3])],
              [numpy_helper.from_array(np.ones((1, 3), np.float32), "w"),
               numpy_helper.from_array(np.array([1, 3, 1], np.int64), "s")], opset=17, ir=3)
    r = onnxrep.optimize(m, dynamic_batch=True)
    assert r.ok, r.report.text()
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in r.model.graph.input}
    assert dims["x"] == ["batch", 3] and dims.get("w", [1, 3]) == [1, 3]
    assert all(c["ok"] for c in r.verification.deploy)


# ------------------------------------------------------------------- inputs whose first dim is not a batch


def _image_and(extra: str, shape: list[int], b0: int = 1) -> onnx.ModelProto:
    """x [b0, 3, 6, 6] -> Conv -> Relu, then with a second input: `thr` [1] (Greater than a threshold) or
    `tab` [1, 4] (a per-feature table times the pooled features, which a Reshape(b0, 4) flattens)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"])]
    if extra == "thr":
        nodes += [helper.make_node("Greater", ["r", "thr"], ["gt"]), helper.make_node("Cast", ["gt"], ["y"], to=TensorProto.FLOAT)]
    else:
        inits.append(numpy_helper.from_array(np.array([b0, 4], np.int64), "s"))
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Reshape", ["p", "s"], ["f"]),
                  helper.make_node("Mul", ["f", "tab"], ["y"])]
    m = _tiny(nodes, [("x", [b0, 3, 6, 6]), (extra, shape)], inits, opset=17)
    return onnx.shape_inference.infer_shapes(m)


def _input_dims(model):
    return {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}


@pytest.mark.parametrize("extra,shape", [("thr", [1]), ("tab", [1, 4])])
def test_an_input_whose_first_dim_is_not_the_batch_keeps_its_shape(extra, shape):
    """A [1] threshold or a [1, 4] table beside a [1, 3, H, W] image: its 1 is no batch. Only the image
    becomes dynamic, the model stays valid, and it runs at batch 1, 2 and 5 with that one threshold or table."""
    m = _image_and(extra, shape)
    dyn, info = make_dynamic_batch(m)
    onnx.checker.check_model(dyn, full_check=True)
    assert _input_dims(dyn) == {"x": ["batch", 3, 6, 6], extra: shape}
    assert info["static_inputs"] == [extra]
    other = np.full(shape, 0.3, np.float32)
    for n in (1, 2, 5):
        x = np.random.default_rng(n).normal(size=(n, 3, 6, 6)).astype(np.float32)
        got = _session(dyn).run(None, {"x": x, extra: other})[0]
        want = np.concatenate([_session(m).run(None, {"x": x[i:i + 1], extra: other})[0] for i in range(n)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    r = onnxrep.optimize(m, dynamic_batch=True)
    assert r.ok, r.report.text()
    assert all(c["ok"] for c in r.verification.deploy), r.report.text()
    assert _input_dims(r.model) == {"x": ["batch", 3, 6, 6], extra: shape}


def test_a_second_input_that_does_carry_the_batch_becomes_dynamic_too():
    """Same rank as the image, same first dim: a batch (a mask per image)."""
    m = _tiny([helper.make_node("Mul", ["x", "mask"], ["y"])], [("x", [1, 3, 4, 4]), ("mask", [1, 1, 4, 4])], [], opset=17)
    dyn, info = make_dynamic_batch(onnx.shape_inference.infer_shapes(m))
    assert _input_dims(dyn) == {"x": ["batch", 3, 4, 4], "mask": ["batch", 1, 4, 4]} and info["static_inputs"] == []


@pytest.mark.parametrize("inputs", [
    [("x", [2, 3, 4, 4]), ("mask", [1, 1, 4, 4])],        # the image's rank, another batch
    [("x", [1, 3, 4, 4]), ("thr", ["n"])],                # a symbolic first dim: a batch or not?
])
def test_inputs_that_may_carry_another_batch_are_one_clear_error(inputs):
    m = _tiny([helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", [inputs[1][0]], ["z"])],
              inputs, [], opset=17)
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    with pytest.raises(OnnxrepError, match="same static batch"):
        make_dynamic_batch(m)
