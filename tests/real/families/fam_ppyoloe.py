"""PP-YOLOE+ from PaddleDetection (``paddledet``), exported by ``paddle.jit`` and ``paddle2onnx``.

``ppyoloe-s`` is PP-YOLOE+ s (configs/ppyoloe/ppyoloe_plus_crn_s_80e_coco.yml: ``_base_/ppyoloe_plus_crn.yml``
with depth_mult 0.33, width_mult 0.50): the ``YOLOv3`` architecture of CSPResNet (large stem, RepVggBlock with
alpha, effective SE), CustomCSPPAN (SPP, RepVggBlock without alpha) and PPYOLOEHead (ESE attention, DFL by a
1x1 projection Conv shared by the levels), built by the package's own classes with random weights (no
configuration file: the wheel ships none). BatchNorm statistics are those of the model's own activations on
random images, then scale and shift far from identity; RepVggBlock's alpha is drawn away from 1; what is zero
or near zero at init (the prediction Convs, the attention Convs' biases) is drawn.

Export as ``tools/export_model.py`` does it (ppdet/engine/trainer.py ``_get_infer_cfg_and_input_spec``):
``paddle.jit.to_static`` with the image / im_shape / scale_factor input spec, saved with the inputs the program
reads, ``paddle.jit.save`` (PIR: model.json + model.pdiparams); then ``paddle2onnx.export`` (opset 13; its
default clean-up: Polygraphy's constant folding, which also folds the ``if alpha:`` conditionals that
to_static writes for RepVggBlock). The head is exported with ``exclude_post_process=True``
(PaddleDetection's option for third-party deployment): the only input is ``image`` [B, 3, H, W] (dynamic batch,
H = W = 160, the eval size), the only output (``fetch_name_0``) the decoded boxes (input pixels, xyxy) and the
class scores, concatenated on the last axis: [B, A, 4 + nc]. PaddleDetection's default export keeps the NMS
(multiclass_nms3, inputs im_shape and scale_factor; in paddle 3.3.1 its static append_op fails under PIR and
the old IR fails at to_static), and with ``exclude_nms`` still reads scale_factor: there is no ``official``
form here.

Forms:
  paddle2onnx  the training form in eval mode (RepVggBlock branches and BatchNorm kept)
  deploy       (the reference) trainer.py's own deploy steps: every layer's ``convert_to_deploy()``
               (RepVggBlock -> one 3x3 Conv) and the export option ``fuse_conv_bn`` (Conv2D+BatchNorm2D),
               exported the same way. paddle2onnx writes each Conv bias as an Add after the Conv: the json's
               Conv parameters count those biases (``_deploy_counts``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np

MODELS = {"ppyoloe-s": ["paddle2onnx"]}
QUICK: list[str] = []   # paddle is heavy: REAL=all only
MISSING = ("paddle", "ppdet", "paddle2onnx")

IMGSZ = 160
NC = 80
CONFIG = {   # configs/ppyoloe/_base_/ppyoloe_plus_crn.yml, ppyoloe_plus_crn_s_80e_coco.yml
    "ppyoloe-s": dict(depth_mult=0.33, width_mult=0.50),
}


def _setup():
    """Import the model code without ``ppdet/__init__.py`` (it imports the data pipeline, trackers, metrics:
    scipy, shapely, lap, ... not installed, and numpy<1.24 idioms): the packages on the way are bare
    namespaces over the installed folders, so only the modules PP-YOLOE needs run."""
    import paddle

    paddle.set_device("cpu")
    if "ppdet.modeling.architectures.yolo" in sys.modules:
        return sys.modules
    for alias, typ in (("int", int), ("float", float), ("bool", bool)):
        if alias not in np.__dict__:   # numpy 2 removed them; old ppdet code still says np.int / np.float
            setattr(np, alias, typ)
    if importlib.util.find_spec("six") is None:   # layers.py: six.moves.range
        six = types.ModuleType("six")
        six.moves = types.SimpleNamespace(range=range)
        six.string_types, six.PY3 = (str,), True
        sys.modules["six"] = six
    root = Path(importlib.util.find_spec("ppdet").origin).parent
    for sub in ("", "modeling", "modeling.backbones", "modeling.necks", "modeling.heads", "modeling.architectures",
                "modeling.losses", "modeling.assigners", "modeling.transformers", "utils"):
        name = "ppdet" + ("." + sub if sub else "")
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*sub.split(".")) if sub else root)]
            pkg.__package__ = name
            sys.modules[name] = pkg

    # the names the modules take from package __init__s we skipped
    sys.modules["ppdet.modeling.losses"].GIoULoss = importlib.import_module("ppdet.modeling.losses.iou_loss").GIoULoss
    sys.modules["ppdet.modeling.transformers"].bbox_cxcywh_to_xyxy = importlib.import_module(
        "ppdet.modeling.transformers.utils").bbox_cxcywh_to_xyxy
    for mod in ("ppdet.modeling.backbones.cspresnet", "ppdet.modeling.necks.custom_pan",
                "ppdet.modeling.heads.ppyoloe_head", "ppdet.modeling.architectures.yolo", "ppdet.utils.fuse_utils"):
        importlib.import_module(mod)
    return sys.modules


def build(name: str, imgsz: int, seed: int, nc: int = NC):
    """YOLOv3(CSPResNet, CustomCSPPAN, PPYOLOEHead) as ppyoloe_plus_crn.yml configures it, calibrated, eval mode."""
    import paddle

    mods = _setup()
    cspresnet = mods["ppdet.modeling.backbones.cspresnet"]
    custom_pan = mods["ppdet.modeling.necks.custom_pan"]
    head_mod = mods["ppdet.modeling.heads.ppyoloe_head"]
    yolo = mods["ppdet.modeling.architectures.yolo"]
    cfg = CONFIG[name]
    paddle.seed(seed)
    backbone = cspresnet.CSPResNet(layers=[3, 6, 6, 3], channels=[64, 128, 256, 512, 1024], return_idx=[1, 2, 3],
                                   use_large_stem=True, use_alpha=True, act="swish", **cfg)
    neck = custom_pan.CustomCSPPAN(in_channels=[s.channels for s in backbone.out_shape],
                                   out_channels=[768, 384, 192], stage_num=1, block_num=3, act="swish", spp=True,
                                   eval_size=[imgsz, imgsz], **cfg)
    head = head_mod.PPYOLOEHead(in_channels=[s.channels for s in neck.out_shape], num_classes=nc,
                                fpn_strides=[32, 16, 8], grid_cell_scale=5.0, grid_cell_offset=0.5,
                                static_assigner=None, assigner=None, nms=None, eval_size=[imgsz, imgsz],
                                exclude_post_process=True)
    model = yolo.YOLOv3(backbone=backbone, neck=neck, yolo_head=head, post_process=None)
    _randomize(model, cspresnet.RepVggBlock, seed)
    calibrate(model, lambda: _image_batch(2, imgsz, seed + 1))
    model.eval()
    return model


def _randomize(model, RepVggBlock, seed: int) -> None:
    """What training moves away from its initial values: the prediction Convs (zero at init), the head's ESE
    attention Convs (std 0.001 at init), the backbone's effective-SE bias (zero at init: a zero bias would
    vanish from the optimized graph, not from the reference), RepVggBlock's alpha (1 at init, away from 1)."""
    rng = np.random.default_rng(seed + 5)

    def normal(p, std, mean=0.0):
        p.set_value(rng.normal(mean, std, p.shape).astype(np.float32))

    head = model.yolo_head
    for conv in list(head.pred_cls) + list(head.pred_reg):
        fan_in = int(np.prod(conv.weight.shape[1:]))
        normal(conv.weight, 1.0 / np.sqrt(fan_in))
        normal(conv.bias, 0.5, -2.0 if conv in head.pred_cls else 0.0)
    for stem in list(head.stem_cls) + list(head.stem_reg):
        normal(stem.fc.weight, 1.0 / np.sqrt(stem.fc.weight.shape[1]))
        normal(stem.fc.bias, 0.5)
    for m in model.sublayers():
        if type(m).__name__ == "EffectiveSELayer":
            normal(m.fc.bias, 0.5)
    for m in model.sublayers():
        if isinstance(m, RepVggBlock) and m.alpha is not None:
            sign = rng.choice([-1.0, 1.0])
            m.alpha.set_value(np.array([1.0 + sign * rng.uniform(0.3, 0.6)], np.float32))


