"""The door: nothing leaves onnxrep that onnx.checker or onnxruntime rejects, and a failure names its stage.

A run keeps the model after each of its stages (run.Run.history). When the final model fails a check, the
first model in that history that fails it names the stage; when that stage is the passes, the pipeline is
run again from the source, the graph checked after each pass, so the message names the pass.
"""

from __future__ import annotations

import onnx

from onnxrep.verify.runtime import short


def checker_error(model: onnx.ModelProto, full: bool = True) -> str | None:
    """onnx.checker's complaint about the model's structure (weights as typed inputs: no copy, no 2 GB
    limit), or None."""
    from onnxrep.io import structure_view

    try:
        onnx.checker.check_model(structure_view(model), full_check=full)
    except Exception as exc:  # noqa: BLE001 -- the checker's own errors and shape inference's
        return f"onnx.checker: {short(exc)}"
    return None


def load_error(model) -> str | None:
    """onnxruntime's complaint when it cannot make a session of the model (a ModelProto, or the file written:
    its very bytes, no copy made to load it), or None."""
    from onnxrep.verify.runtime import session

    try:
        session(model, whole=True)   # every node: a dead one that onnxruntime can't load fails the file too
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime: {short(exc)}"
    return None


def _pass_culprit(r, error) -> str | None:
    """Re-run the passes from the source, checking the graph after each: the first pass that broke it."""
    from onnxrep.export import from_graph
    from onnxrep.ir.graph import import_model
    from onnxrep.passes import Context, run_pipeline

    graph = import_model(r.source)
    ctx = Context(opset=r.ctx.opset, aux=r.ctx.aux, keep_outputs=r.ctx.keep_outputs,
                  drop_outputs=r.ctx.drop_outputs, rename_outputs=r.ctx.rename_outputs)
    found: list = []
    last = [None]

    def before_pass(name: str) -> None:   # the graph as the previous pass left it
        if not found and last[0] is not None:
            why = error(from_graph(graph, r.source))
            if why:
                found.append((last[0], why))
        last[0] = name

    run_pipeline(graph, ctx, r.pipeline, on_pass=before_pass)
    before_pass("")
    return f"pass {found[0][0]} turned a valid model into an invalid one ({found[0][1]})" if found else None


def culprit(r, error) -> str:
    """One line: which stage (and pass) first produced a model that `error` (model -> message | None) rejects."""
    for stage, model in r.history:
        why = error(model)
        if why is None:
            continue
        if stage == "passes":
            return _pass_culprit(r, error) or f"the passes turned a valid model into an invalid one ({why})"
        return f"stage {stage} turned a valid model into an invalid one ({why})"
    final = r.deployed.model if r.deployed else r.model
    return f"the result is invalid ({error(final)})"
