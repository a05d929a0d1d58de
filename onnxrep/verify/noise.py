"""The original's own float rounding noise, measured: a noisy twin of the original, each rounding perturbed.

A correct rewrite changes only how float sums are rounded (a BN scale folded into weights, two kernels
summed into one), and a deep network amplifies those last-bit differences by a factor that depends on the
network and its weights: 1e-6 of the output's range for a trained YOLO, 1e-4 for a random-weight one whose
activations saturate. No fixed tolerance fits both. So the verifier measures the amplification: it runs a
twin of the original with one rounding step of error put where a rewrite re-rounds, and the rewrite may
move an output only a small multiple of what that moved it.

The twin is the original with, both multiplied by ``1 ± e`` (the sign drawn per element, seeded; ``e`` one
unit in the last place of the type: 2^-23 float32, 2^-10 float16, 2^-7 bfloat16, 2^-52 float64), or, for a
float32 model that a --precision fp16 result is held to, by ``1 + e·u`` with float16's step and ``u``
uniform in [-1, 1] (the error of a rounding to float16):
- every floating-point parameter of the arithmetic a rewrite folds or merges (the weights and biases of Conv,
  ConvTranspose, Gemm, MatMul; BatchNormalization's and the normalizations' parameters; the constants of
  Add, Sub, Mul, Div, Sum) with at least 2 elements, element by element: each product term of a sum then
  carries one step of error, so the sum's error is one step of its *terms*, not of the sum (the
  cancellation a merged kernel re-rounds);
- the output of every op that rounds a sum (Conv, ConvTranspose, Gemm, MatMul, BatchNormalization,
  AveragePool, Add, Sum), by a constant factor per element of its shape but for the batch axis and a
  feature map's rows (a few thousand numbers, independent across the terms that any one element of the
  next op sums): the rounding of two branches before their Add, which a merged kernel no longer does.
Scalars are left alone (shape arithmetic: a perturbed ``0.5`` under a Floor moves a size), and so is a
constant that anything but that arithmetic also reads; a twin whose output changes shape all the same is
reported as not measured. Subgraphs (If/Loop/Scan bodies) are not perturbed.

The twin is written for onnxruntime with the cut model (verify/runtime.py): no copy of the weights, no
random numbers drawn in the graph, so it costs one plain run of the original per sample. (The previous twin
drew a uniform factor for every element of every such op's output at run time: 3x a plain run; on the
builder's YOLOv9/GELAN models this one's levels are 0.5-2.6x of that one's, and no honest rewrite uses more
of its tolerance.)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxrep.verify.runtime import _all_nodes, _reads

SUFFIX = "__onnxrep_noise"
ROUNDING = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "AveragePool", "Add", "Sum"}
ARITHMETIC = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
              "LayerNormalization", "GroupNormalization", "Add", "Sub", "Mul", "Div", "Sum"}
ULP = {TensorProto.FLOAT: 2.0 ** -23, TensorProto.FLOAT16: 2.0 ** -10, TensorProto.BFLOAT16: 2.0 ** -7,
       TensorProto.DOUBLE: 2.0 ** -52}
_NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value, from shape inference on the structure (weights as typed inputs)."""
    from onnxrep.io import structure_view

    types = {t.name: t.data_type for t in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(structure_view(model), check_type=False, strict_mode=False)
        values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    except Exception:  # noqa: BLE001 -- no types: nothing inferred, the caller's floor still applies
        values = list(model.graph.input) + list(model.graph.output)
    for vi in values:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


# Where a float becomes discrete: index, shape and count inputs, rounding to an integer, casts to one. A value
# that reaches any of these is exact arithmetic (a position table, a scale times a size), not something a
# rewrite re-rounds: moving it by one step can move an index by one, and the twin would then measure a jump.
DISCRETE_INPUTS = {"Floor": (0,), "Ceil": (0,), "Round": (0,), "Gather": (1,), "GatherElements": (1,),
                   "GatherND": (1,), "ScatterND": (1,), "ScatterElements": (1,), "Slice": (1, 2, 3, 4),
                   "Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Expand": (1,), "Tile": (1,),
                   "Range": (0, 1, 2), "ConstantOfShape": (0,), "TopK": (1,), "OneHot": (1,), "Pad": (1,),
                   "Squeeze": (1,), "Unsqueeze": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,),
                   "ReduceMin": (1,), "Split": (1,), "NonMaxSuppression": (2,)}
