"""Differential testing on random graphs.

A hypothesis generator composes the patterns the passes target (Conv/ConvTranspose -> BN chains,
RepConv-style sums with 2-4 branches, identity and BN-identity branches) with everything that must make
them decline (shared weights, extra consumers, intermediates that are graph outputs, mismatched strides,
groups, pads and dilations, broadcast Adds), in float16 and float32, static and symbolic batch, opsets
13-21. For every graph: optimize() never raises, the result passes the full checker, and onnxruntime
(optimizations off) computes the same outputs. `make test` runs a few hundred graphs, `make test-all`
thousands (the slow-marked variant).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import onnxrep
from onnxrep.verify import verify
from tests.graphs import NP_TO_ONNX


class Builder:
    """Grows a graph block by block from one input; tracks the current tensor's channels and size."""

    def __init__(self, draw, dtype, channels, size, batch):
        self.draw, self.dtype = draw, dtype
        self.nodes, self.inits, self.extra_outputs = [], [], []
        self.weights: dict[tuple, str] = {}   # shape -> a weight name, for sharing
        self.n = 0
        self.x, self.c, self.size = "x", channels, size
        self.input = helper.make_tensor_value_info("x", NP_TO_ONNX[np.dtype(dtype)], [batch, channels, size, size])
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    def name(self, base):
        self.n += 1
        return f"{base}{self.n}"

    def const(self, base, value):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=self.dtype), name))
        return name

    def weight(self, shape):
        if shape in self.weights and self.draw(st.booleans()):
            return self.weights[shape]  # shared with an earlier conv
        fan_in = int(np.prod(shape[1:]))
        name = self.const("W", self.rng.standard_normal(shape) / np.sqrt(fan_in))
        self.weights[shape] = name
        return name

    def bn(self, x, c):
        stats = [self.rng.uniform(0.5, 1.5, c) * self.rng.choice([-1, 1], c), self.rng.normal(0, 0.5, c),
                 self.rng.normal(0, 0.5, c), self.rng.uniform(0.5, 2.0, c)]
        names = [self.const(p, v) for p, v in zip(("g", "b", "m", "v"), stats)]
        out = self.name("bn")
        eps = self.draw(st.sampled_from([1e-5, 1e-3]))
        self.nodes.append(helper.make_node("BatchNormalization", [x] + names, [out], epsilon=eps))
        return out

    def conv(self, x, cin, cout, k, stride=1, pad=None, dilation=1, group=1, bias=False, transpose=False):
        kh, kw = k if isinstance(k, tuple) else (k, k)
        pads = pad if pad is not None else [(kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation] * 2
        shape = (cin, cout // group, kh, kw) if transpose else (cout, cin // group, kh, kw)
        inputs = [x, self.weight(shape)]
        if bias:
            inputs.append(self.const("B", self.rng.normal(0, 0.3, cout)))
        out = self.name("ct" if transpose else "c")
        self.nodes.append(helper.make_node("ConvTranspose" if transpose else "Conv", inputs, [out],
                                           kernel_shape=[kh, kw], pads=pads, strides=[stride] * 2,
                                           dilations=[dilation] * 2, group=group))
        return out

    def maybe_leak(self, tensor):
        """Give an intermediate another reader or make it a graph output: the passes must then decline."""
        choice = self.draw(st.sampled_from(["none"] * 6 + ["output", "consumer"]))
        if choice == "output":
            self.extra_outputs.append(tensor)
        elif choice == "consumer":
            out = self.name("leak")
            self.nodes.append(helper.make_node("Relu", [tensor], [out]))
            self.extra_outputs.append(out)

    def act(self, x):
        kind = self.draw(st.sampled_from(["none", "relu", "silu"]))
        if kind == "none":
            return x
        out = self.name("a")
        if kind == "relu":
            self.nodes.append(helper.make_node("Relu", [x], [out]))
        else:
            sig = self.name("s")
            self.nodes += [helper.make_node("Sigmoid", [x], [sig]), helper.make_node("Mul", [x, sig], [out])]
        return out

    # ----------------------------------------------------------------------------------------- blocks

    def block_conv_bn(self):
        draw = self.draw
        transpose = draw(st.booleans())
        groups = [g for g in (1, 2) if self.c % g == 0]
        group = draw(st.sampled_from(groups))
        cout = group * draw(st.integers(1, 3))
        k = draw(st.sampled_from([1, 3]))
        stride = 1 if transpose or self.size < 4 else draw(st.sampled_from([1, 1, 2]))
        y = self.conv(self.x, self.c, cout, k, stride=stride, group=group, bias=draw(st.booleans()), transpose=transpose)
        self.maybe_leak(y)
        if draw(st.booleans()) or True:
            y = self.bn(y, cout)
        self.x, self.c = self.act(y), cout
        if stride == 2:
            self.size = (self.size + 2 * ((k - 1) // 2) - k) // 2 + 1

    def block_repconv(self):
        draw = self.draw
        c = self.c
        n = draw(st.integers(2, 4))
        groups = [g for g in (1, 2) if c % g == 0]
        group = draw(st.sampled_from(groups))
        terms = []
        for i in range(n):
            kind = draw(st.sampled_from(["3x3", "1x1", "1x3", "3x1", "identity", "bn_identity", "misaligned",
                                         "other_group", "dilated"]))
            if kind == "identity":
                terms.append(self.x)
                continue
            if kind == "bn_identity":
                terms.append(self.bn(self.x, c))
                continue
            k, pad, dil, g = {"3x3": (3, None, 1, group), "1x1": (1, None, 1, group), "1x3": ((1, 3), None, 1, group),
                              "3x1": ((3, 1), None, 1, group), "misaligned": (3, [0, 0, 2, 2], 1, group),
                              "other_group": (3, None, 1, 1 if group == 2 else (2 if c % 2 == 0 else 1)),
                              "dilated": (3, [2, 2, 2, 2], 2, group)}[kind]
            y = self.conv(self.x, c, c, k, pad=pad, dilation=dil, group=g, bias=draw(st.booleans()))
            self.maybe_leak(y)
            if draw(st.booleans()):
                y = self.bn(y, c)
            terms.append(y)
        if draw(st.booleans()):
            out = self.name("sum")
            self.nodes.append(helper.make_node("Sum", terms, [out]))
        else:
            out = terms[0]
            for t in terms[1:]:
                nxt = self.name("add")
                self.nodes.append(helper.make_node("Add", [out, t] if draw(st.booleans()) else [t, out], [nxt]))
                out = nxt
        if draw(st.booleans()):  # a BN after the sum (RepViT)
            out = self.bn(out, c)
        self.x = self.act(out)

    def block_broadcast_add(self):
        y = self.conv(self.x, self.c, self.c, 3)
        bias = self.const("bc", self.rng.normal(0, 1, (1, self.c, 1, 1)))
        out = self.name("badd")
        self.nodes.append(helper.make_node("Add", [y, bias], [out]))
        self.x = out

    def model(self, opset):
        out_vi = [helper.make_tensor_value_info(self.x, NP_TO_ONNX[np.dtype(self.dtype)], None)]
        out_vi += [helper.make_tensor_value_info(t, NP_TO_ONNX[np.dtype(self.dtype)], None)
                   for t in dict.fromkeys(self.extra_outputs) if t != self.x]
        graph = helper.make_graph(self.nodes, "random", [self.input], out_vi, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8 if opset <= 18 else 10
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in model.graph.output:
            if out.name in known:
                out.type.CopyFrom(known[out.name].type)
        return model


@st.composite
def random_models(draw):
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float16]))
    batch = draw(st.sampled_from([1, 2, "N"]))
    b = Builder(draw, dtype, channels=draw(st.sampled_from([2, 4])), size=draw(st.integers(5, 8)), batch=batch)
    for _ in range(draw(st.integers(1, 4))):
        draw(st.sampled_from([b.block_conv_bn, b.block_repconv, b.block_repconv, b.block_broadcast_add]))()
    return b.model(draw(st.integers(13, 21))), dtype


def check(model, dtype):
    onnx.checker.check_model(model, full_check=True)
    result = onnxrep.optimize(model, verify=False)
    onnx.checker.check_model(result.model, full_check=True)
    tol = dict(rtol=3e-2, atol=3e-2) if dtype == np.float16 else {}
    v = verify(model, result.model, samples=2, seed=3, **tol)
    assert v.ran, v.skipped_reason
    assert v.ok, "\n".join(v.lines())
    # every output of the original is still there, with its name
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    return result


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_models())
def test_random_graphs_optimize_to_equal_models(case):
    check(*case)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_models())
def test_random_graphs_many(case):
    check(*case)
