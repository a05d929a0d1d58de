"""Inputs that reach everything: seeded feeds for a model's declared inputs, and checks of the user's own.

Shapes. A symbolic batch (a dim_param on axis 0) is fed as 2 in the first sample and 1 in the second
(a rewrite that assumed batch 1, or read a batch from the wrong tensor, shows at 2; one that only works
batched shows at 1). Every other dim_param gets one value per sample, the same in every input that names
it (the ONNX spec: equal dim_params are equal sizes): from ``--input-shape``, else the spatial size of an
image input (the model's ``imgsz`` metadata, else 640; the width 64 less than the height when both are
symbolic, so a rewrite that swaps H and W shows), else 3, 5, 7... (a new odd value per name, distinct
from 1, 2 and each other, so a rewrite that confuses two symbolic dims shows).

A sample whose batch is smaller than the one before it repeats that sample's first items (and its other
inputs): (A, B) at batch 2, then A alone. It proves batch 1 as well, and its noisy twin need not run again:
the twin's deviation on A is already measured (verify.reference). The default two samples are two
pictures, with or without a symbolic batch.

Values. Image inputs (float, rank 4, 1 or 3 channels on axis 1 or 3) get smooth random images with edges
and a little noise in [0, 1], so activations cover the ranges real pictures give; other float inputs
uniform [0, 1); integer inputs that index a ``Gather`` or an ``Embedding``-style lookup stay below the
size they index, other integers in [0, 4); bool inputs are fair coins. An input with a default value
(an initializer) is fed a different value, so an optimizer that baked the default in fails.
"""

from __future__ import annotations

import os

import numpy as np
import onnx

from onnxrep.io import OnnxrepError

BATCHES = (2, 1)   # symbolic batch per sample, cycled


def parse_shapes(specs, option: str = "--input-shape") -> dict[str, list[int]]:
    """--input-shape images=1x3x640x640, images=1,3,640,640 or images:1,3,640,640 -> {name: dims}."""
    shapes = {}
    for spec in specs or ():
        sep = "=" if "=" in spec else ":"
        name, found, dims = spec.rpartition(sep)
        try:
            values = [int(d) for d in dims.replace(",", "x").split("x") if d]
        except ValueError:
            values = []
        if not found or not name or not values or any(v <= 0 for v in values):
            raise OnnxrepError(f"{option} {spec!r}: expected NAME=DIMxDIM... or NAME:DIM,DIM..., "
                               f"e.g. images=1x3x640x640")
        shapes[name] = values
    return shapes


def _image_hint(model: onnx.ModelProto) -> int | None:
    for p in model.metadata_props:
        if p.key in ("imgsz", "image_size"):
            first = p.value.strip("[]() ").split(",")[0].strip()
            if first.isdigit():
                return int(first)
    return None


def _dims(vi: onnx.ValueInfoProto) -> list:
    """Per axis: an int size, a dim_param name, or None (unknown)."""
    out = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param if d.HasField("dim_param") and d.dim_param else None)
    return out


def _is_image(vi: onnx.ValueInfoProto, dims: list) -> bool:
    elem = vi.type.tensor_type.elem_type
    floating = elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                        onnx.TensorProto.BFLOAT16)
    return floating and len(dims) == 4 and (dims[1] in (1, 3) or dims[3] in (1, 3))


def _spatial_axes(dims: list) -> tuple[int, int]:
    return (1, 2) if dims[3] in (1, 3) and dims[1] not in (1, 3) else (2, 3)


def _index_limits(model: onnx.ModelProto) -> dict[str, int]:
    """Integer inputs read as the indices of a Gather whose data axis has a static size: that size."""
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    limits: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("Gather", "GatherElements") and len(node.input) > 1 and node.input[0] in sizes:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            shape = sizes[node.input[0]]
            if shape and -len(shape) <= axis < len(shape):
                size = shape[axis]
                limits[node.input[1]] = min(limits.get(node.input[1], size), size)
    return limits


def resolve_shapes(model: onnx.ModelProto, sample: int, shapes: dict | None = None,
                   batches=BATCHES) -> dict[str, list[int]]:
    """The concrete shape of every fed input in sample `sample` (see the module docstring)."""
    shapes = shapes or {}
    init_names = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in init_names]
    unknown = set(shapes) - {vi.name for vi in model.graph.input}
    if unknown:
        raise OnnxrepError(f"--input-shape names unknown input(s) {sorted(unknown)}; "
                           f"inputs are {[vi.name for vi in inputs]}")
    hint = _image_hint(model) or 640
    values: dict[str, int] = {}
    for vi in inputs:   # what the user said fixes each dim_param it covers, for every input naming it
        if vi.name in shapes:
            for d, v in zip(_dims(vi), shapes[vi.name]):
                if isinstance(d, str):
                    values.setdefault(d, v)
    batch = batches[sample % len(batches)]
    spare = iter(range(3, 1 << 30, 2))   # a new value for each other symbolic dim
    out = {}
    for vi in inputs:
        if vi.name in shapes:
            out[vi.name] = list(shapes[vi.name])
            continue
        dims = _dims(vi)
        image = _is_image(vi, dims)
        spatial = _spatial_axes(dims) if image else ()
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                shape.append(d)
                continue
            if axis == 0:
                v = batch
            elif axis in spatial:
                both = all(not isinstance(dims[a], int) for a in spatial)
                v = hint - 64 if both and axis == spatial[1] and hint > 96 else hint
            elif isinstance(d, str) and d in values:
                v = values[d]
            else:
                v = next(spare)
                while v in values.values():
                    v = next(spare)
            if isinstance(d, str):   # one value per name, in every input
                v = values.setdefault(d, v)
            shape.append(v)
        out[vi.name] = shape
    return out


