"""One run of `onnxrep optimize`, as data: a declared sequence of stages over one state.

    result = execute("yolov9-c.onnx", RunOptions.from_kwargs(nms="ort"))

STAGES is the whole run, in order, each entry with the reason for its place. The model-changing stages come
first and are cheap (milliseconds to a second): every usage error that needs a model but no model run (no
detection head for --nms, two heads, a --fp32-nodes name that does not exist) surfaces before the first
onnxruntime session. The proofs follow, each over the stage(s) it proves, and they share what they compute:
the original runs once (cut to the outputs that are compared, its noisy twin on one sample), the float
model's outputs from the verification are what the batch check and the adapters' checks compare against,
so no model runs twice on the same input. The door comes last: nothing leaves a run that onnx.checker or
onnxruntime rejects, whatever the options.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from onnxrep import io as _io
from onnxrep.io import OnnxrepError
from onnxrep.options import RunOptions
from onnxrep.report import Report, model_stats
from onnxrep.verify import Verification


class UnverifiedReferenceError(OnnxrepError):
    """--precision int8 on a model onnxruntime could not verify: nothing to quantize against."""

    exit_code = 4


class FloatProofFailedError(OnnxrepError):
    """--precision int8 whose float model failed verification."""

    exit_code = 1


class InvalidModelError(OnnxrepError):
    """A stage turned a valid model into one that onnx.checker or onnxruntime rejects: a bug of ours."""

    exit_code = 3


@dataclass
class Run:
    """The state the stages pass along."""

    options: RunOptions
    step: Callable[[str], None]
    original: onnx.ModelProto | None = None
    info: _io.LoadInfo | None = None
    label: str = ""
    source: onnx.ModelProto | None = None        # the original, its input shapes fixed when asked
    input_shapes: dict | None = None
    model: onnx.ModelProto | None = None         # the current model (float model after the passes...)
    ctx: object = None
    pipeline: list = field(default_factory=list)
    results: dict = field(default_factory=dict)  # pass name -> PassResult
    outputs: dict = field(default_factory=dict)  # kept / dropped / renamed / note / removed
    batch_info: dict | None = None
    canonical: onnx.ModelProto | None = None     # the original's weight-less view after canonicalize (report)
    deployed: object = None                      # deploy.Deployed
    history: list = field(default_factory=list)  # (stage, model after it): where the door looks for a culprit
    verification: Verification | None = None
    feeds: list | None = None                    # the verification inputs, made once
    int8_data: object = None                     # quantize.Int8Data: the calibration/evaluation images
    int8: object = None                          # quantize.Int8Result
    loaded: set = field(default_factory=set)     # ids of models an onnxruntime session was made of
    seconds: dict = field(default_factory=dict)
    report: Report | None = None
    defer_door: bool = False                     # the caller writes the result: onnxruntime loads the file written
    door: Callable | None = None                 # then: the check it calls on that file (check_loads)

    def verification_feeds(self) -> list[dict]:
        if self.feeds is None:
            from onnxrep.verify.inputs import make_inputs

            v = self.options.verify
            self.feeds = v.input_data or make_inputs(self.original, v.samples, v.seed, self.input_shapes)
        return self.feeds


@dataclass(frozen=True)
class Stage:
    name: str
    why: str                                     # the reason for its place in the sequence
    run: Callable[[Run], None]
    when: Callable[[Run], bool] = lambda r: True


def _timed(key: str):
    def deco(fn):
        def wrapper(r: Run, *args):
            t0 = time.perf_counter()
            fn(r, *args)
            r.seconds[key] = r.seconds.get(key, 0.0) + time.perf_counter() - t0
        wrapper.__doc__ = fn.__doc__
        return wrapper
    return deco


# ----------------------------------------------------------------------------------------- the changes


@_timed("load")
def load(r: Run, model_or_path=None) -> None:
    """Parse and check the input (io.py): a clear error, never a traceback, for a damaged file."""
    r.step("loading")
    r.original, r.info, r.label = _io.load_any(model_or_path)
    r.source = r.original
    r.input_shapes = r.options.verify.input_shapes


@_timed("optimize")
def fix_shapes(r: Run) -> None:
    """--static-batch / --overwrite-input-shape written into a copy of the model."""
    from onnxrep.deploy.batch import fix_input_shapes, static_batch_shapes

    b = r.options.batch
    r.source = onnx.ModelProto()
    r.source.CopyFrom(r.original)
    fixed = dict(b.overwrite_input_shapes or {})
    if b.static is not None:
        fixed.update({k: v for k, v in static_batch_shapes(r.source, b.static).items() if k not in fixed})
    fix_input_shapes(r.source, fixed, "--overwrite-input-shape" if b.overwrite_input_shapes else "--static-batch")
    r.input_shapes = {**(r.input_shapes or {}), **fixed}


@_timed("optimize")
def run_passes(r: Run) -> None:
    """DEFAULT_PIPELINE (or the --passes subset) to a fixed point."""
    from onnxrep.export import from_graph
    from onnxrep.ir.graph import import_model
    from onnxrep.passes import Context, run_pipeline, select

    o = r.options.outputs
    r.pipeline = select(list(r.options.passes) if r.options.passes is not None else None)
    opset = next((x.version for x in r.original.opset_import if x.domain in ("", "ai.onnx")), 17)
    r.ctx = Context(opset=opset, aux=o.aux, keep_outputs=o.keep, drop_outputs=o.drop, rename_outputs=o.rename)
    graph = import_model(r.source)

    seen = False

    def after(name, g):   # canonicalize is first when selected: its first result is the original's canonical form
        nonlocal seen
        if name != "canonicalize" or seen:
            return
        seen = True
        if r.source is r.original:
            from onnxrep.ir.shapes import weightless_view

            try:
                r.canonical = weightless_view(g)   # the report's MACs need not canonicalize the original again
            except Exception:  # noqa: BLE001 -- the report makes its own then
                pass

    r.results = run_pipeline(graph, r.ctx, r.pipeline, on_pass=lambda name: r.step(f"pass {name}"), after_pass=after)
    r.model = from_graph(graph, r.source)
    del graph   # its arrays are the optimized weights a second time
    if r.source is not r.original:
        from onnxrep.deploy.batch import refine_output_shapes

        refine_output_shapes(r.model)
    renamed = {}
    for res in r.results.values():
        renamed.update(res.info.get("renamed", {}))
        for key in ("kept", "dropped", "note", "removed"):
            if key in res.info:
                r.outputs[key] = res.info[key]
    if renamed:
        r.outputs["renamed"] = renamed
    r.outputs.setdefault("kept", [x.name for x in r.model.graph.output])


@_timed("optimize")
def dynamic_batch(r: Run) -> None:
    """--dynamic-batch (deploy/batch.py)."""
    from onnxrep.deploy.batch import make_dynamic_batch

    r.step("dynamic batch")
    r.model, r.batch_info = make_dynamic_batch(r.model)


def find_head(r: Run) -> None:
    """--nms / --output-layout need one detection head: looked up in the graph now (deploy/head.py), so that a
    model with none or two fails before anything runs (float16 measures its ranges by running the model)."""
    from onnxrep.deploy.head import the_head

    d = r.options.deploy
    the_head(r.model, "--nms" if d.nms else "--output-layout")


@_timed("float16")
def to_float16(r: Run) -> None:
    """--precision fp16 (passes/float16.py), its activation ranges measured first with the float32 model."""
    from onnxrep.export import from_graph
    from onnxrep.ir.graph import import_model
    from onnxrep.passes.float16 import Float16Options, ToFloat16
    from onnxrep.verify.ranges import measure_ranges

    p = r.options.precision
    r.step("pass to_float16")
    _check_node_names(r.model, p.fp32_nodes, "--fp32-nodes")
    # the smallest sample's ranges (batch 1 where the batch is symbolic): the float16 result is verified on
    # every sample, so an overflow that only another sample reaches fails the proof instead of passing unseen
    feeds = r.verification_feeds()
    smallest = min(feeds, key=lambda f: sum(np.size(v) for v in f.values()))
    ranges, why = measure_ranges(r.model, [smallest])
    options = Float16Options(keep_io_types=p.keep_io_types, fp32_ops=p.fp32_ops, fp32_nodes=p.fp32_nodes,
                             ranges=ranges)
    graph = import_model(r.model)
    result = ToFloat16(options).run(graph, r.ctx)
    if why:
        result.info.setdefault("float16", {})["ranges_not_measured"] = why
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    r.model = from_graph(graph, r.original)
    r.results["to_float16"] = result


def _check_node_names(model: onnx.ModelProto, names, option: str) -> None:
    """A node named by an option (--fp32-nodes, --int8-exclude) must exist in the optimized graph."""
    known = {n.name for n in model.graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise OnnxrepError(f"{option}: no node named {', '.join(map(repr, unknown))} in the optimized graph "
                           f"(`onnxrep inspect` lists them after optimizing; names are the optimized model's)")


@_timed("int8")
def int8_images(r: Run) -> None:
    """--precision int8: --int8-exclude names and the calibration/evaluation images read now, before any model
    runs (a bad folder or a missing label is a usage error that costs no run)."""
    from onnxrep.quantize import load_data

    r.step("reading the calibration images")
    _check_node_names(r.model, r.options.int8.exclude, "--int8-exclude")
    r.int8_data = load_data(r.model, r.options.int8)


@_timed("int8")
def to_int8(r: Run) -> None:
    """--precision int8 (quantize/): the verified float model quantized, proven against it on held-out images."""
    from onnxrep.door import checker_error
    from onnxrep.quantize import to_int8 as quantize

    if not _verified(r):   # an unproven float model is no reference: never write it in the int8 model's place
        raise UnverifiedReferenceError(f"--precision int8: the float model could not be verified "
                                       f"({r.verification.skipped_reason}); the int8 proof needs it as its reference")
    if not r.verification.ok:   # even with --force: a float model must not be written as the int8 one
        failed = next((line for line in r.verification.lines() if "FAIL" in line), "see the report")
        raise FloatProofFailedError(f"--precision int8: the float model failed its own proof, nothing quantized, "
                                    f"nothing written ({failed})")
    final = r.deployed.model if r.deployed else r.model   # the metadata / dynamic batch already applied
    result = quantize(final, r.options.int8, r.int8_data, on_step=r.step)
    problem = checker_error(result.model, full=True)
    if problem is not None and checker_error(final, full=True) is None:
        raise InvalidModelError(f"the int8 model fails onnx.checker: {problem}")
    r.int8 = result
    r.model = result.model
    if r.deployed is not None:
        r.deployed.model = result.model
    r.loaded.add(id(r.model))   # the proof ran it in onnxruntime
    r.verification.add_deploy([{"check": "int8", "ok": result.ok, "line": result.line()}])


@_timed("deploy")
def adapters(r: Run) -> None:
    """NMS, output layout, input format, metadata (deploy/): built now, proven after the verification."""
    from onnxrep.deploy import apply

    r.step("deployment adapters")
    r.deployed = apply(r.model, r.options.deploy)


# ------------------------------------------------------------------------------------------ the proofs


def check_structure(r: Run) -> None:
    """onnx.checker (full check: strict shape inference) on every model the run made, at the level the
    original itself passes; a failure names the stage, and for the passes the pass, that broke it."""
    from onnxrep.door import checker_error, culprit

    final = r.deployed.model if r.deployed else r.model
    if checker_error(final, full=True) is None:
        return   # the common case: the original's level need not be asked
    full = checker_error(r.original, full=True) is None
    if not full and checker_error(r.original, full=False) is not None:
        return   # the checker rejects the original itself: nothing of ours to prove with it
    if checker_error(final, full) is None:
        return
    raise InvalidModelError(culprit(r, lambda m: checker_error(m, full)))


@_timed("verify")
def verify_float_model(r: Run) -> None:
    """The float model (passes, batch, float16) against the original, in onnxruntime (verify/)."""
    from onnxrep.verify import verify

    v, p = r.options.verify, r.options.precision
    r.step("verifying")
    d, run_as = r.deployed, None
    if d is not None and d.head is not None and d.stage_in is None and d.split is None and d.base is r.model:
        # an NMS or layout adapter over the model, fed the same inputs: the final model itself runs for the
        # proof (its head tensor compared with the original), its adapter's outputs computed in the same run
        from onnxrep.deploy.checks import whole_run_outputs

        source = r.model.graph.output[d.head.index].name   # the layout adapter renames the head's tensor
        run_as = (d.model, whole_run_outputs(d.model, d), {source: d.head.output} if source != d.head.output else {})
    r.verification = verify(r.original, r.model, feeds=r.verification_feeds(), rtol=v.rtol, atol=v.atol,
                            noise_factor=v.noise_factor, renamed=r.outputs.get("renamed", {}),
                            dropped=r.outputs.get("dropped", ()), strict_outputs=True,
                            precision="fp16" if p.precision == "fp16" else "fp32",
                            detections={"min_agreement": p.agreement}, stack=_stack_plan(r), run_as=run_as)
    if run_as is None and r.verification.values and _whole(r.model):   # (the final model, when it ran here:
        r.loaded.add(id(r.model))                                        # check_adapters records it)


def _whole(model: onnx.ModelProto) -> bool:
    """Every node of the model feeds an output: a run of its outputs loaded all of it in onnxruntime."""
    from onnxrep.verify.runtime import Cut

    return all(Cut(model).keep)


def _stack_plan(r: Run):
    """--dynamic-batch: the verification itself proves the batch, feeding sample 0 alone and samples 1, 0
    stacked (batch 1, then 2 with the items swapped: one more image than the plain verification runs).
    None (the separate batch check) with one sample, or samples that differ in an input without the batch."""
    from onnxrep.deploy.batch import BATCH

    if not r.options.batch.dynamic:
        return None
    feeds = r.verification_feeds()
    batched = {vi.name for vi in r.model.graph.input if vi.type.tensor_type.shape.dim
               and vi.type.tensor_type.shape.dim[0].dim_param == BATCH}
    same = all(np.array_equal(f[k], feeds[0][k]) for f in feeds for k in f if k not in batched)
    return ([[0], [1, 0]], batched) if len(feeds) >= 2 and batched and same else None


def check_batches(r: Run) -> None:
    """The dynamic batch: the verification's samples stacked in one batch, each item equal to its own run."""
    from onnxrep.deploy.batch import check_batches as check

    r.step("checking the dynamic batch")
    r.verification.add_deploy([check(r.model, r.verification_feeds(), r.verification,
                                     noise_factor=r.options.verify.noise_factor)])


