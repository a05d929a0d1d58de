"""Tiny graphs built in code for the core tests (Conv/ConvTranspose + BatchNormalization and friends)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.float64): TensorProto.DOUBLE}


def bn_params(rng, c, dtype=np.float32):
    """BN statistics far from identity, so that a wrong fold can't hide."""
    return {
        "scale": (rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)).astype(dtype),
        "bias": rng.normal(0, 1, c).astype(dtype),
        "mean": rng.normal(0, 2, c).astype(dtype),
        "var": rng.uniform(0.2, 3.0, c).astype(dtype),
    }


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8, value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = ir_version
    return with_output_shapes(model)


def with_output_shapes(model):
    """Fill graph outputs' shapes from shape inference (full checker wants a shape on every output)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            src = known[out.name]
            if src.type.tensor_type.HasField("shape"):
                out.type.CopyFrom(src.type)
    return model


def vi(name, dtype=np.float32, shape=None):
    return helper.make_tensor_value_info(name, NP_TO_ONNX[np.dtype(dtype)], shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def conv_bn(*, spatial=2, cin=4, cout=8, k=3, group=1, stride=1, dilation=1, pad=None, bias=False,
            eps=1e-3, dtype=np.float32, transpose=False, size=8, batch=1, seed=0, opset=17,
            training_mode=0, bn_outputs=1, param_form="initializer"):
    """x -> Conv|ConvTranspose -> BatchNormalization -> y.

    param_form: "initializer", "constant" (Constant nodes), "identity" (Identity aliases of initializers).
    """
    rng = np.random.default_rng(seed)
    pad = k // 2 * dilation if pad is None else pad
    if transpose:
        wshape = (cin, cout // group) + (k,) * spatial
    else:
        wshape = (cout, cin // group) + (k,) * spatial
    fan_in = np.prod(wshape[1:])
    params = {"W": (rng.standard_normal(wshape) / np.sqrt(fan_in)).astype(dtype)}
    if bias:
        params["B"] = rng.normal(0, 0.5, cout).astype(dtype)
    bnp = bn_params(rng, cout, dtype)
    params.update({f"bn_{k_}": v for k_, v in bnp.items()})
    nodes, inits = [], []
    for name, value in params.items():
        if param_form == "constant":
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_c")))
        elif param_form == "identity":
            inits.append(init(name + "_src", value))
            nodes.append(helper.make_node("Identity", [name + "_src"], [name]))
        else:
            inits.append(init(name, value))
    attrs = dict(kernel_shape=[k] * spatial, strides=[stride] * spatial, dilations=[dilation] * spatial,
                 pads=[pad] * (2 * spatial), group=group)
    conv_inputs = ["x", "W"] + (["B"] if bias else [])
    nodes.append(helper.make_node("ConvTranspose" if transpose else "Conv", conv_inputs, ["c"], name="conv", **attrs))
    bn_attrs = {"epsilon": eps}
    if training_mode:
        bn_attrs["training_mode"] = 1
    # training mode needs all three outputs in the node; bn_outputs=3 also makes them graph outputs
    # (opset <= 13 spells the training form with 5 outputs and no training_mode attribute)
    outs = ["y"] + (["rm", "rv"] if bn_outputs >= 3 or training_mode else []) + (["sm", "sv"] if bn_outputs == 5 else [])
    nodes.append(helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], outs,
                                  name="bn", **bn_attrs))
    graph_outputs = [vi("y", dtype)] + ([vi("rm", dtype, [cout]), vi("rv", dtype, [cout])] if bn_outputs >= 3 else [])
    shape = [batch, cin] + [size] * spatial
    return make_model(nodes, [vi("x", dtype, shape)], graph_outputs, inits, opset=opset)


def count_ops(model: onnx.ModelProto, op: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op)
