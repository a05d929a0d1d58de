"""Build models with their own PyTorch code and export them with PyTorch's exporters (run as a script).

    python tests/real/export_models.py OUTDIR yolov9-t:torchscript,official,dynamo,dynamo-raw repvgg_a0:torchscript

Run in a separate process (tests/real/conftest.py does): the official YOLOv9 code imports itself as the
top-level packages ``models`` and ``utils``, which would clash with this repository's ``models/`` builder,
and torch's memory is returned when the process ends.

Models:
  * YOLOv9 (``yolov9-t/s/m/c/e``, ``gelan-t/s/m/c/e``): the official WongKinYiu code from the
    ``yolov9pip`` package, configured from the layer tables of ``models/arch.py`` (written from
    shared/yolov9-graphs.md section 2). yolov9pip 0.0.4 predates two things of the current upstream code,
    supplied here: the ELAN1 block (yolov9-t/s row 2; written from the block table) and the RepConvN
    merge in ``fuse()`` (upstream fuses RepConvN before Conv+BN; the package only folds Conv+BN).
  * timm ``repvgg_a0``, ``mobileone_s0``, ``repvit_m0_9``, ``repghostnet_050`` (random weights).
  * YOLOv7 heads from the ``yolov7-package`` code (the official IDetect/IAuxDetect/RepConv/SPPCSPC modules),
    on small configurations of our own (not the official layer tables, which we don't copy): ``v7mini-idetect``
    (3 levels, IDetect: implicit a/m around each output Conv) and ``v7mini-iaux`` (4 levels, IAuxDetect: lead
    heads plus an aux head of its own 3x3 Conv per level on an earlier neck map). Raw outputs (Detect.export).
    Their deploy form: the model's own fuse() (RepConv merged, BN and implicit folded); for the IAux model,
    the IDetect twin carrying the lead head's weights, fused.
Every model gets BatchNorm statistics calibrated on random images (running mean/var of its real
activations, then scale and shift far from identity), so a wrong fold can't hide behind identity BNs.

Forms (files ``OUTDIR/<model>.<form>.onnx``):
  torchscript   torch.onnx.export(dynamo=False), eval mode, opset 17, dynamic batch: Conv+BN folded by the
                exporter, RepConv branches, aux head, shared constants, Shape->Gather->Reshape chains
  official      the official export path: fuse() (RepConvN merged, BN folded), then as torchscript but
                static batch 1 and only the first output named (``output0``)
  dynamo        torch.onnx.export(dynamo=True): opset 18+, weights in ``<file>.data``
  dynamo-raw    torch.onnx.export(dynamo=True, optimize=False): BatchNormalization nodes kept
  deploy        the reference: the model's own re-parameterization (YOLOv9: gelan twin model with the
                main-branch weights, fused; timm: reparameterize_model()), exported as torchscript
Beside them ``<model>.json`` (what the model's own code says: Conv count and Conv parameters of the deploy
form, the output index of the main head) and ``<model>.npz`` (an input and PyTorch's outputs on it).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

YOLO = ("yolov9-t", "yolov9-s", "yolov9-m", "yolov9-c", "yolov9-e")
GELAN = tuple("gelan-" + m.split("-")[1] for m in YOLO)
TIMM = ("repvgg_a0", "mobileone_s0", "repvit_m0_9", "repghostnet_050")
V7 = ("v7mini-idetect", "v7mini-iaux", "yolov7-tiny", "yolov7", "yolov7-w6")
FORMS = ("torchscript", "official", "dynamo", "dynamo-raw")


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _setup_yolov9():
    """Import the official code the way its own scripts do: its root on sys.path, ``models``/``utils`` top level."""
    sys.path.insert(0, str(HERE))
    import stubs

    stubs.install()
    spec = importlib.util.find_spec("yolov9")
    if spec is None:
        raise SystemExit("yolov9pip is not installed (pip install -e '.[real]')")
    root = Path(spec.origin).parent
    sys.path.insert(0, str(root))
    for key in [k for k in sys.modules if k in ("models", "utils") or k.startswith(("models.", "utils."))]:
        del sys.modules[key]
    import models.yolo as yolo  # noqa: E402  (the official code)
    import torch
    from models.common import Conv, RepConvN

    class ELAN1(torch.nn.Module):
        """yolov9-t/s row 2: like RepNCSPELAN4 with plain 3x3 Convs instead of RepNCSP (not in yolov9pip 0.0.4)."""

        def __init__(self, c1, c2, c3, c4):
            super().__init__()
            self.c = c3 // 2
            self.cv1 = Conv(c1, c3, 1, 1)
            self.cv2 = Conv(c3 // 2, c4, 3, 1)
            self.cv3 = Conv(c4, c4, 3, 1)
            self.cv4 = Conv(c3 + (2 * c4), c2, 1, 1)

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in [self.cv2, self.cv3])
            return self.cv4(torch.cat(y, 1))

    yolo.ELAN1 = ELAN1
    return yolo, RepConvN, Conv


def _yolo_cfg(name: str, nc: int) -> dict:
    """The yaml dict of yolov9-X / gelan-X from models/arch.py's tables."""
    arch = _load_by_path("onnxrep_arch", REPO / "models" / "arch.py")
    rows = arch.dual_table(name) if name.startswith("yolov9") else arch.main_table("yolov9-" + name.split("-")[1])
    layers, channels = [], {}
    for r in rows:
        src = [-1 if s == arch.IMAGE else s for s in r.src]
        f = src[0] if len(src) == 1 else src
        kind, args = r.kind, list(r.args)
        if kind == "Upsample":
            kind, args = "nn.Upsample", [None, 2, "nearest"]
        elif kind == "Concat":
            args = [1]
        elif kind in ("CBLinear", "CBFuse"):
            args = [list(args[0])]
        elif kind in ("DualDDetect", "DDetect"):
            args = ["nc"]
        elif kind == "ELAN1":  # not in the package's parse_model table: give it c1 (the input's width) itself
            args = [channels[f]] + args
        layers.append([f, 1, kind, args])
        if kind in ("Conv", "AConv", "ADown", "RepNCSPELAN4", "SPPELAN", "ELAN1"):
            channels[r.idx] = r.args[0]
    return {"nc": nc, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": 3, "backbone": layers, "head": []}


def calibrate(model, make_batch, steps: int = 3, seed: int = 0) -> None:
    """BatchNorm running statistics of the model's real activations; scale and shift far from identity."""
    import torch

    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None   # cumulative average over the calibration batches
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.2, generator=g)
        model.train()
        for _ in range(steps):
            model(make_batch())
    model.eval()