@_timed("deploy")
def check_adapters(r: Run) -> None:
    """Each adapter against the verified model, on the verification's inputs and outputs (deploy/checks.py)."""
    from onnxrep.deploy import check

    v = r.options.verify
    r.step("checking the deployment adapters")
    checks = check(r.deployed, r.verification_feeds(), seed=v.seed, rtol=v.rtol, atol=v.atol,
                   noise_factor=v.noise_factor, values=r.verification.values, final=r.verification.ran_as)
    r.verification.add_deploy(checks)
    if checks and _whole(r.deployed.model):   # they ran the final model (metadata alone runs nothing)
        r.loaded.add(id(r.deployed.model))


def check_loads(r: Run) -> None:
    """onnxruntime loads what will be written (where it loads the original): already proven when a check
    ran it, else a session is made now (--no-verify), or of the file itself when the caller writes it
    (defer_door: the CLI's io.save calls r.door on the written file before it takes the output's name)."""
    final = r.deployed.model if r.deployed else r.model
    if id(final) in r.loaded:
        return
    if r.defer_door:
        r.door = lambda path=None: _door(r, final if path is None else path)
        return
    _door(r, final)


def _door(r: Run, written) -> None:
    """InvalidModelError naming the stage that broke it, unless onnxruntime loads `written` (the final model,
    or the file it was written to)."""
    from onnxrep.door import culprit, load_error

    if load_error(written) is None:
        return
    if load_error(r.original) is not None:
        return   # onnxruntime can't load the original either: not ours to prove
    raise InvalidModelError(culprit(r, load_error))


