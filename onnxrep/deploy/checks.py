"""The proofs of deploy/__init__.py's stages, each a dict: check, ok, line (for the report)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxrep.deploy.layout import expected as layout_expected
from onnxrep.deploy.nms import MASKED, OUTPUTS, TRT_DOMAIN
from onnxrep.deploy.nms_reference import candidates, reference_nms
from onnxrep.deploy.preprocess import image_input, preprocess_numpy, random_images


def _run(model: onnx.ModelProto, feeds: list[dict], outputs: list[str]) -> list[dict]:
    """`outputs` (graph outputs or any tensors) of `model` on every feed, the model cut to what they need."""
    from onnxrep.verify import run_outputs

    return run_outputs(model, feeds, outputs)


def as_input_types(model: onnx.ModelProto, feeds: list[dict]) -> list[dict]:
    """The feeds in the dtypes `model` declares (a float16-input model after --no-keep-io-types)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    types = {vi.name: tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type) for vi in model.graph.input
             if vi.type.tensor_type.elem_type}
    return [{k: (np.asarray(v, types[k]) if k in types and np.issubdtype(np.asarray(v).dtype, np.floating)
                 and np.issubdtype(types[k], np.floating) else v) for k, v in f.items()} for f in feeds]


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def check_input(deployed, feeds: list[dict], *, seed: int, rtol, atol, noise_factor) -> tuple[dict, list[dict], list[dict]]:
    """The folded input model against the explicit one (noise tolerance), and the explicit one against the
    optimized model fed numpy-preprocessed images (bit-exact). Returns the check and the uint8 feeds."""
    from onnxrep.verify import verify

    opts = deployed.options
    name = image_input(deployed.base, "--input-format").name
    shapes = [list(np.shape(f[name])) for f in feeds]
    dtype = np.asarray(feeds[0][name]).dtype
    images = [{name: x} for x in random_images(opts.input_format, seed, shapes, dtype)]
    # the spelled-out preprocessing against numpy's, on the preprocessed tensor itself (a float16 model's
    # Conv may run in float32 on CPU, reading the Div's result before it is rounded to float16)
    pre = deployed.info["explicit_image"]
    got = _run(deployed.stage_in_explicit, images, [pre])
    exact = all(_same(g[pre], preprocess_numpy(f[name], opts.input_format, opts.bgr, dtype)) for g, f in zip(got, images))
    v = verify(deployed.stage_in_explicit, deployed.stage_in, feeds=images, rtol=rtol, atol=atol,
               noise_factor=noise_factor, strict_outputs=True)
    info = deployed.info.get("input", {})
    how = (f"folded into {', '.join(info['folded'])}" if info.get("folded") else "spelled out")
    ok = exact and v.ok
    line = (f"input {opts.input_format}{' BGR' if opts.bgr else ''} ({how}): "
            + ("ok" if ok else "FAIL") + f"; preprocessing in the graph = numpy's: {'exact' if exact else 'DIFFERS'}; "
            + "; ".join(f"{o.name} {o.used:.2f} of tolerance" for o in v.outputs)
            + (f"; {v.skipped_reason}" if v.skipped_reason else ""))
    return {"check": "input", "ok": ok, "line": line, "verification": v.to_dict()}, images, v.values


def _trt_node(model: onnx.ModelProto) -> onnx.NodeProto:
    """The EfficientNMS_TRT node: it runs only in TensorRT, so its inputs are what onnxruntime checks."""
    return next(n for n in model.graph.node if n.op_type == "EfficientNMS_TRT")


def _trt_attrs_ok(node: onnx.NodeProto, s) -> list[str]:
    want = {"background_class": -1, "box_coding": 0, "iou_threshold": np.float32(s.iou), "score_activation": 0,
            "max_output_boxes": s.max_det, "score_threshold": np.float32(s.conf), "plugin_version": b"1",
            "class_agnostic": int(s.class_agnostic)}
    have = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    bad = [f"{k}={have.get(k)!r} (want {v!r})" for k, v in want.items()
           if k not in have or (np.float32(have[k]) != v if isinstance(v, np.float32) else have[k] != v)]
    if node.domain != TRT_DOMAIN or list(node.output) != list(OUTPUTS):
        bad.append(f"domain {node.domain!r}, outputs {list(node.output)}")
    return bad


