"""`onnxrep optimize --precision int8` end to end: written only when the proof holds, usage errors before any
run (exit 2, nothing written), the target missed (exit 1, nothing written unless --force), the budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxrep
from onnxrep.cli import main
from onnxrep.quantize.lint import lint


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def yolo(model_file):
    return model_file("yolov9-t", "bn", imgsz=64)


def test_int8_written_with_its_proof(yolo, calib_npz, tmp_path):
    out = tmp_path / "q.onnx"
    code, text = cli("optimize", yolo, "-o", out, "--precision", "int8", "--calib", calib_npz(64), "--calib-size", 16,
                     "--json", tmp_path / "r.json")
    assert code == 0, text
    assert "verify deploy int8 trt: ok" in text and "int8 float: 1x DFL softmax" in text
    q = onnx.load(out)
    onnx.checker.check_model(q, full_check=True)
    report = json.loads((tmp_path / "r.json").read_text())
    info = report["int8"]
    assert info["ok"] and info["lint"] == [] and info["calibration_images"] == 16 and info["held_out"] == 24
    assert info["proof_images"] == 16
    assert set(info["methods_tried"]) == {"minmax", "percentile-99.99", "percentile-99.999"}
    assert info["method"] == min(info["methods_tried"], key=info["methods_tried"].get)
    assert info["bytes"]["ratio"] < 0.45
    float_model = onnxrep.optimize(yolo, verify=False).model
    assert lint(q, float_model) == []
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 50
    assert report["verification"]["status"] == "verified"


@pytest.mark.parametrize("args, words", [
    (["--precision", "int8"], "needs calibration images"),
    (["--calib", "CALIB"], "--calib only applies with --precision int8"),
    (["--int8-target", "ort"], "only applies with --precision int8"),
    (["--precision", "int8", "--calib", "CALIB", "--nms", "ort"], "not in one run yet"),
    (["--precision", "int8", "--calib", "CALIB", "--no-verify"], "--no-verify"),
    (["--precision", "int8", "--calib", "missing.npz"], "no such file"),
    (["--precision", "int8", "--calib", "CALIB", "--int8-exclude", "nope"], "--int8-exclude: no node named 'nope'"),
    (["--precision", "int8", "--calib", "CALIB", "--calib-size", "2"], "--calib-size"),
    (["--precision", "int8", "--calib", "CALIB", "--eval", "CALIB"], "labels need arrays"),
])
def test_usage_errors_exit_2_and_write_nothing(yolo, calib_npz, tmp_path, args, words):
    out = tmp_path / "q.onnx"
    args = [str(calib_npz(64)) if a == "CALIB" else a for a in args]
    code, text = cli("optimize", yolo, "-o", out, *args)
    assert code == 2 and words in text and not out.exists(), text


def test_missed_target_exits_1_and_writes_nothing_unless_forced(yolo, calib_npz, tmp_path):
    out = tmp_path / "q.onnx"
    # an mAP drop of at most -1 points can never hold
    np.savez(tmp_path / "eval.npz", images=np.load(calib_npz(64))["images"][:4], boxes=np.array([[8.0, 8, 40, 40]]),
             classes=np.array([0]), image_index=np.array([0]))
    args = ["optimize", yolo, "-o", out, "--precision", "int8", "--calib", calib_npz(64), "--calib-size", 8,
            "--calib-method", "minmax", "--eval", tmp_path / "eval.npz", "--min-agreement", 0]
    code, text = cli(*args, "--max-map-drop", 0)
    assert code == 0, text   # mAP equal (0 and 0 on random weights): a drop of 0 holds
    out.unlink()
    result = onnxrep.optimize(yolo, precision="int8", calib=str(calib_npz(64)), calib_size=8, calib_method="minmax",
                              min_agreement=1.0)
    facts = result.report.int8["outputs"]["output1"]
    if facts["agreement"] < 1.0:   # the usual case on random weights; then the CLI must refuse to write
        code, text = cli(*args[:-4], "--min-agreement", 1)
        assert code == 1 and "verification failed: int8 trt: FAIL" in text and not out.exists(), text
        code, text = cli(*args[:-4], "--min-agreement", 1, "--force")
        assert code == 1 and out.exists()
    else:
        pytest.skip("the int8 model agreed 100%: no missed target to show")


def test_budget_sends_the_most_sensitive_layers_back_to_float(yolo, calib_npz):
    result = onnxrep.optimize(yolo, precision="int8", calib=str(calib_npz(64)), calib_size=8, calib_method="minmax",
                              min_agreement=1.0, int8_budget=2)
    info = result.report.int8
    assert 1 <= len(info["fallback"]) <= 2
    sens = [f["sqnr_db"] for f in info["fallback"]]
    assert sens == sorted(sens)
    prod = {o: n for n in result.model.graph.node for o in n.output}
    for f in info["fallback"]:
        node = next(n for n in result.model.graph.node if n.name == f["node"])
        # its weight is float again (its input may still be read through the DQ another quantized op shares)
        assert node.op_type == "Conv" and prod.get(node.input[1]) is None
    assert any(why.startswith("sensitive") for why in info["float_islands"])


@pytest.mark.parametrize("flag", ["--dynamic-batch", "--metadata"])
def test_int8_with_the_adapters_that_keep_the_head(yolo, calib_npz, tmp_path, flag):
    """--dynamic-batch and --metadata apply to the float model before it is quantized: what is written is the
    int8 model with them (once, the float model with the metadata was written instead)."""
    out = tmp_path / "q.onnx"
    code, text = cli("optimize", yolo, "-o", out, "--precision", "int8", "--calib", calib_npz(64), "--calib-size", 8,
                     "--calib-method", "minmax", "--min-agreement", 0, flag)
    assert code == 0, text
    q = onnx.load(out)
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 50
    assert any(p.key == "imgsz" for p in q.metadata_props)
    batch = q.graph.input[0].type.tensor_type.shape.dim[0]
    assert (batch.dim_param != "") == (flag == "--dynamic-batch")
    if flag == "--dynamic-batch":
        import onnxruntime as ort

        x = np.load(calib_npz(64))["images"][:3]
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
        (y0,) = sess.run(None, {sess.get_inputs()[0].name: x[:1]})
        assert y.shape[0] == 3 and np.allclose(y[:1], y0, atol=1e-4 * np.abs(y0).max())


def test_nms_in_a_second_run_on_the_int8_model(yolo, calib_npz, tmp_path):
    """What the refusal above points to: the int8 model gets its NMS in a second run, checked against the
    reference NMS on the int8 model's own outputs; its Q/DQ nodes survive the passes."""
    q_path, nms_path = tmp_path / "q.onnx", tmp_path / "q.nms.onnx"
    code, text = cli("optimize", yolo, "-o", q_path, "--precision", "int8", "--calib", calib_npz(64), "--calib-size", 8,
                     "--calib-method", "minmax", "--min-agreement", 0)
    assert code == 0, text
    code, text = cli("optimize", q_path, "-o", nms_path, "--nms", "ort")
    assert code == 0 and "verify deploy NMS ort" in text and "ok, equal to numpy's reference NMS" in text, text
    q, n = onnx.load(q_path), onnx.load(nms_path)
    count = lambda m: sum(x.op_type == "QuantizeLinear" for x in m.graph.node)  # noqa: E731
    assert count(n) == count(q) > 50 and [o.name for o in n.graph.output][0] == "num_dets"


