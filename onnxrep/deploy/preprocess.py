"""Image preprocessing moved into the graph: the model takes raw image bytes.

    images float [B, 3, H, W] (RGB, 0..1)  =>  images uint8 [B, 3, H, W] or [B, H, W, 3] (RGB or BGR, 0..255)

What the deploy side did in numpy, ``x = img[..., ::-1].transpose(0, 3, 1, 2).astype(float32) / 255``,
happens in the graph, and where it can, inside the first Conv: a Conv reading the image directly gets the
kernel ``W'[:, c] = W[:, flip(c)] / 255`` (a new initializer; the old one may be shared), so at run time only
a Cast (and a Transpose for NHWC) is added. Exact up to float rounding (x/255 times W vs x times W/255),
which verification measures like any fold. A reader of the image that is not such a Conv (a Shape, a
grouped Conv, a float16 Cast) gets the preprocessing spelled out: Div by 255, Gather of the channels; a
Shape (--dynamic-batch reads the batch so) reads the raw NCHW tensor, which has the same shape.

``explicit=True`` spells it out for every reader: the reference the folded model is verified against
(bit-exact to the numpy preprocessing above).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxrep.deploy.build import Builder
from onnxrep.io import OnnxrepError

FORMATS = ("float", "uint8-nchw", "uint8-nhwc")
FLIP = [2, 1, 0]
SHAPE_ONLY = {"Shape", "Size"}   # readers of the image's shape only: they read the raw NCHW tensor


def image_input(model: onnx.ModelProto, option: str) -> onnx.ValueInfoProto:
    """The model's one float image input [B, 3, H, W]; a clear error otherwise."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    images = [vi for vi in inputs if vi.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
              and len(vi.type.tensor_type.shape.dim) == 4 and vi.type.tensor_type.shape.dim[1].dim_value == 3]
    if len(inputs) != 1 or len(images) != 1:
        raise OnnxrepError(f"{option}: needs one float image input [B, 3, H, W]; the model's inputs are "
                           + ", ".join(f"{vi.name} {_dims(vi)}" for vi in inputs))
    return images[0]


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _foldable(model: onnx.ModelProto, node: onnx.NodeProto, name: str, inits: dict) -> str:
    """'' when `node` reads the image as its data input and its kernel can take the preprocessing."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or list(node.input[:1]) != [name]:
        return f"{node.op_type} {node.name!r} reads the image"
    if name in node.input[1:]:
        return f"{node.name!r} reads the image twice"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    if group != 1:
        return f"Conv {node.name!r} is grouped"
    if weight is None or weight.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        return f"Conv {node.name!r} has no float32 constant kernel"
    return ""


def add_input_format(model: onnx.ModelProto, fmt: str, bgr: bool, explicit: bool = False) -> dict:
    """Rewrite the image input (in place). Returns {"input", "folded": [Conv names], "explicit": [why]}."""
    option = "--input-format"
    if fmt not in FORMATS:
        raise OnnxrepError(f"{option} {fmt!r}: choose {', '.join(FORMATS)}")
    if fmt == "float" and not bgr:
        return {}
    if fmt == "float":
        option = "--bgr"
    vi = image_input(model, option)
    name, dims = vi.name, _dims(vi)
    float_type = vi.type.tensor_type.elem_type
    b = Builder(model, "onnxrep_input", option)
    inits = {t.name: t for t in model.graph.initializer}
    raw = b.name("raw")                   # the image in float, 0..255 (0..1 for float), channels as fed
    image = None                          # the preprocessed image, where it is spelled out
    readers = [n for n in model.graph.node if name in n.input]
    rest, folded, reasons = [], [], []
    made: dict[str, str] = {}             # kernel -> its preprocessed copy (two Convs sharing one share it too)
    for node in readers:
        if node.op_type in SHAPE_ONLY and node.domain in ("", "ai.onnx"):
            node.input[:] = [raw if t == name else t for t in node.input]   # the same NCHW shape as the image
            continue
        why = "explicit reference" if explicit else _foldable(model, node, name, inits)
        if why:
            rest.append(node)
            reasons.append(why)
            continue
        kernel = node.input[1]
        if kernel not in made:
            w = numpy_helper.to_array(inits[kernel])
            if bgr:
                w = w[:, FLIP]
            if fmt != "float":
                w = w / np.asarray(255, w.dtype)
            made[kernel] = b.const(np.ascontiguousarray(w), base=f"{kernel}_preprocessed")
        node.input[1] = made[kernel]
        node.input[0] = raw
        folded.append(node.name or f"the Conv computing {node.output[0]!r}")
    nodes = list(model.graph.node)        # the new nodes go first (topological order)
    del model.graph.node[:]
    if fmt == "float":
        model.graph.node.append(helper.make_node("Identity", [name], [raw], name=b.name("raw")))
    else:
        cast_in = name
        if fmt == "uint8-nhwc":
            cast_in = b.op("Transpose", [name], perm=[0, 3, 1, 2], base="nchw")
        b.op("Cast", [cast_in], to=float_type, out_names=[raw])
    if rest:
        x = raw if fmt == "float" else b.op("Div", [raw, b.const(np.asarray(255, helper.tensor_dtype_to_np_dtype(float_type)),
                                                                 base="255")], base="scale")
        if bgr:
            x = b.op("Gather", [x, b.const(np.asarray(FLIP, np.int64), base="rgb")], axis=1, base="bgr_to_rgb")
        pre = b.name("image")
        image = pre
        model.graph.node.append(helper.make_node("Identity", [x], [pre], name=b.name("image")))
        for node in rest:
            node.input[:] = [pre if t == name else t for t in node.input]
    new_nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes)
    read = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    unused = [t for t in model.graph.initializer if t.name in made and t.name not in read]
    for t in unused:                      # a replaced kernel no one reads any more
        model.graph.initializer.remove(t)
    if fmt != "float":
        shape = [dims[0], dims[2], dims[3], 3] if fmt == "uint8-nhwc" else dims
        vi.CopyFrom(helper.make_tensor_value_info(name, TensorProto.UINT8, [d if d != "?" else None for d in shape]))
    return {"input": name, "format": fmt, "bgr": bgr, "folded": folded, "explicit": reasons, "image": image}


def preprocess_numpy(image: np.ndarray, fmt: str, bgr: bool, dtype=np.float32) -> np.ndarray:
    """The numpy preprocessing the graph now does: what the original model is fed in the check."""
    x = np.asarray(image)
    if fmt == "uint8-nhwc":
        x = x.transpose(0, 3, 1, 2)
    x = x.astype(dtype)
    if fmt != "float":
        x = x / np.asarray(255, dtype)
    if bgr:
        x = x[:, FLIP]
    return np.ascontiguousarray(x)


def random_images(fmt: str, seed: int, shapes: list[list[int]], dtype=np.float32) -> list[np.ndarray]:
    """Image-like feeds in the adapted format, one per sample shape (NCHW shapes given): uint8 bytes, or
    floats in [0, 1] for "float"."""
    from onnxrep.verify.inputs import image_like

    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        x = image_like(rng, list(shape))
        if fmt == "float":
            out.append(x.astype(dtype))
            continue
        x = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
        out.append(x.transpose(0, 2, 3, 1).copy() if fmt == "uint8-nhwc" else x)
    return out