def _compare(final: onnx.ModelProto, deployed, settings, before, source: str, feeds: list[dict],
             prev: list[dict] | None = None, ran: dict | None = None) -> tuple[bool | None, list, list, list]:
    """(head tensor exact: None where the head was proven on `final` itself, differing outputs, plugin
    attribute problems, per-sample outputs) of `final`.
    prev: `before`'s outputs on `feeds` when a proof already computed them (the verification's); ran: sample ->
    `final`'s own tensors where the verification ran `final` itself (its head then proven directly).

    The whole final model runs on the largest sample (batch 2 where the batch is symbolic: an adapter that
    baked batch 1 into the graph shows there), and its head tensor must equal `before`'s bit for bit: the graph
    up to the head is the same. On the other samples only its tail runs (the adapter's nodes, fed `before`'s
    head tensor): one model run instead of one per sample. Where the verification ran the final model itself
    (`ran`), that run is the whole run here: its head tensor is the one proven against the original. The
    results are in the samples' order."""
    opts, head = deployed.options, deployed.head
    if prev is None or any(source not in p for p in prev):
        prev = _run(before, feeds, [source])
    first = max(range(len(feeds)), key=lambda k: sum(np.size(v) for v in feeds[k].values()))
    rest = [k for k in range(len(feeds)) if k != first]
    bad = _trt_attrs_ok(_trt_node(final), settings) if opts.nms == "trt" else []
    wanted = whole_run_outputs(final, deployed)
    names = wanted[:-1]
    reused = bool(ran) and all(n in ran.get(first, {}) for n in wanted)
    if reused:   # the verification ran `final` itself there
        got = {first: {n: ran[first][n] for n in wanted}}
    else:
        got = {first: _run(final, [feeds[first]], wanted)[0]}
    if rest:   # the tail computes what the adapter made (other outputs, a YOLOv7's raw levels, aside)
        made = (list(OUTPUTS) if opts.nms == "ort" else names if opts.nms == "trt" else list(deployed.outputs.values()))
        made = [n for n in names if n in made]
        tails = _run(_tail(final, head, made), [{head.output: prev[k][source]} for k in rest], made)
        got.update({k: {**r, head.output: prev[k][source]} for k, r in zip(rest, tails)})
    exact_head = None if reused else _same(prev[first][source], got[first][head.output])
    got = [got[k] for k in range(len(feeds))]
    return exact_head, _differing(final, deployed, settings, got), bad, got


def whole_run_outputs(final: onnx.ModelProto, deployed) -> list[str]:
    """What a run of the whole final model must compute for the adapter's check: the adapter's outputs (an
    EfficientNMS_TRT node's inputs: the plugin runs only in TensorRT), the head's tensor last."""
    head = deployed.head
    names = list(_trt_node(final).input) if deployed.options.nms == "trt" else [o.name for o in final.graph.output]
    return [n for n in names if n != head.output] + [head.output]


def _differing(final: onnx.ModelProto, deployed, settings, got: list[dict]) -> list[str]:
    """The outputs of `got` (the final model's, with its head tensor) that differ from numpy's."""
    opts, head = deployed.options, deployed.head
    wrong = []
    for k, g in enumerate(got):
        y = np.asarray(g[head.output])
        if opts.nms == "ort":
            want = reference_nms(y.astype(np.float32), head.box_coding, settings.conf, settings.iou, settings.max_det,
                                 settings.class_agnostic, head.layout, settings.multi_label)
        elif opts.nms == "trt":
            node = _trt_node(final)
            parts = [candidates(im, head.box_coding, head.layout) for im in y.astype(np.float32)]
            scores = np.stack([p[1] for p in parts])
            best = scores.argmax(1)[:, None]
            masked = scores if settings.multi_label else \
                np.where(np.arange(head.nc)[None, :, None] == best, scores, np.float32(MASKED)).astype(np.float32)
            want = {node.input[0]: np.stack([p[0] for p in parts]), node.input[1]: masked.transpose(0, 2, 1)}
        else:
            want = {deployed.outputs[role]: v for role, v in layout_expected(y, opts.output_layout).items()
                    if role in deployed.outputs}
        wrong += [f"sample {k} {name}" for name, v in want.items() if not _same(v, g[name])]
    return wrong


def _tail(model: onnx.ModelProto, head, outputs: list[str]) -> onnx.ModelProto:
    """What computes `outputs` from the head tensor, alone: the head tensor is its input (a small model)."""
    from onnxrep.verify.runtime import Cut

    elem = head.elem_type or onnx.TensorProto.FLOAT
    inputs = {head.output: helper.make_tensor_value_info(head.output, elem, None)}
    return Cut(model, outputs, inputs=inputs).model_proto()


