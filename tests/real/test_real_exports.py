"""`onnxrep optimize` with defaults on real exports gives exactly the model's own deploy form.

For each model (its own PyTorch code, BatchNorm statistics calibrated) and each exporter form:
  * the aux head is gone (one output), no BatchNormalization is left;
  * Conv count and Conv parameters equal the model's own re-parameterization, exported by PyTorch
    (YOLOv9: the gelan twin with the main branch's weights, fused; timm: reparameterize_model());
  * the kept output equals PyTorch's main output as closely as the model's own deploy form does
    (float32 rounding: these random-weight networks amplify it, see `_tolerance`), at batch 1 and, for the
    dynamic-batch TorchScript export, at batch 2;
  * the report's MACs are the deploy form's, whatever the exporter wrote.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxrep
from onnxrep.report import count_macs
from tests.real.conftest import FAMILIES, forms_of, selected_models

pytestmark = pytest.mark.real

CASES = [(m, f) for m in selected_models() for f in forms_of(m)]


def conv_counts(model: onnx.ModelProto) -> tuple[int, int, int]:
    """(Conv nodes, Conv weight+bias elements, BatchNormalization nodes), counted here, not by onnxrep."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Identity" and n.input[0] in shapes:
            shapes[n.output[0]] = shapes[n.input[0]]
        if n.op_type == "Constant":
            shapes[n.output[0]] = tuple(n.attribute[0].t.dims)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    params = sum(int(np.prod(shapes[i])) for n in convs for i in n.input[1:3] if i in shapes)
    return len(convs), params, sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def run(model, x: np.ndarray) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _affine_next_to_conv(model: onnx.ModelProto) -> list[str]:
    """Add/Mul nodes with a constant operand that feed, or read, a Conv."""
    consts = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for n in model.graph.node:
        if n.op_type in ("Add", "Mul") and any(i in consts for i in n.input):
            src = [producers.get(i) for i in n.input if i not in consts]
            feeds_conv = any(c.op_type == "Conv" and n.output[0] == c.input[0] for c in model.graph.node)
            if feeds_conv or any(p is not None and p.op_type == "Conv" for p in src):
                found.append(n.name or n.op_type)
    return found


def _tolerance(deploy_err: float, scale: float) -> float:
    """Our rewrite may move the output as much as the model's own deploy form moves it (4x: both are
    float32 re-associations of the same sums, drawn differently), and never less than 1e-5 of its scale."""
    return max(4 * deploy_err, 1e-5 * scale, 1e-5)


@pytest.mark.parametrize("model,form", CASES)
def test_default_optimize_gives_the_deploy_form(real_export, model, form, tmp_path):
    ex = real_export(model)
    result = onnxrep.optimize(ex.path(form))
    assert result.ok, result.report.text()
    optimized = result.model
    grid = form.endswith("-grid")   # YOLOv7 decoded in eval mode: decoded output + raw levels, all kept
    deploy = onnx.load(str(ex.path("deploy-grid" if grid else "deploy")))

    convs, params, bns = conv_counts(optimized)
    want = ex.info["deploy"]
    summary = {"model": model, "form": form, "before": conv_counts(onnx.load(str(ex.path(form)))),
               "after": (convs, params, bns), "deploy": (want["conv"], want["conv_params"], want["batchnorm"])}
    (ex.folder / f"summary.{model}.{form}.json").write_text(json.dumps(summary))
    refs = ([ex.data[f"g{k}"] for k in range(ex.info["grid_outputs"])] if grid
            else [ex.data[f"y{main}"] for main in ex.mains])
    assert len(optimized.graph.output) == len(refs), result.report.outputs
    assert bns == 0
    assert (convs, params) == (want["conv"], want["conv_params"]), result.report.text()
    if grid:   # the in-place decode's ScatterND became Concat of slices (cleanup/scatter.py)
        assert not any(n.op_type == "ScatterND" for n in optimized.graph.node)

    # the numbers: against PyTorch's own main outputs, as closely as PyTorch's own deploy form gets
    gots, deploy_gots = run(optimized, ex.data["images"]), run(deploy, ex.data["images"])
    gots2 = run(optimized, ex.data["images_b2"]) if form == "torchscript" else None
    for k, (main, ref) in enumerate(zip(range(len(refs)) if grid else ex.mains, refs)):
        err, deploy_err = float(np.abs(gots[k] - ref).max()), float(np.abs(deploy_gots[k] - ref).max())
        assert err <= _tolerance(deploy_err, float(np.abs(ref).max())), (main, err, deploy_err)
        if gots2 is not None:   # the dynamic-batch export stays dynamic and right at batch 2
            ref2 = ex.data[f"y{main}_b2"]
            assert gots2[k].shape == ref2.shape
            assert float(np.abs(gots2[k] - ref2).max()) <= _tolerance(deploy_err, float(np.abs(ref2).max())) * 2

    if model.startswith(("v7", "yolov7")):   # YOLOv7's implicit knowledge: no constant Add before, no Mul after a head Conv
        assert not _affine_next_to_conv(optimized), _affine_next_to_conv(optimized)

    # the report's MACs are those of the deploy form, whatever the exporter wrote (but where no shape
    # inference can size a product: RT-DETR's dynamic export takes its top-k k as Min(Shape(x)[1], 300))
    if (model, form) in MACS_UNSIZED:
        assert 0 < result.report.after.macs < count_macs(deploy)
    else:
        assert result.report.after.macs == count_macs(deploy) > 0


