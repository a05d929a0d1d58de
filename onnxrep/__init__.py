"""onnxrep: make YOLOv9 (and RepVGG-style) ONNX exports deployable.

    result = onnxrep.optimize("yolov9-c.onnx")
    result.model      # onnx.ModelProto, optimized
    result.report     # onnxrep.report.Report (JSON-serialisable via .to_dict())
    result.ok         # False when verification found a mismatch
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import onnx

from onnxrep import io as _io
from onnxrep.ir.graph import import_model
from onnxrep.export import from_graph
from onnxrep.io import OnnxrepError
from onnxrep.passes import DEFAULT_PIPELINE, Context, run_pipeline, select
from onnxrep.report import Report, model_stats
from onnxrep.verify import Verification, verify as _verify
from onnxrep.verify.inputs import make_inputs

__version__ = "0.1.0"
__all__ = ["optimize", "Result", "OnnxrepError", "DEFAULT_PIPELINE", "__version__"]


@dataclass
class Result:
    model: onnx.ModelProto
    report: Report
    verification: Verification | None
    source: _io.LoadInfo | None = None   # how the input was stored, when it came from a file
    allow_unverified: bool = False

    @property
    def verified(self) -> bool:
        """Verification ran and passed."""
        return self.verification is not None and self.verification.ran and self.verification.ok

    @property
    def status(self) -> str:
        """"verified", "failed", "unverified" (it could not run) or "not verified" (verify=False)."""
        if self.verification is None:
            return "not verified"
        return {"skipped": "unverified"}.get(self.verification.status, self.verification.status)

    @property
    def ok(self) -> bool:
        """Safe to write: verified, or verification not asked for, or it could not run and that was allowed."""
        return self.status in ("verified", "not verified") or (self.status == "unverified" and self.allow_unverified)


def _pipeline_notes(ctx: Context) -> list[str]:
    run = ctx.facts.get("pipeline", {})
    if run.get("converged", True):
        return []
    return [f"the passes were still changing the graph after {run['rounds']} rounds: the result is valid and "
            f"verified as usual, but a further run of onnxrep may optimize it more (please report this model)"]


def _as_tuple(value) -> tuple:
    """Output selections: a name, an index, or a sequence of them."""
    if value is None:
        return ()
    return (value,) if isinstance(value, (str, int)) else tuple(value)


def _to_float16(optimized: onnx.ModelProto, original: onnx.ModelProto, ctx: Context, feeds: list[dict],
                keep_io_types: bool, fp32_ops: tuple, fp32_nodes: tuple):
    """The final graph in float16 where it is safe (passes/float16.py), its ranges measured first on the
    verification inputs with the float32 model."""
    from onnxrep.passes.float16 import Float16Options, ToFloat16
    from onnxrep.verify.ranges import measure_ranges

    known = {n.name for n in optimized.graph.node}
    unknown = [n for n in fp32_nodes if n not in known]
    if unknown:
        raise OnnxrepError(f"--fp32-nodes: no node named {', '.join(map(repr, unknown))} in the optimized graph "
                           f"(`onnxrep inspect` lists them after optimizing; names are the optimized model's)")
    options = Float16Options(keep_io_types=keep_io_types, fp32_ops=fp32_ops, fp32_nodes=fp32_nodes,
                             ranges=measure_ranges(optimized, feeds))
    graph = import_model(optimized)
    result = ToFloat16(options).run(graph, ctx)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return from_graph(graph, original), result


def optimize(model_or_path, *, passes=None, verify: bool = True, samples: int = 2, seed: int = 0,
             input_shapes: dict | None = None, input_data: list[dict] | None = None,
             rtol: float | None = None, atol: float | None = None, noise_factor: float | None = None,
             allow_unverified: bool = False, aux: str = "auto",
             keep_outputs=(), drop_outputs=(), rename_outputs: bool = False, precision: str = "fp32",
             keep_io_types: bool = True, fp32_ops=(), fp32_nodes=(), min_agreement: float = 0.99,
             nms: str | None = None, conf: float = 0.25, iou: float = 0.45, max_det: int = 100,
             class_agnostic: bool = False, output_layout: str = "anchors-last", input_format: str = "float",
             bgr: bool = False, names: list[str] | None = None, metadata: bool = False,
             dynamic_batch: bool = False, static_batch: int | None = None,
             overwrite_input_shapes: dict | None = None, on_step=None) -> Result:
    """Optimize a model (ModelProto or path) and, unless verify=False, prove it equal in onnxruntime.

    passes: names of passes to run (default: the whole DEFAULT_PIPELINE), in pipeline order.
    allow_unverified: when onnxruntime cannot run the original, the result is still ok (status "unverified").
    precision: "fp32" (the default) or "fp16": after the passes, weights and activations become float16
    except where that would cost accuracy (passes/float16.py), with graph inputs and outputs kept float32
    unless keep_io_types=False; fp32_ops / fp32_nodes keep more in float32; verification then compares at
    float16's precision and requires min_agreement of the YOLO detections (verify/detections.py).
    Deployment adapters (onnxrep/deploy), applied to the verified result and each proven in turn:
    nms "ort" | "trt" with conf, iou, max_det, class_agnostic (outputs num_dets, det_boxes, det_scores,
    det_classes); output_layout "anchors-last" | "anchors-first" | "split"; input_format "float" |
    "uint8-nchw" | "uint8-nhwc" and bgr (preprocessing folded into the first Conv); names (class names)
    and metadata (write the metadata_props even without another adapter).
    Batch (onnxrep/deploy/batch.py): dynamic_batch makes a static batch symbolic after the passes (proven
    at batch 1, 2 and 5); static_batch N, or overwrite_input_shapes {input: dims}, fixes symbolic input dims
    before the passes, which then fold the shape arithmetic that computed them.
    on_step: optional callback(str) told about each step (the CLI's progress line).
    """
    if precision not in ("fp32", "fp16"):
        raise OnnxrepError(f"precision {precision!r}: choose fp32 or fp16")
    if not 0 <= min_agreement <= 1:
        raise OnnxrepError(f"min agreement {min_agreement}: must be between 0 and 1")
    from onnxrep.deploy import DeployOptions

    deploy = DeployOptions(nms=nms, conf=conf, iou=iou, max_det=max_det, class_agnostic=class_agnostic,
                           output_layout=output_layout, input_format=input_format, bgr=bgr,
                           names=None if names is None else list(names), metadata=metadata)
    deploy.validate()
    if dynamic_batch and (static_batch is not None or overwrite_input_shapes):
        raise OnnxrepError("--dynamic-batch and --static-batch / --overwrite-input-shape contradict each other")
    if static_batch is not None and static_batch < 1:
        raise OnnxrepError(f"--static-batch {static_batch}: must be at least 1")
    step = on_step or (lambda _msg: None)
    seconds = {}
    t0 = time.perf_counter()
    step("loading")
    original, info, label = _io.load_any(model_or_path)
    file_bytes = info.file_bytes if info else None
    seconds["load"] = time.perf_counter() - t0
    source = original
    if static_batch is not None or overwrite_input_shapes:
        from onnxrep.deploy.batch import fix_input_shapes, static_batch_shapes

        source = onnx.ModelProto()
        source.CopyFrom(original)
        fixed = dict(overwrite_input_shapes or {})
        if static_batch is not None:
            fixed.update({k: v for k, v in static_batch_shapes(source, static_batch).items() if k not in fixed})
        fix_input_shapes(source, fixed, "--overwrite-input-shape" if overwrite_input_shapes else "--static-batch")
        input_shapes = {**(input_shapes or {}), **fixed}

    try:
        pipeline = select(list(passes) if passes is not None else None)
    except ValueError as exc:
        raise OnnxrepError(str(exc)) from exc
    opset = next((o.version for o in original.opset_import if o.domain in ("", "ai.onnx")), 17)
    ctx = Context(opset=opset, aux=aux, keep_outputs=_as_tuple(keep_outputs), drop_outputs=_as_tuple(drop_outputs),
                  rename_outputs=rename_outputs)

    t0 = time.perf_counter()
    graph = import_model(source)
    results = run_pipeline(graph, ctx, pipeline, on_pass=lambda name: step(f"pass {name}"))
    optimized = from_graph(graph, source)
    if source is not original:
        from onnxrep.deploy.batch import refine_output_shapes

        refine_output_shapes(optimized)
    batch_info = None
    if dynamic_batch:
        from onnxrep.deploy.batch import make_dynamic_batch

        step("dynamic batch")
        optimized, batch_info = make_dynamic_batch(optimized)
    seconds["optimize"] = time.perf_counter() - t0
    if precision == "fp16":
        step("pass to_float16")
        t0 = time.perf_counter()
        optimized, results["to_float16"] = _to_float16(optimized, original, ctx, input_data or make_inputs(
            original, samples, seed, input_shapes), keep_io_types, _as_tuple(fp32_ops), _as_tuple(fp32_nodes))
        seconds["float16"] = time.perf_counter() - t0

    renamed = {}
    outputs = {}
    for res in results.values():
        renamed.update(res.info.get("renamed", {}))
        for key in ("kept", "dropped", "note", "removed"):
            if key in res.info:
                outputs[key] = res.info[key]
    if renamed:
        outputs["renamed"] = renamed
    outputs.setdefault("kept", [o.name for o in optimized.graph.output])

    verification = None
    if verify:
        step("verifying")
        t0 = time.perf_counter()
        verification = _verify(original, optimized, samples=samples, seed=seed, shapes=input_shapes,
                               feeds=input_data, rtol=rtol, atol=atol, noise_factor=noise_factor, renamed=renamed,
                               dropped=outputs.get("dropped", ()), strict_outputs=True, precision=precision,
                               detections={"min_agreement": min_agreement})
        seconds["verify"] = time.perf_counter() - t0
        if dynamic_batch and verification.ran:
            from onnxrep.deploy.batch import check_batches

            step("checking batches 1, 2, 5")
            verification.add_deploy([check_batches(optimized, input_data or make_inputs(original, 1, seed, input_shapes),
                                                   seed=seed, noise_factor=noise_factor)])

    deployed = None
    if deploy.active():
        from onnxrep.deploy import apply as deploy_apply, check as deploy_check

        step("deployment adapters")
        t0 = time.perf_counter()
        deployed = deploy_apply(optimized, deploy)
        if verification is not None and verification.ran:
            verification.add_deploy(deploy_check(deployed, input_data or make_inputs(original, samples, seed, input_shapes),
                                                 seed=seed, rtol=rtol, atol=atol, noise_factor=noise_factor))
        optimized = deployed.model
        outputs["kept"] = [o.name for o in optimized.graph.output]
        seconds["deploy"] = time.perf_counter() - t0

    report = Report(
        input=label,
        output=None,
        before=model_stats(original, file_bytes),
        after=model_stats(optimized, None),
        passes={name: {"count": r.count, "declined": list(r.notes), **({"float16": r.info["float16"]}
                                                                       if "float16" in r.info else {})}
                for name, r in results.items()},
        outputs=outputs,
        verification=verification.to_dict() if verification else None,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        notes=_pipeline_notes(ctx),
        deploy={**(deployed.info if deployed else {}), **({"batch": batch_info} if batch_info else {}),
                **({"input_shapes": input_shapes} if source is not original else {})},
    )
    return Result(model=optimized, report=report, verification=verification, source=info,
                  allow_unverified=allow_unverified)