def _with_conf(model: onnx.ModelProto, conf: float) -> onnx.ModelProto:
    """A copy of an ORT-NMS model whose NonMaxSuppression threshold is `conf` (a fresh constant)."""
    m = copy.deepcopy(model)
    node = next(n for n in m.graph.node if n.op_type == "NonMaxSuppression")
    name = node.input[4] + "_probe"
    m.graph.initializer.append(numpy_helper.from_array(np.array([conf], np.float32), name))
    node.input[4] = name
    return m


MIN_DETECTIONS = 20   # fewer at the user's conf (a random-weight model): the NMS is also checked at a lower one


def _probe_conf(got: list[dict], head) -> float:
    """The score of the 300th best anchor: a conf at which this model's NMS has work to do."""
    best = np.sort(np.concatenate([candidates(im, head.box_coding, head.layout)[1].max(0)
                                   for g in got for im in np.asarray(g[head.output], np.float32)]))[::-1]
    return float(best[min(299, best.size - 1)]) * 0.999


def _second_best(got: list[dict], head) -> np.ndarray:
    """Every anchor's second-best class score, over the samples (empty with one class)."""
    parts = [np.sort(candidates(im, head.box_coding, head.layout)[1], axis=0)[-2]
             for g in got for im in np.asarray(g[head.output], np.float32)] if head.nc > 1 else []
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def check_outputs(deployed, feeds: list[dict], prev: list[dict] | None = None, final: dict | None = None) -> dict:
    """The final model's new outputs against numpy applied to its own head tensor, which must equal the
    previous stage's output bit for bit. An ORT NMS that finds fewer than MIN_DETECTIONS at the user's conf
    is checked again at a conf where it finds some: its NMS part alone (the same graph but for one constant),
    fed the head tensors the final model computed. prev: the previous stage's outputs on `feeds`, when known;
    final: sample -> the final model's own tensors where a proof already ran it (verify(run_as=...))."""
    opts, head = deployed.options, deployed.head
    before = deployed.stage_in or deployed.base
    source = before.graph.output[head.index].name
    exact_head, wrong, bad, got = _compare(deployed.model, deployed, opts.nms_settings, before, source, feeds, prev,
                                           final)
    probe = ""
    if opts.nms == "ort":
        found = sum(int(np.asarray(g["num_dets"]).sum()) for g in got)
        probe = f" ({found} detections)"
        second = _second_best(got, head)
        # best class and multi-label differ only where an anchor has two classes above conf: without one,
        # the NMS part is checked again at a conf where some do
        labels = second.size == 0 or bool((second > np.float32(opts.conf)).any())
        if found < MIN_DETECTIONS or not labels:   # the deployed graph's NMS, its score threshold lowered
            low = _probe_conf(got, head)
            if not labels:
                low = min(low, float(np.sort(second)[::-1][min(299, second.size - 1)]) * 0.999)
            settings = dataclasses.replace(opts.nms_settings, conf=low)
            tail = _with_conf(_tail(deployed.model, head, [o.name for o in deployed.model.graph.output]), settings.conf)
            names = [o.name for o in tail.graph.output]
            got2 = [{**dict(zip(names, r.values())), head.output: g[head.output]}
                    for r, g in zip(_run(tail, [{head.output: g[head.output]} for g in got], names), got)]
            wrong2 = _differing(tail, deployed, settings, got2)
            wrong = wrong + [f"{w} at conf {settings.conf:.3g}" for w in wrong2]
            probe += (f"; at conf {settings.conf:.3g} too ({sum(int(np.asarray(g['num_dets']).sum()) for g in got2)} "
                      f"detections: " + ("too few scores reach" if found < MIN_DETECTIONS else "no anchor has two classes above")
                      + f" {opts.conf:g} on these inputs)")
    ok = exact_head is not False and not wrong and not bad
    what = (f"NMS {opts.nms} (conf {opts.conf:g}, iou {opts.iou:g}, max_det {opts.max_det}"
            f"{', class-agnostic' if opts.class_agnostic else ''}{', multi-label' if opts.multi_label else ''})" if opts.nms
            else f"output layout {opts.output_layout}")
    against = ("the reference NMS's inputs (the plugin itself runs only in TensorRT)" if opts.nms == "trt"
               else "numpy's reference NMS" if opts.nms else "numpy's transpose/split")
    line = f"{what}: {'ok' if ok else 'FAIL'}, equal to {against} on {len(feeds)} samples{probe}"
    if exact_head is False:
        line += "; the head's tensor differs from the model before the adapter"
    elif exact_head is None:
        line += "; its head is the final model's own tensor, verified against the original above"
    if wrong:
        line += "; differs: " + ", ".join(wrong[:4])
    if bad:
        line += "; plugin attributes: " + ", ".join(bad)
    return {"check": "outputs", "ok": ok, "line": line}