def test_int8_of_a_model_onnxruntime_cannot_verify_writes_nothing(tmp_path):
    """--allow-unverified writes an unverified float model; with int8 that float model would have been written
    in the int8 model's place. Now: exit 4, one line, nothing written."""
    from onnx import helper

    from tests.graphs import conv_bn, make_model, vi

    base = conv_bn(cin=3)
    g = base.graph
    custom = helper.make_node("MySwish", [g.output[0].name], ["z"], domain="com.example")
    dims = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    model = make_model(list(g.node) + [custom], list(g.input), [vi("z", shape=dims)], list(g.initializer))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    shape = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    np.savez(tmp_path / "c.npz", images=np.random.default_rng(0).random((32, *shape[1:]), np.float32))
    out = tmp_path / "q.onnx"
    code, text = cli("optimize", path, "-o", out, "--precision", "int8", "--calib", tmp_path / "c.npz", "--allow-unverified")
    assert code == 4 and "--precision int8: the float model could not be verified" in text and not out.exists(), text
    assert "Traceback" not in text


class _WrongNumbers:
    """A pass that keeps the model valid but changes its numbers: every Conv bias + 1."""

    name = "wrong_numbers"

    def run(self, graph, ctx):
        import onnx_graphsurgeon as gs

        from onnxrep.passes.base import PassResult

        done = 0
        for n in graph.nodes:
            if n.op == "Conv" and len(n.inputs) > 2 and isinstance(n.inputs[2], gs.Constant) \
                    and not n.inputs[2].name.endswith("_wrong"):
                n.inputs[2] = gs.Constant(n.inputs[2].name + "_wrong", n.inputs[2].values + 1)
                done += 1
        return PassResult(count=done, changed=bool(done))


def test_a_float_model_that_fails_its_proof_is_never_written_as_int8(yolo, calib_npz, tmp_path, monkeypatch):
    """--force writes a float model that failed verification; with int8 asked for, that float model would be
    written under the int8 name. Exit 1, one line, nothing written."""
    real = onnxrep.passes.select
    monkeypatch.setattr(onnxrep.passes, "select", lambda names=None: list(real(names)) + [_WrongNumbers()])
    out = tmp_path / "q.onnx"
    code, text = cli("optimize", yolo, "-o", out, "--precision", "int8", "--calib", calib_npz(64), "--calib-size", 8,
                     "--force")
    assert code == 1 and "the float model failed its own proof, nothing quantized, nothing written" in text, text
    assert not out.exists()
