"""The options of the `onnxrep` commands, declared once (click decorators and their help texts): the CLI's
groups of flags, as onnxrep.options groups the run's settings."""

from __future__ import annotations

import click

from onnxrep.quantize.int8 import METHODS


def _split_list(value: str | None) -> tuple:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


verify_options = [
    click.option("--samples", type=click.IntRange(min=1), default=2, show_default=True,
                 help="Random input samples to compare on (a symbolic batch is fed as 2, then 1)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs."),
    click.option("--noise-factor", type=click.FloatRange(min=0), default=None,
                 help="How many times the original's own measured float rounding noise an output channel may "
                      "move (default 20)."),
    click.option("--rtol", type=float, default=None, help="Extra tolerance relative to each element (default 0)."),
    click.option("--atol", type=float, default=None,
                 help="Extra absolute tolerance on every element (default: none beyond a subnormal, 1e-30 in float32; "
                      "the tolerance is the measured noise x --noise-factor)."),
    click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
                 help="Shape for an input with symbolic dimensions, e.g. images=1x3x640x640 or "
                      "images:1,3,640,640 (repeatable)."),
    click.option("--input-data", type=click.Path(dir_okay=False), default=None,
                 help="A .npz file of real inputs (keys = input names) instead of random ones."),
]


def with_options(options):
    def deco(func):
        for opt in reversed(options):
            func = opt(func)
        return func
    return deco


bench_runtime_options = [
    click.option("--runtime", "runtimes", multiple=True, metavar="NAMES",
                 help="Runtimes to time, comma-separated: ort-cpu, ort-cuda, ort-tensorrt, openvino "
                      "(default: every available one)."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="Threads for CPU runtimes, the same for every model (default: the runtime's own)."),
]


def _names(ctx, param, value):
    return _split_list(value)


# Which outputs to keep: they flow through optimize(**pass_options) to the prune_outputs pass.
output_options = [
    click.option("--aux", type=click.Choice(["auto", "keep"]), default="auto", show_default=True,
                 help="auto: recognise a training-only auxiliary head (YOLOv9 DualDDetect/TripleDDetect, "
                      "MultimediaTechLab AUX) by structure and drop it; keep: keep every output."),
    click.option("--keep-outputs", default=None, metavar="NAMES|INDICES", callback=_names,
                 help="Keep only these outputs (comma-separated names or 0-based indices); overrides --aux."),
    click.option("--drop-outputs", default=None, metavar="NAMES|INDICES", callback=_names,
                 help="Drop these outputs (comma-separated names or 0-based indices); overrides --aux."),
    click.option("--rename-outputs", is_flag=True,
                 help="Rename the kept main output to 'output0' (what most YOLOv9 deployment code expects)."),
]


precision_options = [
    click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
                 help="fp16: after the passes, weights and activations in float16 except where that costs accuracy "
                      "(each exception listed with its reason); verified against the float32 model at float16 "
                      "tolerances and by detection agreement. int8: Q/DQ INT8 calibrated on --calib images, proven "
                      "against the float32 model on held-out ones (and by mAP with --eval)."),
    click.option("--keep-io-types/--no-keep-io-types", default=True, show_default=True,
                 help="With fp16: graph inputs and outputs stay float32 (one Cast each at the boundary)."),
    click.option("--fp32-ops", default=None, metavar="OPS", callback=_names,
                 help="With fp16: op types to keep in float32 (comma-separated, e.g. Sigmoid,Resize)."),
    click.option("--fp32-nodes", default=None, metavar="NAMES", callback=_names,
                 help="With fp16: node names (of the optimized graph) to keep in float32."),
    click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
                 help="With fp16/int8: the share of detections (after NMS, tie-aware) that must agree with float32 "
                      "(default 0.99 for fp16, 0.95 for int8)."),
]