def report(r: Run) -> None:
    """The before/after figures and everything the stages found."""
    if r.deployed is not None:
        r.model = r.deployed.model
        r.outputs["kept"] = [o.name for o in r.model.graph.output]
    d = r.deployed
    r.report = Report(
        input=r.label,
        output=None,
        before=model_stats(r.original, r.info.file_bytes if r.info else None, canonical=r.canonical),
        after=model_stats(r.model, None),
        passes={name: {"count": x.count, "declined": list(x.notes),
                       **({"float16": x.info["float16"]} if "float16" in x.info else {})}
                for name, x in r.results.items()},
        outputs=r.outputs,
        verification=r.verification.to_dict() if r.verification else None,
        seconds={k: round(v, 3) for k, v in r.seconds.items()},
        notes=pipeline_notes(r.ctx),
        int8=_int8_report(r.int8),
        deploy={**(d.info if d else {}), **({"batch": r.batch_info} if r.batch_info else {}),
                **({"input_shapes": r.input_shapes} if r.source is not r.original else {})},
    )


def _int8_report(result) -> dict:
    return {"ok": result.ok, **result.info} if result is not None else {}


def pipeline_notes(ctx) -> list[str]:
    """What the report says about the passes as a whole: that they did not settle, when they did not."""
    run = ctx.facts.get("pipeline", {})
    if run.get("converged", True):
        return []
    return [f"the passes were still changing the graph after {run['rounds']} rounds: the result is valid and "
            f"verified as usual, but a further run of onnxrep may optimize it more (please report this model)"]


