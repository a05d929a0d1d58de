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

The match and the rewrite are here; the Branch/Plan types, the per-branch loaders and the merged Conv's
construction are in branches.py.
"""

from __future__ import annotations


import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, is_graph_output, is_std, iter_graphs, producer, sole_consumer
from onnxrep.passes.base import Context, PassResult
from onnxrep.passes.branches import Branch, Plan, _build_conv, _compatible, _dims, _load, _pool_as_conv, _static
from onnxrep.passes.merge_linear import merge_linear_branches

_SUMS = ("Add", "Sum")
_LINEAR = ("Conv", "AveragePool")  # what a branch may apply to x (then, optionally, a BatchNormalization)


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
