"""fold_batchnorm rule: ``Conv|ConvTranspose -> BN``  =>  ``Conv|ConvTranspose``.

Per output channel o:
    W' = W * s   (output-channel axis: axis 0 for Conv; for ConvTranspose the weight is [C_in, M/g, k...]
                  and output channel o = g*(M/g) + j, so the scale goes on axis 1, group by group)
    b' = (b - mean) * s + beta = b*s + t      (b = 0 when the Conv has no bias)
Preconditions: the Conv output feeds only the BN and is not a graph output; constant weights; one BN value
per output channel. The folded weight is a new tensor with a fresh name (a shared weight stays intact).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, is_std, make_const, producer
from onnxrep.passes.batchnorm.common import (affine_input, affine_of, dtype_of, fit, out_channels, private_link,
                                             scale_conv_weight, take_bn_output, weight_and_bias)

_CONVS = ("Conv", "ConvTranspose")


class ConvThenBatchNorm:
    """Conv|ConvTranspose -> BN  =>  Conv|ConvTranspose with scaled weight and new bias."""

    label = "Conv -> {op}"

    @staticmethod
    def match(graph: gs.Graph, bn: gs.Node) -> gs.Node | None:
        conv = producer(affine_input(bn)) if bn.inputs else None
        return conv if conv is not None and is_std(conv, *_CONVS) else None

    @staticmethod
    def check(graph: gs.Graph, bn: gs.Node, conv: gs.Node, types=None):
        reason = private_link(graph, conv.outputs[0], conv.op)
        if reason:
            return reason
        params = weight_and_bias(conv)
        if isinstance(params, str):
            return params
        weight, bias = params
        channels = out_channels(weight.shape, conv.op, int(conv.attrs.get("group", 1)))
        affine = affine_of(bn, types, channels)   # x is the Conv's output: it has `channels` channels
        if isinstance(affine, str):
            return affine
        affine = fit(affine, channels, bn, conv.op)
        if isinstance(affine, str):
            return affine
        return weight, bias, affine[0], affine[1]

    @staticmethod
    def rewrite(namer: Namer, graph: gs.Graph, bn: gs.Node, conv: gs.Node, checked) -> None:
        weight, bias, scale, shift = checked
        dtype = dtype_of(conv.inputs[1], weight)
        w64 = scale_conv_weight(weight.astype(np.float64), scale, conv.op, int(conv.attrs.get("group", 1)))
        b64 = shift + (0.0 if bias is None else bias.astype(np.float64).reshape(-1) * scale)
        base = conv.name or bn.name or "conv"
        conv.inputs = [conv.inputs[0], make_const(namer, f"{base}.weight_bnfold", w64.astype(dtype)),
                       make_const(namer, f"{base}.bias_bnfold", b64.astype(dtype))]
        take_bn_output(conv, bn)
