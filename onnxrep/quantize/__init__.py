"""`--precision int8`: the verified float model to Q/DQ INT8, calibrated on the user's images and proven on
held-out ones (the float model is the reference).

    q, info = to_int8(float_model, Int8Options(target="trt"), calib_images, eval_images)

The steps (each module has its one job):
1. placement.py: the float islands (the head's tail: box/score Concat, DFL, decode, Sigmoid; plus
   --int8-exclude) and the shared-scale groups, read from the graph.
2. int8.py: one calibration pass (onnxruntime's histogram calibrator), then onnxruntime's quantize_static on
   the ranges each method reads from the histograms, the target's settings, groups unified, and for TensorRT
   the Conv+Add fusion rule.
3. proof.py: each method's model on the held-out images against the float model; the one with the least
   output error is kept (or the --calib-method given); then its agreement, box/score error, SQNR.
4. sensitivity.py: when the target is missed and --int8-budget allows, the layers with the lowest SQNR
   quantized alone go back to float one at a time until it holds; the report lists each and what it cost.
5. With --eval: mAP50-95 and mAP50 (pycocotools) of float and int8 side by side; the drop must stay
   within --max-map-drop.
6. lint.py: the target's Q/DQ rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from onnxrep.io import OnnxrepError

SELECT = 8      # calibration images kept back to choose the method and the layers sent back to float
PROOF = 16      # and, apart from those, the images the proof runs on
HELD_OUT = SELECT + PROOF


@dataclass(frozen=True)
class Int8Options:
    target: str = "trt"
    calib: str | None = None
    calib_size: int = 128
    calib_method: str | None = None      # None: the best of int8.SEARCH on the held-out images
    exclude: tuple = ()                  # node names kept float besides the islands
    budget: int = 0                      # layers that may go back to float to meet the target
    eval: str | None = None
    max_map_drop: float = 1.0            # mAP50-95 points, with eval
    min_agreement: float = 0.95

    def __post_init__(self):
        from onnxrep.quantize.int8 import METHODS, TARGETS

        if self.target not in TARGETS:
            raise OnnxrepError(f"--int8-target {self.target!r}: choose {', '.join(TARGETS)}")
        if self.calib_method is not None and self.calib_method not in METHODS:
            raise OnnxrepError(f"--calib-method {self.calib_method!r}: choose {', '.join(METHODS)}")
        if self.calib_size < 4:
            raise OnnxrepError(f"--calib-size {self.calib_size}: at least 4 images")
        if self.budget < 0:
            raise OnnxrepError(f"--int8-budget {self.budget}: must be >= 0")
        if not self.max_map_drop >= 0:
            raise OnnxrepError(f"--max-map-drop {self.max_map_drop}: must be >= 0")


@dataclass
class Int8Data:
    """The images, read before any model runs (a bad folder is a usage error that costs no run)."""

    calib: object
    select: object                       # held out: choose the method (and the fallback layers)
    proof: object                        # held out from both: the proof
    evals: object = None
    input_name: str = ""


def load_data(model: onnx.ModelProto, options: Int8Options) -> Int8Data:
    from onnxrep.quantize.data import image_input, load_images, split

    if not options.calib:
        raise OnnxrepError("--precision int8 needs calibration images: --calib DIR (or data.npz); random inputs "
                           "are not calibration")
    name = image_input(model)[0]
    refuse_unfit(model)
    images = load_images(options.calib, model, limit=options.calib_size + HELD_OUT)
    calib, held = split(images, options.calib_size, HELD_OUT)
    select, proof = held.subset(range(SELECT)), held.subset(range(SELECT, HELD_OUT))
    evals = None
    if options.eval:
        from onnxrep.verify.detections import head_layouts

        shapes = {o.name: [d.dim_value or 1 for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
        layouts = head_layouts(model, shapes)
        if not layouts:
            raise OnnxrepError("--eval: the model has no YOLO detection output to compute mAP on (outputs: "
                               + ", ".join(f"{k} {v}" for k, v in shapes.items()) + ")")
        out, layout = next(iter(layouts.items()))
        if layout.startswith("split:"):   # a split head: its scores output [B, A, nc] or [B, nc, A]
            from onnxrep.verify.detections import split_parts

            scores, _, scores_first = split_parts(layout)
            nc = shapes[scores][2 if scores_first else 1]
        else:
            nc = shapes[out][1 if layout == "anchors-last" else 2] - (5 if layout == "anchors-first-obj" else 4)
        evals = load_images(options.eval, model, labels=True, option="--eval")
        if not len(evals.boxes):
            raise OnnxrepError(f"--eval {options.eval}: no labelled objects found (YOLO txt files in labels/ beside "
                               f"images/, or next to each image)")
        bad = evals.classes[(evals.classes < 0) | (evals.classes >= nc)]
        if bad.size:
            raise OnnxrepError(f"--eval {options.eval}: class {int(bad[0])} in the labels; the model has {nc} classes")
    return Int8Data(calib, select, proof, evals, name)


def refuse_unfit(model: onnx.ModelProto) -> None:
    """A model that is already quantized, or float16 inside: not a float32 reference to quantize (onnxruntime's
    calibrator crashed on float16 tensors; a Q/DQ model would be re-quantized on its own int8 grid)."""
    from onnxrep.ir.counts import walk_graphs

    ops = {n.op_type for g in walk_graphs(model.graph) for n in g.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
              "DynamicQuantizeLinear"}:
        raise OnnxrepError("--precision int8: the model is already quantized (it has Q/DQ or integer ops); give its "
                           "float32 form")
    half = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in model.graph.node)
    if half:
        raise OnnxrepError("--precision int8: the model computes in float16; give its float32 form (int8 is "
                           "calibrated and proven against float32)")


def named(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every node named, uniquely: placement and onnxruntime's nodes_to_exclude go by node name
    (unnamed nodes all matched the name '', which made a whole model float)."""
    names = [n.name for n in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen: set[str] = set()
    for k, n in enumerate(copy.graph.node):
        if not n.name or n.name in seen:
            base = f"{n.op_type}_int8_{k}"
            n.name = base
        seen.add(n.name)
    return copy


@dataclass
class Int8Result:
    model: onnx.ModelProto
    ok: bool
    info: dict = field(default_factory=dict)

    def line(self) -> str:
        from onnxrep.quantize import proof

        i = self.info
        parts = [f"int8 {i['target']}: {'ok' if self.ok else 'FAIL'}", f"method {i['method']}",
                 f"{i['proof_images']} held-out images"]
        for name, f in i["outputs"].items():
            if f["kind"] == "detections":
                parts.append(f"{name}: detections agree {f['agreement']:.2%} (min {i['min_agreement']:.0%}), "
                             f"box {f['box_px']:.2f} px, score {f['score_rel']:.1%} on the best anchors, "
                             f"SQNR {f['sqnr_db']:.1f} dB")
            elif f["kind"] == "top-1":
                parts.append(f"{name}: top-1 agrees {f['agreement']:.2%} (min {i['min_agreement']:.0%}), SQNR "
                             f"{f['sqnr_db']:.1f} dB (min {proof.MIN_SQNR_DB:g})")
            else:
                parts.append(f"{name}: SQNR {f['sqnr_db']:.1f} dB (min {proof.MIN_SQNR_DB:g})")
        if "map" in i:
            m = i["map"]
            parts.append(f"mAP50-95 {m['float']['map50_95']:.2f} -> {m['int8']['map50_95']:.2f} "
                         f"(drop {m['drop']:.2f}, max {i['max_map_drop']:g}), mAP50 {m['float']['map50']:.2f} -> "
                         f"{m['int8']['map50']:.2f} on {m['images']} labelled images")
        if i.get("lint"):
            parts.append("lint: " + " | ".join(i["lint"]))
        if i.get("fallback"):
            parts.append("back to float: " + ", ".join(f"{f['node']} ({f['sqnr_db']:.1f} dB)" for f in i["fallback"]))
        return "; ".join(parts)


def to_int8(model: onnx.ModelProto, options: Int8Options, data: Int8Data, on_step=lambda _m: None) -> Int8Result:
    from onnxrep.quantize import int8, lint, proof
    from onnxrep.quantize.placement import float_islands

    t0 = time.perf_counter()
    model = named(model)
    islands = float_islands(model)
    exclude = dict(islands)
    exclude.update({n: "--int8-exclude" for n in options.exclude})
    exclude.update({n.name: "grouped ConvTranspose (onnxruntime's per-channel scales follow Cout/group)"
                    for n in model.graph.node if n.op_type == "ConvTranspose"
                    and any(a.name == "group" and a.i > 1 for a in n.attribute)})
    feeds = [{data.input_name: x[None]} for x in data.calib.arrays]
    on_step(f"int8: calibrating on {len(feeds)} images")
    hist = int8.calibrate(model, feeds)
    ref = proof.run_images(model, data.select.arrays, data.input_name)
    kinds = proof.layouts(model, ref)
    methods = [options.calib_method] if options.calib_method else list(int8.SEARCH)
    tried = {}
    best = None
    for m in methods:
        on_step(f"int8: quantizing ({m})")
        q = int8.quantize(model, hist.ranges(m), options.target, exclude)
        err = proof.output_error(ref, proof.run_images(q, data.select.arrays, data.input_name), kinds)
        tried[m] = round(err, 6)
        if best is None or err < best[0]:
            best = (err, m, q)
    _, method, q = best
    proof_ref = proof.run_images(model, data.proof.arrays, data.input_name)

    def prove(candidate):
        return proof.compare(proof_ref, proof.run_images(candidate, data.proof.arrays, data.input_name), kinds,
                             options.min_agreement)

    def selected(candidate):   # the fallback decides on the selection images: the proof's stay unseen
        return proof.compare(ref, proof.run_images(candidate, data.select.arrays, data.input_name), kinds,
                             options.min_agreement)

    facts = prove(q)
    fallback = []
    ranges = hist.ranges(method)
    if not all(f["ok"] for f in facts.values()) and options.budget:
        from onnxrep.quantize.sensitivity import layer_sqnr

        on_step("int8: per-layer sensitivity")
        scores = layer_sqnr(model, q, feeds[:8])
        for node, db in sorted(scores.items(), key=lambda kv: kv[1])[:options.budget]:
            exclude[node] = f"sensitive: SQNR {db:.1f} dB quantized alone"
            on_step(f"int8: {node} back to float")
            q = int8.quantize(model, ranges, options.target, exclude)
            chosen = selected(q)
            fallback.append({"node": node, "sqnr_db": round(db, 2),
                             "after": {k: f.get("agreement", f["sqnr_db"]) for k, f in chosen.items()}})
            if all(f["ok"] for f in chosen.values()):
                break
        facts = prove(q)
    ok = all(f["ok"] for f in facts.values())
    info = {"target": options.target, "why": int8.TARGETS[options.target].why, "method": method,
            "methods_tried": tried, "calibration_images": len(feeds), "held_out": len(data.select) + len(data.proof),
            "proof_images": len(data.proof),
            "calib": data.calib.source, "min_agreement": options.min_agreement, "outputs": facts,
            "float_islands": _islands_summary(exclude), "fallback": fallback}
    if data.evals is not None:
        on_step("int8: mAP on the labelled images")
        info["max_map_drop"] = options.max_map_drop
        info["map"] = _map(model, q, data, kinds)
        ok = ok and info["map"]["drop"] <= options.max_map_drop
    info["lint"] = lint.lint(q, model, options.target)
    ok = ok and not info["lint"]
    info["bytes"] = {"float": model.ByteSize(), "int8": q.ByteSize(), "ratio": round(q.ByteSize() / model.ByteSize(), 4)}
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return Int8Result(q, ok, info)


def _islands_summary(exclude: dict) -> dict:
    """reason -> node names (the report groups them)."""
    out: dict[str, list] = {}
    for node, why in exclude.items():
        out.setdefault(why, []).append(node)
    return out


def _map(model, q, data: Int8Data, kinds: dict) -> dict:
    from onnxrep.quantize import proof

    det = next(iter(kinds), None)
    if det is None:
        raise OnnxrepError("--eval: the model has no detection output to compute mAP on")
    from onnxrep.verify.detections import detection_view

    f = detection_view(proof.run_images(model, data.evals.arrays, data.input_name), det, kinds[det])
    i = detection_view(proof.run_images(q, data.evals.arrays, data.input_name), det, kinds[det])
    mf, mi = proof.mean_ap(f, "anchors-last", data.evals), proof.mean_ap(i, "anchors-last", data.evals)
    return {"output": det, "images": len(data.evals), "float": mf, "int8": mi,
            "drop": round(mf["map50_95"] - mi["map50_95"], 2)}