def calibrate(model, make_batch, steps: int = 3, seed: int = 0) -> None:
    """export_models.calibrate for paddle: BatchNorm running statistics of the model's own activations (train-mode
    forwards of backbone, neck and the head's eval path, cumulative average), then scale and shift far from
    identity."""
    import paddle

    rng = np.random.default_rng(seed)
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]
    for m in bns:
        m.weight.set_value(rng.uniform(0.5, 1.5, m.weight.shape).astype(np.float32))
        m.bias.set_value(rng.normal(0.0, 0.2, m.bias.shape).astype(np.float32))
    model.train()
    with paddle.no_grad():
        for k in range(steps):
            for m in bns:   # running = k/(k+1) running + 1/(k+1) batch: the mean over the batches
                m._momentum = k / (k + 1)
            x = paddle.to_tensor(make_batch())
            feats = model.neck(model.backbone({"image": x}))
            model.yolo_head.forward_eval(feats)   # the head's training path wants targets
    for m in bns:
        m._momentum = 0.9
    model.eval()


def _image_batch(batch: int, size: int, seed: int) -> np.ndarray:
    import export_models   # tests/real is on sys.path (export_models.main puts it there)

    return export_models.image_batch(batch, size, seed).numpy()


def _run(model, x: np.ndarray) -> list[np.ndarray]:
    import paddle

    with paddle.no_grad():
        im_shape = np.full((len(x), 2), float(x.shape[2]), np.float32)
        out = model({"image": paddle.to_tensor(x), "im_shape": paddle.to_tensor(im_shape),
                     "scale_factor": paddle.ones([len(x), 2], dtype="float32")})   # read by no layer here
    return [out["bbox"].numpy()]


