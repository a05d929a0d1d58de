"""Before/after figures of a model, and the report as a text table or JSON.

Parameters and MACs are counted by ir/counts.py (for a folded YOLOv9 model the parameters equal the Conv
weight+bias count of yolov9-graphs.md section 3).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx

from onnxrep.ir.counts import walk_graphs, count_parameters
from onnxrep.ir.counts import count_macs as _count_macs


@dataclass
class Stats:
    nodes: int = 0
    conv: int = 0
    batchnorm: int = 0
    parameters: int = 0
    macs: int = 0
    file_bytes: int | None = None
    ops: dict = field(default_factory=dict)


def _canonical_view(view: onnx.ModelProto) -> onnx.ModelProto:
    """The weight-less view after the canonicalize pass: shape arithmetic that ONNX data propagation can't
    follow (a chunk size computed with Div, TorchScript's dynamic-batch exports) folded where it is static."""
    import onnx_graphsurgeon as gs

    from onnxrep.ir.graph import eliminate_dead_code, model_opset
    from onnxrep.passes.base import Context
    from onnxrep.passes.cleanup import Canonicalize
    from onnxrep.ir.shapes import weightless_view

    graph = gs.import_onnx(view)
    Canonicalize().run(graph, Context(opset=model_opset(graph)))
    eliminate_dead_code(graph)
    return weightless_view(graph)


def count_macs(model: onnx.ModelProto, only: set[str] | None = None,
               canonical: onnx.ModelProto | None = None) -> int:
    """MACs as ir.counts counts them, shape arithmetic folded by canonicalize when inference alone can't
    size a linear op (TorchScript's dynamic-batch exports). canonical: that view already made (the run's
    own canonicalize pass made it of this very model: run.py), so it is not made twice."""
    return _count_macs(model, only, refine=_canonical_view, prefer=canonical)


def model_stats(model: onnx.ModelProto, file_bytes: int | None = None, macs: bool = True,
                canonical: onnx.ModelProto | None = None) -> Stats:
    ops: Counter = Counter()
    for g in walk_graphs(model.graph):
        ops.update(n.op_type for n in g.node)
    return Stats(
        nodes=sum(ops.values()),
        conv=ops.get("Conv", 0) + ops.get("ConvTranspose", 0),
        batchnorm=ops.get("BatchNormalization", 0),
        parameters=count_parameters(model.graph),
        macs=count_macs(model, canonical=canonical) if macs else 0,
        file_bytes=file_bytes,
        ops=dict(sorted(ops.items())),
    )


@dataclass
class Report:
    input: str
    output: str | None
    before: Stats
    after: Stats
    passes: dict = field(default_factory=dict)         # name -> {"count": n, "declined": [...]}
    outputs: dict = field(default_factory=dict)        # kept / dropped / renamed
    verification: dict | None = None
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)         # one line each, about the run as a whole
    deploy: dict = field(default_factory=dict)         # the deployment adapters applied (onnxrep/deploy)
    int8: dict = field(default_factory=dict)           # --precision int8 (onnxrep/quantize): placement, method, proof

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, verbose: bool = False) -> str:
        lines = [f"onnxrep: {self.input} -> {self.output or '(not written)'}", ""]
        lines.append(f"{'':<20}{'before':>16}{'after':>16}{'change':>10}")
        rows = [("nodes", "nodes"), ("Conv nodes", "conv"), ("BatchNormalization", "batchnorm"),
                ("parameters", "parameters"), ("MACs", "macs"), ("file size", "file_bytes")]
        for label, key in rows:
            a, b = getattr(self.before, key), getattr(self.after, key)
            if a is None and b is None:
                continue
            fmt = _size if key == "file_bytes" else _num
            lines.append(f"{label:<20}{fmt(a):>16}{fmt(b):>16}{_change(a, b):>10}")
        lines.append("")
        for name, info in self.passes.items():
            declined = info.get("declined", [])
            text = f"pass {name}: {info.get('count', 0)} rewritten"
            if declined:
                text += f", {len(declined)} declined"
                summary = Counter(d.split(": ", 1)[-1] for d in declined)
                text += " (" + "; ".join(f"{n}× {r}" for r, n in summary.most_common(3)) + ")"
            lines.append(text)
            if verbose:
                lines.extend(f"    declined {d}" for d in declined)
            half = info.get("float16")
            if half and half.get("ranges_not_measured"):
                lines.append(f"    float16 range rules off: {half['ranges_not_measured']}")
            if half and "kept_nodes" in half:   # what stayed float32, and why
                for reason, nodes in half["kept_nodes"].items():
                    shown = nodes if verbose else nodes[:3]
                    lines.append(f"    float32: {len(nodes)}× {reason}: {', '.join(shown)}"
                                 f"{', ...' if len(shown) < len(nodes) else ''}")
                if half["weights_flushed_to_zero"]:
                    lines.append(f"    {half['weights_flushed_to_zero']:,} weight values below float16's range "
                                 f"became 0")
                if half.get("exact_tables", {}).get("tables"):
                    e = half["exact_tables"]
                    lines.append(f"    {e['tables']} float32 tables that float16 holds exactly stored in float16, "
                                 f"read through a Cast ({e['bytes_saved']:,} bytes saved)")
        for key in ("dropped", "kept", "renamed", "note"):
            if self.outputs.get(key):
                lines.append(f"outputs {key}: {self.outputs[key]}")
        if self.outputs.get("removed"):  # what the dropped outputs alone needed
            r = self.outputs["removed"]
            lines.append(f"removed by pruning: {_num(r.get('parameters'))} parameters, {_num(r.get('macs'))} MACs, "
                         f"{_num(r.get('nodes'))} nodes ({_num(r.get('conv'))} Conv)")
        lines.extend(_deploy_lines(self.deploy))
        lines.extend(_int8_lines(self.int8, verbose))
        lines.extend(f"note: {n}" for n in self.notes)
        if self.verification is not None:
            from onnxrep.verify import OutputCheck, Verification

            v = dict(self.verification)
            v.pop("status", None)
            v["outputs"] = [OutputCheck(**o) for o in v.get("outputs", [])]
            lines.extend(Verification(**v).lines())
        return "\n".join(lines)


