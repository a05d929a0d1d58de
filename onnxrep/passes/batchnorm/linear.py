"""fold_batchnorm rules for fully connected layers (classifier heads: ``Linear -> BN1d``, ``BN1d -> Linear``).

With BN(x) = s*x + t on axis 1 of a rank-2 tensor, and a linear layer y = alpha * x @ B + beta * C
(Gemm, B = W or W^T by transB; MatMul+Add is the same with alpha = beta = 1):

  Gemm|MatMul[+Add] -> BN:   B' = B * s (per output column)      C' = s*beta*C + t, beta' = 1
  BN -> Gemm|MatMul:         B' = s * B (per input row)          C' = alpha * t @ B + beta*C, beta' = 1

Preconditions: rank-2 activations (BN's channel axis is axis 1; in a rank-3 MatMul it is not the feature
axis), Gemm's transA = 0 when the BN is on A, constant B and C, the intermediate tensor used once. A
MatMul without an Add gets a new Add node carrying the bias.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, is_std, make_const, producer
from onnxrep.ir.constants import const_value
from onnxrep.ir.ops import SAME_SHAPE
from onnxrep.passes.batchnorm.common import affine_input, affine_of, dtype_of, fit, private_link, take_bn_output


_BROADCAST = {"Mul", "Add", "Sub", "Div"}  # rank of the widest input


def _rank(tensor: gs.Tensor, depth: int = 0, types=None) -> int | None:
    """Rank of a tensor: from its shape, else shape inference (`types`), else from what produced it (Gemm and
    Flatten give rank 2)."""
    if isinstance(tensor, gs.Constant):
        return tensor.values.ndim
    if tensor.shape is not None:
        return len(tensor.shape)
    dims = types.dims(tensor) if types is not None else None
    if dims is not None:
        return len(dims)
    node = producer(tensor)
    if node is None or depth > 16 or not is_std(node):
        return None
    if node.op in ("Gemm", "Flatten"):
        return 2
    if node.op in SAME_SHAPE or (node.op == "MatMul" and _rank(node.inputs[1], depth + 1) == 2):
        return _rank(node.inputs[0], depth + 1)
    if node.op in _BROADCAST:
        ranks = [_rank(t, depth + 1) for t in node.inputs]
        return None if None in ranks else max(ranks)
    return None


def _effective_b(node: gs.Node, b: np.ndarray) -> np.ndarray:
    """B as [K, M] whatever transB says."""
    return b.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else b


def _from_effective_b(node: gs.Node, b_eff: np.ndarray) -> np.ndarray:
    return b_eff.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else b_eff


def _linear_params(node: gs.Node):
    """(B as [K, M] float64, bias C or None, alpha, beta, the Add node for MatMul+Add) or a reason."""
    b = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if b is None or b.ndim != 2:
        return f"{node.op} weight is not a constant matrix"
    alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
    beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    c = None
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        c = const_value(node.inputs[2])
        if c is None:
            return "Gemm bias is not constant"
    return _effective_b(node, b.astype(np.float64)), c, alpha, beta


def _matmul_add(tensor: gs.Tensor):
    """(MatMul, Add or None, bias or None) when `tensor` is MatMul(x, W) or Add(MatMul(x, W), const)."""
    node = producer(tensor)
    if node is not None and is_std(node, "Add"):
        for k in (0, 1):
            mm, other = producer(node.inputs[k]), node.inputs[1 - k]
            bias = const_value(other)
            if mm is not None and is_std(mm, "MatMul") and bias is not None:
                return mm, node, bias
        return None
    if node is not None and is_std(node, "MatMul"):
        return node, None, None
    return None


def _bias_add(graph: gs.Graph, node: gs.Node):
    """(Add, index of its constant operand, that constant as [M], its own shape) when MatMul's output only
    feeds Add(y, bias) with a per-output-column bias; else None. The shape matters: a [1, 1, M] bias makes
    the sum rank 3, and the folded bias must keep doing so."""
    out = node.outputs[0]
    if private_link(graph, out, node.op) is not None:
        return None
    add = out.outputs[0]
    if not is_std(add, "Add") or len(add.inputs) != 2:
        return None
    k = 1 if add.inputs[0] is out else 0
    bias = const_value(add.inputs[k])
    if bias is None or bias.ndim > 1 and any(d != 1 for d in bias.shape[:-1]):
        return None  # only a bias that broadcasts along the feature axis, as Linear's does
    return add, k, bias.reshape(-1), bias.shape


class LinearThenBatchNorm:
    label = "Gemm/MatMul -> {op}"

    @staticmethod
    def match(graph: gs.Graph, bn: gs.Node):
        x = affine_input(bn)
        node = producer(x)
        if node is not None and is_std(node, "Gemm"):
            return node, None, None
        if bn.op in ("Add", "Sub") and node is not None and is_std(node, "MatMul"):
            return None   # MatMul + Add(c) is how a Linear's bias is written: nothing to fold
        return _matmul_add(x)

    @staticmethod
    def check(graph: gs.Graph, bn: gs.Node, match, types=None):
        node, add, add_bias = match
        if _rank(affine_input(bn), types=types) != 2:
            return f"{bn.op} input is not rank 2 (its channel axis is not the feature axis)"
        for t, what in ((node.outputs[0], node.op), (add.outputs[0] if add else None, "Add")):
            if t is not None:
                reason = private_link(graph, t, what)
                if reason:
                    return reason
        params = _linear_params(node)
        if isinstance(params, str):
            return params
        b, c, alpha, beta = params
        if add_bias is not None:
            c = add_bias
        # x is the Gemm's or MatMul's own output (no Add between): it has B's columns
        affine = affine_of(bn, types, b.shape[1] if add is None else None)
        if isinstance(affine, str):
            return affine
        affine = fit(affine, b.shape[1], bn, f"{node.op}'s output")
        if isinstance(affine, str):
            return affine
        return b, c, alpha, beta, affine[0], affine[1]

    @staticmethod
    def rewrite(namer: Namer, graph: gs.Graph, bn: gs.Node, match, checked) -> None:
        node, add, _ = match
        b, c, alpha, beta, s, t = checked
        dtype = dtype_of(node.inputs[1], b)
        new_b = _from_effective_b(node, b * s[None, :])
        bias = t if c is None else np.asarray(c, np.float64) * beta * s + t
        base = node.name or "linear"
        weight = make_const(namer, f"{base}.weight_bnfold", new_b.astype(dtype))
        bias_t = make_const(namer, f"{base}.bias_bnfold", bias.astype(dtype))
        if node.op == "Gemm":
            node.inputs = [node.inputs[0], weight, bias_t]
            node.attrs["beta"] = 1.0
            take_bn_output(node, bn)
            return
        node.inputs = [node.inputs[0], weight]
        if add is None:
            add = gs.Node("Add", name=namer(f"{base}/bias_bnfold/Add"), inputs=[node.outputs[0], bias_t])
            graph.nodes.append(add)
        else:
            add.inputs = [node.outputs[0], bias_t]
        take_bn_output(add, bn)


class BatchNormThenLinear:
    label = "{op} -> Gemm/MatMul"

    @staticmethod
    def match(graph: gs.Graph, bn: gs.Node):
        # any linear reader is a match; check() then says why a second reader blocks the fold
        return next((n for n in bn.outputs[0].outputs
                     if is_std(n, "Gemm", "MatMul") and n.inputs[0] is bn.outputs[0]), None)

    @staticmethod
    def check(graph: gs.Graph, bn: gs.Node, node: gs.Node, types=None):
        reason = private_link(graph, bn.outputs[0], bn.op)
        if reason:
            return reason
        if _rank(affine_input(bn), types=types) != 2:
            return f"{bn.op} input is not rank 2 (its channel axis is not the feature axis)"
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            return f"Gemm has transA=1: the {bn.op} channels are not its K axis"
        params = _linear_params(node)
        if isinstance(params, str):
            return params
        b, c, alpha, beta = params
        affine = affine_of(bn, types)
        if isinstance(affine, str):
            return affine
        affine = fit(affine, b.shape[0], bn, f"{node.op}'s input")
        if isinstance(affine, str):
            return affine
        bias_add = _bias_add(graph, node) if node.op == "MatMul" else None
        if bias_add is not None:
            c = bias_add[2]
        return b, c, alpha, beta, affine[0], affine[1], bias_add

    @staticmethod
    def rewrite(namer: Namer, graph: gs.Graph, bn: gs.Node, node: gs.Node, checked) -> None:
        b, c, alpha, beta, s, t, bias_add = checked
        dtype = dtype_of(node.inputs[1], b)
        new_b = _from_effective_b(node, s[:, None] * b)
        bias = alpha * (t @ b) + (0.0 if c is None else beta * np.asarray(c, np.float64))
        base = node.name or "linear"
        weight = make_const(namer, f"{base}.weight_bnfold", new_b.astype(dtype))
        bias_t = make_const(namer, f"{base}.bias_bnfold", np.asarray(bias).astype(dtype))
        x = affine_input(bn)
        bn.inputs.clear()
        bn.outputs.clear()
        if node.op == "Gemm":
            node.inputs = [x, weight, bias_t]
            node.attrs["beta"] = 1.0
            return
        if bias_add is not None:  # MatMul + Add(bias): t @ W joins the existing bias, in the bias's own shape
            add, k, _, shape = bias_add
            node.inputs = [x, weight]
            folded = np.asarray(bias).astype(dtype)
            add.inputs[k] = make_const(namer, f"{base}.bias_bnfold", folded.reshape(tuple(shape[:-1]) + (folded.size,)))
            return
        out = node.outputs[0]
        mid = gs.Variable(namer(f"{base}/matmul_bnfold"), dtype=out.dtype, shape=out.shape)
        node.inputs = [x, weight]
        node.outputs = [mid]
        add = gs.Node("Add", name=namer(f"{base}/bias_bnfold/Add"), inputs=[mid, bias_t], outputs=[out])
        graph.nodes.append(add)