def _save_static(model, imgsz: int, folder: Path) -> Path:
    """tools/export_model.py: to_static over the image / im_shape / scale_factor spec, pruned to what the
    program reads, jit.save."""
    import paddle
    from paddle.static import InputSpec

    spec = {"image": InputSpec(shape=[None, 3, imgsz, imgsz], name="image"),
            "im_shape": InputSpec(shape=[None, 2], name="im_shape"),
            "scale_factor": InputSpec(shape=[None, 2], name="scale_factor")}
    static = paddle.jit.to_static(model, input_spec=[spec], full_graph=True)
    # trainer.py's _prune_input_spec (old-IR Program._prune; the exported file is checked for one input instead):
    # with exclude_post_process only the image is read
    pruned = [{"image": spec["image"]}]
    paddle.jit.save(static, str(folder / "model"), input_spec=pruned)
    return folder / "model"


def _paddle2onnx(prefix: Path, path: Path, opset: int = 13) -> None:
    """paddle2onnx.export (its defaults otherwise: optimizer, then Polygraphy's constant folding)."""
    import paddle2onnx

    model_file, params = prefix.with_suffix(".json"), prefix.with_suffix(".pdiparams")
    _f64_scales(model_file)   # first: after a failed export a second call in the same process exits (rc 255)
    paddle2onnx.export(str(model_file), str(params), str(path), opset_version=opset)
    if not path.exists():
        raise RuntimeError(f"paddle2onnx wrote no {path}")


def _f64_scales(model_file: Path) -> int:
    """paddle 3.3 serializes nearest_interp's ``scale`` (F.interpolate(scale_factor=2.), the neck's upsample)
    as an array of float64 attributes; paddle2onnx 2.1.0's PIR parser wants float32 ones ("the 0th elementwise
    MUST be ir::FloatAttribute", pir_parser.cc:814) and exports nothing. Same values, float32 tag: the number
    of attributes retagged."""
    program = json.loads(model_file.read_text())
    count = 0

    def walk(node):
        nonlocal count
        if isinstance(node, dict):
            if node.get("#", "").endswith("_interp") and isinstance(node.get("A"), list):
                for attr in node["A"]:
                    if attr.get("N") == "scale":
                        for item in attr["AT"].get("D", []):
                            if item.get("#") == "0.a_f64":
                                item["#"] = "0.a_f32"
                                count += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(program)
    if count:
        model_file.write_text(json.dumps(program))
    return count


