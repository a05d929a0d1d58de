"""fold_batchnorm: fold every inference-mode BatchNormalization, and every per-channel affine Mul, Add, Sub
or Div by a constant, into a neighbouring linear op. BatchNormalization is the special case
y = (x - mean) * s + beta of y = s*x + t along axis 1 (batchnorm/common.py says which nodes qualify).

Rules, tried in this order for each affine node A (one module each, same match/check/rewrite shape):
  * ``Conv|ConvTranspose -> A``   =>  ``Conv|ConvTranspose``            (batchnorm/conv.py)
  * ``Gemm|MatMul[+Add] -> A``    =>  ``Gemm|MatMul+Add``                (batchnorm/linear.py)
  * ``A -> Gemm|MatMul``          =>  ``Gemm|MatMul+Add``                (batchnorm/linear.py)
  * ``A -> Conv`` (a shift only without padding)  =>  ``Conv``           (batchnorm/into_conv.py)
Chains collapse over the pipeline's rounds (``Conv -> Mul -> Add -> Mul``: each fold makes the next node
adjacent). A BatchNormalization that no rule takes stays, and the notes say why; a Mul/Add/Sub/Div next to
no linear op is not a candidate and is not mentioned.

BN(x) = s*x + t per channel, with s = gamma / sqrt(var + eps), t = beta - mean*s (each node's own eps),
computed in float64 and cast back to the weight's dtype (float16/bfloat16 models too). Each rule module
states its algebra; batchnorm/common.py holds what they share.

Preconditions (each failure is a reason in the notes):
  * BN is in inference mode (``training_mode`` 0, no running-stat output used, not ``spatial=0``);
  * the intermediate tensor feeds only the folded pair and is not a graph output;
  * weights, biases and the four BN parameters are constants (initializer, Constant node, Identity
    alias or a constant-foldable chain), never graph inputs;
  * BN parameters have one value per channel;
  * a Mul/Add/Sub/Div's constant does not grow x by broadcasting: its output has x's own shape (rank and
    every dim), else re-wiring the linear op to x would change what it reads (``x[1,1,H,W] * c[1,3,1,1]``).
A shared weight is never modified: the folded weight is always a new tensor with a fresh name.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, is_std, iter_graphs, producer
from onnxrep.ir.shapes import LazyTypes
from onnxrep.passes.base import Context, PassResult
from onnxrep.passes.batchnorm.common import AFFINE_OPS, bn_scale_shift, bn_training_reason, is_affine
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
            for bn in [n for n in g.nodes if is_std(n, "BatchNormalization", *AFFINE_OPS)]:
                if not bn.inputs or not bn.outputs or not is_affine(bn):
                    continue  # already folded in this run, or not a per-channel affine node
                is_bn = bn.op == "BatchNormalization"
                reason = bn_training_reason(g, bn) if is_bn else None
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
                        reasons.append(f"{rule.label.format(op=bn.op)}: {checked}")
                        continue
                    rule.rewrite(namer, g, bn, match, checked)
                    result.applied()
                    break
                else:
                    if is_bn:
                        affine = bn_scale_shift(bn)  # a reason of its own beats "nothing to fold into"
                        reasons = reasons or [affine if isinstance(affine, str) else self.nothing_to_fold(g, bn)]
                    if reasons:
                        result.decline(bn, "; ".join(reasons))
        return result

    @staticmethod
    def nothing_to_fold(graph: gs.Graph, bn: gs.Node) -> str:
        source = producer(bn.inputs[0])
        readers = sorted({n.op for n in bn.outputs[0].outputs}) or ["graph output"]
        return (f"nothing to fold into (input from {source.op if source else 'a graph input'}, "
                f"read by {', '.join(readers)})")
