"""A sum's terms as linear maps of the tensor they read (merge_branches.py's rule): each branch loaded as a
kernel and bias in float64 (its BatchNormalization applied, an identity or an AveragePool as a kernel too),
checked against the others, and the merged Conv built from them. The algebra and preconditions are in
merge_branches.py's docstring."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, conv_attrs, make_const, np_dtype
from onnxrep.ir.constants import const_value
from onnxrep.passes.batchnorm.common import bn_scale_shift, bn_training_reason


@dataclass
class Branch:
    """One term of the sum, seen as a linear map of `x`: conv (None: identity), then optional BN."""

    term: gs.Tensor
    x: gs.Tensor
    conv: gs.Node | None = None
    bn: gs.Node | None = None
    pool: gs.Node | None = None      # AveragePool: a Conv with a uniform per-channel kernel
    reason: str | None = None       # set when this branch can't be merged
    # filled by the check:
    weight: np.ndarray | None = None   # float64, BN applied
    bias: np.ndarray | None = None     # float64, BN applied (None: zero)
    scale: np.ndarray | None = None    # identity: per-channel scale (None: 1)
    pads: list | None = None           # explicit [begin..., end...]
    pool_kernel: tuple = ()            # AveragePool kernel_shape
    attrs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        node = self.conv or self.pool or self.bn
        return (node.name or node.op) if node is not None else f"identity {self.x.name}"

    @property
    def is_identity(self) -> bool:
        return self.conv is None and self.pool is None

    @property
    def kernel(self) -> tuple:
        return tuple(self.weight.shape[2:]) if self.weight is not None else self.pool_kernel


@dataclass
class Plan:
    """A checked group: branches to merge into one Conv with these attributes."""

    x: gs.Tensor
    branches: list
    kernel: tuple
    pads: list
    strides: list
    dilations: list
    group: int
    dtype: np.dtype


def _load(graph: gs.Graph, b: Branch) -> str | None:
    """Read the branch's constants and attributes into `b` (float64), or the reason it can't."""
    if b.bn is not None:
        reason = bn_training_reason(graph, b.bn)
        if reason:
            return reason
        affine = bn_scale_shift(b.bn)
        if isinstance(affine, str):
            return affine
        scale, shift = affine
    else:
        scale = shift = None
    if b.pool is not None:
        return _load_pool(b, scale, shift)
    if b.conv is None:
        b.scale, b.bias = scale, shift
        return None
    conv = b.conv
    weight = const_value(conv.inputs[1]) if len(conv.inputs) > 1 and conv.inputs[1].name else None
    if weight is None:
        return "Conv weight is not constant"
    if weight.ndim < 3 or not (np.issubdtype(weight.dtype, np.floating) or weight.dtype.name == "bfloat16"):
        return f"Conv weight of shape {list(weight.shape)} and dtype {weight.dtype} is not a float kernel"
    bias = None
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        bias = const_value(conv.inputs[2])
        if bias is None:
            return "Conv bias is not constant"
        bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    spatial = weight.ndim - 2
    attrs = conv_attrs(conv, spatial)
    if attrs["kernel_shape"] is not None and list(attrs["kernel_shape"]) != list(weight.shape[2:]):
        return f"kernel_shape {attrs['kernel_shape']} disagrees with the weight {list(weight.shape)}"
    ranks = (len(attrs["strides"]), len(attrs["dilations"]), len(attrs["pads"]))
    if ranks != (spatial, spatial, 2 * spatial):
        return "Conv attributes don't match the kernel's rank"
    pads = _explicit_pads(attrs, weight.shape[2:], b.x)
    if isinstance(pads, str):
        return pads
    w64 = weight.astype(np.float64)
    if scale is not None:
        if scale.size != weight.shape[0]:
            return f"BatchNormalization has {scale.size} channels, the Conv has {weight.shape[0]}"
        w64 = w64 * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        bias = shift + (0.0 if bias is None else bias * scale)
    if bias is not None and bias.size != weight.shape[0]:
        return f"Conv bias has {bias.size} values for {weight.shape[0]} output channels"
    b.weight, b.bias, b.pads = w64, bias, pads
    b.attrs = {"group": attrs["group"], "strides": attrs["strides"], "dilations": attrs["dilations"],
               "dtype": np_dtype(conv.inputs[1]) or weight.dtype}
    return None


def _load_pool(b: Branch, scale, shift) -> str | None:
    """An AveragePool's kernel, pads and strides, or why it isn't a Conv with a uniform kernel."""
    pool = b.pool
    if "kernel_shape" not in pool.attrs:
        return "AveragePool has no kernel_shape"
    kernel = tuple(int(k) for k in pool.attrs["kernel_shape"])
    spatial = len(kernel)
    attrs = conv_attrs(pool, spatial)
    ranks = (len(attrs["strides"]), len(attrs["dilations"]), len(attrs["pads"]))
    if ranks != (spatial, spatial, 2 * spatial):
        return "AveragePool attributes don't match its kernel's rank"
    if int(pool.attrs.get("ceil_mode", 0)):
        return "AveragePool with ceil_mode=1 (its last window may be cut short)"
    pads = _explicit_pads(attrs, kernel, b.x)
    if isinstance(pads, str):
        return pads
    if any(pads) and not int(pool.attrs.get("count_include_pad", 0)):
        return ("AveragePool pads with count_include_pad=0: its border windows divide by fewer taps "
                "than the kernel's, a Conv can't")
    b.pool_kernel, b.pads, b.scale, b.bias = kernel, pads, scale, shift
    b.attrs = {"strides": attrs["strides"], "dilations": attrs["dilations"]}
    return None


def _pool_as_conv(b: Branch, ref: Branch, channels_in: int) -> str | None:
    """Give an AveragePool branch the kernel of a Conv with `ref`'s channels and group."""
    channels_out, per_group = ref.weight.shape[:2]
    if channels_out != channels_in:
        return f"AveragePool branch needs as many output as input channels ({channels_out} vs {channels_in})"
    if b.scale is not None and b.scale.size != channels_in:
        return f"BatchNormalization has {b.scale.size} channels, the input has {channels_in}"
    k = b.pool_kernel
    tap = (np.ones(channels_out) if b.scale is None else b.scale) / float(np.prod(k))
    weight = np.zeros((channels_out, per_group) + k, dtype=np.float64)
    out = np.arange(channels_out)
    weight[out, out % per_group] = tap.reshape((-1,) + (1,) * len(k))  # output c reads its own input c
    b.weight = weight
    b.attrs = {**b.attrs, "group": ref.attrs["group"], "dtype": ref.attrs["dtype"]}
    return None