def image_batch(batch: int, size: int, seed: int):
    """Smooth random images with edges, in [0, 1]: activations in a realistic range."""
    import torch

    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, 3, 5, 5)).astype(np.float32)
    img = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear",
                                          align_corners=False)
    yy, xx = np.mgrid[0:size, 0:size]
    edge = ((xx + yy * rng.uniform(0.5, 2)) % (size // 2) < size // 4).astype(np.float32)
    noise = rng.normal(0, 0.05, (batch, 3, size, size)).astype(np.float32)
    return (img * 0.7 + torch.from_numpy(edge * 0.3 + noise)).clamp(0, 1)


def _conv_counts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in shapes:
            shapes[n.output[0]] = shapes[n.input[0]]
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    params = sum(int(np.prod(shapes[i])) for n in convs for i in n.input[1:3] if i in shapes)
    return {"conv": len(convs), "conv_params": params,
            "batchnorm": sum(n.op_type == "BatchNormalization" for n in m.graph.node)}


def _export(model, x, path: Path, form: str, output_names, dynamic_batch: bool) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if form in ("torchscript", "official", "deploy"):
            axes = None
            if dynamic_batch:
                axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, do_constant_folding=True,
                              input_names=["images"], output_names=output_names, dynamic_axes=axes)
        else:
            program = torch.onnx.export(model, (x,), dynamo=True, optimize=(form == "dynamo"),
                                        input_names=["images"], verbose=False)
            program.save(str(path), external_data=True)


def build_yolo(name: str, imgsz: int, nc: int, seed: int):
    import torch

    yolo, RepConvN, Conv = _setup_yolov9()
    torch.manual_seed(seed)
    model = yolo.DetectionModel(_yolo_cfg(name, nc))
    head = model.model[-1]
    calibrate(model, lambda: image_batch(2, imgsz, seed + 1))
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True   # export.py: Detect heads return only the decoded outputs
    return model, head


def fuse_yolo(model, RepConvN=None, Conv=None):
    """Upstream BaseModel.fuse(): merge RepConvN, then fold Conv+BN."""
    from models.common import Conv as C, RepConvN as R
    from utils.torch_utils import fuse_conv_and_bn

    for m in model.modules():
        if isinstance(m, R):
            m.fuse_convs()
            m.forward = m.forward_fuse
        if isinstance(m, C) and hasattr(m, "bn"):
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    return model


def export_yolo(name: str, forms, out: Path, imgsz: int, nc: int, seed: int) -> None:
    import torch

    model, head = build_yolo(name, imgsz, nc, seed)
    dual = type(head).__name__.startswith("Dual")
    x = image_batch(1, imgsz, seed + 7)
    xb = image_batch(2, imgsz, seed + 9)
    with torch.no_grad():
        ys = [t.numpy() for t in _as_list(model(x))]
        ysb = [t.numpy() for t in _as_list(model(xb))]
    names = ["output0", "output1"] if dual else ["output0"]
    for form in forms:
        m = copy.deepcopy(model)   # each exporter sees the model export.py would hand it
        if form == "official":
            fuse_yolo(m)
        with torch.no_grad():
            m(x)   # export.py's dry run: the head caches anchors for this input size
        _export(m, x, out / f"{name}.{form}.onnx", form, names[:1] if form == "official" else names,
                dynamic_batch=(form == "torchscript"))
    # the reference: the deployable twin (gelan-X) carrying the main branch's weights, fused, exported
    ref_name = "gelan-" + name.split("-")[1]
    ref, _ = build_yolo(ref_name, imgsz, nc, seed)
    if dual:
        _copy_main_weights(model, ref, name)
    fuse_yolo(ref)
    with torch.no_grad():
        ref_y = _as_list(ref(x))[0].numpy()
    _export(ref, x, out / f"{name}.deploy.onnx", "deploy", ["output0"], dynamic_batch=False)
    main = len(ys) - 1
    info = {"model": name, "main_output": main, "outputs": len(ys), "deploy": _conv_counts(out / f"{name}.deploy.onnx"),
            "deploy_matches_main": float(np.abs(ref_y - ys[main]).max())}
    np.savez(out / f"{name}.npz", images=x.numpy(), images_b2=xb.numpy(),
             **{f"y{i}": y for i, y in enumerate(ys)}, **{f"y{i}_b2": y for i, y in enumerate(ysb)})
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))


