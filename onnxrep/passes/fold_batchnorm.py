"""fold_batchnorm: ``Conv|ConvTranspose -> BatchNormalization``  =>  ``Conv|ConvTranspose``.

Algebra (inference-mode BN, per output channel o):
    s[o]  = gamma[o] / sqrt(var[o] + eps)
    W'    = W * s           (on the output-channel axis: axis 0 for Conv; for ConvTranspose the
                             weight is [C_in, M/g, k...] and output channel o = g*(M/g) + j, so the
                             scale is applied per group on axis 1)
    b'    = (b - mean) * s + beta          (b = 0 when the Conv has no bias)
Computed in float64 and cast back to the weight's dtype (float16/bfloat16 models too).

Preconditions (each failure is a reason in the notes):
  * BN is in inference mode (``training_mode`` 0, no running-stat output used, not ``spatial=0``);
  * the Conv output feeds only this BN and is not a graph output;
  * Conv weight/bias and the four BN parameters are constants (initializer, Constant node, Identity
    alias or a constant-foldable chain), never graph inputs;
  * BN parameters have one value per output channel.
A shared Conv weight is never modified: the folded weight is always a new tensor with a fresh name.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.graph import Namer, const_value, is_graph_output, is_std, iter_graphs, make_const, np_dtype, producer
from onnxrep.passes.base import Context, PassResult

_CONVS = ("Conv", "ConvTranspose")


def bn_training_reason(graph: gs.Graph, bn: gs.Node) -> str | None:
    """Why this BatchNormalization uses batch statistics (and so must not be folded), or None."""
    if int(bn.attrs.get("training_mode", 0)) != 0:
        return "BatchNormalization in training mode (training_mode=1): it uses batch statistics"
    if "is_test" in bn.attrs and int(bn.attrs["is_test"]) == 0:
        return "BatchNormalization in training mode (is_test=0)"
    if int(bn.attrs.get("spatial", 1)) == 0:
        return "BatchNormalization with spatial=0 (per-element statistics)"
    for extra in bn.outputs[1:]:
        if extra.outputs or is_graph_output(graph, extra):
            return "BatchNormalization running-statistics outputs are used (training form)"
    return None


def bn_scale_shift(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) in float64 with BN(x) = s*x + t per channel, or the reason the parameters aren't usable."""
    params = [const_value(t) if t.name else None for t in bn.inputs[1:5]]
    if len(bn.inputs) < 5 or any(p is None for p in params):
        return "BatchNormalization parameters are not constant"
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
    if not (gamma.size == beta.size == mean.size == var.size):
        return "BatchNormalization parameters have different lengths"
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def scale_conv_weight(weight: np.ndarray, scale: np.ndarray, op: str, group: int) -> np.ndarray:
    """Multiply each output channel's kernel by scale[o] (float64 in, float64 out)."""
    if op == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    c_in, m_per_group = weight.shape[:2]
    w = weight.reshape((group, c_in // group, m_per_group) + weight.shape[2:])
    s = scale.reshape((group, 1, m_per_group) + (1,) * (weight.ndim - 2))
    return (w * s).reshape(weight.shape)


def out_channels(weight_shape: tuple, op: str, group: int) -> int:
    return weight_shape[0] if op == "Conv" else weight_shape[1] * group


class FoldBatchNorm:
    name = "fold_batchnorm"

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult()
        namer = Namer(graph)
        for g in iter_graphs(graph):
            for bn in [n for n in g.nodes if is_std(n, "BatchNormalization")]:
                match = self.match(g, bn)
                if match is None:
                    continue  # not preceded by a Conv: a standalone BN is another pass's business
                checked = self.check(g, bn, match)
                if isinstance(checked, str):
                    result.decline(bn, checked)
                    continue
                self.rewrite(namer, match, bn, *checked)
                result.applied()
        return result

    @staticmethod
    def match(graph: gs.Graph, bn: gs.Node) -> gs.Node | None:
        conv = producer(bn.inputs[0]) if bn.inputs else None
        if conv is None or not is_std(conv, *_CONVS):
            return None
        return conv

    @staticmethod
    def check(graph: gs.Graph, bn: gs.Node, conv: gs.Node):
        reason = bn_training_reason(graph, bn)
        if reason:
            return reason
        y = conv.outputs[0]
        if is_graph_output(graph, y):
            return f"{conv.op} output is a graph output"
        if len(y.outputs) != 1:
            return f"{conv.op} output has {len(y.outputs)} consumers"
        weight = const_value(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if weight is None:
            return f"{conv.op} weight is not constant"
        bias = None
        if len(conv.inputs) > 2 and conv.inputs[2].name:
            bias = const_value(conv.inputs[2])
            if bias is None:
                return f"{conv.op} bias is not constant"
        affine = bn_scale_shift(bn)
        if isinstance(affine, str):
            return affine
        group = int(conv.attrs.get("group", 1))
        channels = out_channels(weight.shape, conv.op, group)
        if affine[0].size != channels:
            return f"BatchNormalization has {affine[0].size} channels, {conv.op} has {channels}"
        return weight, bias, affine[0], affine[1]

    @staticmethod
    def rewrite(namer: Namer, conv: gs.Node, bn: gs.Node, weight, bias, scale, shift) -> None:
        dtype = np_dtype(conv.inputs[1]) or weight.dtype
        group = int(conv.attrs.get("group", 1))
        w64 = scale_conv_weight(weight.astype(np.float64), scale, conv.op, group)
        b64 = shift + (0.0 if bias is None else bias.astype(np.float64).reshape(-1) * scale)
        base = conv.name or bn.name or "conv"
        new_w = make_const(namer, f"{base}.weight_bnfold", w64.astype(dtype))
        new_b = make_const(namer, f"{base}.bias_bnfold", b64.astype(dtype))
        conv.inputs = [conv.inputs[0], new_w, new_b]
        out = bn.outputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        conv.outputs = [out]  # the BN's output tensor keeps its name: graph outputs stay intact
