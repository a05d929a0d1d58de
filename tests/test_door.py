"""The door (onnxrep/door.py, run.check_structure / check_loads): whatever the options, nothing is written that
onnx.checker or onnxruntime rejects; exit 3 and one line naming the stage, or the pass, that broke it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner

import onnxrep
import onnxrep.passes
from onnxrep.cli import main
from onnxrep.options import RunOptions
from onnxrep.passes import PassResult
from onnxrep.run import STAGES, InvalidModelError, Stage, execute
from tests.graphs import conv_bn


class BreakIt:
    """A deliberately broken pass: the first Conv reads a tensor nothing computes."""

    name = "break_it"

    def run(self, graph: gs.Graph, ctx) -> PassResult:
        conv = next((n for n in graph.nodes if n.op == "Conv" and n.inputs[0].name != "nowhere"), None)
        if conv is None:
            return PassResult()
        conv.inputs[0] = gs.Variable("nowhere", dtype=np.float32, shape=conv.inputs[0].shape)
        return PassResult(count=1, changed=True)


@pytest.fixture
def broken_pipeline(monkeypatch):
    real = onnxrep.passes.select

    def select(names=None):
        return list(real(names)) + [BreakIt()]

    monkeypatch.setattr(onnxrep.passes, "select", select)


@pytest.mark.parametrize("flags", [["--no-verify"], ["--force"], ["--allow-unverified"], ["--force", "--no-verify"]])
def test_a_broken_pass_writes_nothing_and_is_named(tmp_path, broken_pipeline, flags):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(conv_bn(), src)
    before = src.read_bytes()
    result = CliRunner().invoke(main, ["optimize", str(src), "-o", str(out), *flags])
    assert result.exit_code == 3, result.output
    assert "pass break_it turned a valid model into an invalid one" in result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("onnxrep: error")]) == 1
    assert "Traceback" not in result.output
    assert not out.exists() and src.read_bytes() == before


def test_a_broken_stage_after_the_passes_is_named():
    """A stage that leaves a model onnxruntime can't load (an initializer whose bytes don't fit its shape)."""

    def corrupt(r):   # a stage makes a new model, as every stage of the run does
        m = onnx.ModelProto()
        m.CopyFrom(r.model)
        t = next(t for t in m.graph.initializer if t.dims)
        t.raw_data = t.raw_data[:-4]
        r.model = m

    stages = list(STAGES)
    stages.insert([s.name for s in stages].index("passes") + 1, Stage("corrupt", "a test's broken stage", corrupt))
    with pytest.raises(InvalidModelError, match="stage corrupt turned a valid model into an invalid one"):
        execute(conv_bn(), RunOptions.from_kwargs(verify=False), stages=stages)


def test_the_healthy_run_passes_the_door():
    result = onnxrep.optimize(conv_bn(), verify=False)
    onnx.checker.check_model(result.model, full_check=True)


def test_a_model_the_checker_rejects_already_is_not_blamed_on_us():
    """An IR-3 style model whose graph output has no shape: the checker rejects the original too, so the
    door asks no more of the result than of it."""
    m = conv_bn()
    m.ir_version = 3
    del m.graph.output[0].type.tensor_type.shape.dim[:]
    m.graph.output[0].type.tensor_type.ClearField("shape")
    result = onnxrep.optimize(m, verify=False)
    assert result.model.graph.node


def test_usage_errors_come_before_any_model_run(monkeypatch):
    """--nms on a model with two heads (--aux keep), with float16 (whose ranges are measured by running the
    model): the error needs the graph, not onnxruntime."""
    import onnxruntime

    from onnxrep.io import OnnxrepError

    models = pytest.importorskip("models")

    def no_session(*a, **k):
        raise AssertionError("a model ran before the usage error")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    for extra in ({}, {"precision": "fp16"}):
        with pytest.raises(OnnxrepError, match="2 detection outputs"):
            onnxrep.optimize(models.build("yolov9-t", "bn", imgsz=160), aux="keep", nms="ort", **extra)
    with pytest.raises(OnnxrepError, match="--fp32-nodes: no node named 'nothing'"):
        onnxrep.optimize(models.build("yolov9-t", "bn", imgsz=160), precision="fp16", fp32_nodes=["nothing"])


@pytest.mark.parametrize("external", [False, True])
def test_the_cli_checks_the_file_it_writes(tmp_path, monkeypatch, external):
    """The CLI's --no-verify run loads the very file it wrote in onnxruntime before the file takes the
    output's name (with external data, whose file name the model records, the model before writing): a
    stage that breaks loading writes nothing, leaves no temporary file, and is named."""
    import onnxrep.run

    calls = []
    real_load_error = onnxrep.door.load_error

    def load_error(model):
        calls.append(model if isinstance(model, onnx.ModelProto) else str(model))
        return real_load_error(model)

    monkeypatch.setattr(onnxrep.door, "load_error", load_error)

    def corrupt(r):
        m = onnx.ModelProto()
        m.CopyFrom(r.model)
        # an op no runtime knows, that the checker (no schema for its domain) lets through: ORT refuses the file
        m.graph.node.append(onnx.helper.make_node("Nowhere", [m.graph.input[0].name], ["unused"], domain="com.test"))
        m.opset_import.append(onnx.helper.make_opsetid("com.test", 1))
        r.model = m

    real = onnxrep.run.execute
    stages = list(STAGES)
    stages.insert([s.name for s in stages].index("passes") + 1, Stage("corrupt", "a test's broken stage", corrupt))
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(conv_bn(), src)
    flags = ["--external-data"] if external else []
    healthy = CliRunner().invoke(main, ["optimize", str(src), "-o", str(out), "--no-verify", *flags])
    assert healthy.exit_code == 0, healthy.output
    files = [c for c in calls if isinstance(c, str)]
    if external:
        assert not files and len(calls) == 1, calls
    else:   # the temporary file, before it was renamed
        assert len(calls) == 1 and len(files) == 1 and files[0] != str(out), calls
        assert files[0].startswith(str(tmp_path / ".out.onnx.")), files
    out.unlink()
    for f in tmp_path.glob("out.onnx*"):
        f.unlink()
    monkeypatch.setattr(onnxrep.run, "execute", lambda *a, **k: real(*a, stages=stages, **k))
    result = CliRunner().invoke(main, ["optimize", str(src), "-o", str(out), "--no-verify", *flags])
    assert result.exit_code == 3, result.output
    assert "stage corrupt turned a valid model into an invalid one (onnxruntime:" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]
