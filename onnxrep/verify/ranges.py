"""How large each float activation of a model gets: max |value| over the verification inputs.

The float16 conversion keeps in float32 whatever comes near float16's range (65504) or stays below its
normal range (2^-14). Every float32 node output gets a ``ReduceMax(Abs(.))`` beside it (scalar extra
outputs, so the activations themselves are never copied out), written with the model for onnxruntime as the
noisy twin's changes are (verify/runtime.py: the model itself is not touched), and the model runs once per
sample.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxrep.verify.noise import SUFFIX, _elem_types

_PROBE = SUFFIX + "_peak"


class _Probes:
    """A transform for verify/runtime.session: after each float32 node output, Abs and ReduceMax, right
    after the node that computes it."""

    def __init__(self, model: onnx.ModelProto):
        types = _elem_types(model)
        self.names = [o for node in model.graph.node
                      if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
                      for o in node.output if o and types.get(o) == TensorProto.FLOAT]
        self.probes = [f"{o}{_PROBE}" for o in self.names]

    def __call__(self, tensor, name=None):
        return None

    def rewrite(self, head: onnx.ModelProto) -> list:
        wanted = set(self.names)
        nodes = []
        for node in head.graph.node:
            nodes.append(node)
            for o in node.output:
                if o in wanted:
                    a, m = f"{o}{_PROBE}_abs", f"{o}{_PROBE}"
                    nodes += [helper.make_node("Abs", [o], [a], name=a),
                              helper.make_node("ReduceMax", [a], [m], name=m, keepdims=0)]
        del head.graph.node[:]
        head.graph.node.extend(nodes)
        head.graph.output.extend(helper.make_tensor_value_info(m, TensorProto.FLOAT, []) for m in self.probes)
        return []


def measure_ranges(model: onnx.ModelProto, feeds: list[dict]) -> tuple[dict[str, float], str]:
    """(tensor name -> the largest |value| it took on `feeds`, float32 node outputs only; why not, when the
    model could not be measured: then {} and the report says that the range rules were off)."""
    from onnxrep.verify.runtime import session, short

    probes = _Probes(model)
    if not probes.names:
        return {}, ""
    peaks = dict.fromkeys(probes.names, 0.0)
    try:
        sess = session(model, transform=probes)
        for feed in feeds:
            for name, value in zip(probes.names, sess.run(probes.probes, feed)):
                v = float(np.asarray(value))
                peaks[name] = max(peaks[name], v if np.isfinite(v) else float("inf"))
    except Exception as exc:  # noqa: BLE001 -- no measurement: the structural rules still apply, and the report says so
        return {}, f"the float32 model could not be run to measure its ranges ({short(exc)})"
    return peaks, ""