def _int8_lines(q: dict, verbose: bool) -> list[str]:
    if not q:
        return []
    tried = ", ".join(f"{m} {e:.4g}" for m, e in q["methods_tried"].items())
    lines = [f"int8 {q['target']}: {q['why']}",
             f"int8 calibration: {q['calibration_images']} images from {q['calib']}, {q['held_out']} held out "
             f"({q['held_out'] - q['proof_images']} choose the method, {q['proof_images']} carry the proof); "
             f"method {q['method']} (output error on the held-out images: {tried})",
             f"int8 file: {q['bytes']['ratio']:.3f} of the float32 model"]
    for reason, nodes in q["float_islands"].items():
        shown = nodes if verbose else nodes[:3]
        lines.append(f"int8 float: {len(nodes)}x {reason}: {', '.join(shown)}{', ...' if len(shown) < len(nodes) else ''}")
    for f in q.get("fallback", []):
        lines.append(f"int8 back to float: {f['node']} (SQNR {f['sqnr_db']:.1f} dB quantized alone); after it, on the "
                     f"selection images: {f['after']}")
    return lines


def _deploy_lines(d: dict) -> list[str]:
    lines = []
    if d.get("input_shapes"):
        lines.append("input shapes fixed before the passes: "
                     + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in d["input_shapes"].items()))
    if d.get("batch"):
        b = d["batch"]
        joined = [w for w in b["rewritten"] if w.startswith("Concat ")]   # a constant joined to batched tensors
        shaped = [w for w in b["rewritten"] if w not in joined]
        lines.append(f"deploy batch: dynamic (exported at {b['from']}); {len(shaped)} shape constants read "
                     f"the batch at run time" + (f": {', '.join(shaped[:4])}{', ...' if len(shaped) > 4 else ''}"
                                                 if shaped else "")
                     + (f"; {len(joined)} constant{'s' * (len(joined) > 1)} joined to the batch expanded to it: "
                        f"{', '.join(joined[:4])}{', ...' if len(joined) > 4 else ''}" if joined else ""))
        if b.get("static_inputs"):   # a [1] threshold, a [1, 4] table: a first dim of 1 that is no batch
            lines.append(f"deploy batch: inputs without a batch keep their shape: {', '.join(b['static_inputs'])}")
    if d.get("input"):
        i = d["input"]
        how = f"folded into {', '.join(i['folded'])}" if i["folded"] else "spelled out"
        lines.append(f"deploy input {i['input']}: {i['format']}{', BGR' if i['bgr'] else ', RGB'}; preprocessing {how}"
                     + (f" ({'; '.join(i['explicit'])}: spelled out there)" if i["folded"] and i["explicit"] else ""))
    if d.get("split"):
        sp = d["split"]
        lines.append(f"deploy head: {sp['boxes']} and {sp['scores']} (a split head) joined into one [B, 4+nc, A] "
                     f"tensor {sp['joined']} (Transpose, Concat) before the adapters")
    if d.get("nms"):
        n = d["nms"]
        lines.append(f"deploy NMS {n['nms']}: conf {n['conf']:g}, iou {n['iou']:g}, max_det {n['max_det']}, "
                     f"{'class-agnostic' if n['class_agnostic'] else 'per class'}"
                     f"{', multi-label' if n.get('multi_label') else ''} -> num_dets, det_boxes, "
                     f"det_scores, det_classes")
    if d.get("output_layout") and d["output_layout"]["layout"] != "anchors-last":
        o = d["output_layout"]
        shapes = o.get("shapes", {})
        lines.append(f"deploy output layout {o['layout']}: " + ", ".join(
            f"{name} {shapes[name]}" if name in shapes else name for name in o["outputs"].values()))
    if d.get("metadata"):
        m = d["metadata"]
        shown = {k: v for k, v in m.items() if k not in ("names", "nms")}
        if "names" in m:
            shown["names"] = f"{m['names'].count(':')} classes"
        lines.append("deploy metadata: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    return lines


def _num(v) -> str:
    return "-" if v is None else f"{v:,}"


def _size(v) -> str:
    if v is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v:.1f} {unit}" if unit != "B" else f"{v} B"
        v /= 1000
    return str(v)


def _change(a, b) -> str:
    if not a or b is None:
        return ""
    return f"{(b - a) / a * 100:+.1f}%"
