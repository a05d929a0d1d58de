"""The pipeline driver: a fixed point, and an honest word when it doesn't reach one."""

import onnx_graphsurgeon as gs

import onnxrep
from onnxrep.run import pipeline_notes
from onnxrep.passes import Context, PassResult, run_pipeline
from tests.graphs import conv_bn


class Restless:
    """A pass that always says it changed something."""

    name = "restless"

    def run(self, graph, ctx):
        res = PassResult()
        res.applied()
        return res


def test_a_pipeline_that_never_settles_is_reported(monkeypatch):
    ctx = Context()
    run_pipeline(gs.import_onnx(conv_bn()), ctx, (Restless(),))
    assert ctx.facts["pipeline"] == {"rounds": 10, "converged": False}
    assert "still changing" in pipeline_notes(ctx)[0]


def test_the_default_pipeline_settles():
    result = onnxrep.optimize(conv_bn(), verify=False)
    assert result.report.notes == [] and not any(ln.startswith("note:") for ln in result.report.text().splitlines())
    ctx = Context()
    run_pipeline(gs.import_onnx(conv_bn()), ctx)
    assert ctx.facts["pipeline"]["converged"] and ctx.facts["pipeline"]["rounds"] == 2