def _export(model, imgsz: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = _save_static(model, imgsz, Path(tmp))
        _paddle2onnx(prefix, path)
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if [i.name for i in graph.input] != ["image"] or len(graph.output) != 1:
        raise RuntimeError(f"{path.name}: inputs {[i.name for i in graph.input]}, {len(graph.output)} outputs")


def deploy_form(model):
    """The model's own deploy conversion, as trainer.py's _get_infer_cfg_and_input_spec does it before export:
    ``convert_to_deploy()`` on every layer that has it (RepVggBlock: one 3x3 Conv with bias, alpha included),
    then, as with the export option ``fuse_conv_bn: True``, ppdet.utils.fuse_utils.fuse_conv_bn (every Conv2D
    with its BatchNorm2D). A copy; the model is left as it is."""
    import copy

    fuse_conv_bn = sys.modules["ppdet.utils.fuse_utils"].fuse_conv_bn
    ref = copy.deepcopy(model)
    for layer in ref.sublayers():
        if hasattr(layer, "convert_to_deploy"):
            layer.convert_to_deploy()
    ref = fuse_conv_bn(ref)
    ref.eval()
    return ref


def _layer_counts(model) -> dict:
    """Conv layers, their parameters (kernel and bias) and BatchNorm layers of a paddle model."""
    import paddle

    convs = [m for m in model.sublayers() if isinstance(m, paddle.nn.Conv2D)]
    params = sum(int(np.prod(p.shape)) for m in convs for p in (m.weight, m.bias) if p is not None)
    bns = sum(isinstance(m, paddle.nn.layer.norm._BatchNormBase) for m in model.sublayers())
    return {"conv": len(convs), "conv_params": params, "batchnorm": bns}


def _deploy_counts(path: Path, model) -> dict:
    """Conv nodes, Conv parameters and BatchNormalization nodes of the deploy export, as test_real_exports counts
    them, except that a Conv's bias counts where paddle2onnx writes it: every Conv2D bias becomes an Add of a
    [1, C, 1, 1] constant after a bias-less Conv. Checked against the paddle model's own layers (the head's
    proj_conv is one layer applied at each level: one Conv node per level)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    readers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    params = 0
    for n in convs:
        params += sum(consts[i].size for i in n.input[1:3] if i in consts)
        after = readers.get(n.output[0], [])
        if len(n.input) < 3 and len(after) == 1 and after[0].op_type == "Add":
            bias = [consts[i] for i in after[0].input if i in consts]
            if bias and bias[0].size == consts[n.input[1]].shape[0] and bias[0].ndim in (1, 4):
                params += bias[0].size
    counts = {"conv": len(convs), "conv_params": int(params),
              "batchnorm": sum(n.op_type == "BatchNormalization" for n in m.graph.node)}
    layers = _layer_counts(model)
    proj = model.yolo_head.proj_conv.weight
    extra = len(model.yolo_head.fpn_strides) - 1
    want = {"conv": layers["conv"] + extra, "conv_params": layers["conv_params"] + extra * int(np.prod(proj.shape)),
            "batchnorm": layers["batchnorm"]}
    if counts != want:
        raise RuntimeError(f"{path.name}: {counts} in the file, {want} by the paddle model's layers")
    return counts


def export(name: str, forms, out, seed: int = 0) -> None:
    import copy

    out = Path(out)
    imgsz = IMGSZ
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(name, imgsz, seed)
        x, xb = _image_batch(1, imgsz, seed + 7), _image_batch(2, imgsz, seed + 9)
        ys, ysb = _run(model, x), _run(model, xb)
        for form in forms:
            if form != "paddle2onnx":
                raise SystemExit(f"{name}: unknown form {form!r}")
            _export(copy.deepcopy(model), imgsz, out / f"{name}.{form}.onnx")
        ref = deploy_form(model)
        ref_y = _run(ref, x)
        _export(ref, imgsz, out / f"{name}.deploy.onnx")
    info = {"model": name, "main_output": 0, "outputs": len(ys), "imgsz": imgsz, "dynamic_batch": True,
            "deploy": _deploy_counts(out / f"{name}.deploy.onnx", ref),
            "deploy_matches_main": max(float(np.abs(r - y).max()) for r, y in zip(ref_y, ys))}
    np.savez(out / f"{name}.npz", images=x, images_b2=xb, **{f"y{i}": y for i, y in enumerate(ys)},
             **{f"y{i}_b2": y for i, y in enumerate(ysb)})
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
