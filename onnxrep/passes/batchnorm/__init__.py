"""fold_batchnorm: fold every inference-mode BatchNormalization into a neighbouring linear op.

Rules, tried in this order for each BatchNormalization (one module each, same match/check/rewrite shape):
  * ``Conv|ConvTranspose -> BN``  =>  ``Conv|ConvTranspose``            (batchnorm/conv.py)
  * ``Gemm|MatMul[+Add] -> BN``   =>  ``Gemm|MatMul+Add``                (batchnorm/linear.py)
  * ``BN -> Gemm|MatMul``         =>  ``Gemm|MatMul+Add``                (batchnorm/linear.py)
  * ``BN -> Conv`` (no padding)   =>  ``Conv``                           (batchnorm/into_conv.py)
A BatchNormalization that no rule takes stays, and the notes say why.

BN(x) = s*x + t per channel, with s = gamma / sqrt(var + eps), t = beta - mean*s (each node's own eps),
computed in float64 and cast back to the weight's dtype (float16/bfloat16 models too). Each rule module
states its algebra; batchnorm/common.py holds what they share.

Preconditions (each failure is a reason in the notes):
  * BN is in inference mode (``training_mode`` 0, no running-stat output used, not ``spatial=0``);
  * the intermediate tensor feeds only the folded pair and is not a graph output;
  * weights, biases and the four BN parameters are constants (initializer, Constant node, Identity
    alias or a constant-foldable chain), never graph inputs;
  * BN parameters have one value per channel.
A shared weight is never modified: the folded weight is always a new tensor with a fresh name.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, is_std, iter_graphs, producer
from onnxrep.ir.shapes import LazyTypes
from onnxrep.passes.base import Context, PassResult
from onnxrep.passes.batchnorm.common import bn_scale_shift, bn_training_reason
from onnxrep.passes.batchnorm.conv import ConvThenBatchNorm
from onnxrep.passes.batchnorm.into_conv import BatchNormThenConv
from onnxrep.passes.batchnorm.linear import BatchNormThenLinear, LinearThenBatchNorm


# Folding into the producer first: it never needs a new node and is exact with any padding.
RULES = (ConvThenBatchNorm(), LinearThenBatchNorm(), BatchNormThenLinear(), BatchNormThenConv())


class FoldBatchNorm:
    name = "fold_batchnorm"

    def __init__(self):
        self.rules = RULES

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult()
        namer = Namer(graph)
        types = LazyTypes(graph)   # ranks for the linear rules, inferred only if one asks
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
                    checked = rule.check(g, bn, match, types)
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
