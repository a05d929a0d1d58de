"""Per-layer sensitivity: each quantized matrix layer's SQNR when it alone is quantized, all in one run.

    scores = layer_sqnr(float_model, q, feeds)        # node name -> dB (lowest = most sensitive)

For every Conv/Gemm/MatMul of the float model that the Q/DQ model quantized (its input read through a
DequantizeLinear and its weight a DequantizeLinear of a constant), a copy of the layer is added beside it
that reads Q/DQ(input) with the int8 model's scale and zero point and the dequantized int8 weight; both the
layer's output and the copy's become graph outputs. One run per image gives every layer's local error on
float inputs: the error that layer adds by itself, not the error it inherits.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxrep.quantize.lint import _consts
from onnxrep.quantize.placement import MATRIX, producers
from onnxrep.verify.runtime import session


def _quantized_layers(q: onnx.ModelProto):
    """name -> (input Q/DQ params (scale, zero point) names' values, dequantized weight) for the layers q quantized."""
    g = q.graph
    prod, consts = producers(g), _consts(g)
    found = {}
    for n in g.node:
        if n.op_type not in MATRIX or len(n.input) < 2:
            continue
        xdq, wdq = prod.get(n.input[0]), prod.get(n.input[1])
        if not (xdq is not None and xdq.op_type == "DequantizeLinear" and wdq is not None
                and wdq.op_type == "DequantizeLinear" and wdq.input[0] in consts):
            continue
        w = consts[wdq.input[0]].astype(np.float32)
        ws = consts[wdq.input[1]].astype(np.float32)
        wz = consts[wdq.input[2]].astype(np.float32) if len(wdq.input) > 2 and wdq.input[2] else 0.0
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1)
        if ws.size > 1:
            shape = [1] * w.ndim
            shape[axis] = ws.size
            ws = ws.reshape(shape)
            wz = np.asarray(wz).reshape(shape) if np.size(wz) > 1 else wz
        found[n.name] = (xdq.input[1], xdq.input[2] if len(xdq.input) > 2 else "", (w - wz) * ws)
    return found, consts


def layer_sqnr(model: onnx.ModelProto, q: onnx.ModelProto, feeds: list[dict]) -> dict[str, float]:
    layers, qconsts = _quantized_layers(q)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    g = probe.graph
    pairs = []
    for node in list(g.node):
        if node.name not in layers or node.op_type not in MATRIX:
            continue
        scale, zp, w = layers[node.name]
        base = f"onnxrep_sens/{node.name}"
        inits = [numpy_helper.from_array(qconsts[scale], f"{base}/x_scale"),
                 numpy_helper.from_array(w.astype(np.float32), f"{base}/w")]
        qin = [node.input[0], f"{base}/x_scale"]
        if zp:
            inits.append(numpy_helper.from_array(qconsts[zp], f"{base}/x_zp"))
            qin.append(f"{base}/x_zp")
        g.initializer.extend(inits)
        g.node.extend([helper.make_node("QuantizeLinear", qin, [f"{base}/xq"], name=f"{base}/q"),
                       helper.make_node("DequantizeLinear", [f"{base}/xq", *qin[1:]], [f"{base}/x"], name=f"{base}/dq")])
        copy = helper.make_node(node.op_type, [f"{base}/x", f"{base}/w", *node.input[2:]], [f"{base}/y"],
                                name=f"{base}/layer")
        copy.attribute.extend(node.attribute)
        g.node.append(copy)
        for t in (node.output[0], f"{base}/y"):
            if t not in {o.name for o in g.output}:   # a layer whose output is the model's own (a classifier's Gemm)
                g.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
        pairs.append((node.name, node.output[0], f"{base}/y"))
    if not pairs:
        return {}
    sess = session(probe)
    names = [p[1] for p in pairs] + [p[2] for p in pairs]
    signal = np.zeros(len(pairs))
    noise = np.zeros(len(pairs))
    for feed in feeds:
        values = sess.run(names, feed)
        for k in range(len(pairs)):
            y, yq = values[k].astype(np.float64), values[len(pairs) + k].astype(np.float64)
            signal[k] += np.sum(y * y)
            noise[k] += np.sum((y - yq) ** 2)
    return {name: float(10 * np.log10(max(s, 1e-300) / n)) if n > 0 else float("inf")
            for (name, _, _), s, n in zip(pairs, signal, noise)}
