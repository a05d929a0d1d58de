"""The Q/DQ lint: what TensorRT's explicit quantization (and a fast OpenVINO) need of a Q/DQ model.

    problems = lint(q, float_model, "trt")      # [] when it is clean; else one line per problem (first 5 of each)

Rules (each a list of findings):
- int8 only, zero point 0: every QuantizeLinear/DequantizeLinear has an int8 zero point equal to 0 (a missing
  zero point means uint8, so it is a finding too); an int32 bias's zero point is 0. The ort target's
  activations are uint8 with any zero point (its weights still int8, zero point 0).
- finite positive scales.
- per-channel weights: the DequantizeLinear of a Conv/Gemm/MatMul constant weight has one scale per output
  channel (merged RepConv kernels have outlier channels a per-tensor scale would crush).
- one scale per Concat group (trt, openvino): every Q/DQ'd input of a Concat and its Q/DQ'd output carry
  the same scale; so do the input and the outputs of MaxPool, Resize, Slice, Split, Reshape, Transpose...
- no Q/DQ pair on the Conv-fed input of an Add (trt, openvino: it blocks TensorRT's Conv+Add fusion).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxrep.quantize.placement import MOVERS, conv_fed, producers


def _consts(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def _scale_of(prod, consts, tensor: str):
    """The scale of the DequantizeLinear that produces `tensor` (None when no DQ does)."""
    node = prod.get(tensor)
    if node is not None and node.op_type == "DequantizeLinear":
        return consts.get(node.input[1])
    return None


def lint(q: onnx.ModelProto, float_model: onnx.ModelProto, target: str = "trt") -> list[str]:
    g = q.graph
    prod, consts = producers(g), _consts(g)
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    fprod = producers(float_model.graph)
    float_readers: dict[str, int] = {}
    for n in float_model.graph.node:
        for i in n.input:
            float_readers[i] = float_readers.get(i, 0) + 1
    found: dict[str, list[str]] = {}

    def add(rule: str, text: str) -> None:
        found.setdefault(rule, []).append(text)

    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        add("no Q/DQ", "the model has no QuantizeLinear/DequantizeLinear node")
    for n in qdq:
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            add("scales", f"{n.name}: scale is not a constant")
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            add("scales", f"{n.name}: scale not finite and positive ({np.asarray(scale).ravel()[:3]})")
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        const = n.op_type == "DequantizeLinear" and n.input[0] in consts
        if const and consts[n.input[0]].dtype == np.int32:   # a bias (onnxruntime's int32 bias): zero point 0
            if zp is not None and np.any(zp != 0):
                add("int8, zero point 0", f"{n.name}: bias zero point {zp.ravel()[:3]} is not 0")
            continue
        if not const and target == "ort":
            continue   # onnxruntime's uint8 activations: any zero point
        if zp is None:
            add("int8, zero point 0", f"{n.name}: no zero point (uint8)")
        elif zp.dtype != np.int8:
            add("int8, zero point 0", f"{n.name}: zero point is {zp.dtype}")
        elif np.any(zp != 0):
            add("int8, zero point 0", f"{n.name}: zero point {zp.ravel()[:3]} is not 0")
    for n in g.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1:
            dq = prod.get(n.input[1])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in consts:
                continue
            w, scale = consts[dq.input[0]], np.asarray(consts.get(dq.input[1]))
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            channels = w.shape[axis] if w.ndim else 1
            if w.ndim > 1 and channels > 1 and scale.size != channels:
                add("per-channel weights", f"{n.name}: {scale.size} weight scale(s) for {channels} channels")
        elif n.op_type in MOVERS and target != "ort" and n.input:
            scale = _scale_of(prod, consts, n.input[0])
            outs = [consts.get(r.input[1]) for o in n.output for r in readers.get(o, []) if r.op_type == "QuantizeLinear"]
            if scale is not None and any(x is None or not np.array_equal(x, scale) for x in outs):
                add("one scale across MaxPool/Resize/Slice/Split", f"{n.name} ({n.op_type}): input and output scales differ")
        elif n.op_type == "Concat" and target != "ort":
            scales = [s for s in (_scale_of(prod, consts, i) for i in n.input) if s is not None]
            for r in readers.get(n.output[0], []):
                if r.op_type == "QuantizeLinear":
                    scales.append(consts.get(r.input[1]))
            if len(scales) > 1 and any(s is None or not np.array_equal(s, scales[0]) for s in scales):
                add("one scale per Concat group", f"{n.name}: scales {sorted({float(np.ravel(s)[0]) for s in scales if s is not None})}")
        elif n.op_type == "Add" and target in ("trt", "openvino") and len(n.input) == 2:
            behind = [_float_of(prod, i) for i in n.input]
            if all(b != i for b, i in zip(behind, n.input)) and any(
                    float_readers.get(b, 0) == 1 and conv_fed(fprod, b) for b in behind):
                add("Conv+Add fusion", f"{n.name}: Q/DQ on both inputs, one of them Conv-fed")
    lines = []
    for rule, items in found.items():
        more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
        lines.append(f"{rule}: {'; '.join(items[:5])}{more}")
    return lines


def _float_of(prod, tensor: str) -> str:
    """The float tensor behind DQ(Q(t)), or the tensor itself."""
    dq = prod.get(tensor)
    if dq is not None and dq.op_type == "DequantizeLinear":
        qn = prod.get(dq.input[0])
        if qn is not None and qn.op_type == "QuantizeLinear":
            return qn.input[0]
    return tensor
