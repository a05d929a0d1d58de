"""I/O (external data, atomic writes, metadata) and the CLI's contract: exit codes, one-line errors,
input files never touched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import onnxrep
from onnxrep import io
from onnxrep.cli import main
from tests.graphs import conv_bn, count_ops


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_state(folder: Path) -> dict:
    return {p.name: digest(p) for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def model_path(tmp_path) -> Path:
    model = conv_bn(cin=8, cout=16, size=8)
    model.metadata_props.add(key="stride", value="32")
    model.doc_string = "a test model"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


# --------------------------------------------------------------------------------------------- io


def test_external_data_round_trip(tmp_path, model_path):
    model, info = io.load(model_path)
    assert not info.external_data
    out = tmp_path / "ext.onnx"
    io.save(model, out, external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    again, info2 = io.load(out)
    assert info2.external_data
    for a, b in zip(model.graph.initializer, again.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    # the in-memory model was not left pointing at external data
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)


def test_save_switches_to_external_data_over_threshold(tmp_path, model_path, monkeypatch):
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 1000)
    model, _ = io.load(model_path)
    io.save(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()


def test_failed_write_leaves_no_partial_file(tmp_path, model_path, monkeypatch):
    model, _ = io.load(model_path)
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(io.OnnxrepError, match="No space left"):
        io.save(model, target, external_data=True)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_optimize_keeps_metadata_opsets_names_and_dynamic_dims():
    model = conv_bn(batch="N")
    model.metadata_props.add(key="names", value="{0: 'person'}")
    model.producer_name, model.producer_version, model.doc_string = "pytorch", "2.9", "doc"
    out = onnxrep.optimize(model, verify=False).model
    assert [(p.key, p.value) for p in out.metadata_props] == [("names", "{0: 'person'}")]
    assert (out.producer_name, out.producer_version, out.doc_string) == ("pytorch", "2.9", "doc")
    assert list(out.opset_import) == list(model.opset_import) and out.ir_version == model.ir_version
    assert [i.name for i in out.graph.input] == ["x"] and [o.name for o in out.graph.output] == ["y"]
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_default_output_name():
    assert io.default_output("a/b/model.onnx") == Path("a/b/model.opt.onnx")
    assert io.default_output("model") == Path("model.opt.onnx")


# -------------------------------------------------------------------------------------------- cli


def test_optimize_writes_default_output_and_report(model_path):
    result = run("optimize", model_path)
    assert result.exit_code == 0, result.output
    out = model_path.with_name("m.opt.onnx")
    assert out.is_file()
    assert "BatchNormalization" in result.output and "verify y: ok" in result.output
    assert count_ops(onnx.load(out), "BatchNormalization") == 0


def test_optimize_json_and_quiet(tmp_path, model_path):
    report = tmp_path / "r.json"
    result = run("optimize", model_path, "-o", tmp_path / "o.onnx", "-q", "--json", report)
    assert result.exit_code == 0 and result.output == ""
    data = json.loads(report.read_text())
    assert data["before"]["batchnorm"] == 1 and data["after"]["batchnorm"] == 0
    assert data["passes"]["fold_batchnorm"]["count"] == 1
    assert data["verification"]["ok"] is True


def test_optimize_keeps_external_data_when_input_had_it(tmp_path, model_path):
    model, _ = io.load(model_path)
    ext = tmp_path / "ext.onnx"
    io.save(model, ext, external_data=True)
    result = run("optimize", ext, "-o", tmp_path / "ext.opt.onnx")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ext.opt.onnx.data").is_file()


def test_in_place_requires_flag(model_path):
    before = digest(model_path)
    result = run("optimize", model_path, "-o", model_path)
    assert result.exit_code == 2 and "--in-place" in result.output
    assert digest(model_path) == before
    result = run("optimize", model_path, "-o", model_path, "--in-place")
    assert result.exit_code == 0
    assert count_ops(onnx.load(model_path), "BatchNormalization") == 0


def _bad_inputs(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    cases = {}
    cases["missing"] = (tmp_path / "nope.onnx", "no such file")
    (tmp_path / "dir.onnx").mkdir()
    cases["directory"] = (tmp_path / "dir.onnx", "is a directory")
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.onnx", "empty file")
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    cases["random bytes"] = (tmp_path / "random.onnx", "not an ONNX model")
    data = good.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "truncated.onnx", "not an ONNX model")
    (tmp_path / "tensor.onnx").write_bytes(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "t").SerializeToString())
    cases["protobuf, not a model"] = (tmp_path / "tensor.onnx", "not an ONNX model")
    future = onnx.load(good)
    future.ir_version = onnx.IR_VERSION + 5
    onnx.save(future, tmp_path / "future.onnx")
    cases["IR version"] = (tmp_path / "future.onnx", "unsupported IR version")
    broken = onnx.load(good)
    broken.graph.node[0].input[0] = "does_not_exist"
    onnx.save(broken, tmp_path / "broken.onnx")
    cases["checker"] = (tmp_path / "broken.onnx", "onnx.checker rejects")
    model = onnx.load(good)
    sub = tmp_path / "ext"
    sub.mkdir()
    io.save(model, sub / "missing.onnx", external_data=True)
    (sub / "missing.onnx.data").unlink()
    cases["missing data"] = (sub / "missing.onnx", "is missing")
    io.save(model, sub / "short.onnx", external_data=True)
    data_file = sub / "short.onnx.data"
    data_file.write_bytes(data_file.read_bytes()[:100])
    cases["truncated data"] = (sub / "short.onnx", "truncated")
    return cases


def test_bad_inputs_get_one_line_and_exit_2(tmp_path, model_path):
    for label, (path, message) in _bad_inputs(tmp_path, model_path).items():
        before = folder_state(path.parent) if path.parent.is_dir() else {}
        result = run("optimize", path)
        assert result.exit_code == 2, (label, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("onnxrep: error:"), (label, result.output)
        assert message in lines[0], (label, lines[0])
        assert "Traceback" not in result.output
        after = folder_state(path.parent) if path.parent.is_dir() else {}
        assert after == before, label  # input unchanged, nothing written beside it


def test_output_folder_missing(tmp_path, model_path):
    result = run("optimize", model_path, "-o", tmp_path / "no" / "out.onnx")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_unknown_pass_and_bad_shape_are_usage_errors(model_path):
    assert run("optimize", model_path, "--passes", "nope").exit_code == 2
    result = run("optimize", model_path, "--input-shape", "x=banana")
    assert result.exit_code == 2 and "--input-shape" in result.output


def _corrupting_fold(monkeypatch):
    from onnxrep.passes.batchnorm import conv as fold_batchnorm

    real = fold_batchnorm.scale_conv_weight
    monkeypatch.setattr(fold_batchnorm, "scale_conv_weight", lambda w, s, op, g: real(w, s, op, g) * 1.01)


def test_verification_failure_exits_1_and_writes_nothing(tmp_path, model_path, monkeypatch):
    _corrupting_fold(monkeypatch)
    out = tmp_path / "o.onnx"
    result = run("optimize", model_path, "-o", out)
    assert result.exit_code == 1
    assert "verification failed" in result.output and "nothing written" in result.output
    assert not out.exists()
    forced = run("optimize", model_path, "-o", out, "--force")
    assert forced.exit_code == 1 and out.exists()


def test_verify_command(tmp_path, model_path):
    out = tmp_path / "o.onnx"
    assert run("optimize", model_path, "-o", out, "-q").exit_code == 0
    ok = run("verify", model_path, out, "--samples", "2")
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = onnx.load(out)
    w = next(t for t in bad.graph.initializer if t.dims and len(t.dims) == 4)
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 0.05 * (abs(arr.flat[0]) + 1)
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(bad, tmp_path / "bad.onnx")
    result = run("verify", model_path, tmp_path / "bad.onnx")
    assert result.exit_code == 1 and "FAIL" in result.output


def test_console_script_and_module_entry_points(model_path):
    for cmd in ([sys.executable, "-m", "onnxrep", "--help"], [str(Path(sys.executable).parent / "onnxrep"), "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0 and "optimize" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "onnxrep", "optimize", str(model_path.with_name("nope.onnx"))],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_checker_names_the_node(tmp_path):
    model = conv_bn()
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, tmp_path / "x.onnx")
    result = run("optimize", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "conv" in result.output


def test_extra_graph_input_with_initializer_kept():
    model = conv_bn()
    w = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.input.append(helper.make_tensor_value_info("W", w.data_type, list(w.dims)))
    out = onnxrep.optimize(model, verify=False).model
    assert [i.name for i in out.graph.input] == ["x", "W"]


def test_json_to_stdout_is_only_json(tmp_path, model_path):
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--json", "-"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["after"]["batchnorm"] == 0


def test_an_empty_output_path_is_an_error(tmp_path, model_path):
    """`optimize tiny.onnx ""` silently wrote tiny.opt.onnx (issue 24)."""
    for args in ([str(model_path), ""], [str(model_path), "-o", ""]):
        result = run("optimize", *args)
        assert result.exit_code == 2 and "the output path is empty" in result.output, result.output
    assert not (model_path.parent / (model_path.stem + ".opt.onnx")).exists()


def test_the_atol_help_says_what_the_report_prints(model_path):
    """--help said 1e-6 (float32) / 1e-3 (float16) while every report printed atol 1e-30 (issue 24)."""
    assert "1e-30" in " ".join(run("optimize", "--help").output.split())
    result = run("optimize", str(model_path), "-o", str(model_path.parent / "o.onnx"))
    assert "atol 1e-30" in result.output, result.output
