"""Ultralytics detectors (YOLOv8, YOLO11, RT-DETR), built from their own yaml by the ``ultralytics`` package.

Random weights (no checkpoint is downloaded: YOLO_OFFLINE=1, the models come from the package's yaml files),
BatchNorm statistics calibrated as every real-tier model's (export_models.calibrate).

Training form (what onnxrep must rewrite): the model as ultralytics' Exporter prepares it for its ONNX export --
eval mode, the head (Detect / RTDETRDecoder) in export mode (``export=True``, ``format="onnx"``: the decoded
``[B, 4+nc, A]`` tensor for YOLO, the top-k ``[B, 300, 6]`` detections for RT-DETR), C2f's ``forward_split`` --
but NOT fused: Conv+BN separate, RepC3's RepConv with both branches. ``dynamic=True`` (as ``export(dynamic=True)``
sets it: anchors, and RT-DETR's top-k sizes, computed from shape tensors in the graph) for the dynamic-batch
TorchScript form; ``dynamic=False`` for the static forms (torch.export can't trace RT-DETR's tensor-valued k).

Forms: ``torchscript`` / ``dynamo`` / ``dynamo-raw`` (export_models._export), and ``official``:
``YOLO(...).export(format="onnx", imgsz=..., batch=1)`` with the Exporter's defaults (it fuses, static shapes,
onnxslim), the produced file copied to ``<name>.official.onnx``.
Deploy reference: the family's own ``model.fuse()`` (Conv+BN folded, RepConv merged), same head state, exported
as TorchScript (static batch).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

MODELS = {
    "yolov8n": ["torchscript", "dynamo", "dynamo-raw", "official"],
    "yolo11n": ["torchscript", "dynamo", "dynamo-raw", "official"],
    "rtdetr-l": ["torchscript", "dynamo", "dynamo-raw", "official"],
}
QUICK = ["yolov8n"]
MISSING = ("ultralytics",)

IMGSZ = {"yolov8n": 160, "yolo11n": 160, "rtdetr-l": 160}
HERE = Path(__file__).resolve().parent.parent   # tests/real


def _setup():
    """Offline ultralytics, torchvision stubbed (the venv's build is broken); quiet settings in a temp dir."""
    os.environ["YOLO_OFFLINE"] = "1"   # no weight/font/asset downloads, no update checks
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "onnxrep-ultralytics-cfg"))
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import stubs

    stubs.install()
    import ultralytics  # noqa: F401  (after the stubs: it imports torchvision)
    import export_models

    return export_models


def _build(name: str, seed: int):
    """The ultralytics Model wrapper (YOLO / RTDETR) around a freshly built yaml network, random weights."""
    import torch
    from ultralytics import RTDETR, YOLO

    torch.manual_seed(seed)
    wrapper = RTDETR(f"{name}.yaml") if name.startswith("rtdetr") else YOLO(f"{name}.yaml", task="detect")
    return wrapper


def _untie(model, seed: int) -> None:
    """RT-DETR's random init is unlike trained weights in two ways that would let a wrong rewrite hide, or let an
    exporter-dependent count differ, so both are undone here (small random values, as trained weights have them):
    * its box refinements (enc/dec_bbox_head's last Linear), its deformable attention's attention weights and
      sampling offsets, and several biases start at exactly 0 (_reset_parameters): boxes would be the anchors
      and the attention uniform, whatever the network computes before;
    * its 6 decoder layers are deep copies of one (_get_clones): equal weights, so the 6 value projections of the
      same encoder memory are one MatMul repeated, which onnxslim and onnxrep merge into one (5 MatMuls, 172M
      MACs fewer than the unmerged deploy export: the MACs checks would fail on an artefact of the init) --
      trained layers differ."""
    import torch

    g = torch.Generator().manual_seed(seed + 5)
    seen = []
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                if not m.weight.any():
                    m.weight.normal_(0.0, 0.02, generator=g)
                elif any(w.shape == m.weight.shape and torch.equal(w, m.weight) for w in seen):
                    m.weight.normal_(0.0, float(m.weight.std()), generator=g)
                seen.append(m.weight)
                if m.bias is not None and not m.bias.any():
                    m.bias.normal_(0.0, 0.1, generator=g)


