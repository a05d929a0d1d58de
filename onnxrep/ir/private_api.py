"""Every private API of onnx-graphsurgeon (and onnx) that onnxrep uses, in one place.

onnxrep keeps large weights out of Python memory: a gs Constant imported from a model holds a *lazy* view
of its TensorProto (``LazyValues``) and reading ``.values`` would cache a numpy copy of every weight. So
the few places that need the proto itself, its raw bytes, or to hand a written proto back to the tensor go
through here. gs is pinned below the next minor version (pyproject.toml), and tests/test_private_api.py
fails loudly, naming the missing piece, if an upgrade removes or renames any of these.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

TESTED_GS = ("0.5", "0.6")   # minor versions this module was written against (pyproject: <0.7)

# gs warns on stdout about things we handle (e.g. bfloat16 casts); our report says what matters.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL

export_node = OnnxExporter.export_node
export_function = OnnxExporter.export_function
export_tensor_proto = OnnxExporter.export_tensor_proto
export_attributes = OnnxExporter.export_attributes


def export_value_info(tensor: gs.Tensor) -> onnx.ValueInfoProto:
    return OnnxExporter.export_value_info_proto(tensor, do_type_check=False)


def elem_type(dtype) -> int:
    """onnx enum for a gs/numpy dtype (0 when unknown)."""
    if dtype is None:
        return 0
    try:
        return int(dtype_to_onnx(dtype))
    except Exception:  # noqa: BLE001
        return 0


def export_dtype(tensor: gs.Constant):
    """The dtype a Constant is written with (differs from its numpy dtype for bfloat16 and friends)."""
    return tensor.export_dtype


def constant_attr_export_dtype(value: gs.Constant):
    """The export dtype of a ``Constant`` node's ``value`` attribute, as gs imported it."""
    return value._export_dtype


def peek(tensor: gs.Constant) -> np.ndarray:
    """A constant's values *without* caching them on the tensor (gs's ``.values`` keeps a numpy copy of
    every weight it ever loads; for a 280 MB model that is a second copy of the weights)."""
    values = tensor._values
    return values.load() if isinstance(values, LazyValues) else tensor.values


def const_bytes(tensor: gs.Constant) -> bytes:
    """The raw little-endian bytes of a constant, straight from its TensorProto when it has them."""
    values = tensor._values
    if isinstance(values, LazyValues) and values.tensor.HasField("raw_data"):
        return values.tensor.raw_data
    return np.ascontiguousarray(peek(tensor)).tobytes()


def nbytes(tensor: gs.Constant) -> int:
    """Bytes of a constant's values, without loading them."""
    return int(tensor._values.nbytes)


def write_initializer(g: onnx.GraphProto, tensor: gs.Constant) -> None:
    """Append `tensor` to `g`'s initializers, then point it at the written proto so its numpy copy can go
    (the graph is finished: each weight is held once, by the model being built)."""
    values = tensor._values
    if isinstance(values, SparseValues):
        g.sparse_initializer.add().CopyFrom(values.tensor)
        return
    proto = g.initializer.add()
    if isinstance(values, LazyValues):
        proto.CopyFrom(values.tensor)
        proto.name = tensor.name
    else:
        array = np.asarray(values)
        if array.dtype.kind in "OSU":  # strings: the helper knows their encoding
            proto.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
        else:
            proto.name = tensor.name
            proto.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            proto.dims.extend(array.shape)
            proto.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    tensor._values = LazyValues(proto)


def all_tensors(model: onnx.ModelProto):
    """Every TensorProto of a model, subgraphs and Constant attributes included (onnx's own walker)."""
    return onnx.external_data_helper._get_all_tensors(model)


def check() -> list[str]:
    """The private pieces above that this gs/onnx no longer has (empty: all present)."""
    missing = [f"{owner.__name__}.{attr}" for owner, attr in (
        (OnnxExporter, "export_node"), (OnnxExporter, "export_function"), (OnnxExporter, "export_tensor_proto"),
        (OnnxExporter, "export_attributes"), (OnnxExporter, "export_value_info_proto"), (LazyValues, "load"),
        (onnx.external_data_helper, "_get_all_tensors")) if not hasattr(owner, attr)]
    probe = gs.Constant("probe", np.zeros(2, np.float32))
    missing += [f"Constant.{attr}" for attr in ("_values", "export_dtype") if not hasattr(probe, attr)]
    try:
        lazy = LazyValues(onnx.numpy_helper.from_array(np.zeros(2, np.float32), "p"))
        if lazy.nbytes != 8 or lazy.tensor.name != "p" or lazy.load().shape != (2,):
            missing.append("LazyValues(TensorProto): .nbytes/.tensor/.load()")
    except Exception as exc:  # noqa: BLE001
        missing.append(f"LazyValues(TensorProto) ({exc})")
    return missing
