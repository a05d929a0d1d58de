"""`onnxrep inspect` and the output options of `onnxrep optimize`, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxrep.cli import main
from onnxrep.inspect import inspect
from tests.passes.test_prune_outputs import Toy, dual


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def dual_file(tmp_path):
    path = tmp_path / "dual.onnx"
    model = dual(own_trunk=True)
    onnx.helper.set_model_props(model, {"stride": "[8]", "names": "{0: 'a', 1: 'b', 2: 'c'}"})
    onnx.save(model, path)
    return path


# ------------------------------------------------------------------------------------------- inspect


def test_inspect_text(dual_file):
    before = dual_file.read_bytes()
    res = _cli("inspect", dual_file)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "inputs      images  float32  [1, 3, 16, 16]" in out
    assert "output0  float32  [1, 7, 64]" in out and "output1  float32  [1, 7, 64]" in out
    assert "opset ai.onnx 17" in out and "metadata    stride, names" in out
    assert "Conv 16" in out and "parameters  11,110" in out and "MACs" in out
    assert "auxiliary head: would drop output0; keep output1" in out
    assert "DualDDetect" in out and "removes 7,903 parameters" in out
    assert "prune_outputs" in out and "fold_batchnorm" in out
    assert dual_file.read_bytes() == before  # reads, never writes
    assert sorted(p.name for p in dual_file.parent.iterdir()) == ["dual.onnx"]


def test_inspect_json(dual_file):
    res = _cli("inspect", dual_file, "--json", "-")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)  # only JSON on stdout
    assert [o["name"] for o in data["outputs"]] == ["output0", "output1"]
    assert data["outputs"][0]["shape"] == [1, 7, 64] and data["inputs"][0]["dtype"] == "float32"
    assert data["opsets"] == {"": 17}
    assert data["stats"]["conv"] == 16 and data["stats"]["ops"]["Conv"] == 16
    assert data["aux"]["dropped"] == ["output0"] and data["aux"]["kept"] == ["output1"]
    assert data["aux"]["removed"]["conv"] == 8
    assert data["passes"]["prune_outputs"] == {"count": 1, "declined": []}
    assert data["metadata"]["stride"] == "[8]"


def test_inspect_json_file_and_text(dual_file, tmp_path):
    target = tmp_path / "report.json"
    res = _cli("inspect", dual_file, "--json", target)
    assert res.exit_code == 0 and "auxiliary head" in res.output
    assert json.loads(target.read_text())["aux"]["dropped"] == ["output0"]


def test_inspect_declines_are_listed(tmp_path):
    """Counts and reasons per pass: a BN fold that must be refused shows up with its reason."""
    t = Toy()
    c = t.const
    y = t.node("Conv", ["images", c(np.ones((4, 3, 1, 1), np.float32))], kernel_shape=[1, 1])
    bn = t.node("BatchNormalization", [y, c(np.ones(4, np.float32)), c(np.zeros(4, np.float32)),
                                       c(np.zeros(4, np.float32)), c(np.ones(4, np.float32))])
    path = tmp_path / "bn.onnx"
    onnx.save(t.model([t.node("Add", [bn, y])], names=["y"]), path)  # the Conv output has a 2nd reader
    res = _cli("inspect", path, "-v")
    assert res.exit_code == 0, res.output
    assert "fold_batchnorm  0 to rewrite, 1 declined" in res.output, res.output
    assert "declined " in res.output and "consumers" in res.output
    assert "auxiliary head: none to drop" in res.output and "1 output: no auxiliary head recognised" in res.output


def test_inspect_no_aux_on_unrelated_outputs():
    t = Toy()
    x = t.trunk()
    model = t.model([t.node("Relu", [x]), t.node("Sigmoid", [x])])
    result = inspect(model)
    assert result.aux["dropped"] == [] and "no auxiliary head recognised" in result.aux["note"]
    assert result.passes["prune_outputs"]["count"] == 0


def test_inspect_leaves_a_modelproto_alone():
    model = dual()
    before = model.SerializeToString()
    inspect(model, rename_outputs=True)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"", "empty file"),
                                              (b"not a model at all", "not an ONNX model")])
def test_inspect_bad_input_exit_2(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 2 and message in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_inspect_help():
    res = _cli("inspect", "--help")
    assert res.exit_code == 0 and "--json" in res.output and "--aux" in res.output


# ------------------------------------------------------------------------------ optimize output options


def _outputs(path):
    return [o.name for o in onnx.load(str(path)).graph.output]


def test_optimize_drops_aux_by_default(dual_file, tmp_path):
    out = tmp_path / "o.onnx"
    res = _cli("optimize", dual_file, "-o", out)
    assert res.exit_code == 0, res.output
    assert _outputs(out) == ["output1"]
    assert "outputs dropped: ['output0']" in res.output and "DualDDetect" in res.output
    assert "removed by pruning: 7,903 parameters" in res.output and "verify output1: ok" in res.output


def test_optimize_aux_keep(dual_file, tmp_path):
    out = tmp_path / "o.onnx"
    res = _cli("optimize", dual_file, "-o", out, "--aux", "keep")
    assert res.exit_code == 0 and _outputs(out) == ["output0", "output1"]
    assert "--aux keep" in res.output


@pytest.mark.parametrize("args, kept", [
    (["--keep-outputs", "output0"], ["output0"]),
    (["--keep-outputs", "0,1"], ["output0", "output1"]),
    (["--drop-outputs", "1"], ["output0"]),
    (["--drop-outputs", "output1", "--aux", "keep"], ["output0"]),
])
def test_optimize_explicit_outputs(dual_file, tmp_path, args, kept):
    out = tmp_path / "o.onnx"
    res = _cli("optimize", dual_file, "-o", out, *args)
    assert res.exit_code == 0, res.output
    assert _outputs(out) == kept


@pytest.mark.parametrize("args, message", [
    (["--drop-outputs", "nope"], "--drop-outputs: unknown output 'nope' (outputs: output0, output1)"),
    (["--keep-outputs", "7"], "--keep-outputs: no output 7 (the model has 2: output0, output1)"),
    (["--drop-outputs", "output0,output1"], "would drop every output (output0, output1)"),
    (["--aux", "maybe"], "Invalid value for '--aux'"),
])
def test_optimize_bad_output_options_exit_2(dual_file, tmp_path, args, message):
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(main, ["optimize", str(dual_file), "-o", str(out), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


def test_optimize_rename_outputs(tmp_path):
    path = tmp_path / "named.onnx"
    onnx.save(dual(names=["output0", "917"]), path)
    out = tmp_path / "o.onnx"
    res = _cli("optimize", path, "-o", out, "--rename-outputs", "--no-verify", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert _outputs(out) == ["output0"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["outputs"]["renamed"] == {"917": "output0"} and report["outputs"]["kept"] == ["output0"]
    assert "outputs renamed: {'917': 'output0'}" in res.output


def test_optimize_rename_outputs_verified(tmp_path):
    path = tmp_path / "named.onnx"
    onnx.save(dual(names=["output0", "917"]), path)
    res = CliRunner().invoke(main, ["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--rename-outputs"])
    assert res.exit_code == 0, res.output
    assert "verify 917 -> output0: ok" in res.output


def test_optimize_json_report_has_removed_figures(dual_file, tmp_path):
    res = _cli("optimize", dual_file, "-o", tmp_path / "o.onnx", "--json", "-", "-q")
    data = json.loads(res.output)
    assert data["outputs"]["dropped"] == ["output0"]
    assert data["outputs"]["removed"] == {"outputs": 1, "nodes": 25, "conv": 8, "parameters": 7903,
                                          "macs": data["outputs"]["removed"]["macs"]}
    assert data["outputs"]["removed"]["macs"] == data["before"]["macs"] - data["after"]["macs"]
