"""Which outputs to keep: explicit options, or a known training-head layout recognised by structure and
shape, never by name (WongKinYiu DualDDetect/TripleDDetect, MultimediaTechLab Main/AUX)."""

from __future__ import annotations

from dataclasses import dataclass, field


import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.io import OnnxrepError
from onnxrep.ir.graph import is_std, producer
from onnxrep.passes.base import Context
from onnxrep.passes.prune.outputs import _dim, _fmt_shape, _rank, _same_dims, _same_type
from onnxrep.passes.prune.twins import lead_aux_reason, twin_reason


@dataclass
class Plan:
    """Which outputs stay, which go, and why (one sentence)."""

    keep: list                      # gs tensors, in graph order
    drop: list
    reason: str
    layout: str | None = None       # "DualDDetect", "TripleDDetect", "MultimediaTechLab", "explicit"
    main: gs.Tensor | None = None   # the output --rename-outputs renames
    declined: str | None = None     # a layout was recognised but the twin check refused it
    removed: dict = field(default_factory=dict)
    twins: dict = field(default_factory=dict)   # id(dropped-side tensor) -> kept-side twin


def plan_outputs(graph: gs.Graph, ctx: Context) -> Plan:
    """Decide which outputs to keep. Raises OnnxrepError for invalid explicit options."""
    outputs = list(graph.outputs)
    if ctx.keep_outputs or ctx.drop_outputs:
        return _explicit_plan(outputs, ctx)
    if ctx.aux == "keep":
        return Plan(outputs, [], "auxiliary head detection off (--aux keep): every output kept")
    if ctx.aux != "auto":
        raise OnnxrepError(f"--aux {ctx.aux!r}: expected 'auto' or 'keep'")
    if len(outputs) < 2:
        return Plan(outputs, [], f"{len(outputs)} output: no auxiliary head recognised")
    for detect in (_wongkinyiu_layout, _mit_layout, _iaux_layout):
        found = detect(outputs)
        if found is None:
            continue
        layout, keep, drop, main, describe = found
        pairs = [(k, d) for k, d in zip(keep * (len(drop) // len(keep)), drop)]
        twins: dict = {}
        reason = (lead_aux_reason(graph, pairs) if layout == "IAuxDetect"
                  else twin_reason(graph, outputs, pairs, twins))
        if reason:
            return Plan(outputs, [], f"{layout} layout, but every output kept: {reason}", declined=reason)
        return Plan(keep, drop, describe, layout=layout, main=main, twins=twins)
    shapes = ", ".join(f"{t.name} {_fmt_shape(t)}" for t in outputs)
    return Plan(outputs, [], f"no auxiliary head recognised among {len(outputs)} outputs ({shapes}): all kept")


def _explicit_plan(outputs: list, ctx: Context) -> Plan:
    keep = _resolve(outputs, ctx.keep_outputs, "--keep-outputs")
    drop = _resolve(outputs, ctx.drop_outputs, "--drop-outputs")
    both = [outputs[i].name for i in sorted(set(keep) & set(drop))]
    if both:
        raise OnnxrepError(f"--keep-outputs and --drop-outputs both name {', '.join(both)}")
    kept = [i for i in range(len(outputs)) if (not keep or i in keep) and i not in drop]
    if not kept:
        raise OnnxrepError(f"that would drop every output ({', '.join(t.name for t in outputs)}): keep at least one")
    dropped = [i for i in range(len(outputs)) if i not in kept]
    opt = "--keep-outputs" if keep else "--drop-outputs"
    reason = (f"as asked ({opt})" if dropped
              else f"every output kept ({opt})")
    main = outputs[kept[0]] if len(kept) == 1 else None
    return Plan([outputs[i] for i in kept], [outputs[i] for i in dropped], reason,
                layout="explicit" if dropped else None, main=main)


def _resolve(outputs: list, tokens, option: str) -> set[int]:
    """Names or 0-based indices (ints or digit strings, comma separated) -> indices. Names win."""
    names = [t.name for t in outputs]
    picked: set[int] = set()
    for token in tokens or ():
        parts = [token] if isinstance(token, (int, np.integer)) else [p.strip() for p in str(token).split(",")]
        for part in parts:
            if isinstance(part, str) and part in names:
                picked.add(names.index(part))
            elif isinstance(part, (int, np.integer)) or part.lstrip("-").isdigit():
                i = int(part)
                if not 0 <= i < len(outputs):
                    raise OnnxrepError(f"{option}: no output {i} (the model has {len(outputs)}: {', '.join(names)})")
                picked.add(i)
            elif part:
                raise OnnxrepError(f"{option}: unknown output {part!r} (outputs: {', '.join(names)})")
    return picked


def _wongkinyiu_layout(outputs: list):
    """DualDDetect / TripleDDetect: 2 or 3 outputs [B, 4+nc, A] = Concat(box, Sigmoid(cls)); main last."""
    if len(outputs) not in (2, 3):
        return None
    main = outputs[-1]
    if not all(_rank(t) == 3 and _same_type(t, main) for t in outputs):
        return None
    if not all(_is_detect_concat(t) for t in outputs):
        return None
    layout = "DualDDetect" if len(outputs) == 2 else "TripleDDetect"
    aux = outputs[:-1]
    many = len(aux) > 1
    describe = (f"{layout} layout (WongKinYiu/yolov9): {len(outputs)} outputs {_fmt_shape(main)}; "
                f"output{'s' * many} {', '.join(str(i) for i in range(len(aux)))} "
                f"({', '.join(repr(t.name) for t in aux)}) {'are' if many else 'is the'} auxiliary head{'s' * many}, "
                f"the last ({main.name!r}) the main head; twin heads confirmed")
    return layout, [main], aux, main, describe


def _mit_layout(outputs: list):
    """MultimediaTechLab YOLO: Main then AUX, each L levels × (class, anchor, box)."""
    n = len(outputs)
    if n < 6 or n % 6:
        return None
    half = n // 2
    main, aux = outputs[:half], outputs[half:]
    for k, d in zip(main, aux):
        if not _same_type(k, d):
            return None
    for i in range(0, half, 3):
        cls, anc, box = main[i:i + 3]
        if (_rank(cls), _rank(anc), _rank(box)) != (4, 5, 4):
            return None
        if _dim(box, 1) not in (4, None) or _dim(anc, 2) not in (4, None):
            return None
        if not (_same_dims(cls.shape[2:], box.shape[2:]) and _same_dims(anc.shape[3:], box.shape[2:])):
            return None
    levels = half // 3
    describe = (f"MultimediaTechLab YOLO layout: {n} outputs = Main (outputs 0-{half - 1}) + AUX "
                f"(outputs {half}-{n - 1}), {levels} levels × (class, anchor, box) each; the AUX group is the "
                f"auxiliary head; twin heads confirmed")
    return "MultimediaTechLab", main, aux, None, describe


def _iaux_layout(outputs: list):
    """YOLOv7 IAuxDetect raw outputs (Detect.export): 2·nl of [B, na, ny, nx, nc+5], nl lead then nl aux,
    each the permute(0, 1, 3, 4, 2) of a view of a 1x1 Conv's output."""
    n = len(outputs)
    if n < 4 or n % 2:
        return None
    half = n // 2
    lead, aux = outputs[:half], outputs[half:]
    for k, d in zip(lead, aux):
        if _rank(k) != 5 or not _same_type(k, d):
            return None
    for t in outputs:
        node = _skip_identity(t)
        if node is None or not is_std(node, "Transpose") or list(node.attrs.get("perm", [])) != [0, 1, 3, 4, 2]:
            return None
    describe = (f"IAuxDetect layout (YOLOv7): {n} raw outputs = lead (outputs 0-{half - 1}) + aux (outputs "
                f"{half}-{n - 1}), {half} levels [B, anchors, H, W, nc+5] each; the aux group is the auxiliary "
                f"head; lead/aux heads confirmed")
    return "IAuxDetect", lead, aux, None, describe


def _is_detect_concat(t: gs.Tensor) -> bool:
    node = _skip_identity(t)
    if node is None or not is_std(node, "Concat") or len(node.inputs) != 2:
        return False
    if int(node.attrs.get("axis", 0)) not in (1, -2):
        return False
    cls = _skip_identity(node.inputs[1])
    return cls is not None and is_std(cls, "Sigmoid") and _dim(node.inputs[0], 1) in (4, None)


def _skip_identity(t: gs.Tensor) -> gs.Node | None:
    node = producer(t)
    while node is not None and is_std(node, "Identity"):
        node = producer(node.inputs[0])
    return node
