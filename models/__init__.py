"""YOLOv9-family ONNX graph builder (numpy + onnx only) for tests, demo and benchmarks.

    import models
    m = models.build("yolov9-c", form="bn", imgsz=640, seed=0)
    models.save(m, "yolov9-c.onnx")
    models.count_convs(m)            # (Conv nodes, Conv weight+bias elements)

build(name, form="bn", *, imgsz=640, nc=80, seed=0, batch=1, opset=17, dtype="float32",
      exporter=None, identity_dedup=False, constant_nodes=False, shape_chains=False,
      dynamo_bias=False, cbfuse="add", naming="default", layout="ultralytics",
      scales_value_floats=False)

  name      one of NAMES: yolov9-t/s/m/c/e (dual head: output 0 aux, output 1 main),
            gelan-t/s/m/c/e (single head); or of V7_NAMES: yolov7-tiny, yolov7, yolov7-w6 (models/yolov7.py:
            raw per-level outputs; the exporter options do not apply)
  form      bn: BatchNormalization kept; folded: BN folded, RepConvN = two Convs + Add;
            fused: BN folded and RepConvN merged; converted: the deployable gelan with the
            yolov9 model's main-branch weights (build("gelan-X", "fused") is the same model)
  imgsz     int or (h, w), multiples of 32; batch: int or a symbolic dim name (str)
  exporter  a preset of EXPORTERS; it fills in the options the caller leaves unset
  identity_dedup  identical initializers kept once, re-shared through Identity nodes
  constant_nodes  True: every constant (parameters too) a Constant node; "small": shapes,
                  axes, scales, anchors as Constant nodes, parameters stay initializers
  shape_chains    head view()s as Shape -> Gather -> Unsqueeze -> Concat -> Reshape
  dynamo_bias     (bn form) Conv bias = Expand(CastLike(0, x), Shape(weight)[0:1]), raw dynamo
  cbfuse          "add" (Add chain) or "reducesum" (Unsqueeze + Concat + ReduceSum)
  naming          "default": output0[, output1]; "official": output0 and a number
  layout          "ultralytics": [B, 4+nc, A] per head; "mit": 18 raw outputs (Main first,
                  then AUX; per level class [B,nc,H,W], anchor [B,16,4,H,W], box [B,4,H,W])
  scales_value_floats  Resize scales as Constant(value_floats) (with constant_nodes; dynamo-raw)

Same arguments, same bytes. Weights are drawn per module from (seed, module name) and do not
depend on imgsz; BatchNorm running statistics are the estimated statistics of each layer's real
output (moments.py), so activations stay realistic (O(1), unsaturated) through the whole net.

    with models.reuse_weights():     # several forms/sizes of one model: parameters drawn once
        for form in models.FORMS: ...
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from .graph import count_convs
from .weights import reuse as reuse_weights
from .yolov9 import EXPORTERS, EXTERNAL_DATA_EXPORTERS, FORMS, NAMES, V7_NAMES, build

__all__ = ["NAMES", "V7_NAMES", "FORMS", "EXPORTERS", "EXTERNAL_DATA_EXPORTERS", "build", "save", "count_convs",
           "reuse_weights"]


def save(model: onnx.ModelProto, path, external_data=False):
    """Write `model` to `path`; external_data=True puts tensors in `<path>.data` beside it.

    The model passed in is left untouched (onnx's external-data conversion mutates its argument),
    and a stale .data file is removed first (onnx appends to an existing one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not external_data:
        onnx.save_model(model, os.fspath(path))
        return path
    location = path.name + ".data"
    (path.parent / location).unlink(missing_ok=True)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    onnx.save_model(m, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    return path
