"""inspect: what a model is, and what ``onnxrep optimize`` would do to it, without changing anything.

The "structure analysis" deployers ask for before they convert: inputs and outputs with shapes, opset,
node/op histogram, parameters and MACs, the auxiliary head the pruning would drop (and why, or why
not), and how many candidates each pass would rewrite, with the reasons for those it would decline.

The passes' counts come from a dry run of the real pipeline on a private copy of the graph, with the
same options ``optimize`` would get, so ``inspect`` and ``optimize`` can't disagree. Nothing is written.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx

from onnxrep import io as _io
from onnxrep.report import Stats, model_stats

_OUTPUT_KEYS = ("kept", "dropped", "note", "removed", "renamed")


@dataclass
class Inspection:
    model: str
    file_bytes: int | None
    ir_version: int
    opsets: dict                                     # domain ("" = default) -> version
    producer: str
    inputs: list = field(default_factory=list)       # {"name", "dtype", "shape"}
    outputs: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    aux: dict = field(default_factory=dict)          # prune_outputs' answer: kept, dropped, note, removed
    passes: dict = field(default_factory=dict)       # name -> {"count": n, "declined": [...]}
    detection: dict = field(default_factory=dict)    # deploy/head.py on the dry run's result: heads, reasons
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, verbose: bool = False) -> str:
        size = f"{self.file_bytes / 1e6:,.1f} MB; " if self.file_bytes else ""
        opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in self.opsets.items())
        producer = f"; producer {self.producer}" if self.producer else ""
        lines = [f"model       {self.model} ({size}IR {self.ir_version}, opset {opsets}{producer})"]
        for label, items in (("inputs", self.inputs), ("outputs", self.outputs)):
            width = max((len(t["name"]) for t in items), default=0)
            for i, t in enumerate(items):
                head = label if i == 0 else ""
                lines.append(f"{head:<12}{t['name']:<{width}}  {t['dtype']:<8} {_shape(t['shape'])}")
            if not items:
                lines.append(f"{label:<12}(none)")
        if self.metadata:
            lines.append(f"{'metadata':<12}" + ", ".join(self.metadata))
        s = self.stats
        ops = sorted(s.ops.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append(f"{'nodes':<12}{s.nodes:,}: " + _wrap([f"{op} {n:,}" for op, n in ops], 12))
        lines.append(f"{'parameters':<12}{s.parameters:,} ({_si(s.parameters)})")
        lines.append(f"{'MACs':<12}{s.macs:,} ({_si(s.macs)})")
        lines.append("")
        aux = self.aux
        if aux.get("dropped"):
            lines.append(f"auxiliary head: would drop {', '.join(aux['dropped'])}; keep {', '.join(aux.get('kept', []))}")
        else:
            lines.append("auxiliary head: none to drop")
        if aux.get("note"):
            lines.append(f"  why: {aux['note']}")
        removed = aux.get("removed")
        if removed:
            lines.append(f"  removes {removed['parameters']:,} parameters ({_si(removed['parameters'])}), "
                         f"{removed['macs']:,} MACs ({_si(removed['macs'])}), {removed['nodes']:,} nodes "
                         f"({removed['conv']:,} Conv)")
        if aux.get("renamed"):
            lines.append(f"  renames {', '.join(f'{a} -> {b}' for a, b in aux['renamed'].items())}")
        for h in self.detection.get("heads", []):
            what = {"anchors-last": "[B, 4+nc, A]", "anchors-first-obj": "[B, A, 5+nc] with objectness",
                    "anchors-first": "[B, A, 4+nc]"}.get(h["layout"])
            if h["layout"] == "split":
                what = (f"split: boxes {'[B, A, 4]' if h['boxes_first'] else '[B, 4, A]'} + scores {h['scores']} "
                        f"{'[B, A, nc]' if h['scores_first'] else '[B, nc, A]'}")
            lines.append(f"detection head: {h['output']} ({what}; {h['nc']} classes, {h['box_coding']} boxes, strides "
                         f"{'/'.join(map(str, h['strides'])) or '?'}, {h['anchors']} anchors): --nms "
                         f"{'applies' if h['layout'].startswith('anchors-first') else 'and --output-layout apply'}")
        if not self.detection.get("heads"):
            why = "; ".join(f"{k}: {v}" for k, v in self.detection.get("reasons", {}).items())
            lines.append(f"detection head: none recognised, --nms and --output-layout do not apply ({why})")
        lines.append("")
        lines.append("passes (a dry run of `onnxrep optimize`, in pipeline order):")
        width = max((len(n) for n in self.passes), default=0)
        for name, info in self.passes.items():
            declined = info.get("declined", [])
            text = f"  {name:<{width}}  {info.get('count', 0):,} to rewrite"
            if declined:
                reasons = Counter(d.split(": ", 1)[-1] for d in declined)
                text += f", {len(declined)} declined: " + "; ".join(f"{n}× {r}" for r, n in reasons.most_common(3))
                if len(reasons) > 3 and not verbose:
                    text += f"; ... (-v for all {len(declined)})"
            lines.append(text)
            if verbose:
                lines.extend(f"      declined {d}" for d in declined)
        return "\n".join(lines)


def inspect(model_or_path, *, aux: str = "auto", keep_outputs=(), drop_outputs=(),
            rename_outputs: bool = False, on_step=None) -> Inspection:
    """Describe a model (path or ModelProto) and dry-run the default pipeline on a copy of it."""
    from onnxrep.ir.graph import import_model
    from onnxrep.passes import DEFAULT_PIPELINE, Context, run_pipeline

    step = on_step or (lambda _msg: None)
    seconds = {}
    t0 = time.perf_counter()
    step("loading")
    # a copy of an in-memory model: the dry run must not be able to touch the caller's model
    model, info, label = _io.load_any(model_or_path, copy=True)
    file_bytes = info.file_bytes if info else None
    seconds["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    step("counting")
    stats = model_stats(model, file_bytes)
    opsets = {o.domain: o.version for o in model.opset_import}
    initializers = {t.name for t in model.graph.initializer}
    result = Inspection(
        model=label, file_bytes=file_bytes, ir_version=model.ir_version, opsets=opsets,
        producer=" ".join(x for x in (model.producer_name, model.producer_version) if x),
        inputs=[_value(v) for v in model.graph.input if v.name not in initializers],
        outputs=[_value(v) for v in model.graph.output],
        metadata={p.key: p.value for p in model.metadata_props},
        stats=stats,
    )
    seconds["count"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ctx = Context(opset=opsets.get("", opsets.get("ai.onnx", 17)), aux=aux, keep_outputs=tuple(keep_outputs),
                  drop_outputs=tuple(drop_outputs), rename_outputs=rename_outputs)
    graph = import_model(model)
    results = run_pipeline(graph, ctx, DEFAULT_PIPELINE, on_pass=lambda name: step(f"dry run {name}"))
    result.passes = {name: {"count": r.count, "declined": list(r.notes)} for name, r in results.items()}
    for r in results.values():
        result.aux.update({k: r.info[k] for k in _OUTPUT_KEYS if k in r.info})
    seconds["dry_run"] = time.perf_counter() - t0
    from onnxrep.deploy.head import find_heads
    from onnxrep.export import from_graph

    heads, reasons = find_heads(from_graph(graph, model))
    result.detection = {"heads": [asdict(h) for h in heads], "reasons": reasons}
    result.seconds = {k: round(v, 3) for k, v in seconds.items()}
    return result


def _value(vi: onnx.ValueInfoProto) -> dict:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        return {"name": vi.name, "dtype": vi.type.WhichOneof("value") or "?", "shape": None}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "?"
    if tt.elem_type == onnx.TensorProto.BFLOAT16:
        dtype = "bfloat16"
    shape = None
    if tt.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    return {"name": vi.name, "dtype": dtype, "shape": shape}


def _shape(shape) -> str:
    return "[?]" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _si(n: int | None) -> str:
    if not n:
        return "0"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


def _wrap(items: list[str], indent: int, width: int = 100) -> str:
    lines, cur = [], ""
    for item in items:
        piece = item if not cur else f", {item}"
        if cur and indent + len(cur) + len(piece) > width:
            lines.append(cur + ",")
            cur = item
        else:
            cur += piece
    lines.append(cur)
    return ("\n" + " " * indent).join(lines)
