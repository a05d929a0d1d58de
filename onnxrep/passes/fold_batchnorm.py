"""fold_batchnorm: fold every inference-mode BatchNormalization into a neighbouring linear op.

Rules, tried in this order for each BatchNormalization (one module each, same match/check/rewrite shape):
  * ``Conv|ConvTranspose -> BN``  =>  ``Conv|ConvTranspose``            (this module)
  * ``Gemm|MatMul[+Add] -> BN``   =>  ``Gemm|MatMul+Add``                (fold_batchnorm_linear)
  * ``BN -> Gemm|MatMul``         =>  ``Gemm|MatMul+Add``                (fold_batchnorm_linear)
  * ``BN -> Conv`` (no padding)   =>  ``Conv``                           (fold_batchnorm_into_conv)
A BatchNormalization that no rule takes stays, and the notes say why.

BN(x) = s*x + t per channel, with s = gamma / sqrt(var + eps), t = beta - mean*s (each node's own eps),
computed in float64 and cast back to the weight's dtype (float16/bfloat16 models too).

Conv -> BN, per output channel o:
    W' = W * s   (output-channel axis: axis 0 for Conv; for ConvTranspose the weight is [C_in, M/g, k...]
                  and output channel o = g*(M/g) + j, so the scale goes on axis 1, group by group)
    b' = (b - mean) * s + beta = b*s + t      (b = 0 when the Conv has no bias)

Preconditions (each failure is a reason in the notes):
  * BN is in inference mode (``training_mode`` 0, no running-stat output used, not ``spatial=0``);
  * the intermediate tensor feeds only the folded pair and is not a graph output;
  * weights, biases and the four BN parameters are constants (initializer, Constant node, Identity
    alias or a constant-foldable chain), never graph inputs;
  * BN parameters have one value per channel.
A shared weight is never modified: the folded weight is always a new tensor with a fresh name.
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


def private_link(graph: gs.Graph, tensor: gs.Tensor, what: str) -> str | None:
    """Reason why `tensor` (between the two folded nodes) can't disappear, or None."""
    if is_graph_output(graph, tensor):
        return f"{what} output is a graph output"
    if len(tensor.outputs) != 1:
        return f"{what} output has {len(tensor.outputs)} consumers"
    return None


def weight_and_bias(node: gs.Node, bias_index: int = 2):
    """(weight, bias or None) of a node's constant parameters, or the reason they aren't constant."""
    weight = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return f"{node.op} weight is not constant"
    bias = None
    if len(node.inputs) > bias_index and node.inputs[bias_index].name:
        bias = const_value(node.inputs[bias_index])
        if bias is None:
            return f"{node.op} bias is not constant"
    return weight, bias


def dtype_of(tensor: gs.Tensor, fallback: np.ndarray):
    return np_dtype(tensor) or fallback.dtype


def take_bn_output(node: gs.Node, bn: gs.Node) -> None:
    """Re-wire: `node` now produces the BN's output tensor (its name, so graph outputs stay intact)."""
    out = bn.outputs[0]
    bn.inputs.clear()
    bn.outputs.clear()
    node.outputs = [out]


class ConvThenBatchNorm:
    """Conv|ConvTranspose -> BN  =>  Conv|ConvTranspose with scaled weight and new bias."""

    label = "Conv -> BatchNormalization"

    @staticmethod
    def match(graph: gs.Graph, bn: gs.Node) -> gs.Node | None:
        conv = producer(bn.inputs[0]) if bn.inputs else None
        return conv if conv is not None and is_std(conv, *_CONVS) else None

    @staticmethod
    def check(graph: gs.Graph, bn: gs.Node, conv: gs.Node):
        reason = private_link(graph, conv.outputs[0], conv.op)
        if reason:
            return reason
        params = weight_and_bias(conv)
        if isinstance(params, str):
            return params
        affine = bn_scale_shift(bn)
        if isinstance(affine, str):
            return affine
        weight, bias = params
        channels = out_channels(weight.shape, conv.op, int(conv.attrs.get("group", 1)))
        if affine[0].size != channels:
            return f"BatchNormalization has {affine[0].size} channels, {conv.op} has {channels}"
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


def _rules():
    # Imported here: the rule modules import the shared helpers above.
    from onnxrep.passes.fold_batchnorm_into_conv import BatchNormThenConv
    from onnxrep.passes.fold_batchnorm_linear import BatchNormThenLinear, LinearThenBatchNorm

    # Folding into the producer first: it never needs a new node and is exact with any padding.
    return (ConvThenBatchNorm(), LinearThenBatchNorm(), BatchNormThenLinear(), BatchNormThenConv())


class FoldBatchNorm:
    name = "fold_batchnorm"

    def __init__(self):
        self.rules = _rules()

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult()
        namer = Namer(graph)
        for g in iter_graphs(graph):
            for bn in [n for n in g.nodes if is_std(n, "BatchNormalization")]:
                if not bn.inputs or not bn.outputs:
                    continue  # already folded in this run
                reason = bn_training_reason(g, bn)
                if reason:
                    result.decline(bn, reason)
                    continue
                reasons = []
                for rule in self.rules:
                    match = rule.match(g, bn)
                    if match is None:
                        continue
                    checked = rule.check(g, bn, match)
                    if isinstance(checked, str):
                        reasons.append(f"{rule.label}: {checked}")
                        continue
                    rule.rewrite(namer, g, bn, match, checked)
                    result.applied()
                    break
                else:
                    affine = bn_scale_shift(bn)  # a reason of its own beats "nothing to fold into"
                    reasons = reasons or [affine if isinstance(affine, str) else self.nothing_to_fold(g, bn)]
                    result.decline(bn, "; ".join(reasons))
        return result

    @staticmethod
    def nothing_to_fold(graph: gs.Graph, bn: gs.Node) -> str:
        source = producer(bn.inputs[0])
        readers = sorted({n.op for n in bn.outputs[0].outputs}) or ["graph output"]
        return (f"nothing to fold into (input from {source.op if source else 'a graph input'}, "
                f"read by {', '.join(readers)})")
