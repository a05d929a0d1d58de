"""merge_branches: ``Add|Sum(Conv_a(x), Conv_b(x), ...[, x | BN(x) | AvgPool(x)])``  =>  ``Conv(x)``
(and, in merge_linear.py, ``Add(Gemm_a(x), Gemm_b(x))``  =>  ``Gemm(x)``).

Structural re-parameterization (RepVGG, YOLOv9 RepConvN, YOLOv6/7 RepConv, ACNet, MobileOne, RepGhost,
RepViT, Diverse Branch Block): parallel branches that read the same tensor x are linear in x, so their
sum is one convolution.

Algebra (per spatial axis i, branch kernel m_i, merged kernel K_i = max over branches, offset
o_i = (K_i - m_i) / 2, which must be whole):
    W[:, :, o:o+m] += W_branch * s      (s, t: the branch's trailing inference-mode BN, else 1, 0)
    b              += b_branch * s + t  (b_branch = 0 when the Conv has no bias)
    identity x / BN(x): a 1x1 kernel with s[c] at output c, input channel c mod (C/g), plus bias t
    AveragePool_k(x) / BN(AveragePool_k(x)) (DBB): the same, with s[c]/prod(k) at every tap of a k kernel
The merged Conv keeps the common strides, dilations and group; its pads are each branch's pads
grown by o_i * dilation_i (begin and end), which must come out the same for every branch: that is
exactly when the smaller kernel sits centred in the larger one, so output size and alignment agree.
Everything is computed in float64 and cast back to the weight's dtype.

Matching: an Add/Sum and every Add/Sum it privately absorbs (``Add(Add(a, b), c)``, ``Sum``) form one
n-ary sum; its terms are grouped by the tensor their branch reads. A term is a branch when it is
``Conv(x)``, ``BN(Conv(x))`` (BN folded inside the merge), ``AveragePool(x)``, ``BN(AveragePool(x))``,
``BN(x)`` or ``x`` itself. A group with at
least one Conv and two branches is a candidate; the compatible subset (two or more) is merged and the
other terms stay in a new Add chain. The sum's output tensor keeps its name.

Preconditions (each failure is a reason in the notes):
  * equal strides, groups and channels (a different channel count would be a broadcast Add), equal
    dilations on every axis where both kernels are wider than 1 (a size-1 axis reads one tap whatever
    its dilation); static branch output shapes, when known, are equal;
  * kernels of the same parity per axis, and pads that centre each kernel in the merged one
    (``auto_pad`` VALID/SAME is resolved to explicit pads; SAME with stride > 1 needs a static size);
  * weights, biases and BN parameters are constants; BN is in inference mode with one value per channel;
  * each intermediate (Conv output, BN output, inner Add output) feeds only this sum and is not a graph
    output;
  * an identity branch needs stride 1, as many output channels as input channels, an odd merged
    kernel and "same" pads;
  * an AveragePool branch needs as many output channels as input channels, ceil_mode 0, and
    count_include_pad 1 when it pads (a border window must divide by prod(k), as the Conv does); its
    kernel must fit in the Convs' (merging must never grow a Conv); strides, dilations and pads as a Conv.
Weights are never mutated: the merged kernel and bias are new tensors with fresh names.

One module of ~500 lines on purpose: it is one rule (an n-ary sum of branches), and its match, check and
rewrite share the Branch/Plan types and the per-branch loaders below; split, each part would need the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, conv_attrs, is_graph_output, is_std, iter_graphs, make_const, np_dtype, producer, sole_consumer
from onnxrep.ir.constants import const_value
from onnxrep.passes.base import Context, PassResult
from onnxrep.passes.batchnorm.common import bn_scale_shift, bn_training_reason
from onnxrep.passes.merge_linear import merge_linear_branches

_SUMS = ("Add", "Sum")
_LINEAR = ("Conv", "AveragePool")  # what a branch may apply to x (then, optionally, a BatchNormalization)


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


class MergeBranches:
    name = "merge_branches"

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult()
        namer = Namer(graph)
        for g in iter_graphs(graph):
            for root in [n for n in g.nodes if self.is_root(g, n)]:
                terms = self.match(g, root)
                plans = []
                for group in self.groups(g, terms):
                    checked = self.check(g, group)
                    for branch in group:
                        if branch.reason:
                            result.decline(root, f"{branch.label}: {branch.reason}")
                    if isinstance(checked, str):
                        result.decline(root, checked)
                    elif checked is not None:
                        plans.append(checked)
                if plans:
                    self.rewrite(g, namer, root, terms, plans)
                    result.applied(len(plans))
        merge_linear_branches(graph, namer, result)   # the same idea for fully connected layers
        return result

    # ------------------------------------------------------------------------------------------ match

    @staticmethod
    def is_root(graph: gs.Graph, node: gs.Node) -> bool:
        """An Add/Sum that no other Add/Sum absorbs (the top of a chain)."""
        if not is_std(node, *_SUMS) or len(node.outputs) != 1 or "broadcast" in node.attrs:
            return False
        consumer = sole_consumer(graph, node.outputs[0])
        return consumer is None or not is_std(consumer, *_SUMS) or "broadcast" in consumer.attrs

    @classmethod
    def match(cls, graph: gs.Graph, root: gs.Node) -> list[gs.Tensor]:
        """The terms of the n-ary sum at `root`: inner Add/Sum nodes it alone reads are flattened."""
        terms = []
        for t in root.inputs:
            inner = producer(t)
            if (inner is not None and is_std(inner, *_SUMS) and len(inner.outputs) == 1
                    and "broadcast" not in inner.attrs and sole_consumer(graph, t) is root):
                terms.extend(cls.match(graph, inner))
            else:
                terms.append(t)
        return terms

    @staticmethod
    def groups(graph: gs.Graph, terms: list[gs.Tensor]) -> list[list[Branch]]:
        """Branches grouped by the tensor they read; only groups with a Conv and two branches."""
        by_x: dict[int, list[Branch]] = {}
        for t in terms:
            for branch in _branches(graph, t):
                by_x.setdefault(id(branch.x), []).append(branch)
        return [bs for bs in by_x.values() if len(bs) >= 2 and any(b.conv is not None for b in bs)]

    # ------------------------------------------------------------------------------------------ check

    @staticmethod
    def check(graph: gs.Graph, group: list[Branch]) -> Plan | str | None:
        """A Plan for the mergeable subset; a reason when fewer than two branches are left."""
        for b in group:
            if b.reason is None:
                b.reason = _load(graph, b)
        convs = [b for b in group if b.reason is None and b.conv is not None]
        if not convs:
            return None  # every Conv branch has its reason noted already
        ref = max(convs, key=lambda b: int(np.prod(b.kernel)))  # first of the largest kernels
        convs.remove(ref)
        convs.insert(0, ref)
        spatial = len(ref.kernel)
        ra = ref.attrs
        channels_out, per_group = ref.weight.shape[0], ref.weight.shape[1]
        channels_in = per_group * ra["group"]
        for b in group:  # an AveragePool is a Conv with the reference's channels and group, once built
            if b.pool is not None and b.reason is None:
                b.reason = _pool_as_conv(b, ref, channels_in)
                if b.reason is None:
                    convs.append(b)
        for b in convs[1:]:
            b.reason = _compatible(ref, b)
        convs = [b for b in convs if b.reason is None]
        # a size-1 axis reads one tap whatever its dilation: an axis's dilation is set by its wider kernels
        dilations = [ra["dilations"][i] if ref.kernel[i] > 1 else None for i in range(spatial)]
        for b in convs[1:]:
            wide = [i for i in range(spatial) if b.kernel[i] > 1]
            clash = [i for i in wide if dilations[i] is not None and dilations[i] != b.attrs["dilations"][i]]
            if clash:
                b.reason = f"different dilations ({b.attrs['dilations']} vs {ref.label}'s {ra['dilations']})"
                continue
            for i in wide:
                dilations[i] = b.attrs["dilations"][i]
        dilations = [ra["dilations"][i] if d is None else d for i, d in enumerate(dilations)]
        convs = [b for b in convs if b.reason is None]
        # kernels of one parity per axis share a centre: the merged kernel is their per-axis maximum
        for b in convs:
            if any((k - r) % 2 for k, r in zip(b.kernel, ref.kernel)):
                b.reason = (f"kernel {_dims(b.kernel)} can't be centred with {_dims(ref.kernel)} "
                            "(odd and even sizes)")
        convs = [b for b in convs if b.reason is None]
        envelope = tuple(max(b.kernel[i] for b in convs if b.conv is not None) for i in range(spatial))
        for b in convs:
            if b.pool is not None and any(k > e for k, e in zip(b.kernel, envelope)):
                b.reason = (f"AveragePool kernel {_dims(b.kernel)} is larger than the Convs' "
                            f"{_dims(envelope)} (merging would make the Conv bigger)")
        convs = [b for b in convs if b.reason is None]
        kernel = envelope

        def merged_pads(own_pads: list, m: tuple) -> list:
            grow = [(K - k) // 2 * d for K, k, d in zip(kernel, m, dilations)]
            return [p + grow[i % spatial] for i, p in enumerate(own_pads)]

        pads = merged_pads(ref.pads, ref.kernel)
        for b in convs:
            if b is not ref and merged_pads(b.pads, b.kernel) != pads:
                b.reason = (f"pads {b.pads} don't centre its {_dims(b.kernel)} kernel like {ref.label}'s "
                            f"pads {ref.pads} (merged kernel {_dims(kernel)})")
        convs = [b for b in convs if b.reason is None]
        for b in group:
            if not b.is_identity or b.reason is not None:
                continue
            if any(s != 1 for s in ra["strides"]):
                b.reason = f"identity branch needs stride 1 (the Convs have {ra['strides']})"
            elif channels_out != channels_in:
                b.reason = (f"identity branch needs as many output as input channels "
                            f"({channels_out} vs {channels_in})")
            elif any(k % 2 == 0 for k in kernel):
                b.reason = f"identity branch can't be centred in an even {_dims(kernel)} kernel"
            elif merged_pads([0] * (2 * spatial), (1,) * spatial) != pads:
                b.reason = f"identity branch needs 'same' pads, the Convs have {pads}"
            elif b.scale is not None and b.scale.size != channels_in:
                b.reason = f"BatchNormalization has {b.scale.size} channels, the input has {channels_in}"
        merged = [b for b in group if b.reason is None and (b.is_identity or b in convs)]
        shapes = {tuple(b.term.shape) for b in merged if _static(b.term.shape)}
        if len(shapes) > 1:
            return f"branch outputs have different shapes {sorted(shapes)} (broadcast Add)"
        if len(merged) < 2:
            return None if any(b.reason for b in group) else "fewer than two mergeable branches"
        return Plan(ref.x, merged, kernel, pads, ra["strides"], dilations, ra["group"], ra["dtype"])

    # ---------------------------------------------------------------------------------------- rewrite

    @staticmethod
    def rewrite(graph: gs.Graph, namer: Namer, root: gs.Node, terms: list[gs.Tensor],
                plans: list[Plan]) -> None:
        out = root.outputs[0]
        new_terms: list[gs.Tensor] = []
        for plan in plans:
            conv = _build_conv(namer, plan, out)
            graph.nodes.append(conv)
            new_terms.append(conv.outputs[0])
        # a term listed twice (Add(x, x)) is one Branch per listing: drop as many listings as branches
        left = {}
        for p in plans:
            for b in p.branches:
                left[id(b.term)] = left.get(id(b.term), 0) + 1
        for t in terms:
            if left.get(id(t), 0):
                left[id(t)] -= 1
            else:
                new_terms.append(t)
        root.inputs.clear()
        root.outputs.clear()
        if len(new_terms) == 1:
            new_terms[0].inputs[0].outputs = [out]  # the sum's output tensor keeps its name
            return
        acc = new_terms[0]
        for i, t in enumerate(new_terms[1:], start=1):
            last = i == len(new_terms) - 1
            dst = out if last else gs.Variable(namer(f"{out.name}_partial"), dtype=out.dtype)
            name = namer(f"{root.name or 'Add'}_rest")
            graph.nodes.append(gs.Node("Add", name=name, inputs=[acc, t], outputs=[dst]))
            acc = dst


# -------------------------------------------------------------------------------------------- helpers


def _linear_kind(node: gs.Node) -> dict:
    return {"conv": node} if node.op == "Conv" else {"pool": node}


def _branches(graph: gs.Graph, term: gs.Tensor) -> list[Branch]:
    """How `term` can be read as a branch: Conv(x), BN(Conv(x)), AveragePool(x), BN(AveragePool(x)),
    BN(x), else the identity of term.

    A Conv (or BN, AveragePool) whose output isn't private to the sum is a declined branch of its input
    and, at the same time, an identity branch of its own output (``t + Conv(t)`` still merges).
    """
    node = producer(term)
    if node is None or not is_std(node, *_LINEAR, "BatchNormalization") or not node.inputs:
        return [Branch(term, term)]
    private = sole_consumer(graph, term) is not None
    if is_std(node, *_LINEAR):
        if private:
            return [Branch(term, node.inputs[0], **_linear_kind(node))]
        return [Branch(term, node.inputs[0], **_linear_kind(node),
                       reason=_shared_reason(graph, node.op, term)), Branch(term, term)]
    bn = node
    inner = producer(bn.inputs[0])
    if (inner is not None and is_std(inner, *_LINEAR) and inner.inputs
            and sole_consumer(graph, bn.inputs[0]) is bn):
        if private:
            return [Branch(term, inner.inputs[0], bn=bn, **_linear_kind(inner))]
        return [Branch(term, inner.inputs[0], bn=bn, **_linear_kind(inner),
                       reason=_shared_reason(graph, "BatchNormalization", term)), Branch(term, term)]
    if private:
        return [Branch(term, bn.inputs[0], bn=bn)]
    return [Branch(term, term)]


def _shared_reason(graph: gs.Graph, op: str, t: gs.Tensor) -> str:
    if is_graph_output(graph, t):
        return f"{op} output is a graph output"
    return f"{op} output has {len(t.outputs)} consumers"


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
