"""A small ONNX graph writer that knows the exporter quirks.

Blocks call `node`, `param` (learned tensors) and `const` (shapes, axes, scales, anchors); the
writer decides how each lands in the file: initializer or Constant node, de-duplicated through
Identity or not, float32 or float16. Node names are module paths with TorchScript's `_1, _2`
suffixes, tensors are `<node>_output_<i>`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Options:
    form: str
    imgsz: tuple
    nc: int
    seed: int
    batch: object            # int or str (symbolic)
    opset: int
    dtype: str
    identity_dedup: bool
    constant_nodes: object   # False, True (everything) or "small" (all but learned parameters)
    shape_chains: bool
    dynamo_bias: bool
    cbfuse: str
    naming: str
    layout: str
    scales_value_floats: bool = False   # dynamo: Resize scales as Constant(value_floats=...)
    exporter_names: bool = False        # TorchScript: computed tensors named onnx::<Op>_<n>, pooled constants


@dataclass(frozen=True)
class Scope:
    """A module's place in the model: node path segments, parameter name, weight key.

    `name` and `key` differ only in the converted/gelan graphs, whose layers are renumbered
    but must draw the yolov9 layer's weights."""
    path: tuple
    name: tuple
    key: tuple

    @classmethod
    def row(cls, idx, key_idx):
        return cls((f"model.{idx}",), ("model", str(idx)), ("model", str(key_idx)))

    def attr(self, a, key_a=None):
        return Scope(self.path + (a,), self.name + (a,), self.key + (key_a or a,))

    def seq(self, i):
        """Child i of an nn.Sequential that is called (TorchScript scope `cv2.0` under `cv2`)."""
        return Scope(self.path + (f"{self.path[-1]}.{i}",), self.name + (str(i),), self.key + (str(i),))

    def item(self, a, i, key_a=None):
        """Item i of an nn.ModuleList (never called itself, so it has no scope of its own)."""
        return Scope(self.path + (f"{a}.{i}",), self.name + (a, str(i)), self.key + (key_a or a, str(i)))

    def op(self, op_type):
        return "/" + "/".join(self.path) + "/" + op_type

    def pname(self, suffix):
        return ".".join(self.name + (suffix,))

    @property
    def k(self):
        return ".".join(self.key)


_NP2ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
            np.dtype(np.int64): TensorProto.INT64}