def _copy_main_weights(dual, gelan, name: str) -> None:
    """gelan-X row j is yolov9-X row key; its DDetect is the main half (cv4, cv5) of DualDDetect."""
    arch = _load_by_path("onnxrep_arch", REPO / "models" / "arch.py")
    rows = arch.main_table(name)
    src = dual.model
    for r in rows[:-1]:
        gelan.model[r.idx].load_state_dict(src[r.key].state_dict())
    dd, d = src[-1], gelan.model[-1]
    d.cv2.load_state_dict(dd.cv4.state_dict())
    d.cv3.load_state_dict(dd.cv5.state_dict())
    d.dfl.load_state_dict(dd.dfl2.state_dict())
    d.stride = dd.stride


def _as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def export_timm(name: str, forms, out: Path, imgsz: int, seed: int) -> None:
    sys.path.insert(0, str(HERE))
    import stubs

    stubs.install()
    import timm
    import torch
    from timm.utils.model import reparameterize_model

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    calibrate(model, lambda: image_batch(4, imgsz, seed + 1))
    x = image_batch(1, imgsz, seed + 7)
    xb = image_batch(2, imgsz, seed + 9)
    with torch.no_grad():
        y, yb = model(x).numpy(), model(xb).numpy()
    for form in forms:
        _export(model, x, out / f"{name}.{form}.onnx", form, ["output0"], dynamic_batch=(form == "torchscript"))
    ref = reparameterize_model(copy.deepcopy(model))
    with torch.no_grad():
        ref_y = ref(x).numpy()
    _export(ref, x, out / f"{name}.deploy.onnx", "deploy", ["output0"], dynamic_batch=False)
    info = {"model": name, "main_output": 0, "outputs": 1, "deploy": _conv_counts(out / f"{name}.deploy.onnx"),
            "deploy_matches_main": float(np.abs(ref_y - y).max())}
    np.savez(out / f"{name}.npz", images=x.numpy(), images_b2=xb.numpy(), y0=y, y0_b2=yb)
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))


