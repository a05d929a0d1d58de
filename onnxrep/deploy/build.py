"""Appending standard-ONNX subgraphs to a finished model: fresh names, constants, opset-dependent forms.

The deployment adapters (NMS, output layouts, input formats) add small graphs after the optimizer is
done; they work on the ModelProto with onnx.helper. A Builder gives every new tensor and node a name
under one prefix that the model does not use, writes constants as initializers, and spells the ops
whose signature changed between opsets (Unsqueeze/Squeeze/ReduceSum axes as an input from 13, Split
sizes from 13) the way the model's opset wants.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxrep.io import OnnxrepError

MIN_OPSET = 12   # NonMaxSuppression, Pad with pads as an input, GatherElements, Min on int64


def model_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _taken(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer} | {v.name for v in g.input} | {v.name for v in g.output}
    for node in g.node:
        names.update(node.output)
        names.update(node.input)
        names.add(node.name)
    return names


class Builder:
    """Adds nodes to `model` (in place) named `<prefix>/<base>` (a suffix when taken)."""

    def __init__(self, model: onnx.ModelProto, prefix: str, option: str):
        self.model = model
        self.prefix = prefix
        self.opset = model_opset(model)
        if self.opset < MIN_OPSET:
            raise OnnxrepError(f"{option}: the model's opset is {self.opset}; it needs opset {MIN_OPSET} or later "
                               f"(re-export with a newer opset)")
        self._taken = _taken(model)
        self._count = 0

    def name(self, base: str) -> str:
        name = f"{self.prefix}/{base}"
        while name in self._taken:
            self._count += 1
            name = f"{self.prefix}/{base}_{self._count}"
        self._taken.add(name)
        return name

    def const(self, value, dtype=None, base: str = "const") -> str:
        array = np.asarray(value, dtype=dtype)
        name = self.name(base)
        self.model.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, base: str | None = None, domain: str = "",
           out_names: list[str] | None = None, **attrs) -> list[str] | str:
        node_name = self.name(base or op_type)
        names = out_names or [self.name(f"{base or op_type}_out{k}" if outputs > 1 else f"{base or op_type}_out")
                              for k in range(outputs)]
        self.model.graph.node.append(helper.make_node(op_type, inputs, names, name=node_name, domain=domain, **attrs))
        return names if outputs > 1 else names[0]

    # ---- ops whose form depends on the opset
    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const(axes, np.int64, "axes")])
        return self.op("Unsqueeze", [x], axes=axes)

    def reduce_sum(self, x: str, axes: list[int], keepdims: int = 1) -> str:
        if self.opset >= 13:
            return self.op("ReduceSum", [x, self.const(axes, np.int64, "axes")], keepdims=keepdims)
        return self.op("ReduceSum", [x], axes=axes, keepdims=keepdims)

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.const([start], np.int64, "starts"), self.const([end], np.int64, "ends"),
                                 self.const([axis], np.int64, "axes")])

    def split(self, x: str, sizes: list[int], axis: int, out_names: list[str] | None = None) -> list[str]:
        if self.opset >= 13:
            return self.op("Split", [x, self.const(sizes, np.int64, "split")], outputs=len(sizes), axis=axis,
                           out_names=out_names)
        return self.op("Split", [x], outputs=len(sizes), axis=axis, split=sizes, out_names=out_names)

    def dim(self, x: str, axis: int) -> str:
        """x.shape[axis] as an int64 [1]."""
        return self.slice(self.op("Shape", [x]), axis, axis + 1, 0)


def replace_output(model: onnx.ModelProto, old: str, new: list[onnx.ValueInfoProto]) -> None:
    """Graph output `old` becomes the outputs `new`, in its place."""
    outputs = list(model.graph.output)
    k = next(i for i, o in enumerate(outputs) if o.name == old)
    outputs[k:k + 1] = new
    del model.graph.output[:]
    model.graph.output.extend(outputs)


def check_free(model: onnx.ModelProto, names: list[str], option: str) -> None:
    clash = sorted(set(names) & _taken(model))
    if clash:
        raise OnnxrepError(f"{option}: the model already has a tensor named {', '.join(map(repr, clash))}")


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Every use of tensor `old` (producer, readers, value_info) now says `new`; graph outputs are left to
    the caller."""
    for node in model.graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
    for vi in model.graph.value_info:
        if vi.name == old:
            vi.name = new
