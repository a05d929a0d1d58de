"""RepVGG-style families as ONNX graphs built in code (numpy + onnx.helper), in three forms.

Every block is one set of parameters (numpy arrays) written three ways:
  * "training":    every Conv followed by its BatchNormalization, branches summed, as a plain
                   ``torch.onnx.export`` of the training-form module in eval mode with folding off;
  * "torchscript": what the TorchScript exporter writes: each Conv -> BN already folded into the Conv
                   (weight W*s, bias b*s + t), while BNs that don't follow a Conv stay: identity-branch BNs,
                   BNs after a branch sum, BNs after an AveragePool, BN1d before a classifier's Gemm;
  * "deploy":      the family's own re-parameterization, done here independently in numpy the way the
                   family's PyTorch code does it (RepVGG ``get_equivalent_kernel_bias``, MobileOne
                   ``_get_kernel_bias``, RepViT ``RepVGGDW.fuse`` and ``BN_Linear.fuse``, RepGhost,
                   ACNet ``_add_to_square_kernel``, DBB ``transV_avg``/``transII_addbranch``).
Tests optimize the first two with onnxrep and compare against the third: Conv count, parameter count,
outputs in onnxruntime.

Families and blocks (``BLOCKS``), whole small networks (``NETWORKS``):
  RepVGG / YOLOv6 RepVGGBlock / YOLOv7 RepConv / PP-YOLOE RepVggBlock: kxk+BN, 1x1+BN, identity BN
      (stride 1, cin == cout; PP-YOLOE never has one), optional groups, then ReLU/SiLU;
  ACNet ACBlock: kxk + kx1 + 1xk, each +BN;
  MobileOne: n over-parameterized kxk branches +BN, a 1x1 "scale" branch +BN (k > 1), identity BN,
      in depthwise (k=3, groups=C) then pointwise (k=1) form;
  RepViT: RepVGGDW ``BN(dw3x3+BN (x) + dw1x1 (x) + x)``, the RepViT block around it (SE, channel-mixer
      residual), BN1d -> Linear classifier;
  RepGhost: RepGhostModule ``ReLU(dw3x3+BN (x1) + BN(x1))`` after a 1x1 primary conv;
  DBB: kxk+BN, 1x1+BN, ``BN(AveragePool_k(x))``. (DBB's sequential 1x1 -> BNAndPad -> kxk branch is not
      built: it is a chain, not a parallel branch, and its TorchScript export is Pad + ScatterND.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FORMS = ("training", "torchscript")
ALL_FORMS = FORMS + ("deploy",)
OPSET = 17


# ------------------------------------------------------------------------------------------ parameters


@dataclass
class BN:
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float = 1e-5

    @property
    def std(self):
        return np.sqrt(self.var.astype(np.float64) + self.eps)

    def scale_shift(self):
        s = self.gamma.astype(np.float64) / self.std
        return s, self.beta.astype(np.float64) - self.mean.astype(np.float64) * s


@dataclass
class ConvBN:
    """Conv (bias=False unless given) followed by BatchNorm2d: PyTorch's ``conv_bn`` of every family."""

    w: np.ndarray
    bn: BN | None
    stride: int = 1
    pads: tuple = ()          # [top, left, bottom, right]; () means centred (k // 2 per axis)
    group: int = 1
    bias: np.ndarray | None = None

    @property
    def kernel(self):
        return tuple(self.w.shape[2:])

    def onnx_pads(self):
        return list(self.pads) if self.pads else [k // 2 for k in self.kernel] * 2

    def fused(self):
        """(W, b) in float64 with the BN folded in, as ``_fuse_bn_tensor`` / ``fuse_conv_and_bn`` do."""
        w = self.w.astype(np.float64)
        b = np.zeros(w.shape[0]) if self.bias is None else self.bias.astype(np.float64)
        if self.bn is None:
            return w, b
        s, t = self.bn.scale_shift()
        return w * s[:, None, None, None], b * s + t


def rand_bn(rng, c, eps=1e-5):
    """Statistics of a trained BN: positive gamma and variance, means and shifts off zero."""
    f32 = np.float32
    return BN(gamma=rng.uniform(0.4, 1.6, c).astype(f32), beta=rng.normal(0, 0.3, c).astype(f32),
              mean=rng.normal(0, 0.5, c).astype(f32), var=rng.uniform(0.3, 2.0, c).astype(f32), eps=eps)


def rand_conv(rng, cin, cout, k, group=1):
    k = (k, k) if isinstance(k, int) else tuple(k)
    fan_in = cin // group * int(np.prod(k))
    return (rng.standard_normal((cout, cin // group) + k) * np.sqrt(1.0 / fan_in)).astype(np.float32)


def rand_conv_bn(rng, cin, cout, k, *, stride=1, group=1, pads=(), bias=False):
    b = rng.normal(0, 0.2, cout).astype(np.float32) if bias else None
    return ConvBN(rand_conv(rng, cin, cout, k, group), rand_bn(rng, cout), stride, tuple(pads), group, b)


def pad_to(w, kernel):
    """Centre a kernel in a larger one (RepVGG ``_pad_1x1_to_3x3_tensor``, ACNet ``_add_to_square_kernel``)"""
    out = np.zeros(w.shape[:2] + tuple(kernel), dtype=w.dtype)
    offs = [(K - k) // 2 for K, k in zip(kernel, w.shape[2:])]
    out[(slice(None), slice(None)) + tuple(slice(o, o + k) for o, k in zip(offs, w.shape[2:]))] = w
    return out


def identity_kernel(c, group, k):
    """RepVGG's identity kernel: 1 at the centre tap of output i's own input channel (i % (C/g))."""
    per_group = c // group
    w = np.zeros((c, per_group, k, k))
    w[np.arange(c), np.arange(c) % per_group, k // 2, k // 2] = 1.0
    return w


def fuse_bn_identity(bn: BN, c, group, k):
    s, t = bn.scale_shift()
    return identity_kernel(c, group, k) * s[:, None, None, None], t


# ------------------------------------------------------------------------------------------ graph builder


class Net:
    """Accumulates nodes and initializers of one graph; `form` says how blocks write themselves."""

    def __init__(self, form: str):
        assert form in ALL_FORMS, form
        self.form = form
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def fresh(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base, value, dtype=np.float32):
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op, inputs, base=None, **attrs):
        out = self.fresh(base or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"/{out}/{op}", **attrs))
        return out

    # linear ops
    def conv(self, x, w, b=None, *, stride=1, pads=None, group=1, base="conv"):
        k = list(w.shape[2:])
        inputs = [x, self.const(f"{base}.weight", w)]
        if b is not None:
            inputs.append(self.const(f"{base}.bias", b))
        pads = [kk // 2 for kk in k] * 2 if pads is None else list(pads)
        return self.node("Conv", inputs, base, kernel_shape=k, strides=[stride] * len(k), pads=pads,
                         dilations=[1] * len(k), group=group)

    def bn(self, x, bn: BN, base="bn"):
        names = [self.const(f"{base}.{p}", getattr(bn, p)) for p in ("gamma", "beta", "mean", "var")]
        return self.node("BatchNormalization", [x] + names, base, epsilon=bn.eps, momentum=0.9)

    def conv_bn(self, x, cb: ConvBN, base="conv"):
        """Conv -> BN in training form; one Conv with the BN folded in otherwise (TorchScript, deploy)."""
        if self.form == "training":
            y = self.conv(x, cb.w, cb.bias, stride=cb.stride, pads=cb.onnx_pads(), group=cb.group, base=base)
            return self.bn(y, cb.bn, f"{base}.bn")
        w, b = cb.fused()
        return self.conv(x, w, b, stride=cb.stride, pads=cb.onnx_pads(), group=cb.group, base=base)

    def bn_or_fold(self, x, bn: BN, base="bn"):
        """A BN that no Conv precedes: a BatchNormalization node in training and TorchScript forms."""
        return self.bn(x, bn, base)

    def add(self, *terms):
        """``a + b + c`` as PyTorch traces it: Add(Add(a, b), c)."""
        acc = terms[0]
        for t in terms[1:]:
            acc = self.node("Add", [acc, t], "add")
        return acc

    def avgpool(self, x, k, stride, pad, count_include_pad=1, ceil_mode=0):
        pads = list(pad) if isinstance(pad, (list, tuple)) else [pad] * 4
        return self.node("AveragePool", [x], "avgpool", kernel_shape=[k, k], strides=[stride] * 2, pads=pads,
                         count_include_pad=count_include_pad, ceil_mode=ceil_mode)

    def gemm(self, x, w, b):
        """nn.Linear as TorchScript writes it: Gemm(x, W, b, transB=1)."""
        return self.node("Gemm", [x, self.const("fc.weight", w), self.const("fc.bias", b)], "gemm",
                         alpha=1.0, beta=1.0, transB=1)

    def act(self, x, kind):
        if kind in (None, "none"):
            return x
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "silu":  # opset 17 TorchScript: x * sigmoid(x)
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        if kind == "gelu":  # opset 17 TorchScript: 0.5 * x * (1 + erf(x / sqrt 2))
            e = self.node("Erf", [self.node("Div", [x, self.const("sqrt2", np.sqrt(2.0))])])
            one = self.node("Add", [e, self.const("one", 1.0)])
            return self.node("Mul", [self.node("Mul", [x, one]), self.const("half", 0.5)])
        raise ValueError(kind)

    def head(self, x):
        """adaptive_avg_pool2d(x, 1).flatten(1)."""
        return self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)

    def model(self, x, y, x_shape, y_rank=4):
        graph = helper.make_graph(
            self.nodes, "family", [helper.make_tensor_value_info(x, TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, [f"y{i}" for i in range(y_rank)])],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="pytorch", producer_version="2.4.0")
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model)
        model.graph.output[0].CopyFrom(inferred.graph.output[0])
        onnx.checker.check_model(model, full_check=True)
        return model


# ------------------------------------------------------------------------------------------ blocks


@dataclass
class RepVGGBlock:
    """RepVGG (DingXiaoH/RepVGG ``RepVGGBlock``), also YOLOv6 ``RepVGGBlock``, YOLOv7 ``RepConv``,
    PP-YOLOE ``RepVggBlock`` (no identity): dense kxk+BN + 1x1+BN [+ identity BN], then the activation."""

    dense: ConvBN
    one: ConvBN
    identity: BN | None
    act: str = "relu"

    @classmethod
    def make(cls, rng, cin, cout, *, stride=1, group=1, k=3, identity=True, act="relu"):
        dense = rand_conv_bn(rng, cin, cout, k, stride=stride, group=group)
        # RepVGG pads the 1x1 with padding - k // 2 = 0: its output aligns with the kxk's centre tap
        one = rand_conv_bn(rng, cin, cout, 1, stride=stride, group=group, pads=[0] * 4)
        has_id = identity and cin == cout and stride == 1
        return cls(dense, one, rand_bn(rng, cin) if has_id else None, act)

    @property
    def k(self):
        return self.dense.kernel[0]

    def emit(self, net: Net, x):
        d = self.dense
        if net.form == "deploy":
            w, b = self.equivalent_kernel_bias()
            y = net.conv(x, w, b, stride=d.stride, pads=d.onnx_pads(), group=d.group, base="rbr_reparam")
        else:
            terms = [net.conv_bn(x, d, "rbr_dense"), net.conv_bn(x, self.one, "rbr_1x1")]
            if self.identity is not None:
                terms.append(net.bn_or_fold(x, self.identity, "rbr_identity"))
            y = net.add(*terms)
        return net.act(y, self.act)

    def equivalent_kernel_bias(self):
        """RepVGG ``get_equivalent_kernel_bias``: kernel3x3 + pad(kernel1x1) + kernelid."""
        k3, b3 = self.dense.fused()
        k1, b1 = self.one.fused()
        w, b = k3 + pad_to(k1, k3.shape[2:]), b3 + b1
        if self.identity is not None:
            kid, bid = fuse_bn_identity(self.identity, k3.shape[0], self.dense.group, self.k)
            w, b = w + kid, b + bid
        return w, b


@dataclass
class ACBlock:
    """ACNet ``ACBlock``: square kxk+BN + vertical kx1+BN + horizontal 1xk+BN."""

    square: ConvBN
    ver: ConvBN
    hor: ConvBN
    act: str = "relu"

    @classmethod
    def make(cls, rng, cin, cout, *, k=3, stride=1, group=1, act="relu"):
        p = k // 2
        return cls(rand_conv_bn(rng, cin, cout, k, stride=stride, group=group),
                   rand_conv_bn(rng, cin, cout, (k, 1), stride=stride, group=group, pads=[p, 0, p, 0]),
                   rand_conv_bn(rng, cin, cout, (1, k), stride=stride, group=group, pads=[0, p, 0, p]), act)

    def emit(self, net: Net, x):
        sq = self.square
        if net.form == "deploy":
            w, b = self.equivalent_kernel_bias()
            y = net.conv(x, w, b, stride=sq.stride, pads=sq.onnx_pads(), group=sq.group, base="fused_conv")
        else:
            y = net.add(net.conv_bn(x, sq, "square_conv"), net.conv_bn(x, self.ver, "ver_conv"),
                        net.conv_bn(x, self.hor, "hor_conv"))
        return net.act(y, self.act)

    def equivalent_kernel_bias(self):
        """ACNet ``_add_to_square_kernel`` of the fused vertical and horizontal kernels."""
        w, b = self.square.fused()
        for branch in (self.ver, self.hor):
            bw, bb = branch.fused()
            w, b = w + pad_to(bw, w.shape[2:]), b + bb
        return w, b


@dataclass
class MobileOneBlock:
    """MobileOne (apple/ml-mobileone ``MobileOneBlock``): n kxk conv+BN branches, a 1x1 "scale" conv+BN
    when k > 1, an identity BN ("rbr_skip") when stride 1 and cin == cout, then ReLU."""

    convs: list
    scale: ConvBN | None
    skip: BN | None
    act: str = "relu"

    @classmethod
    def make(cls, rng, cin, cout, *, k=3, stride=1, group=1, branches=4, act="relu"):
        convs = [rand_conv_bn(rng, cin, cout, k, stride=stride, group=group) for _ in range(branches)]
        scale = rand_conv_bn(rng, cin, cout, 1, stride=stride, group=group, pads=[0] * 4) if k > 1 else None
        skip = rand_bn(rng, cin) if cin == cout and stride == 1 else None
        return cls(convs, scale, skip, act)

    def emit(self, net: Net, x):
        ref = self.convs[0]
        if net.form == "deploy":
            w, b = self.kernel_bias()
            y = net.conv(x, w, b, stride=ref.stride, pads=ref.onnx_pads(), group=ref.group,
                         base="reparam_conv")
            return net.act(y, self.act)
        # forward(): out = scale_out + identity_out; for each branch: out += rbr_conv[ix](x)
        parts = []
        if self.scale is not None:
            parts.append(net.conv_bn(x, self.scale, "rbr_scale"))
        if self.skip is not None:
            parts.append(net.bn_or_fold(x, self.skip, "rbr_skip"))
        convs = [net.conv_bn(x, c, f"rbr_conv.{i}") for i, c in enumerate(self.convs)]
        if not parts:  # out = 0 + 0 is the Python int 0; out += conv(x) traces as Add(conv(x), 0.0)
            y = net.node("Add", [convs[0], net.const("zero", 0.0)], "add")
            y = net.add(y, *convs[1:])
        else:
            y = net.add(*parts, *convs)
        return net.act(y, self.act)

    def kernel_bias(self):
        """MobileOne ``_get_kernel_bias``: padded scale kernel + identity kernel + sum of conv kernels."""
        ref = self.convs[0]
        k = ref.kernel[0]
        w = np.zeros(ref.w.shape, dtype=np.float64)
        b = np.zeros(ref.w.shape[0])
        if self.scale is not None:
            ws, bs = self.scale.fused()
            w, b = w + pad_to(ws, (k, k)), b + bs
        if self.skip is not None:
            wi, bi = fuse_bn_identity(self.skip, ref.w.shape[0], ref.group, k)
            w, b = w + wi, b + bi
        for c in self.convs:
            wc, bc = c.fused()
            w, b = w + wc, b + bc
        return w, b


@dataclass
class MobileOneUnit:
    """One MobileOne stage block: depthwise MobileOneBlock (k=3, groups=cin, stride) then pointwise (k=1)."""

    dw: MobileOneBlock
    pw: MobileOneBlock

    @classmethod
    def make(cls, rng, cin, cout, *, stride=1, branches=4, k=3):
        return cls(MobileOneBlock.make(rng, cin, cin, k=k, stride=stride, group=cin, branches=branches),
                   MobileOneBlock.make(rng, cin, cout, k=1, branches=branches))

    def emit(self, net: Net, x):
        return self.pw.emit(net, self.dw.emit(net, x))


@dataclass
class RepVGGDW:
    """RepViT ``RepVGGDW``: ``bn(conv(x) + conv1(x) + x)`` with conv a dw 3x3 Conv2d_BN and conv1 a dw 1x1
    Conv2d with bias (no BN); the BN after the sum is what TorchScript can't fold."""

    conv: ConvBN
    conv1_w: np.ndarray
    conv1_b: np.ndarray
    bn: BN

    @classmethod
    def make(cls, rng, c, k=3):
        return cls(rand_conv_bn(rng, c, c, k, group=c), rand_conv(rng, c, c, 1, group=c),
                   rng.normal(0, 0.2, c).astype(np.float32), rand_bn(rng, c))

    def emit(self, net: Net, x):
        c = self.conv.w.shape[0]
        if net.form == "deploy":
            w, b = self.fuse()
            return net.conv(x, w, b, group=c, base="token_mixer")
        s = net.add(net.conv_bn(x, self.conv, "conv"),
                    net.conv(x, self.conv1_w, self.conv1_b, pads=[0] * 4, group=c, base="conv1"), x)
        return net.bn_or_fold(s, self.bn, "bn")

    def fuse(self):
        """RepVGGDW.fuse: conv.fuse() + pad(conv1) + identity, then the trailing BN folded in."""
        w, b = self.conv.fused()
        k = w.shape[2:]
        w = w + pad_to(self.conv1_w.astype(np.float64), k) + identity_kernel(w.shape[0], w.shape[0], k[0])
        b = b + self.conv1_b
        s, t = self.bn.scale_shift()
        return w * s[:, None, None, None], b * s + t


@dataclass
class SqueezeExcite:
    """timm SqueezeExcite: mean -> 1x1 (bias) -> ReLU -> 1x1 (bias) -> Sigmoid -> x * gate."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def make(cls, rng, c, ratio=0.25):
        r = max(1, round(c * ratio))
        return cls(rand_conv(rng, c, r, 1), rng.normal(0, 0.2, r).astype(np.float32),
                   rand_conv(rng, r, c, 1), rng.normal(0, 0.2, c).astype(np.float32))

    def emit(self, net: Net, x):
        g = net.conv(net.node("GlobalAveragePool", [x]), self.w1, self.b1, pads=[0] * 4, base="se.fc1")
        g = net.conv(net.act(g, "relu"), self.w2, self.b2, pads=[0] * 4, base="se.fc2")
        return net.node("Mul", [x, net.node("Sigmoid", [g])])


@dataclass
class RepViTBlock:
    """RepViT ``RepViTBlock`` (stride 1): token mixer RepVGGDW [+ SE]; channel mixer
    ``x + Conv2d_BN(GELU(Conv2d_BN(x, 2c, 1)), c, 1)``. Stride 2: token mixer dw3x3 Conv2d_BN s2 [+ SE] +
    Conv2d_BN 1x1 to cout."""

    token: list
    mix1: ConvBN
    mix2: ConvBN

    @classmethod
    def make(cls, rng, cin, cout, *, stride=1, se=True):
        if stride == 1:
            assert cin == cout
            token = [RepVGGDW.make(rng, cin)] + ([SqueezeExcite.make(rng, cin)] if se else [])
        else:
            token = [rand_conv_bn(rng, cin, cin, 3, stride=2, group=cin)]
            token += [SqueezeExcite.make(rng, cin)] if se else []
            token += [rand_conv_bn(rng, cin, cout, 1, pads=[0] * 4)]
        return cls(token, rand_conv_bn(rng, cout, 2 * cout, 1, pads=[0] * 4),
                   rand_conv_bn(rng, 2 * cout, cout, 1, pads=[0] * 4))

    def emit(self, net: Net, x):
        for m in self.token:
            x = net.conv_bn(x, m, "token_mixer") if isinstance(m, ConvBN) else m.emit(net, x)
        h = net.act(net.conv_bn(x, self.mix1, "channel_mixer.0"), "gelu")
        return net.add(x, net.conv_bn(h, self.mix2, "channel_mixer.2"))


@dataclass
class BNLinear:
    """RepViT ``BN_Linear`` classifier: BatchNorm1d -> Linear; deploy: ``BN_Linear.fuse``."""

    bn: BN
    w: np.ndarray   # [classes, features], nn.Linear layout
    b: np.ndarray

    @classmethod
    def make(cls, rng, features, classes):
        return cls(rand_bn(rng, features), (rng.standard_normal((classes, features)) / np.sqrt(features))
                   .astype(np.float32), rng.normal(0, 0.1, classes).astype(np.float32))

    def emit(self, net: Net, x):
        if net.form == "deploy":
            s, t = self.bn.scale_shift()
            w = self.w.astype(np.float64) * s[None, :]
            b = (t @ self.w.astype(np.float64).T) + self.b
            return net.gemm(x, w, b)
        return net.gemm(net.bn_or_fold(x, self.bn, "head.bn"), self.w, self.b)


@dataclass
class RepGhostModule:
    """RepGhost ``RepGhostModule`` (reparam_bn): x1 = ReLU(BN(Conv1x1(x))); ReLU(dw3x3+BN (x1) + BN(x1))."""

    primary: ConvBN
    cheap: ConvBN
    fusion_bn: BN
    relu: bool = True

    @classmethod
    def make(cls, rng, cin, c, *, dw=3, relu=True):
        return cls(rand_conv_bn(rng, cin, c, 1, pads=[0] * 4), rand_conv_bn(rng, c, c, dw, group=c),
                   rand_bn(rng, c), relu)

    def emit(self, net: Net, x):
        x1 = net.act(net.conv_bn(x, self.primary, "primary_conv"), "relu")
        c = self.cheap.w.shape[0]
        if net.form == "deploy":
            w, b = self.equivalent_kernel_bias()
            x2 = net.conv(x1, w, b, group=c, base="cheap_operation")
        else:
            x2 = net.add(net.conv_bn(x1, self.cheap, "cheap_operation"),
                         net.bn_or_fold(x1, self.fusion_bn, "fusion_bn"))
        return net.act(x2, "relu" if self.relu else None)

    def equivalent_kernel_bias(self):
        """RepGhost ``get_equivalent_kernel_bias``: dw kernel + (1x1 identity of fusion_bn, padded)."""
        w, b = self.cheap.fused()
        c, k = w.shape[0], w.shape[2]
        wi, bi = fuse_bn_identity(self.fusion_bn, c, c, k)
        return w + wi, b + bi


@dataclass
class DBBBlock:
    """Diverse Branch Block (``DiverseBranchBlock``) without its sequential 1x1->kxk branch:
    dbb_origin kxk+BN, dbb_1x1 +BN (when groups < channels, as DBB has it), dbb_avg AvgPool(k, s, k//2)
    then dbb_avgbn. Deploy: transI_fusebn, transVI_multiscale (pad), transV_avg + fuse, transII_addbranch."""

    origin: ConvBN
    one: ConvBN | None
    avgbn: BN
    act: str = "relu"

    @classmethod
    def make(cls, rng, c, *, k=3, stride=1, group=1, one=None, act="relu"):
        one = group < c if one is None else one
        return cls(rand_conv_bn(rng, c, c, k, stride=stride, group=group),
                   rand_conv_bn(rng, c, c, 1, stride=stride, group=group, pads=[0] * 4) if one else None,
                   rand_bn(rng, c), act)

    def emit(self, net: Net, x):
        o = self.origin
        k = o.kernel[0]
        if net.form == "deploy":
            w, b = self.equivalent_kernel_bias()
            y = net.conv(x, w, b, stride=o.stride, pads=o.onnx_pads(), group=o.group, base="dbb_reparam")
        else:
            terms = [net.conv_bn(x, o, "dbb_origin")]
            if self.one is not None:
                terms.append(net.conv_bn(x, self.one, "dbb_1x1"))
            terms.append(net.bn_or_fold(net.avgpool(x, k, o.stride, k // 2), self.avgbn, "dbb_avgbn"))
            y = net.add(*terms)
        return net.act(y, self.act)

    def equivalent_kernel_bias(self):
        w, b = self.origin.fused()
        c, per_group, k = w.shape[0], w.shape[1], w.shape[2]
        if self.one is not None:
            w1, b1 = self.one.fused()
            w, b = w + pad_to(w1, (k, k)), b + b1
        # transV_avg: 1/k^2 at every tap of output o's own input channel (np.tile(arange(input_dim), groups))
        avg = np.zeros((c, per_group, k, k))
        avg[np.arange(c), np.tile(np.arange(per_group), c // per_group), :, :] = 1.0 / (k * k)
        s, t = self.avgbn.scale_shift()
        return w + avg * s[:, None, None, None], b + t


# ------------------------------------------------------------------------------------------ models

# block name -> (builder(rng, **cfg), default cfg); c is the input channel count (repghost: cin)
BLOCKS = {
    "repvgg": (lambda rng, c=8, cout=None, **kw: RepVGGBlock.make(rng, c, cout or c, **kw), {}),
    "repvgg_down": (lambda rng, c=8, cout=None, **kw: RepVGGBlock.make(rng, c, cout or 2 * c, stride=2, **kw),
                    {}),
    "yolov7_repconv": (lambda rng, c=8, **kw: RepVGGBlock.make(rng, c, c, act="silu", **kw), {}),
    "yolov6_repvgg": (lambda rng, c=8, **kw: RepVGGBlock.make(rng, c, c, act="relu", **kw), {}),
    "ppyoloe_repvgg": (lambda rng, c=8, **kw: RepVGGBlock.make(rng, c, c, identity=False, act="silu", **kw),
                       {}),
    "acnet": (lambda rng, c=8, cout=None, **kw: ACBlock.make(rng, c, cout or c, **kw), {}),
    "mobileone": (lambda rng, c=8, cout=None, **kw: MobileOneUnit.make(rng, c, cout or c, **kw), {}),
    "mobileone_dw": (lambda rng, c=8, **kw: MobileOneBlock.make(rng, c, c, k=3, group=c, **kw), {}),
    "mobileone_pw": (lambda rng, c=8, cout=None, **kw: MobileOneBlock.make(rng, c, cout or c, k=1, **kw), {}),
    "repvit_dw": (lambda rng, c=8, **kw: RepVGGDW.make(rng, c, **kw), {}),
    "repvit": (lambda rng, c=8, **kw: RepViTBlock.make(rng, c, c, **kw), {}),
    "repghost": (lambda rng, c=8, cin=None, **kw: RepGhostModule.make(rng, cin or c, c, **kw), {}),
    "dbb": (lambda rng, c=8, **kw: DBBBlock.make(rng, c, **kw), {}),
    "dbb_dw": (lambda rng, c=8, **kw: DBBBlock.make(rng, c, group=c, **kw), {}),
}


def block_params(name, seed=0, **cfg):
    build, defaults = BLOCKS[name]
    return build(np.random.default_rng(seed), **{**defaults, **cfg})


def block_model(name, form, *, seed=0, size=8, **cfg):
    """One block of family `name` in `form`: input x [1, C, size, size], output y."""
    block = block_params(name, seed, **cfg)
    cin = cfg.get("cin") or cfg.get("c", 8)
    net = Net(form)
    y = block.emit(net, "x")
    return net.model("x", y, [1, cin, size, size])


def block_forms(name, *, seed=0, size=8, **cfg):
    return {form: block_model(name, form, seed=seed, size=size, **cfg) for form in ALL_FORMS}


# ------------------------------------------------------------------------------------------ networks


def _repvgg_a0(rng, width=(8, 12, 16, 24), depth=(1, 2, 2, 1), classes=10):
    """RepVGG-A0 in miniature: stage0 one block (3 -> w0, s2), each later stage opens with a stride-2 one."""
    blocks = [RepVGGBlock.make(rng, 3, width[0], stride=2)]
    cin = width[0]
    for w, d in zip(width[1:], depth[1:]):
        for i in range(d):
            blocks.append(RepVGGBlock.make(rng, cin, w, stride=2 if i == 0 else 1))
            cin = w
    fc = (rng.standard_normal((classes, cin)) / np.sqrt(cin)).astype(np.float32)
    return blocks, ("linear", fc, rng.normal(0, 0.1, classes).astype(np.float32))


def _mobileone_s0(rng, width=(8, 12, 16, 24), depth=(1, 2, 2, 1), branches=4, classes=10):
    """MobileOne-S0 in miniature: stage0 a single-branch MobileOneBlock (3 -> w0, s2), then units of
    depthwise + pointwise blocks with `branches` over-parameterized convs (S0 uses 4)."""
    blocks = [MobileOneBlock.make(rng, 3, width[0], k=3, stride=2, branches=1)]
    cin = width[0]
    for w, d in zip(width[1:], depth[1:]):
        for i in range(d):
            blocks.append(MobileOneUnit.make(rng, cin, w, stride=2 if i == 0 else 1, branches=branches))
            cin = w
    fc = (rng.standard_normal((classes, cin)) / np.sqrt(cin)).astype(np.float32)
    return blocks, ("linear", fc, rng.normal(0, 0.1, classes).astype(np.float32))


@dataclass
class Stem:
    """RepViT stem: Conv2d_BN(3, c/2, 3, 2, 1) -> GELU -> Conv2d_BN(c/2, c, 3, 2, 1)."""

    a: ConvBN
    b: ConvBN

    def emit(self, net: Net, x):
        return net.conv_bn(net.act(net.conv_bn(x, self.a, "stem.0"), "gelu"), self.b, "stem.2")


def _repvit(rng, width=(8, 16, 24), depth=(2, 2, 2), classes=10):
    """RepViT in miniature: stem, stages of RepViT blocks (SE on every other block, as RepViT), a stride-2
    block between stages, the BN1d -> Linear classifier (no distillation head)."""
    half = width[0] // 2
    blocks = [Stem(rand_conv_bn(rng, 3, half, 3, stride=2), rand_conv_bn(rng, half, width[0], 3, stride=2))]
    cin = width[0]
    n = 0
    for si, (w, d) in enumerate(zip(width, depth)):
        for i in range(d):
            stride = 2 if si > 0 and i == 0 else 1
            blocks.append(RepViTBlock.make(rng, cin, w, stride=stride, se=n % 2 == 0))
            cin = w
            n += 1
    return blocks, ("bn_linear", BNLinear.make(rng, cin, classes))


NETWORKS = {"repvgg_a0": _repvgg_a0, "mobileone_s0": _mobileone_s0, "repvit": _repvit}

# The deploy form's node counts, by construction: one Conv per RepVGG/MobileOne block; RepViT's fused
# stem (2), token mixer (1, or dw + [SE 2] + pw when strided), channel mixer (2), SE (2).


def network_model(name, form, *, seed=0, size=32, **cfg):
    blocks, head = NETWORKS[name](np.random.default_rng(seed), **cfg)
    net = Net(form)
    x = "x"
    for b in blocks:
        x = b.emit(net, x)
    x = net.head(x)
    if head[0] == "linear":
        y = net.gemm(x, head[1], head[2])
    else:
        y = head[1].emit(net, x)
    return net.model("x", y, [1, 3, size, size], y_rank=2)


def network_forms(name, **kw):
    return {form: network_model(name, form, **kw) for form in ALL_FORMS}


# ------------------------------------------------------------------------------------------ counting


def counts(model: onnx.ModelProto) -> tuple[int, int]:
    """(Conv nodes, BatchNormalization nodes)."""
    ops = [n.op_type for n in model.graph.node]
    return ops.count("Conv"), ops.count("BatchNormalization")