def _verified(r: Run) -> bool:
    return r.verification is not None and r.verification.ran


STAGES = (
    Stage("fix_shapes", "before the passes, which then fold the shape arithmetic the fixed dims computed",
          fix_shapes, lambda r: r.options.batch.fixes_shapes),
    Stage("passes", "the rewrites themselves", run_passes),
    Stage("dynamic_batch", "after the passes, which would fold a symbolic batch back into constants",
          dynamic_batch, lambda r: r.options.batch.dynamic),
    Stage("find_head", "before float16, the first stage that runs the model: a usage error costs no run",
          find_head, lambda r: bool(r.options.deploy.nms) or r.options.deploy.output_layout != "anchors-last"),
    Stage("int8_images", "the calibration images read before any model runs: a bad folder costs no run",
          int8_images, lambda r: r.options.precision.precision == "int8"),
    Stage("float16", "the last change of the model's own graph: its ranges are measured on the final float32 "
                     "graph", to_float16, lambda r: r.options.precision.precision == "fp16"),
    Stage("adapters", "around the final graph, and before any proof: a missing head is a usage error that must "
                      "cost no model run; --dynamic-batch alone writes the metadata too, as every adapter does",
          adapters, lambda r: r.options.deploy.active() or r.options.batch.dynamic),
    Stage("check_structure", "the cheapest proof first: the checker needs no model run", check_structure),
    Stage("verify", "the float model against the original, the original run once for all the proofs",
          verify_float_model, lambda r: r.options.verify.enabled),
    Stage("check_batches", "reuses the verification's inputs and outputs (when the verification could not "
                           "stack its samples itself)", check_batches,
          lambda r: r.options.batch.dynamic and _verified(r) and not any(c["check"] == "batch" for c in r.verification.deploy)),
    Stage("check_adapters", "reuses the verification's inputs and outputs", check_adapters,
          lambda r: r.deployed is not None and _verified(r)),
    Stage("int8", "after every float proof (the float model, batch, adapters: its reference is the proven float "
                  "model); runs its own proof", to_int8, lambda r: r.options.precision.precision == "int8"),
    Stage("check_loads", "the door: onnxruntime loads what will be written, whatever the options", check_loads),
    Stage("report", "last: it describes what was written", report),
)


def execute(model_or_path, options: RunOptions, on_step=None, stages=STAGES, defer_door: bool = False):
    """Load the model and run the stages (see the module docstring); returns onnxrep.Result. defer_door: the
    caller writes the result with io.save(..., check=result.door), and onnxruntime's load check of a model no
    proof ran is made on the file written instead of a copy of its own."""
    from onnxrep import Result

    r = Run(options=options, step=on_step or (lambda _msg: None), defer_door=defer_door)
    load(r, model_or_path)
    for stage in stages:
        if stage.when(r):
            stage.run(r)
            current = r.model if r.model is not None else r.source   # fix_shapes changes the source
            if current is not r.original and (not r.history or r.history[-1][1] is not current):
                r.history.append((stage.name, current))
            if r.deployed is not None and r.history[-1][1] is not r.deployed.model:
                r.history.append((stage.name, r.deployed.model))
    return Result(model=r.model, report=r.report, verification=r.verification, source=r.info,
                  allow_unverified=options.verify.allow_unverified, door=r.door)
