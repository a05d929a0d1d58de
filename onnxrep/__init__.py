"""onnxrep: make YOLOv9 (and RepVGG-style) ONNX exports deployable.

    result = onnxrep.optimize("yolov9-c.onnx")
    result.model      # onnx.ModelProto, optimized
    result.report     # onnxrep.report.Report (JSON-serialisable via .to_dict())
    result.ok         # False when verification found a mismatch
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

from onnxrep import io as _io
from onnxrep.io import OnnxrepError
from onnxrep.passes import DEFAULT_PIPELINE
from onnxrep.report import Report
from onnxrep.verify import Verification

__version__ = "0.1.0"
__all__ = ["optimize", "Result", "OnnxrepError", "DEFAULT_PIPELINE", "__version__"]


@dataclass
class Result:
    model: onnx.ModelProto
    report: Report
    verification: Verification | None
    source: _io.LoadInfo | None = None   # how the input was stored, when it came from a file
    allow_unverified: bool = False
    door: Callable | None = None   # execute(defer_door=True): onnxruntime's load check, for io.save(check=...)

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


def optimize(model_or_path, *, passes=None, on_step=None, **options) -> Result:
    """Optimize a model (ModelProto or path) and, unless verify=False, prove it equal in onnxruntime.

    The keyword options build the groups of onnxrep.options (each validated before the model is loaded),
    and onnxrep.run.STAGES runs them:
    passes: names of passes to run (default: the whole DEFAULT_PIPELINE), in pipeline order.
    outputs: aux "auto" | "keep", keep_outputs, drop_outputs (names or indices), rename_outputs.
    verification: verify (default True), samples (2), seed, input_shapes {input: dims}, input_data (feeds),
    rtol, atol, noise_factor; allow_unverified: when onnxruntime cannot run the original, the result is
    still ok (status "unverified").
    precision: "fp32" (the default) or "fp16": after the passes, weights and activations become float16
    except where that would cost accuracy (passes/float16.py), with graph inputs and outputs kept float32
    unless keep_io_types=False; fp32_ops / fp32_nodes keep more in float32; verification then compares at
    float16's precision and requires min_agreement of the YOLO detections (verify/detections.py).
    "int8" (onnxrep/quantize): after every float proof, Q/DQ INT8 calibrated on calib (an image folder or
    .npz; calib_size images, the last 16 held out), int8_target "trt" | "ort" | "openvino", calib_method
    (default: the best of minmax and two percentiles on the held-out images), int8_exclude (node names),
    int8_budget (layers that may go back to float), eval (labelled images: mAP by pycocotools) with
    max_map_drop; the result's report.int8 holds the proof, and result.ok is False when it missed its target.
    Deployment adapters (onnxrep/deploy), applied to the float model and each proven in turn:
    nms "ort" | "trt" with conf, iou, max_det, class_agnostic, multi_label (outputs num_dets, det_boxes, det_scores,
    det_classes); output_layout "anchors-last" | "anchors-first" | "split"; input_format "float" |
    "uint8-nchw" | "uint8-nhwc" and bgr (preprocessing folded into the first Conv); names (class names)
    and metadata (write the metadata_props even without another adapter).
    Batch (onnxrep/deploy/batch.py): dynamic_batch makes a static batch symbolic after the passes (proven
    on the verification's samples stacked in one batch); static_batch N, or overwrite_input_shapes
    {input: dims}, fixes symbolic input dims before the passes, which then fold the shape arithmetic.
    on_step: optional callback(str) told about each step (the CLI's progress line).
    """
    from onnxrep.options import RunOptions
    from onnxrep.run import execute

    return execute(model_or_path, RunOptions.from_kwargs(passes=passes, **options), on_step)