def _head_for_export(model, dynamic: bool):
    """What the Exporter does to the modules before its ONNX export (engine/exporter.py), fuse() excepted."""
    from ultralytics.nn.modules import C2f, Detect, RTDETRDecoder

    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    for m in model.modules():
        if isinstance(m, (Detect, RTDETRDecoder)):
            m.dynamic = dynamic
            m.export = True
            m.format = "onnx"
            m.max_det = 300   # min(max_det 300, queries or anchors): 300 for these models at 160 (525 anchors)
            m.agnostic_nms = False
            m.xyxy = False
            m.shape = None
            if isinstance(m, RTDETRDecoder):
                m.shapes = []
        elif isinstance(m, C2f):
            m.forward = m.forward_split
    return model


def _official(wrapper, name: str, imgsz: int, dst: Path) -> None:
    """What ultralytics users run: model.export(format="onnx") with its defaults (fuse, simplify), batch 1."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)   # the Exporter writes <yaml stem>.onnx beside the working directory
        try:
            produced = Path(tmp) / wrapper.export(format="onnx", imgsz=imgsz, batch=1, device="cpu", verbose=False)
        finally:
            os.chdir(cwd)
        shutil.copyfile(produced, dst)


def export(name: str, forms, out, seed: int = 0) -> None:
    em = _setup()
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    imgsz = IMGSZ[name]
    wrapper = _build(name, seed)
    model = wrapper.model
    if name.startswith("rtdetr"):
        _untie(model, seed)
    em.calibrate(model, lambda: em.image_batch(2, imgsz, seed + 1))   # in place: wrapper.model is calibrated too
    for p in model.parameters():
        p.requires_grad = False
    x = em.image_batch(1, imgsz, seed + 7)
    xb = em.image_batch(2, imgsz, seed + 9)

    base = _head_for_export(copy.deepcopy(model), dynamic=True)
    with torch.no_grad():
        ys = [t.numpy() for t in em._as_list(base(x))]
        ysb = [t.numpy() for t in em._as_list(base(xb))]
    names = ["output0"]
    for form in forms:
        path = out / f"{name}.{form}.onnx"
        if form == "official":
            _official(wrapper, name, imgsz, path)
            continue
        # dynamic=True (anchors and RT-DETR's top-k k from shape tensors) with the dynamic-batch TorchScript export, as
        # the Exporter pairs them; torch.export can't trace RT-DETR's tensor k, so the static forms get dynamic=False
        m = _head_for_export(copy.deepcopy(model), dynamic=(form == "torchscript"))
        with torch.no_grad():
            m(x)   # the Exporter's dry run
        em._export(m, x, path, form, names, dynamic_batch=(form == "torchscript"))

    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.fuse(verbose=False)   # the family's own deploy conversion: Conv+BN folded, RepConv merged
    ref = _head_for_export(ref, dynamic=False)
    with torch.no_grad():
        ref_y = em._as_list(ref(x))[0].numpy()
    em._export(ref, x, out / f"{name}.deploy.onnx", "deploy", names, dynamic_batch=False)
    info = {"model": name, "main_output": 0, "outputs": len(ys), "imgsz": imgsz,
            "deploy": em._conv_counts(out / f"{name}.deploy.onnx"),
            "deploy_matches_main": float(np.abs(ref_y - ys[0]).max())}
    np.savez(out / f"{name}.npz", images=x.numpy(), images_b2=xb.numpy(),
             **{f"y{i}": y for i, y in enumerate(ys)}, **{f"y{i}_b2": y for i, y in enumerate(ysb)})
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