# Selections: an index chosen by comparing floats (TopK, ArgMax, NMS). The floats compared are not exact
# arithmetic but scores a rewrite re-rounds, so the walk from a discrete use stops there, continuing only into
# the selection's own discrete inputs (TopK's k, NMS's limits): RT-DETR's whole network feeds its query
# selection's TopK, and a twin that moved none of it measured nothing (verify/selection.py).
SELECTIONS = {"TopK": (1,), "ArgMax": (), "ArgMin": (), "NonMaxSuppression": (2, 3, 4)}
_INTEGER = {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
            TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL}


def exact(graph: onnx.GraphProto) -> set[str]:
    """Names of the values a discrete use (DISCRETE_INPUTS, a Cast to an integer type) is computed from,
    through every op but Shape and Size (which read no values): the twin moves none of them. Nodes inside
    subgraphs count; a node with a subgraph reads every name its subgraph reads."""
    producers = {o: n for n in graph.node for o in n.output if o}
    seeds = []
    for node in _all_nodes(graph):
        slots = DISCRETE_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
        if node.op_type == "Cast" and any(a.name == "to" and a.i in _INTEGER for a in node.attribute):
            slots = (0,)
        seeds += [node.input[k] for k in slots if k < len(node.input) and node.input[k]]
    out, todo = set(), list(seeds)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        node = producers.get(name)
        if node is not None and node.op_type in SELECTIONS and node.domain in ("", "ai.onnx"):
            todo += [node.input[k] for k in SELECTIONS[node.op_type] if k < len(node.input) and node.input[k]]
        elif node is not None and node.op_type not in ("Shape", "Size"):   # those read a shape, not values
            todo += list(_reads(node))
    return out


def perturbable(graph: onnx.GraphProto) -> set[str]:
    """Names of the constants (initializers, Constant nodes) that only ARITHMETIC reads (through Identity,
    in subgraphs too), and that no discrete use is computed from (exact())."""
    readers: dict[str, set[str]] = {}
    alias = {n.output[0]: n.input[0] for n in _all_nodes(graph) if n.op_type == "Identity" and n.input and n.output}

    def root(name: str) -> str:
        seen = set()
        while name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        return name

    for node in _all_nodes(graph):
        for i in node.input:
            if i and node.op_type != "Identity":
                readers.setdefault(root(i), set()).add(node.op_type if node.domain in ("", "ai.onnx") else "?")
    for out in graph.output:
        readers.setdefault(root(out.name), set()).add("?")
    consts = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    inputs = {i.name for i in graph.input}
    fixed = exact(graph)
    return {c for c in consts if c not in inputs and c not in fixed and readers.get(c) and readers[c] <= ARITHMETIC}


def _perturb(t: onnx.TensorProto, rng: np.random.Generator, step: float | None) -> onnx.TensorProto | None:
    if t.data_type not in _NP or t.data_location == TensorProto.EXTERNAL:
        return None
    a = numpy_helper.to_array(t)
    if a.size < 2:
        return None
    e = ULP[t.data_type] if step is None else max(step, ULP[t.data_type])
    moved = (a.astype(np.float64) * _factor(rng, a.shape, e, _uniform(t.data_type, e))).astype(a.dtype)
    return numpy_helper.from_array(moved, t.name or None)