def _explicit_pads(attrs: dict, kernel, x: gs.Tensor) -> list | str:
    """[begin..., end...] pads equivalent to the Conv's auto_pad, or why they depend on the input size."""
    mode = attrs["auto_pad"]
    spatial = len(kernel)
    if mode in ("NOTSET", "", None):
        return list(attrs["pads"])
    if mode == "VALID":
        return [0] * (2 * spatial)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        return f"unknown auto_pad {mode}"
    sizes = list(x.shape[2:]) if x.shape is not None and len(x.shape) == spatial + 2 else [None] * spatial
    begin, end = [], []
    for k, s, d, n in zip(kernel, attrs["strides"], attrs["dilations"], sizes):
        if s == 1:
            total = d * (k - 1)
        elif isinstance(n, (int, np.integer)) and n > 0:
            total = max(0, (-(-n // s) - 1) * s + d * (k - 1) + 1 - n)
        else:
            return f"auto_pad {mode} with stride {s} depends on the input size, which isn't static"
        head = total // 2 if mode == "SAME_UPPER" else (total + 1) // 2
        begin.append(head)
        end.append(total - head)
    return begin + end


def _compatible(ref: Branch, b: Branch) -> str | None:
    ra, ba = ref.attrs, b.attrs
    if len(b.kernel) != len(ref.kernel):
        return f"{len(b.kernel)}-D kernel vs {len(ref.kernel)}-D"
    for key, what in (("strides", "strides"), ("group", "groups")):
        if ba[key] != ra[key]:
            return f"different {what} ({ba[key]} vs {ref.label}'s {ra[key]})"
    if b.weight.shape[:2] != ref.weight.shape[:2]:
        return (f"different channels: weight {list(b.weight.shape[:2])} vs {ref.label}'s "
                f"{list(ref.weight.shape[:2])} (broadcast Add)")
    if np.dtype(ba["dtype"]) != np.dtype(ra["dtype"]):
        return f"different weight dtypes ({ba['dtype']} vs {ra['dtype']})"
    return None


def _build_conv(namer: Namer, plan: Plan, out: gs.Tensor) -> gs.Node:
    ref = next(b for b in plan.branches if b.conv is not None)
    m, per_group = ref.weight.shape[:2]
    weight = np.zeros((m, per_group) + plan.kernel, dtype=np.float64)
    bias = np.zeros(m, dtype=np.float64)
    has_bias = False
    for b in plan.branches:
        if b.weight is not None:  # a Conv, or an AveragePool made one
            offset = [(K - k) // 2 for K, k in zip(plan.kernel, b.kernel)]
            window = (slice(None), slice(None)) + tuple(slice(o, o + k) for o, k in zip(offset, b.kernel))
            weight[window] += b.weight
        else:  # identity: output channel c reads input channel c of its own group
            centre = tuple(K // 2 for K in plan.kernel)
            channels = np.arange(m)
            weight[(channels, channels % per_group) + centre] += 1.0 if b.scale is None else b.scale
        if b.bias is not None:
            bias += b.bias
            has_bias = True
    base = ref.conv.name or "conv"
    w = make_const(namer, f"{base}.weight_merged", weight.astype(plan.dtype))
    inputs = [plan.x, w]
    if has_bias:
        inputs.append(make_const(namer, f"{base}.bias_merged", bias.astype(plan.dtype)))
    shape = next((b.term.shape for b in plan.branches if _static(b.term.shape)), None)
    y = gs.Variable(namer(f"{base}_merged_out"), dtype=out.dtype, shape=shape)
    attrs = {"kernel_shape": list(plan.kernel), "strides": list(plan.strides),
             "dilations": list(plan.dilations), "pads": list(plan.pads), "group": plan.group}
    return gs.Node("Conv", name=namer(f"{base}_merged"), attrs=attrs, inputs=inputs, outputs=[y])


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


def _dims(kernel) -> str:
    return "x".join(str(k) for k in kernel)
