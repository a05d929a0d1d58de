"""The detection output's layout, for the code that reads it: exact (Transpose / Split only).

    anchors-last   y [B, 4+nc, A]                      (what YOLOv9 exports write; unchanged)
    anchors-first  y [B, A, 4+nc]                      (the same name; most C++ / DeepStream parsers)
    split          boxes [B, A, 4], scores [B, A, nc]  (boxes as the head writes them: see the metadata)
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxrep.deploy.build import Builder, check_free, rename_tensor, replace_output
from onnxrep.deploy.head import DetectionHead

LAYOUTS = ("anchors-last", "anchors-first", "split")
SPLIT_NAMES = ("boxes", "scores")


def expected(y, layout: str) -> dict:
    """What the adapted outputs must be, from the head's y [B, 4+nc, A] (numpy), by output name."""
    import numpy as np

    if layout == "anchors-last":
        return {"y": y}
    if layout == "anchors-first":
        return {"y": np.transpose(y, (0, 2, 1))}
    t = np.transpose(y, (0, 2, 1))
    return {"boxes": t[..., :4], "scores": t[..., 4:]}


def add_layout(model: onnx.ModelProto, head: DetectionHead, layout: str) -> dict[str, str]:
    """Apply `layout` to the head's output; returns {role: output name} ("y", or "boxes" and "scores")."""
    if layout == "anchors-last":
        return {"y": head.output}
    if head.layout != "anchors-last":
        from onnxrep.io import OnnxrepError

        raise OnnxrepError(f"--output-layout {layout}: the head {head.output} is "
                           + ("[B, A, 5+nc] (anchors first, with objectness: YOLOv5/v6/v7)" if head.layout == "anchors-first-obj"
                              else "[B, A, 4+nc] (anchors first)") + "; the layouts apply to [B, 4+nc, A] heads")
    b = Builder(model, "onnxrep_layout", "--output-layout")
    raw = b.name("head_output")
    rename_tensor(model, head.output, raw)
    head.output = raw
    batch, anchors = head.batch if head.batch is not None else "batch", head.anchors
    if layout == "anchors-first":
        name = [o.name for o in model.graph.output][head.index]
        b.op("Transpose", [raw], perm=[0, 2, 1], out_names=[name])
        replace_output(model, name, [helper.make_tensor_value_info(name, head.elem_type, [batch, anchors, 4 + head.nc])])
        return {"y": name}
    check_free(model, list(SPLIT_NAMES), "--output-layout split")
    t = b.op("Transpose", [raw], perm=[0, 2, 1])
    b.split(t, [4, head.nc], axis=2, out_names=list(SPLIT_NAMES))
    old = [o.name for o in model.graph.output][head.index]
    replace_output(model, old, [helper.make_tensor_value_info("boxes", head.elem_type, [batch, anchors, 4]),
                                helper.make_tensor_value_info("scores", head.elem_type, [batch, anchors, head.nc])])
    return {"boxes": "boxes", "scores": "scores"}
