"""YOLO-NAS (S, M) from the ``modern-yolonas`` package: its own PyTorch code, random weights, no download.

Training form (what every non-``official`` export sees): eval mode, every QARepVGGBlock unfused (3x3 conv+BN,
alpha x 1x1 conv with bias, identity, then ``post_bn`` on the sum), Conv+BN+ReLU blocks, CSP bottlenecks with
a learnable ``alpha`` on their shortcut, ConvTranspose upsampling in the neck, the DFL heads decoding to
``pred_bboxes`` [B, A, 4] (xyxy, pixels) and ``pred_scores`` [B, A, nc] (sigmoid): two outputs, both kept.

``official`` is the package's own ``yolonas export`` command (``modern_yolonas/cli/export_cmd.py:export``),
run on a checkpoint of this model with its defaults (generic target, ONNX, opset 17, output names
``pred_bboxes``/``pred_scores``, dynamic batch, no NMS): it calls ``fuse_block_residual_branches()`` on every
QARepVGGBlock (partial fusion: one Conv, ``post_bn`` kept) and ``torch.onnx.export`` without ``dynamo=``,
i.e. the installed torch's default exporter.

The deploy reference: the package's ``full_fusion()`` on every QARepVGGBlock (branches and ``post_bn`` in one
Conv), exported as TorchScript (which folds the Conv+BN of the plain Conv blocks).

``modern_yolonas/__init__`` imports its detector (``supervision``) and weights loader; the CLI module needs
``typer``/``rich``: missing ones are stubbed (tests/real/stubs.py's finder). No model file is downloaded.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

MODELS = {"yolonas-s": ["torchscript", "dynamo", "dynamo-raw", "official"],
          "yolonas-m": ["torchscript", "dynamo", "dynamo-raw", "official"]}
QUICK = ["yolonas-s"]
MISSING = ("modern_yolonas",)

VARIANT = {"yolonas-s": "yolo_nas_s", "yolonas-m": "yolo_nas_m"}
NAMES = ["pred_bboxes", "pred_scores"]   # the package's own export names
IMGSZ = 160
NC = 80
# imported at import time by modern_yolonas/__init__ (inference.detect, weights) or by the CLI module, never used
# to build or export the model
EXTRA_STUBS = ("supervision", "typer", "rich", "huggingface_hub", "safetensors")


def _setup():
    here = Path(__file__).resolve().parent.parent   # tests/real
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    import export_models
    import stubs

    stubs.install()   # the venv's torchvision fails at import (inference/postprocess.py imports it)
    missing = [m for m in EXTRA_STUBS if m not in sys.modules and importlib.util.find_spec(m) is None]
    if missing:
        sys.meta_path.insert(0, stubs._Finder(missing))
    import modern_yolonas

    return modern_yolonas, export_models


def _build(name: str, seed: int):
    import torch

    yn, em = _setup()
    from modern_yolonas.nn.repvgg import QARepVGGBlock

    torch.manual_seed(seed)
    model = yn.YoloNAS.from_config(VARIANT[name], num_classes=NC)
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():   # learnable alphas (CSP bottleneck shortcuts; QARepVGG's 1x1 when use_alpha) away from 1
        for m in model.modules():
            alpha = getattr(m, "alpha", None)
            if isinstance(alpha, torch.nn.Parameter):
                alpha.uniform_(0.5, 1.5, generator=g)
        for m in model.modules():   # Conv biases (QARepVGG 1x1 branches, the heads' predictions): not zero/one prior
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.2, generator=g)
    em.calibrate(model, lambda: em.image_batch(2, IMGSZ, seed + 1))
    assert not any(m.partially_fused or m.fully_fused for m in model.modules() if isinstance(m, QARepVGGBlock))
    return model, em


def _official(model, name: str, path: Path) -> None:
    """The package's `yolonas export --model yolo_nas_x --checkpoint ckpt --input-size 160 --output path`."""
    import torch

    spec = importlib.util.spec_from_file_location(   # by path: modern_yolonas/cli/__init__ imports every command
        "modern_yolonas_export_cmd", Path(importlib.util.find_spec("modern_yolonas").origin).parent / "cli" / "export_cmd.py")
    cmd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmd)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), ckpt)
        cmd.export(model=cmd.ModelName(VARIANT[name]), output=str(path), input_size=IMGSZ, checkpoint=str(ckpt),
                   num_classes=NC)


def export(name: str, forms, out, seed: int = 0) -> None:
    import warnings

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, em = _build(name, seed)
    from modern_yolonas.nn.repvgg import QARepVGGBlock

    x, xb = em.image_batch(1, IMGSZ, seed + 7), em.image_batch(2, IMGSZ, seed + 9)
    with torch.no_grad():
        ys = [t.numpy() for t in em._as_list(model(x))]
        ysb = [t.numpy() for t in em._as_list(model(xb))]
    assert len(ys) == 2 and ys[0].shape[-1] == 4 and ys[1].shape[-1] == NC, [y.shape for y in ys]
    for form in forms:
        path = out / f"{name}.{form}.onnx"
        if form == "official":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _official(copy.deepcopy(model), name, path)
            continue
        em._export(copy.deepcopy(model), x, path, form, NAMES, dynamic_batch=(form == "torchscript"))
    # the reference: the package's own full fusion of every QARepVGGBlock (post_bn folded too), TorchScript
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, QARepVGGBlock):
                m.full_fusion()
        ref_y = [t.numpy() for t in em._as_list(ref(x))]
    em._export(ref, x, out / f"{name}.deploy.onnx", "deploy", NAMES, dynamic_batch=False)
    info = {"model": name, "main_output": 0, "main_outputs": [0, 1], "outputs": len(ys),
            "deploy": em._conv_counts(out / f"{name}.deploy.onnx"),
            "deploy_matches_main": max(float(np.abs(r - ys[i]).max()) for i, r in enumerate(ref_y))}
    np.savez(out / f"{name}.npz", images=x.numpy(), images_b2=xb.numpy(),
             **{f"y{i}": y for i, y in enumerate(ys)}, **{f"y{i}_b2": y for i, y in enumerate(ysb)})
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