# (model, form) whose linear ops shape inference can't all size: their MACs are a lower bound
MACS_UNSIZED = {("rtdetr-l", "torchscript")}


@pytest.mark.parametrize("model", [m for m in selected_models() if {"torchscript", "dynamo-raw"} <= set(forms_of(m))
                                   and (m, "torchscript") not in MACS_UNSIZED])
def test_macs_do_not_depend_on_the_exporter(real_export, model):
    """TorchScript writes Constant nodes and shape arithmetic; dynamo-raw writes neither: same MACs."""
    ex = real_export(model)
    macs = {f: count_macs(onnx.load(str(ex.path(f)), load_external_data=False)) for f in ("torchscript", "dynamo-raw")}
    assert macs["torchscript"] == macs["dynamo-raw"] > 0, macs


@pytest.mark.parametrize("model,form", CASES)
def test_float16_conversion_of_real_exports(real_export, model, form):
    """--precision fp16 on every real export: valid, about half the size, verified against the float32 model
    (float16 tolerances; YOLO outputs also by detection agreement), and what stays float32 is listed."""
    ex = real_export(model)
    fp32 = onnxrep.optimize(ex.path(form), verify=False)
    result = onnxrep.optimize(ex.path(form), precision="fp16")
    assert result.ok, result.report.text()
    onnx.checker.check_model(result.model, full_check=True)
    kept = result.report.passes["to_float16"]["float16"]["kept_nodes"]
    by_range = {n.split(" (")[0] for r, nodes in kept.items() if r.startswith("its values reach") for n in nodes}
    # every Conv kernel is float16 unless its Conv stayed float32 by rule (random-init networks reach 1e5)
    conv_weights = {n.input[1]: n.name for n in result.model.graph.node if n.op_type == "Conv"}
    float32_kernels = {t.name for t in result.model.graph.initializer
                       if t.name in conv_weights and t.data_type == onnx.TensorProto.FLOAT}
    listed = {n.split(" (")[0] for nodes in kept.values() for n in nodes}
    assert {conv_weights[w] for w in float32_kernels} <= listed
    ratio = result.model.ByteSize() / fp32.model.ByteSize()
    assert (0.45 <= ratio <= 0.55) if not by_range else ratio < 0.8, (ratio, len(by_range))
    for agree in result.verification.agreements.values():
        assert agree["matched"] >= 20, agree["line"]
    if model in FAMILIES:   # a recognised head has its detections compared; a DFL head keeps its Softmax float32
        assert bool(result.verification.agreements) == (model not in NO_HEAD), result.report.text()
        if model not in NO_HEAD | {"yolov6n", "yolov6s"}:   # YOLOv6 v3.0 n/s have no DFL
            assert any(r.startswith("Softmax") for r in kept)
    elif not model.startswith(("v7", "yolov7", "repvgg", "mobileone", "repvit", "repghost")):   # a YOLOv9/GELAN DFL head
        assert result.verification.agreements
        assert any(r.startswith("Softmax") for r in kept)


YOLO_CASES = [(m, f) for m, f in CASES if m.startswith(("yolov9", "gelan")) or f.endswith("-grid")]


@pytest.mark.parametrize("model,form", YOLO_CASES)
def test_deployment_adapters_on_real_exports(real_export, model, form):
    """Every real YOLOv9/GELAN export (TorchScript's symbolic output dims, dynamo's names) and every YOLOv7
    eval-mode export (its decoded [B, A, 5+nc] head) gets its head recognised and each adapter proven: NMS
    ort against the numpy reference, NMS trt's inputs, (YOLOv9) the split layout, uint8 NHWC BGR input
    folded into the first Conv."""
    ex = real_export(model)
    v7 = form.endswith("-grid")
    for options in (dict(nms="ort"), dict(nms="trt", class_agnostic=True),
                    dict(output_layout="anchors-first" if v7 else "split", input_format="uint8-nhwc", bgr=True)):
        if v7 and "output_layout" in options:
            options.pop("output_layout")
        result = onnxrep.optimize(ex.path(form), **options)
        assert result.ok, (options, result.report.text())
        checks = result.verification.deploy
        assert checks and all(c["ok"] for c in checks), [c["line"] for c in checks]
        meta = {p.key: p.value for p in result.model.metadata_props}
        assert meta["stride"] == ("64" if model.endswith(("w6", "iaux")) else "32")
        assert meta["box_format"] == ("xyxy" if "nms" in options else "xywh")
        if "input_format" in options:   # into the first Conv; yolov7-w6 starts with ReOrg (Slices): spelled out
            i = result.report.deploy["input"]
            assert (not i["folded"] and "Slice" in i["explicit"][0]) if model == "yolov7-w6" else i["folded"], i


