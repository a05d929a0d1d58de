"""How large each float activation of a model gets: max |value| over the verification inputs.

The float16 conversion keeps in float32 whatever comes near float16's range (65504) or stays below its
normal range (2^-14). Every float32 node output gets a ``ReduceMax(Abs(.))`` beside it (scalar extra
outputs, so the activations themselves are never copied out), in the same borrowed-and-restored way as the
noisy twin (verify/noise.py), and the model runs once per sample.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxrep.verify.noise import SUFFIX, _elem_types, appended

_PROBE = SUFFIX + "_peak"


def measure_ranges(model: onnx.ModelProto, feeds: list[dict]) -> tuple[dict[str, float], str]:
    """(tensor name -> the largest |value| it took on `feeds`, float32 node outputs only; why not, when the
    model could not be measured: then {} and the report says that the range rules were off)."""
    from onnxrep.verify.runtime import session, short

    types = _elem_types(model)
    nodes, outputs, names = [], [], []
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        for o in node.output:
            if o and types.get(o) == TensorProto.FLOAT:
                a, m = f"{o}{_PROBE}_abs", f"{o}{_PROBE}"
                nodes += [helper.make_node("Abs", [o], [a], name=a), helper.make_node("ReduceMax", [a], [m], name=m,
                                                                                         keepdims=0)]
                outputs.append(helper.make_tensor_value_info(m, TensorProto.FLOAT, []))
                names.append(o)
    if not names:
        return {}, ""
    peaks = dict.fromkeys(names, 0.0)
    try:
        with appended(model, nodes, outputs):
            sess = session(model)
        probes = [o.name for o in outputs]
        for feed in feeds:
            for name, value in zip(names, sess.run(probes, feed)):
                v = float(np.asarray(value))
                peaks[name] = max(peaks[name], v if np.isfinite(v) else float("inf"))
    except Exception as exc:  # noqa: BLE001 -- no measurement: the structural rules still apply, and the report says so
        return {}, f"the float32 model could not be run to measure its ranges ({short(exc)})"
    return peaks, ""
