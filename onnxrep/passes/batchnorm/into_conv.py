"""fold_batchnorm rule: ``BN -> Conv`` (BN before a Conv without padding)  =>  ``Conv``.

Conv(s*x + t) = Conv_W(s*x) + Conv_W(t): with ci(o, i) the input channel that weight W[o, i] reads
(ci = group(o) * C/g + i),
    W'[o, i, k...] = W[o, i, k...] * s[ci(o, i)]
    b'[o]          = b[o] + sum_{i, k} W[o, i, k] * t[ci(o, i)]
With a shift t, exact only when every output pixel sees a full window of real input: padding would mix in
zeros where the original saw t, so a padded Conv is declined (a pure scale, t = 0, is exact with any padding:
a scaled zero is zero). ConvTranspose is not matched. The affine node is a BatchNormalization or a per-channel
Mul/Add/Sub/Div by a constant (common.py): YOLOv7's ImplicitA is ``Conv(x + a)``.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, conv_attrs, is_std, make_const
from onnxrep.passes.batchnorm.common import affine_input, affine_of, dtype_of, fit, private_link, weight_and_bias


def input_channel_map(weight_shape: tuple, group: int) -> np.ndarray:
    """ci[o, i]: the input channel that W[o, i] reads."""
    m, c_per_group = weight_shape[:2]
    per_group_out = m // group
    groups = np.arange(m) // per_group_out
    return groups[:, None] * c_per_group + np.arange(c_per_group)[None, :]


class BatchNormThenConv:
    label = "{op} -> Conv"

    @staticmethod
    def match(graph: gs.Graph, bn: gs.Node):
        # any Conv reader is a match; check() then says why a second reader blocks the fold
        return next((n for n in bn.outputs[0].outputs if is_std(n, "Conv") and n.inputs[0] is bn.outputs[0]), None)

    @staticmethod
    def check(graph: gs.Graph, bn: gs.Node, conv: gs.Node, types=None):
        reason = private_link(graph, bn.outputs[0], bn.op)
        if reason:
            return reason
        params = weight_and_bias(conv)
        if isinstance(params, str):
            return params
        weight, bias = params
        attrs = conv_attrs(conv, weight.ndim - 2)
        affine = affine_of(bn, types)
        if isinstance(affine, str):
            return affine
        affine = fit(affine, weight.shape[1] * attrs["group"], bn, "the Conv's input")
        if isinstance(affine, str):
            return affine
        padded = attrs["auto_pad"] not in ("NOTSET", "VALID") or any(attrs["pads"])
        if padded and np.any(affine[1] != 0):   # a pure scale is exact: a scaled zero is zero
            return f"the Conv pads its input: padding would see zeros where the {bn.op} gave its shift"
        return weight, bias, attrs["group"], affine[0], affine[1]

    @staticmethod
    def rewrite(namer: Namer, graph: gs.Graph, bn: gs.Node, conv: gs.Node, checked) -> None:
        weight, bias, group, s, t = checked
        dtype = dtype_of(conv.inputs[1], weight)
        w = weight.astype(np.float64)
        ci = input_channel_map(w.shape, group)
        expand = (slice(None), slice(None)) + (None,) * (w.ndim - 2)
        new_w = w * s[ci][expand]
        new_b = (w * t[ci][expand]).reshape(w.shape[0], -1).sum(axis=1)
        if bias is not None:
            new_b = new_b + bias.astype(np.float64).reshape(-1)
        base = conv.name or bn.name or "conv"
        x = affine_input(bn)
        bn.inputs.clear()
        bn.outputs.clear()
        conv.inputs = [x, make_const(namer, f"{base}.weight_bnfold", new_w.astype(dtype)),
                       make_const(namer, f"{base}.bias_bnfold", new_b.astype(dtype))]