class Graph:
    def __init__(self, opts: Options):
        self.o = opts
        self.fdtype = np.dtype(np.float16 if opts.dtype == "float16" else np.float32)
        self.nodes = []
        # initializers are written straight into the final proto: copying 280 MB of tensors
        # through make_graph/make_model costs about a second for yolov9-e
        self._model = onnx.ModelProto()
        self._used = {}
        self._dedup = {}
        self._pooled = {}
        self._serial = 3000   # TorchScript numbers the tensors it creates; any start will do

    # -- naming ---------------------------------------------------------------------------------
    def _unique(self, name):
        n = self._used.get(name, 0)
        self._used[name] = n + 1
        return name if n == 0 else f"{name}_{n}"

    # -- nodes ----------------------------------------------------------------------------------
    def node(self, op_type, inputs, name, n_out=1, out=None, **attrs):
        name = self._unique(name)
        outs = [out] if out else [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    # -- tensors --------------------------------------------------------------------------------
    def _cast(self, a):
        # np.asarray(order="C"), not ascontiguousarray: that one turns scalars into shape [1]
        a = np.asarray(a)
        return np.asarray(a, self.fdtype if a.dtype.kind == "f" else np.int64, order="C")

    def param(self, name, array):
        """A learned tensor (weights, BN statistics): keeps its state-dict name."""
        a = self._cast(array)
        return self._emit(name, a, as_node=self.o.constant_nodes is True, dedup=self.o.identity_dedup)

    def const(self, where, array, keep_float32=False, value_floats=False):
        """A non-learned constant used by node `where` (a node-name prefix such as /model.38)."""
        a = np.asarray(array, np.float32, order="C") if keep_float32 else self._cast(array)
        as_node = bool(self.o.constant_nodes)
        name = self._unique(f"{where}/Constant")
        if as_node and value_floats:
            out = f"{name}_output_0"
            self.nodes.append(helper.make_node("Constant", [], [out], name=name,
                                               value_floats=[float(x) for x in a.ravel()]))
            return out
        return self._emit(f"{name}_output_0", a, as_node=as_node,
                          dedup=self.o.identity_dedup and not as_node, node_name=name)

    def _emit(self, name, a, as_node, dedup, node_name=None):
        if dedup:
            k = (a.dtype.str, a.shape, hash(a.tobytes()))
            first, seen = self._dedup.get(k, (None, None))
            if first is not None and np.array_equal(seen, a):
                # TorchScript drops identical initializers and re-shares the survivor via Identity.
                self.nodes.append(helper.make_node("Identity", [first], [name],
                                                   name=self._unique(f"Identity_{name}")))
                return name
            self._dedup.setdefault(k, (name, a))
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a, name),
                                               name=node_name or self._unique(f"Constant_{name}")))
        else:
            t = self._model.graph.initializer.add()
            t.name = name
            t.data_type = _NP2ONNX[a.dtype]
            t.dims.extend(a.shape)
            t.raw_data = a.tobytes()
        return name

    def exporter_name(self, op_type):
        """A tensor name as TorchScript makes them for what it computed (BN-folded weights): onnx::Conv_3017."""
        self._serial += 1
        return f"onnx::{op_type}_{self._serial}"

    def pooled(self, op_type, array, as_node=False):
        """One tensor for equal constants read by several nodes anywhere in the graph, as TorchScript's
        constant pooling leaves them (e.g. the split sizes of both DualDDetect heads): the first call
        emits it, named onnx::<op_type>_<n> (a Constant node with `as_node`), every later call reads it."""
        a = self._cast(array)
        key = (op_type, a.dtype.str, a.shape, a.tobytes())
        if key not in self._pooled:
            name = self.exporter_name(op_type)
            self._pooled[key] = self._emit(name, a, as_node=as_node, dedup=False, node_name=f"Constant_{name}")
        return self._pooled[key]

    def ints(self, where, values):
        return self.const(where, np.asarray(values, np.int64))

    # -- model ----------------------------------------------------------------------------------
    def model(self, inputs, outputs, producer="pytorch", producer_version="2.5.0"):
        """inputs/outputs: lists of (name, elem_dtype, shape); shape entries int or str (symbolic)."""
        def vi(name, dt, shape):
            return helper.make_tensor_value_info(name, _NP2ONNX[np.dtype(dt)], list(shape))
        m = self._model
        m.graph.name = "main_graph"
        m.graph.node.extend(self.nodes)
        m.graph.input.extend([vi(*x) for x in inputs])
        m.graph.output.extend([vi(*x) for x in outputs])
        opset = m.opset_import.add()
        opset.domain, opset.version = "", self.o.opset
        m.ir_version = helper.find_min_ir_version_for([opset])
        m.producer_name, m.producer_version = producer, producer_version
        return m


def count_convs(model: onnx.ModelProto):
    """(Conv nodes, elements of their weight and bias tensors), as yolov9-graphs.md section 3 counts.

    Weights and biases are followed through Identity aliases to an initializer or a Constant
    node; a bias computed at run time (raw dynamo's Expand(CastLike(0))) is not a parameter and
    counts 0. A tensor shared by several Convs counts once per Conv."""
    g = model.graph
    sizes = {t.name: int(np.prod(t.dims)) for t in g.initializer}
    alias = {}
    for n in g.node:
        if n.op_type == "Constant":
            a = n.attribute[0]
            if a.name == "value":
                sizes[n.output[0]] = int(np.prod(a.t.dims))
            elif a.name in ("value_floats", "value_ints"):
                sizes[n.output[0]] = len(a.floats) or len(a.ints)
            else:
                sizes[n.output[0]] = 1
        elif n.op_type == "Identity":
            alias[n.output[0]] = n.input[0]

    def size(name):
        seen = set()
        while name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        return sizes.get(name, 0)

    convs = [n for n in g.node if n.op_type == "Conv"]
    return len(convs), sum(size(x) for n in convs for x in n.input[1:3] if x)