class Perturbation:
    """The noisy twin as a transform of the original, applied while verify/runtime.py writes the cut model
    for onnxruntime: each perturbable tensor moved (`__call__`, tensor by tensor), and the outputs of the
    ops that round a sum scaled by per-channel factors (`rewrite`, on the weightless head).

    as_float16: perturb float32 values by float16's step (2^-10): the noise a float16 copy of this float32
    model may show, which is what a --precision fp16 result is held to."""

    def __init__(self, model: onnx.ModelProto, seed: int, as_float16: bool = False):
        self.names = perturbable(model.graph)
        self.step = ULP[TensorProto.FLOAT16] if as_float16 else None
        self.seed = seed
        self.moved = 0
        self.model = model

    def __call__(self, tensor: onnx.TensorProto, name: str | None = None) -> onnx.TensorProto | None:
        """`tensor` moved, or None. name: the value's name when it is not the tensor's (a Constant node's)."""
        name = name or tensor.name
        if name not in self.names:
            return None
        tensor = _named(tensor, name)
        # one generator per tensor, seeded by its name: the same perturbation whatever the order of writing
        rng = np.random.default_rng([self.seed, *name.encode()])
        new = _perturb(tensor, rng, self.step)
        self.moved += new is not None
        return new

    def rewrite(self, head: onnx.ModelProto) -> list[onnx.TensorProto]:
        """After each ROUNDING op of the head's graph, its output times a constant factor 1 + e·u, drawn per
        element of the output's shape with the batch axis and, for a feature map, its rows left out (one
        factor for an unsized axis). Returns the factors: initializers for the writer to add."""
        shapes = _value_shapes(self.model)
        fixed = exact(self.model.graph)
        rng = np.random.default_rng([self.seed, 1])
        nodes, factors = [], []
        for node in head.graph.node:
            nodes.append(node)
            if node.op_type not in ROUNDING or node.domain not in ("", "ai.onnx") or not node.output[0]:
                continue
            y = node.output[0]
            elem, dims = shapes.get(y, (None, None))
            if elem not in _NP or y in fixed or not dims:   # exact arithmetic, or a scalar (shape arithmetic)
                continue
            e = ULP[elem] if self.step is None else max(self.step, ULP[elem])
            # a factor per element but along one axis (the batch's, and a 2-D map's rows): a few thousand
            # numbers for a feature map, independent across the terms any one output element sums
            view = [d if isinstance(d, int) and d > 0 and k != 0 and not (len(dims) >= 4 and k == 2) else 1
                    for k, d in enumerate(dims or [])]
            name = f"{y}{SUFFIX}_factor"
            factors.append(numpy_helper.from_array(_factor(rng, view, e, _uniform(elem, e)).astype(_NP[elem]), name))
            raw = f"{y}{SUFFIX}_raw"
            node.output[0] = raw
            nodes.append(onnx.helper.make_node("Mul", [raw, name], [y], name=f"{y}{SUFFIX}_mul"))
        del head.graph.node[:]
        head.graph.node.extend(nodes)
        self.moved += len(factors)
        return factors


def _named(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    if tensor.name == name:
        return tensor
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def _uniform(elem: int, e: float) -> bool:
    """A uniform u (the error of a rounding) for a step coarser than the type's own and for float16/bfloat16
    values; +-1 steps for float32/float64 at their own step, where a uniform u would mostly round back."""
    return e > ULP[elem] or elem not in (TensorProto.FLOAT, TensorProto.DOUBLE)


def _factor(rng: np.random.Generator, shape, e: float, coarse: bool) -> np.ndarray:
    """1 + e·u per element (float64): u uniform in [-1, 1] when e is coarser than the type's own step
    (float16's step on float32 values: the error a float16 rounding makes, as an --precision fp16 result is
    held to); else u is +1 or -1, one step either way exactly (a uniform u at the type's own step rounds back
    to 1 half the time, and a value times it to itself), written 1 - e or 1 + e in one pass."""
    if coarse:
        return 1.0 + e * rng.uniform(-1.0, 1.0, shape)
    return np.where(rng.random(shape) < 0.5, 1.0 - e, 1.0 + e)


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, list]]:
    """name -> (element type, dims: int or None each) of every value shape inference sizes."""
    from onnxrep.io import structure_view

    try:
        inferred = onnx.shape_inference.infer_shapes(structure_view(model), check_type=False, strict_mode=False)
    except Exception:  # noqa: BLE001 -- no shapes: no factors, the parameters' perturbation still stands
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.elem_type:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
            out[vi.name] = (t.elem_type, dims)
    return out
