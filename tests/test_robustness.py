"""Unusual and hostile input through the CLI: exit code, one line, input unchanged, nothing half-written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep import io
from onnxrep.cli import main
from tests.graphs import conv_bn, count_ops, init, make_model, vi


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxrep: error:"), result.output
    return lines[0]


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn(), path)
    return path


def test_unwritable_output_folder(tmp_path, model_path):
    if os.geteuid() == 0:
        target = Path("/sys/onnxrep-test.onnx")  # root may write anywhere but here
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "o.onnx"
    before = digest(model_path)
    result = run("optimize", model_path, "-o", target)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "not writable" in line or "cannot write" in line
    assert digest(model_path) == before and not target.exists()


def test_disk_full_leaves_no_partial_output(tmp_path, model_path, monkeypatch):
    real_open = open

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, _data):
            raise OSError(28, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        return FullDisk(fh) if "w" in mode and str(path).endswith(".tmp") else fh

    monkeypatch.setattr("builtins.open", fake_open)
    result = run("optimize", model_path, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 2 and "No space left" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_ctrl_c_during_passes_writes_nothing(tmp_path, model_path, monkeypatch):
    from onnxrep.passes.batchnorm import conv as fold_batchnorm

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fold_batchnorm.ConvThenBatchNorm, "rewrite", staticmethod(interrupt))
    result = run("optimize", model_path, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 130 and "interrupted" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_ctrl_c_during_write_cleans_temporary_files(tmp_path, model_path, monkeypatch):
    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    result = run("optimize", model_path, "-o", tmp_path / "o.onnx", "--external-data")
    assert result.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_custom_domain_ops_are_left_alone_and_verification_skipped(tmp_path):
    base = conv_bn()
    g = base.graph
    custom = helper.make_node("MySwish", ["y"], ["z"], domain="com.example")
    model = make_model(list(g.node) + [custom], list(g.input), [vi("z", shape=[1, 8, 8, 8])], list(g.initializer))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    result = run("optimize", path, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 4 and not (tmp_path / "o.onnx").exists(), result.output   # unverified: not written
    result = run("optimize", path, "-o", tmp_path / "o.onnx", "--allow-unverified")
    assert result.exit_code == 0, result.output
    assert "verification could not run" in result.output
    out = onnx.load(tmp_path / "o.onnx")
    assert [n.domain for n in out.graph.node if n.op_type == "MySwish"] == ["com.example"]
    assert count_ops(out, "BatchNormalization") == 0
    assert any(o.domain == "com.example" for o in out.opset_import)


def test_loop_body_is_optimized_and_still_runs():
    inner = conv_bn(cin=2, cout=2, size=4).graph
    body_nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"])] + list(inner.node)
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), vi("y")], list(inner.initializer))
    loop = helper.make_node("Loop", ["trip", ""], ["ys"], body=body)
    model = make_model([loop], [vi("x", shape=[1, 2, 4, 4])], [vi("ys")], [init("trip", np.array(2, np.int64))])
    result = onnxrep.optimize(model)
    assert result.report.after.batchnorm == 0 and result.ok and result.verification.ran
    onnx.checker.check_model(result.model, full_check=True)


def qdq_model():
    """x -> Q -> DQ -> Conv(DQ(int8 W)) -> BN: the quantized weight must stay quantized."""
    rng = np.random.default_rng(0)
    w_q = rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
        helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"]),
    ]
    inits = [init("xs", np.float32(0.02)), init("xz", np.uint8(0)), init("wq", w_q), init("ws", np.float32(0.01)),
             init("wz", np.int8(0))] + [init(n, rng.uniform(0.5, 1.5, 4).astype(np.float32)) for n in "sbmv"]
    return make_model(nodes, [vi("x", shape=[1, 3, 6, 6])], [vi("y")], inits, opset=17)


def test_qdq_model_is_left_alone_around_q_dq():
    model = qdq_model()
    result = onnxrep.optimize(model)
    assert count_ops(result.model, "DequantizeLinear") == 2 and count_ops(result.model, "QuantizeLinear") == 1
    assert count_ops(result.model, "BatchNormalization") == 1
    assert any("not constant" in d for d in result.report.passes["fold_batchnorm"]["declined"])
    assert result.ok and result.verification.ran


def test_training_mode_batchnorm_is_kept_and_reported(tmp_path):
    path = tmp_path / "train.onnx"
    onnx.save(conv_bn(training_mode=1), path)
    result = run("optimize", path, "-o", tmp_path / "o.onnx", "-v")
    assert result.exit_code == 0
    assert "training mode" in result.output
    assert count_ops(onnx.load(tmp_path / "o.onnx"), "BatchNormalization") == 1


def test_large_model_is_saved_with_external_data(tmp_path, model_path, monkeypatch):
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 1000)
    import onnxrep.verify.runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "EXTERNAL_DATA_THRESHOLD", 1000)
    result = run("optimize", model_path, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 0 and "verify y: ok" in result.output
    assert (tmp_path / "o.onnx.data").is_file()
    loaded, info = io.load(tmp_path / "o.onnx")
    assert info.external_data and count_ops(loaded, "BatchNormalization") == 0


def test_float16_model_through_cli(tmp_path):
    path = tmp_path / "h.onnx"
    onnx.save(conv_bn(dtype=np.float16), path)
    result = run("optimize", path, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 0 and "verify y: ok" in result.output


def test_bfloat16_model_folds_and_keeps_its_dtype(tmp_path):
    model = conv_bn(opset=22)
    model.ir_version = 10
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(ml_dtypes.bfloat16), t.name))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.BFLOAT16
    path = tmp_path / "bf.onnx"
    onnx.save(model, path)
    result = run("optimize", path, "-o", tmp_path / "o.onnx", "--allow-unverified")   # ORT has no bfloat16 Conv
    assert result.exit_code == 0, result.output
    out = onnx.load(tmp_path / "o.onnx")
    onnx.checker.check_model(out, full_check=True)
    assert count_ops(out, "BatchNormalization") == 0
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.BFLOAT16}
    # numbers: evaluate both in float32 with the reference implementation
    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(0).random((1, 4, 8, 8)).astype(ml_dtypes.bfloat16)
    a = ReferenceEvaluator(model).run(None, {"x": x})[0].astype(np.float32)
    b = ReferenceEvaluator(out).run(None, {"x": x})[0].astype(np.float32)
    np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-2)


# ------------------------------------------------------------------------- found in review (regressions)


def _input_with_default(nodes, inits, extra_inputs=()):
    g = helper.make_graph(nodes, "g", [vi("x", shape=[1, 4]), vi("s", shape=[1]), *extra_inputs], [vi("y", shape=[1, 4])],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_an_input_with_a_default_is_never_folded():
    model = _input_with_default([helper.make_node("Add", ["s", "one"], ["s1"]), helper.make_node("Mul", ["x", "s1"], ["y"])],
                                [init("s", np.array([2.0], np.float32)), init("one", np.array([1.0], np.float32))])
    result = onnxrep.optimize(model)
    assert result.ok and result.verification.ran
    assert [i.name for i in result.model.graph.input] == ["x", "s"]
    feed = {"x": np.ones((1, 4), np.float32), "s": np.array([5.0], np.float32)}
    np.testing.assert_allclose(_run(result.model, feed), _run(model, feed))
    np.testing.assert_allclose(_run(result.model, {"x": feed["x"]}), _run(model, {"x": feed["x"]}))  # default kept


@pytest.mark.parametrize("order", [("k", "s"), ("s", "k")])
def test_an_input_with_a_default_is_never_deduplicated(order):
    model = _input_with_default(
        [helper.make_node("Mul", ["x", order[0]], ["a"]), helper.make_node("Mul", ["x", order[1]], ["b"]),
         helper.make_node("Sub", ["a", "b"], ["y"])],
        [init("s", np.array([2.0], np.float32)), init("k", np.array([2.0], np.float32))])
    result = onnxrep.optimize(model)
    feed = {"x": np.ones((1, 4), np.float32), "s": np.array([5.0], np.float32)}
    np.testing.assert_allclose(_run(result.model, feed), _run(model, feed))


def test_verification_feeds_inputs_with_defaults():
    from onnxrep.verify import make_inputs

    model = _input_with_default([helper.make_node("Mul", ["x", "s"], ["y"])], [init("s", np.array([2.0], np.float32))])
    feed, _ = make_inputs(model)
    assert set(feed) == {"x", "s"} and feed["s"][0] != 2.0


def test_scalar_bool_input_is_verified():
    g = helper.make_graph([helper.make_node("Not", ["b"], ["y"])], "g",
                          [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.BOOL, [])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = onnxrep.optimize(model)
    assert result.verification.ran and result.ok


@pytest.mark.parametrize("bad", ["name", "dtype", "rank"])
def test_input_data_that_does_not_fit_is_exit_2_and_writes_nothing(tmp_path, model_path, bad):
    x = np.random.default_rng(0).random((1, 4, 8, 8), dtype=np.float32)
    data = {"name": {"wrong": x}, "dtype": {"x": x.astype(np.float64)}, "rank": {"x": x[0]}}[bad]
    np.savez(tmp_path / "in.npz", **data)
    for cmd in (["optimize", model_path, "-o", tmp_path / "o.onnx", "--input-data", tmp_path / "in.npz"],
                ["verify", model_path, model_path, "--input-data", tmp_path / "in.npz"]):
        result = run(*cmd)
        assert result.exit_code == 2, result.output
        one_error_line(result)
    assert not (tmp_path / "o.onnx").exists()


def test_bad_json_path_or_runtime_writes_nothing(tmp_path, model_path):
    for extra in (["--json", tmp_path / "no" / "r.json"], ["--bench", "--runtime", "bogus"]):
        result = run("optimize", model_path, "-o", tmp_path / "o.onnx", *extra)
        assert result.exit_code == 2
        one_error_line(result)
        assert not (tmp_path / "o.onnx").exists()


def test_output_file_mode_follows_the_umask(tmp_path, model_path):
    old = os.umask(0o022)
    try:
        assert run("optimize", model_path, "-o", tmp_path / "o.onnx", "-q").exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.onnx").stat().st_mode & 0o777 == 0o644
