"""What every fold rule (and merge_branches) asks of a per-channel affine node: its form y = s*x + t along
axis 1, whether it is in training mode (BN), whether the tensor between two folded nodes can disappear; and
the re-wiring every fold ends with.

The affine nodes: BatchNormalization (s = gamma / sqrt(var + eps), t = beta - mean*s, each node's own eps)
and an elementwise Mul, Add, Sub or Div with one constant operand c that varies at most along axis 1
(a scalar, [C], [C, 1, 1], [1, C, 1, 1]...): Mul s = c; Add t = c; Sub(x, c) t = -c; Sub(c, x) s = -1, t = c;
Div(x, c) s = 1/c. YOLOv7's implicit knowledge (Add(ImplicitA) before, Mul(ImplicitM) after a Conv),
PP-YOLOE+'s branch alpha, a /255 before the first Conv, RepViT's averaged heads (Div by 2) are such nodes.
All in float64.

Only a node whose output has x's own shape is an affine of x: ``x[1, 1, H, W] * c[1, 3, 1, 1]`` is
[1, 3, H, W], and a fold that re-wires the linear op to x would feed it 1 channel where it wants 3 (the same
for ``x[N, 1] * c[1, K]`` before a Gemm). So every axis of c must be 1 or equal x's (static) size there, and
c's rank at most x's; a symbolic or unknown size of x where c has more than 1 is declined (it may be 1)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.constants import const_value
from onnxrep.ir.graph import is_graph_output, np_dtype
from onnxrep.ir.shapes import is_static


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


AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def constant_operand(node: gs.Node) -> int | None:
    """Index of the one constant operand of a two-input elementwise node, else None."""
    if len(node.inputs) != 2 or "broadcast" in node.attrs:
        return None
    values = [const_value(t) is not None for t in node.inputs]
    return values.index(True) if values.count(True) == 1 else None


def is_affine(node: gs.Node) -> bool:
    if node.op == "BatchNormalization":
        return True
    return node.op in AFFINE_OPS and constant_operand(node) is not None


def affine_input(node: gs.Node) -> gs.Tensor:
    """The x of y = s*x + t."""
    if node.op == "BatchNormalization":
        return node.inputs[0]
    return node.inputs[1 - constant_operand(node)]


def known_dims(tensor: gs.Tensor, types=None) -> tuple | None:
    """The tensor's dims, each the static size that gs or shape inference knows, else what either says
    (a symbolic name, or None); None when the rank is unknown or the two disagree on it."""
    have = tensor.shape
    found = types.dims(tensor) if types is not None else None
    if have is None or found is None:
        dims = have if have is not None else found
        return None if dims is None else tuple(dims)
    if len(have) != len(found):
        return None
    return tuple(a if is_static(a) else b if is_static(b) else a if a is not None else b for a, b in zip(have, found))


def broadcast_reason(op: str, dims: tuple, c_shape: tuple) -> str | None:
    """Why op(x, c) may not have x's shape (a broadcast that grows x is no affine of it), or None."""
    rank = len(dims)
    if len(c_shape) > rank:
        return f"{op} constant of shape {list(c_shape)} on a rank-{rank} input (not per channel of axis 1)"
    for axis in range(rank - len(c_shape), rank):
        d, n = dims[axis], c_shape[axis - rank + len(c_shape)]
        if n == 1 or (is_static(d) and d == n):
            continue
        if is_static(d) and d == 1:
            return f"{op} constant of shape {list(c_shape)} broadcasts its input's axis {axis} from 1 to {n}"
        if is_static(d):
            return f"{op} constant of shape {list(c_shape)} does not fit its input's axis {axis} of size {d}"
        size = "unknown" if d is None else repr(d)
        return (f"{op} constant of shape {list(c_shape)} meets its input's axis {axis} of {size} size: "
                f"it may broadcast it from 1 to {n}")
    return None


def affine_of(node: gs.Node, types=None, channels: int | None = None) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t), float64 vectors along axis 1 (length C, or 1 when the same for every channel), or why not.

    `channels`: x's size on axis 1 when its producer says it (a Conv's output channels), for shapes that
    inference left symbolic."""
    if node.op == "BatchNormalization":
        return bn_scale_shift(node)
    k = constant_operand(node)
    x = node.inputs[1 - k]
    c = np.asarray(const_value(node.inputs[k]), dtype=np.float64)
    dims = known_dims(x, types)
    if dims is None:
        return f"{node.op}: the rank of its input is unknown"
    rank = len(dims)
    if rank < 2 or c.ndim > rank:
        return f"{node.op} constant of shape {list(c.shape)} on a rank-{rank} input (not per channel of axis 1)"
    if channels is not None and not is_static(dims[1]):
        dims = dims[:1] + (channels,) + dims[2:]
    padded = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(padded) if i != 1):
        return f"{node.op} constant of shape {list(c.shape)} varies along another axis than the channels"
    reason = broadcast_reason(node.op, dims, c.shape)
    if reason:
        return reason
    c = c.reshape(-1)
    one, zero = np.ones(1), np.zeros(1)
    if node.op == "Mul":
        return c, zero
    if node.op == "Add":
        return one, c
    if node.op == "Sub":
        return (one, -c) if k == 1 else (-one, c)
    if k == 0:
        return "Div of a constant by the tensor is not affine"
    if np.any(c == 0):
        return "Div by a constant with zeros"
    return 1.0 / c, zero


def fit(affine: tuple[np.ndarray, np.ndarray], channels: int, node: gs.Node, what: str) -> tuple | str:
    """(s, t) broadcast to `channels`, or the reason they have another length."""
    s, t = affine
    if s.size not in (1, channels) or t.size not in (1, channels):
        return f"{node.op} has {max(s.size, t.size)} channels, {what} has {channels}"
    return np.broadcast_to(s, channels).copy(), np.broadcast_to(t, channels).copy()


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