int8_options = [
    click.option("--int8-target", type=click.Choice(["trt", "ort", "openvino"]), default="trt", show_default=True,
                 help="trt: int8 symmetric, zero point 0, per-channel weights, Q/DQ on Conv/Gemm/MatMul inputs and "
                      "the residual input of Add, one scale per Concat group (TensorRT explicit quantization); "
                      "openvino: the same placement; ort: uint8 activations on every op onnxruntime quantizes."),
    click.option("--calib", default=None, metavar="DIR|NPZ",
                 help="Calibration images: a folder (letterboxed as YOLO's val does) or a .npz ('images' [N,C,H,W]). "
                      "The last 24 are held out: 8 choose the method, 16 carry the proof."),
    click.option("--calib-size", type=click.IntRange(min=4), default=128, show_default=True,
                 help="Calibration images used (besides the 24 held out)."),
    click.option("--calib-method", type=click.Choice(list(METHODS)), default=None,
                 help="Range method (default: minmax, percentile-99.99 and -99.999 tried, the least output error on "
                      "the held-out images kept; entropy is slow and only when asked)."),
    click.option("--int8-exclude", default=None, metavar="NAMES", callback=_names,
                 help="Node names (of the optimized graph) to keep float besides the head's own float islands."),
    click.option("--int8-budget", type=click.IntRange(min=0), default=0, show_default=True,
                 help="When the accuracy target is missed: up to this many layers, the most sensitive first (SQNR "
                      "quantized alone), go back to float until it holds."),
    click.option("--eval", default=None, metavar="DIR|NPZ",
                 help="Labelled images (YOLO layout images/ + labels/, a COCO instances .json, or a .npz with boxes, "
                      "classes, image_index): mAP50-95 and mAP50 of float and int8 by pycocotools."),
    click.option("--max-map-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
                 help="With --eval: the mAP50-95 points int8 may lose."),
]


# Deployment adapters (onnxrep/deploy): they flow through optimize(**pass_options) too.
deploy_options = [
    click.option("--nms", type=click.Choice(["ort", "trt"]), default=None,
                 help="Append NMS to the detection head: ort (standard ops: onnxruntime, OpenVINO) or trt (one "
                      "EfficientNMS_TRT node for TensorRT). Outputs num_dets, det_boxes (x1,y1,x2,y2), det_scores, "
                      "det_classes, padded to --max-det."),
    click.option("--conf", type=float, default=0.25, show_default=True, help="With --nms: score threshold (score > conf)."),
    click.option("--iou", type=float, default=0.45, show_default=True, help="With --nms: IoU above which a box is suppressed."),
    click.option("--max-det", type=click.IntRange(min=1), default=100, show_default=True,
                 help="With --nms: detections per image (the outputs are padded to it)."),
    click.option("--class-agnostic", is_flag=True, help="With --nms: suppress across classes (default: per class)."),
    click.option("--multi-label", is_flag=True,
                 help="With --nms: keep a box once per class scoring above --conf (YOLO val.py's mAP semantics, "
                      "EfficientNMS's own); default: each box's best class only."),
    click.option("--output-layout", type=click.Choice(["anchors-last", "anchors-first", "split"]), default="anchors-last",
                 show_default=True, help="The detection output as [B, 4+nc, A], [B, A, 4+nc], or boxes [B, A, 4] and "
                                         "scores [B, A, nc]."),
    click.option("--input-format", type=click.Choice(["float", "uint8-nchw", "uint8-nhwc"]), default="float",
                 show_default=True, help="uint8: the model takes image bytes (0..255); the /255 is folded into the "
                                         "first Conv."),
    click.option("--bgr", is_flag=True, help="The model takes BGR images (OpenCV's order); the channel flip is folded "
                                             "into the first Conv."),
    click.option("--names", default=None, metavar="FILE",
                 help="Class names for the metadata: JSON list or {index: name}, a YOLO dataset yaml's names, or one "
                      "name per line (default: class0, class1, ...)."),
    click.option("--dynamic-batch", is_flag=True,
                 help="Make a static batch symbolic: shape constants that bake it in read it at run time (checked at "
                      "the verification's samples stacked in one batch of 3)."),
    click.option("--static-batch", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Fix a symbolic batch to N before the passes (which then fold the shape arithmetic)."),
    click.option("--overwrite-input-shape", "overwrite_input_shapes", multiple=True, metavar="NAME:DIMS",
                 help="Fix an input's shape in the model itself, e.g. images:1,3,640,640 (repeatable; as onnxsim)."),
    click.option("--metadata", is_flag=True, help="Write the deployment metadata (stride, names, imgsz...) even "
                                                  "without another deployment option."),
]