# ------------------------------------------------------------------ other libraries' detectors (issue 27)

NO_HEAD = {"rtdetr-l"}   # NMS-free: RT-DETR's export ends in its top-k detections [B, 300, 6], not a YOLO head
HEAD_LAYOUT = {"yolov8n": "anchors-last", "yolo11n": "anchors-last", "yolov6n": "anchors-first-obj",
               "yolov6s": "anchors-first-obj", "yolonas-s": "split", "yolonas-m": "split",
               "ppyoloe-s": "anchors-first"}
FAMILY_CASES = [(m, f) for m, f in CASES if m in FAMILIES and m not in NO_HEAD]


def _static_batch(path) -> bool:
    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.HasField("dim_value")


@pytest.mark.parametrize("model,form", FAMILY_CASES)
def test_deployment_adapters_on_family_exports(real_export, model, form):
    """Each family's head is recognised after the default optimize (its layout: ultralytics [B, 4+nc, A],
    YOLOv6 [B, A, 5+nc] with a constant objectness, YOLO-NAS boxes + scores apart, PP-YOLOE [B, A, 4+nc]) and
    every adapter that applies to it is proven: NMS ort (best class) and trt (multi-label), NMS ort multi-label
    with uint8 input and, on a static export, a dynamic batch; the anchors-first layout where the head is
    not anchors-first already."""
    from onnxrep.deploy.head import find_heads

    ex = real_export(model)
    heads, reasons = find_heads(onnxrep.optimize(ex.path(form), verify=False).model)
    assert [h.layout for h in heads] == [HEAD_LAYOUT[model]], reasons
    runs = [dict(nms="ort"), dict(nms="trt", multi_label=True),
            dict(nms="ort", multi_label=True, input_format="uint8-nchw", dynamic_batch=_static_batch(ex.path(form)))]
    if not HEAD_LAYOUT[model].startswith("anchors-first"):
        runs.append(dict(output_layout="anchors-first"))
    for options in runs:
        result = onnxrep.optimize(ex.path(form), **options)
        assert result.ok, (options, result.report.text())
        checks = result.verification.deploy
        assert checks and all(c["ok"] for c in checks), [c["line"] for c in checks]
        if "nms" in options:
            assert [o.name for o in result.model.graph.output][:4] == ["num_dets", "det_boxes", "det_scores",
                                                                        "det_classes"]


# the real TorchScript (dynamic-batch) exports whose graphs verify/items.py proves item by item; the others
# (an anchor constant of unknown shape, a Reshape to [-1, ...]) run the original at batch 1 instead
ITEMWISE_PREFIXES = ("yolov9", "gelan", "v7", "yolov7", "repvgg", "mobileone", "repghostnet", "repvit")


@pytest.mark.parametrize("model", [m for m in selected_models() if "torchscript" in forms_of(m)])
def test_the_item_by_item_proof_holds_on_real_exports(real_export, model):
    """Where the proof lets the verification take the original's batch-1 outputs from its batch-2 run, the
    original's own batch-1 run gives the same numbers, within the twin's one step of rounding."""
    from onnxrep.verify import reference

    original = onnx.load(str(real_export(model).path("torchscript")))
    ref = reference(original)
    if model.startswith(ITEMWISE_PREFIXES):
        assert ref.proven == {1: 0}, model
    if not ref.proven:
        return
    names = ref.outputs
    sess = ort.InferenceSession(original.SerializeToString(), _plain(), providers=["CPUExecutionProvider"])
    own = dict(zip(names, sess.run(names, ref.feeds[1])))
    for name in names:
        step = float(np.abs(np.asarray(ref.noisy[1][name], np.float64) - ref.clean[1][name]).max())
        gap = float(np.abs(np.asarray(own[name], np.float64) - ref.clean[1][name]).max())
        assert own[name].shape == ref.clean[1][name].shape and gap <= max(step, 1e-6), (name, gap, step)


def _plain():
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return so