# ------------------------------------------------------------------------------------------- YOLOv7


def _v7_cfg(kind: str, nc: int = 80) -> dict:
    """A small YOLOv7-style network of our own: Conv backbone, SPPCSPC, FPN neck, RepConv before the head."""
    C = "Conv"
    layers = [[-1, 1, C, [16, 3, 2]], [-1, 1, C, [32, 3, 2]], [-1, 1, C, [32, 3, 1]],      # 0-2 /4
              [-1, 1, C, [64, 3, 2]], [-1, 1, C, [64, 3, 1]],                              # 3-4 /8
              [-1, 1, C, [96, 3, 2]], [-1, 1, C, [96, 3, 1]],                              # 5-6 /16
              [-1, 1, C, [128, 3, 2]], [-1, 1, C, [128, 3, 1]]]                            # 7-8 /32
    if kind == "iaux":
        layers += [[-1, 1, C, [160, 3, 2]], [-1, 1, "SPPCSPC", [128]],                       # 9-10 /64
                   [-1, 1, C, [96, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
                   [[-1, 8], 1, "Concat", [1]], [-1, 1, C, [96, 3, 1]]]                     # 11-14 N5
        top = 14
    else:
        layers += [[-1, 1, "SPPCSPC", [96]]]                                                 # 9
        top = 9
    base = len(layers)
    layers += [[-1, 1, C, [64, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
               [[-1, 6], 1, "Concat", [1]], [-1, 1, C, [64, 3, 1]],                           # N4 = base+3
               [-1, 1, C, [32, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
               [[-1, 4], 1, "Concat", [1]], [-1, 1, C, [32, 3, 1]]]                           # N3 = base+7
    n4, n3, c4, c3 = base + 3, base + 7, base + 2, base + 6
    leads = [n3, n4, top] + ([10] if kind == "iaux" else [])
    widths = [64, 96, 128, 160]
    first = len(layers)
    for src, w in zip(leads, widths):
        layers.append([src, 1, "RepConv", [w, 3, 1]])
    heads = list(range(first, len(layers)))
    anchors = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326],
               [436, 615, 739, 380, 925, 792]][:len(leads)]
    if kind == "iaux":   # the aux head: one 3x3 Conv per level on an earlier neck map (the concat before N3...)
        aux_first = len(layers)
        for src, w in zip([c3, c4, 13, 9], widths):
            layers.append([src, 1, C, [w, 3, 1]])
        heads += list(range(aux_first, len(layers)))
        layers.append([heads, 1, "IAuxDetect", ["nc", "anchors"]])
    else:
        layers.append([heads, 1, "IDetect", ["nc", "anchors"]])
    return {"nc": nc, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": anchors, "backbone": layers, "head": []}


def _v7_config(name: str) -> dict:
    """Our two small nets, or an official configuration from models/arch7.py (loaded by path: the official
    YOLOv9 code owns the top-level name ``models`` in this process)."""
    if name.startswith("v7mini"):
        return _v7_cfg(name.split("-")[1])
    arch7 = _load_by_path("onnxrep_models_arch7", HERE.parent.parent / "models" / "arch7.py")
    return arch7.v7_cfg(name)


def _setup_yolov7():
    sys.path.insert(0, str(HERE))
    import stubs

    stubs.install()
    if importlib.util.find_spec("yolov7_package") is None:
        raise SystemExit("yolov7-package is not installed (make install-real)")
    import yolov7_package.models.yolo as yolo

    return yolo


def _v7_model(cfg: dict, imgsz: int, seed: int):
    import torch

    yolo = _setup_yolov7()
    torch.manual_seed(seed)
    model = yolo.Model(cfg)
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():   # implicit knowledge far from 0 and 1, as trained models have it
        for m in model.modules():
            if type(m).__name__ == "ImplicitA":
                m.implicit.normal_(0.0, 0.5, generator=g)
            elif type(m).__name__ == "ImplicitM":
                m.implicit.uniform_(0.5, 1.5, generator=g)
    calibrate(model, lambda: image_batch(2, imgsz, seed + 1))
    model.model[-1].export = True
    return model


def export_v7(name: str, forms, out: Path, imgsz: int, seed: int) -> None:
    import torch

    cfg = _v7_config(name)
    iaux = cfg["backbone"][-1][2] == "IAuxDetect"
    model = _v7_model(cfg, imgsz, seed)
    x, xb = image_batch(1, imgsz, seed + 7), image_batch(2, imgsz, seed + 9)
    with torch.no_grad():
        ys = [t.numpy() for t in model(x)]
        ysb = [t.numpy() for t in model(xb)]
    names = [f"output{i}" for i in range(len(ys))]
    grid_names, grid_ys = None, []
    for form in forms:
        m = copy.deepcopy(model)
        if form.endswith("-grid"):   # eval mode, decoded: the in-place grid decode TorchScript writes as ScatterND
            m.model[-1].export = False
            m.eval()
            with torch.no_grad():
                z, levels = m(x)
            grid_ys = [z.numpy()] + [t.numpy() for t in levels]
            grid_names = ["output"] + [f"raw{i}" for i in range(len(levels))]
            _export(m, x, out / f"{name}.{form}.onnx", form[:-len("-grid")], grid_names, dynamic_batch=False)
            continue
        _export(m, x, out / f"{name}.{form}.onnx", form, names, dynamic_batch=(form == "torchscript"))
    if iaux:   # the deploy twin: IDetect on the lead inputs, carrying the lead weights
        cfg = _v7_config(name)
        det = cfg["backbone"][-1]
        nl = len(cfg["anchors"])
        cfg["backbone"] = cfg["backbone"][:len(cfg["backbone"]) - 1 - nl] + [[det[0][:nl], 1, "IDetect", det[3]]]
        ref = _v7_model(cfg, imgsz, seed)
        for i in range(len(ref.model) - 1):
            ref.model[i].load_state_dict(model.model[i].state_dict())
        src, dst = model.model[-1], ref.model[-1]
        for part in ("m", "ia", "im"):
            getattr(dst, part).load_state_dict(getattr(src, part).state_dict())
    else:
        ref = copy.deepcopy(model)
    ref.eval()
    with torch.no_grad():   # fuse() updates parameters in place
        ref.fuse()
    ref.model[-1].export = True
    with torch.no_grad():
        ref_y = [t.numpy() for t in ref(x)]
    main = list(range(len(ref_y)))
    _export(ref, x, out / f"{name}.deploy.onnx", "deploy", names[:len(ref_y)], dynamic_batch=False)
    info = {"model": name, "main_output": main[0], "main_outputs": main, "outputs": len(ys),
            "deploy": _conv_counts(out / f"{name}.deploy.onnx"),
            "deploy_matches_main": max(float(np.abs(r - ys[i]).max()) for i, r in enumerate(ref_y))}
    if grid_names:   # the fused model's own decoded export (its fuseforward writes Split/Mul/Add, no ScatterND)
        ref.model[-1].export = False
        _export(ref, x, out / f"{name}.deploy-grid.onnx", "deploy", grid_names, dynamic_batch=False)
        info["grid_outputs"] = len(grid_names)
    np.savez(out / f"{name}.npz", images=x.numpy(), images_b2=xb.numpy(),
             **{f"y{i}": y for i, y in enumerate(ys)}, **{f"y{i}_b2": y for i, y in enumerate(ysb)},
             **{f"g{i}": y for i, y in enumerate(grid_ys)})
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    import families

    out = Path(argv[0])
    imgsz = int(os.environ.get("ONNXREP_REAL_IMGSZ", 160))   # YOLO models; 640 for peer_benchmarks/tool_time.py
    for spec in argv[1:]:
        name, _, forms = spec.partition(":")
        forms = [f for f in forms.split(",") if f] or list(FORMS)
        if name in YOLO or name in GELAN:
            export_yolo(name, forms, out, imgsz, nc=80, seed=0)
        elif name in V7:
            export_v7(name, [f for f in forms if f != "official"], out, 128 if name.startswith("v7mini") else 256,
                      seed=0)
        elif name in TIMM:
            export_timm(name, [f for f in forms if f != "official"], out, 64 if name != "repvit_m0_9" else 64, seed=0)
        elif name in families.registry():   # tests/real/families: other libraries' detectors (issue 27)
            families.export(name, forms, out, seed=0)
        else:
            raise SystemExit(f"unknown model {name!r}")
        print(f"exported {name}: {', '.join(forms)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
