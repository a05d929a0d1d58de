"""YOLOv6 v3.0 (meituan), built by its own code from the ``yolov6detect`` package (import name ``yolov6``).

Models ``yolov6n`` and ``yolov6s`` from the package's own configuration files (``yolov6/configs/yolov6n.py``,
``yolov6s.py``: EfficientRep backbone with CSPSPPF, RepBiFPANNeck with BiFusion and ConvTranspose upsampling,
efficient decoupled head; ``use_dfl=False, reg_max=0`` as the shipped v3.0 n/s configs say), built by the
package's ``build_model`` in ``repvgg`` training mode (its tools/train.py default), random weights.

The head's prediction Convs (``cls_preds``/``reg_preds``) start at zero weights in ``Detect.initialize_biases``
(a constant output); they get random weights here, as a trained model has, keeping the package's biases.

Forms (``<name>.<form>.onnx``):
  torchscript, dynamo, dynamo-raw   the training-mode model in eval mode (RepVGG branches, BatchNorms), as
                export_models.py exports every model. ``Model.forward`` returns only the head's inference
                output while ``torch.onnx.is_in_onnx_export()``: ``[B, A, 5 + nc]`` = xywh boxes (pixels),
                a constant-1 objectness column, sigmoid class scores.
  official      deploy/ONNX/export_onnx.py of YOLOv6 with its defaults (no --end2end, --simplify,
                --dynamic-batch, --inplace): ``load_checkpoint(fuse=True)`` (``fuse_model``: Conv/SimConv/
                Conv_C3 + BN folded, eval), ``RepVGGBlock.switch_to_deploy()``, ``nn.SiLU`` of ``Conv`` replaced
                by the package's ``SiLU`` (x * sigmoid(x)), ``Detect.inplace = False``, a dry run on zeros, then
                ``torch.onnx.export(opset 13, EVAL, do_constant_folding, input 'images', output 'outputs')``,
                batch 1, static; ``onnx.checker`` on the result.
  deploy        the reference: ``switch_to_deploy()`` on every module that has it (helpers.model_switch does
                it for RepVGGBlock), then ``fuse_model``, exported as torchscript (static batch 1).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

MODELS = {name: ["torchscript", "dynamo", "dynamo-raw", "official"] for name in ("yolov6n", "yolov6s")}
QUICK = ["yolov6n"]
MISSING = ("yolov6", "addict")

IMGSZ = 160
NC = 80
REAL = Path(__file__).resolve().parent.parent   # tests/real


def _setup():
    if str(REAL) not in sys.path:
        sys.path.insert(0, str(REAL))
    import stubs

    stubs.install()   # cv2, thop, torchvision (broken here) ... are imported but not used to build/export
    import export_models

    return export_models


def build(name: str, seed: int):
    """The package's own model from its shipped config, BN statistics calibrated, prediction Convs random."""
    import importlib.util

    import torch

    em = _setup()
    from yolov6.models.yolo import build_model
    from yolov6.utils.config import Config

    root = Path(importlib.util.find_spec("yolov6").origin).parent
    cfg = Config.fromfile(str(root / "configs" / f"{name}.py"))
    if not hasattr(cfg, "training_mode"):   # tools/train.py's default
        setattr(cfg, "training_mode", "repvgg")
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes=NC, device="cpu")
    g = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():   # initialize_biases() zeroes these weights: a trained head has them nonzero
        for conv in list(model.detect.cls_preds) + list(model.detect.reg_preds):
            bound = 1.0 / conv.weight[0].numel() ** 0.5
            conv.weight.uniform_(-bound, bound, generator=g)
    em.calibrate(model, lambda: em.image_batch(2, IMGSZ, seed + 1), seed=seed)
    return model


def _main(y):
    """Model.forward outside ONNX export returns [detections, featmaps]: the detections."""
    return y[0] if isinstance(y, (list, tuple)) else y


def deploy_form(model):
    """switch_to_deploy() on every module that has it, then the package's Conv+BN fusion."""
    import torch
    from yolov6.utils.torch_utils import fuse_model

    ref = copy.deepcopy(model)
    for m in ref.modules():
        if hasattr(m, "switch_to_deploy"):
            m.switch_to_deploy()
    with torch.no_grad():
        fuse_model(ref)
    return ref.eval()


def official_export(model, path: Path, batch: int = 1) -> None:
    """deploy/ONNX/export_onnx.py, default arguments (its checkpoint load is load_checkpoint(fuse=True))."""
    import warnings

    import onnx
    import torch
    import torch.nn as nn
    from yolov6.layers.common import Conv, RepVGGBlock, SiLU
    from yolov6.models.effidehead import Detect
    from yolov6.utils.torch_utils import fuse_model

    m = copy.deepcopy(model).float()
    with torch.no_grad():
        m = fuse_model(m).eval()
    for layer in m.modules():
        if isinstance(layer, RepVGGBlock):
            layer.switch_to_deploy()
    img = torch.zeros(batch, 3, IMGSZ, IMGSZ)
    m.eval()
    for _, layer in m.named_modules():
        if isinstance(layer, Conv):
            if isinstance(layer.act, nn.SiLU):
                layer.act = SiLU()
        elif isinstance(layer, Detect):
            layer.inplace = False
    with torch.no_grad():
        m(img)   # dry run
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, img, str(path), dynamo=False, verbose=False, opset_version=13,
                          training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True,
                          input_names=["images"], output_names=["outputs"], dynamic_axes=None)
    onnx.checker.check_model(onnx.load(str(path)))


def export(name: str, forms, out, seed: int = 0) -> None:
    import numpy as np
    import torch

    em = _setup()
    out = Path(out)
    torch.set_num_threads(2)
    model = build(name, seed)
    x = em.image_batch(1, IMGSZ, seed + 7)
    xb = em.image_batch(2, IMGSZ, seed + 9)
    with torch.no_grad():
        y = _main(model(x)).numpy()
        yb = _main(model(xb)).numpy()
    for form in forms:
        path = out / f"{name}.{form}.onnx"
        if form == "official":
            official_export(model, path)   # works on its own copy
        else:
            with torch.no_grad():   # each exporter sees its own copy of the eval-mode training model
                em._export(copy.deepcopy(model), x, path, form, ["output0"], dynamic_batch=(form == "torchscript"))
    ref = deploy_form(model)
    with torch.no_grad():
        ref_y = _main(ref(x)).numpy()
        em._export(ref, x, out / f"{name}.deploy.onnx", "deploy", ["output0"], dynamic_batch=False)
    info = {"model": name, "main_output": 0, "outputs": 1, "deploy": em._conv_counts(out / f"{name}.deploy.onnx"),
            "deploy_matches_main": float(np.abs(ref_y - y).max())}
    np.savez(out / f"{name}.npz", images=x.numpy(), images_b2=xb.numpy(), y0=y, y0_b2=yb)
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))