def image_like(rng: np.random.Generator, shape: list[int], channels_last: bool = False) -> np.ndarray:
    """Smooth random images with edges and a little noise, in [0, 1] (float32)."""
    if channels_last:
        return np.moveaxis(image_like(rng, [shape[0], shape[3], shape[1], shape[2]]), 1, 3).copy()
    n, c, h, w = shape
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    out = np.empty(shape, np.float32)
    for i in range(n):
        for j in range(c):
            fx, fy, px, py = rng.uniform(0.5, 3, 2).tolist() + rng.uniform(0, 2 * np.pi, 2).tolist()
            smooth = 0.2 * np.sin(2 * np.pi * fx * xx + px) * np.cos(2 * np.pi * fy * yy + py)
            a, b, t = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-0.5, 0.5)
            edge = ((a * (xx - 0.5) + b * (yy - 0.5) + t) > 0).astype(np.float32) * rng.uniform(0.15, 0.35)
            out[i, j] = rng.uniform(0.25, 0.5) + smooth + edge + rng.normal(0, 0.02, (h, w))
    return np.clip(out, 0, 1)


def make_inputs(model: onnx.ModelProto, samples: int = 2, seed: int = 0, shapes: dict | None = None,
                batches=BATCHES) -> list[dict]:
    """`samples` feeds for the model's inputs (see the module docstring)."""
    init_names = {t.name for t in model.graph.initializer}
    defaults = {t.name: t for t in model.graph.initializer}
    limits = _index_limits(model)
    rng = np.random.default_rng(seed)
    feeds = []
    batched = {vi.name for vi in model.graph.input if vi.name not in init_names and vi.type.HasField("tensor_type")
               and vi.type.tensor_type.shape.dim and not isinstance(_dims(vi)[0], int) and vi.name not in (shapes or {})}
    for k in range(samples):
        resolved = resolve_shapes(model, k, shapes, batches)
        feed = {}
        for vi in model.graph.input:
            if vi.name in init_names:
                if model.ir_version < 4:   # before IR 4 an initializer listed as an input is no input at all
                    continue
                default = onnx.numpy_helper.to_array(defaults[vi.name])
                if np.issubdtype(default.dtype, np.floating):
                    feed[vi.name] = (default * rng.uniform(0.5, 1.5, default.shape) + rng.normal(0, 0.1, default.shape)
                                     ).astype(default.dtype)
                continue
            if not vi.type.HasField("tensor_type"):
                raise OnnxrepError(f"input {vi.name!r} is not a tensor: cannot generate data for it")
            elem = vi.type.tensor_type.elem_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            shape = resolved[vi.name]
            dims = _dims(vi)
            if np.issubdtype(dtype, np.floating) or elem == onnx.TensorProto.BFLOAT16:
                if _is_image(vi, dims) and len(shape) == 4:
                    value = image_like(rng, shape, channels_last=_spatial_axes(dims) == (1, 2))
                else:
                    value = rng.random(shape, dtype=np.float32)
                value = value.astype(dtype)
            elif dtype == np.bool_:
                value = rng.random(shape) < 0.5
            else:
                high = limits.get(vi.name, 4)
                value = rng.integers(0, max(high, 1), size=shape).astype(dtype)
            feed[vi.name] = np.asarray(value)   # rank 0 too: onnxruntime wants arrays, not numpy scalars
        feeds.append(_first_items(feeds[-1], feed, batched) if feeds else feed)
    return feeds


def _first_items(before: dict, feed: dict, batched: set) -> dict:
    """`feed` as the first items of the sample `before` it, when it differs from it only by a smaller batch
    (see the module docstring); else `feed`."""
    if not batched or set(feed) != set(before):
        return feed
    same = True
    for name, value in feed.items():
        old = before[name]
        if name in batched:
            same = same and np.ndim(value) == np.ndim(old) >= 1 and value.shape[1:] == old.shape[1:] \
                and value.shape[0] < old.shape[0]
        else:
            same = same and np.shape(value) == np.shape(old) and value.dtype == old.dtype
    if not same:
        return feed
    return {name: (before[name][:feed[name].shape[0]].copy() if name in batched else before[name])
            for name in feed}


def load_input_data(path: str | os.PathLike) -> list[dict]:
    try:
        with np.load(path) as data:
            return [{k: data[k] for k in data.files}]
    except Exception as exc:
        raise OnnxrepError(f"--input-data {path}: cannot read as .npz ({exc})") from exc


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(bool)": np.bool_, "tensor(int16)": np.int16, "tensor(uint16)": np.uint16}


def check_feeds(feeds: list[dict], session) -> None:
    """Inputs that don't fit the model are the user's mistake (exit 2), not a reason to skip verification."""
    spec = {i.name: i for i in list(session.get_inputs()) + list(session.get_overridable_initializers())}
    for feed in feeds:
        unknown = sorted(set(feed) - set(spec))
        if unknown:
            raise OnnxrepError(f"input data names unknown input(s) {unknown}; the model's inputs are {sorted(spec)}")
        for name, value in feed.items():
            want = _ORT_TYPES.get(spec[name].type)
            if want is not None and np.asarray(value).dtype != want:
                raise OnnxrepError(f"input {name!r}: data is {np.asarray(value).dtype}, the model wants {np.dtype(want).name}")
            rank = len(spec[name].shape)
            if np.ndim(value) != rank:
                raise OnnxrepError(f"input {name!r}: data has rank {np.ndim(value)}, the model wants rank {rank} "
                                   f"{spec[name].shape}")
            for axis, (have, need) in enumerate(zip(np.shape(value), spec[name].shape)):
                if isinstance(need, int) and need > 0 and have != need:
                    raise OnnxrepError(f"input {name!r}: data has {have} on axis {axis}, the model wants {need}")
