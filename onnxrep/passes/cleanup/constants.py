"""fold_constants: a node whose inputs are all known  =>  an initializer holding its result.

Before ⇒ after:
  * ``Constant(value | value_float(s) | value_int(s))``  ⇒  an initializer of the same name. List attributes are
    float32 / int64 by the spec (never float64: reading them as float64 is how a raw dynamo ``Resize`` scale
    became an invalid model);
  * ``Shape(x)`` (or ``Size(x)``) with every needed dim static  ⇒  an int64 initializer; ``Gather``/``Slice`` of
    a ``Shape`` picking only static dims  ⇒  an initializer too, so ``Shape(x)[2]`` folds while a symbolic
    ``Shape(x)[0]`` (a dynamic batch) stays computed;
  * ``CastLike(c, y)`` with a constant ``c``  ⇒  ``c`` cast to ``y``'s (static) type; with a non-constant input
    ⇒ ``Cast(to=type of y)``, or nothing when the types already agree;
  * any other deterministic default-domain node with constant inputs  ⇒  its result, evaluated by onnx's
    reference implementation *at the model's opset* (ReduceSum/Split/Resize changed signatures across opsets).

Preconditions: no subgraph attributes, no random ops, no sequence/optional outputs, no output is a graph
output (an output stays produced by a node); results of types numpy can't hold exactly (bfloat16, float8,
int4) are not computed. A result much larger than the constants it replaces (ConstantOfShape / Expand / Tile
making a big tensor) is not folded unless every reader takes it as a weight anyway (Conv, Gemm, BN...).
A float32 Cast of a float16 table that no weight slot reads stays (to_float16 stores tables float16 holds
exactly so: folding would double their bytes). QuantizeLinear/DequantizeLinear never fold: an int8 weight's
DequantizeLinear is the Q/DQ model's statement of its precision (folding it would store the weight float32
and silently de-quantize an int8 model; before this rule only a failing reference evaluation prevented it).
The folded initializer takes the output tensor's name, so folding twice changes nothing.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import (Namer, is_graph_output, is_std, iter_graphs, make_const, model_opset, redirect_readers, shape_range)
from onnxrep.ir.ops import RANDOM
from onnxrep.ir.constants import evaluate_node
from onnxrep.passes.base import PassResult
from onnxrep.ir.dims import DimRoots
from onnxrep.ir.private_api import constant_attr_export_dtype, elem_type, nbytes
from onnxrep.ir.shapes import Types, is_static, shape_entries
from onnxrep.passes.cleanup.noops import bypass
from onnxrep.passes.float16 import EXACT_MIN_ELEMENTS

QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}

# Sequence / optional / control-flow ops: their values aren't tensors (SplitToSequence has its own rewrite).
_NOT_FOLDED = RANDOM | {"Identity", "Constant", "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty",
                         "SequenceInsert", "SequenceErase", "SequenceAt", "SplitToSequence", "ConcatFromSequence",
                         "SequenceLength", "SequenceMap", "Optional", "OptionalGetElement", "OptionalHasElement"}
_GROWTH_LIMIT = 1 << 20     # bytes a fold may add beyond what its inputs hold
# (op, input index) that are weights: a runtime materialises them whatever their size
_WEIGHT_SLOTS = {("Conv", 1), ("Conv", 2), ("ConvTranspose", 1), ("ConvTranspose", 2), ("Gemm", 1), ("Gemm", 2),
                 ("MatMul", 1), ("BatchNormalization", 1), ("BatchNormalization", 2), ("BatchNormalization", 3),
                 ("BatchNormalization", 4), ("InstanceNormalization", 1), ("InstanceNormalization", 2),
                 ("LayerNormalization", 1), ("LayerNormalization", 2), ("PRelu", 1)}
_FLOAT_TYPES = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}


def _numpy_exact(dtype) -> bool:
    """numpy holds values of this type exactly (not bfloat16/float8/int4, which gs may widen on load)."""
    if dtype is None or isinstance(dtype, (int, np.integer)):
        return False
    dtype = np.dtype(dtype)
    return dtype == np.bool_ or (dtype.kind in "iu" and dtype.itemsize >= 1) or dtype in _FLOAT_TYPES


def fold_constants(graph: gs.Graph, types: Types, namer: Namer, result: PassResult, stats: dict) -> None:
    opset = model_opset(graph)
    for g in iter_graphs(graph):
        partial: dict[int, list] = {}   # id(shape tensor) -> its dims (None where symbolic)
        roots = _lazy(lambda g=g: DimRoots(g, types))
        for node in list(g.nodes):
            if not is_std(node) or not node.outputs:
                continue
            if node.op == "Constant":
                _fold_constant_node(g, node, result, stats)
            elif node.op == "CastLike":
                _fold_castlike(g, node, types, namer, result, stats)
            elif node.op in ("Shape", "Size"):
                _fold_shape(g, node, types, partial, result, stats)
            elif node.op in ("Gather", "Slice") and id(node.inputs[0]) in partial:
                if not _fold_shape_pick(g, node, partial, opset, result, stats):
                    _fold_node(g, node, opset, types, result, stats)
            elif node.op == "Reshape" and len(node.inputs) > 1 and not isinstance(node.inputs[1], gs.Constant):
                _fold_reshape_target(g, node, types, roots, namer, result, stats)
            elif node.op not in _NOT_FOLDED:
                _fold_node(g, node, opset, types, result, stats)


# ----------------------------------------------------------------------------------------- helpers


def _lazy(make):
    """make() on first call, then the same object (DimRoots is only needed when a Reshape target is computed)."""
    box = []

    def get():
        if not box:
            box.append(make())
        return box[0]
    return get


def _replace_with_constant(graph: gs.Graph, node: gs.Node, values: list[np.ndarray], export_dtypes=None) -> None:
    """Readers of node's outputs read initializers of the same names; the node is disconnected."""
    for k, (out, value) in enumerate(zip(node.outputs, values)):
        if not out.outputs:
            continue
        dtype = export_dtypes[k] if export_dtypes else None
        const = gs.Constant(out.name, np.asarray(value, order="C"), export_dtype=dtype)
        redirect_readers(out, const)
    node.inputs.clear()
    node.outputs.clear()


def _foldable_outputs(graph: gs.Graph, node: gs.Node) -> bool:
    return not any(is_graph_output(graph, o) for o in node.outputs) and any(o.outputs for o in node.outputs)


def _fold_constant_node(graph, node, result, stats) -> None:
    if not _foldable_outputs(graph, node):
        return
    attrs = node.attrs
    export_dtype = None
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        value = np.asarray(attrs["value"].values)
        export_dtype = constant_attr_export_dtype(attrs["value"])
    else:
        value = None
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in attrs:
                value = np.asarray(attrs[key], dtype=dtype)
                break
        if value is None:   # strings and sparse tensors stay Constant nodes
            result.decline(node, "Constant with a string or sparse value stays a node")
            return
    _replace_with_constant(graph, node, [value], [export_dtype])
    stats["Constant"] = stats.get("Constant", 0) + 1
    result.applied()


def _fold_castlike(graph, node, types, namer, result, stats) -> None:
    if len(node.inputs) < 2:
        return
    target = types.elem(node.inputs[1])
    if not target:
        result.decline(node, "CastLike target type unknown")
        return
    src = node.inputs[0]
    if isinstance(src, gs.Constant) and _foldable_outputs(graph, node):
        np_target = onnx.helper.tensor_dtype_to_np_dtype(target)
        if _numpy_exact(src.values.dtype) and _numpy_exact(np_target):
            _replace_with_constant(graph, node, [np.asarray(src.values).astype(np_target)])
            stats["CastLike"] = stats.get("CastLike", 0) + 1
            result.applied()
        return
    if types.elem(src) == target:
        if bypass(graph, node, src, node.outputs[0]) is None:
            stats["CastLike"] = stats.get("CastLike", 0) + 1
            result.applied()
        return
    out = node.outputs[0]
    attrs = {"to": int(target), **{k: v for k, v in node.attrs.items() if k == "saturate"}}
    cast = gs.Node("Cast", name=node.name or namer("Cast"), attrs=attrs, inputs=[src], outputs=[])
    node.inputs.clear()
    node.outputs.clear()
    cast.outputs.append(out)
    graph.nodes.append(cast)
    stats["CastLike"] = stats.get("CastLike", 0) + 1
    result.applied()


def _fold_shape(graph, node, types, partial, result, stats) -> None:
    dims = types.dims(node.inputs[0])
    if dims is None:
        return
    if node.op == "Size":
        if all(is_static(d) for d in dims) and _foldable_outputs(graph, node):
            _replace_with_constant(graph, node, [np.asarray(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)])
            stats["Size"] = stats.get("Size", 0) + 1
            result.applied()
        return
    start, end = shape_range(node, len(dims))
    picked = [int(d) if is_static(d) else None for d in dims[start:end]]
    if all(d is not None for d in picked):
        if _foldable_outputs(graph, node):
            _replace_with_constant(graph, node, [np.asarray(picked, dtype=np.int64)])
            stats["Shape"] = stats.get("Shape", 0) + 1
            result.applied()
        return
    partial[id(node.outputs[0])] = picked   # a symbolic dim: Gather/Slice of the static ones can still fold


def _fold_shape_pick(graph, node, partial, opset, result, stats) -> bool:
    """Gather/Slice on a partly static shape vector, picking only static dims."""
    dims = np.array(partial[id(node.inputs[0])], dtype=object)
    if not all(isinstance(t, gs.Constant) for t in node.inputs[1:] if t.name):
        return False
    try:
        if node.op == "Gather":
            if int(node.attrs.get("axis", 0)) != 0:
                return False
            idx = np.asarray(node.inputs[1].values).astype(np.int64)
            picked = dims[idx]
        else:
            if opset < 10:
                return False
            args = [np.asarray(t.values).reshape(-1).astype(np.int64) if t.name else None for t in node.inputs[1:]]
            starts, ends = args[0], args[1]
            steps = args[3] if len(args) > 3 and args[3] is not None else np.ones_like(starts)
            axes = args[2] if len(args) > 2 and args[2] is not None else None
            if axes is not None and not np.all((axes == 0) | (axes == -1)):
                return False
            picked = dims[slice(int(starts[0]), int(min(ends[0], 2**62)), int(steps[0]))]
    except (IndexError, ValueError):
        return False
    if any(d is None for d in np.asarray(picked).reshape(-1)):
        return False
    if not _foldable_outputs(graph, node):
        return True
    _replace_with_constant(graph, node, [np.asarray(picked, dtype=np.int64)])
    stats["Shape"] = stats.get("Shape", 0) + 1
    result.applied()
    return True


def _fold_reshape_target(graph, node, types, roots, namer, result, stats) -> None:
    """Reshape to a computed shape that is static but for dims it copies  =>  a constant target.

    The target vector is read symbolically (Shape/Gather/Slice/Unsqueeze/Squeeze/Concat/Cast): an entry that is
    a static dim becomes its value; an entry that is a symbolic dim provably equal to the data's dim at the
    same position becomes ``0`` (copy, allowzero=0); at most one entry left unknown becomes ``-1`` (the
    element count fixes it). So ``view(x.shape[0], 144, -1)`` on a dynamic batch becomes ``[0, 144, -1]``:
    the model stays exactly as dynamic as it was, and the Shape -> Gather -> Unsqueeze -> Concat chain goes.
    """
    entries = shape_entries(node.inputs[1], types)
    if entries is None:
        return
    data = node.inputs[0]
    data_rank = len(types.dims(data) or ())
    allowzero = int(node.attrs.get("allowzero", 0))
    target, free = [], 0
    for i, e in enumerate(entries):
        if isinstance(e, int):
            free += e == -1
            target.append(e)
        elif e is not None and not allowzero and i < data_rank and roots().same(e[0], e[1], data, i):
            target.append(0)
        else:
            target.append(-1)
            free += 1
    if free > 1:
        return
    node.inputs[1] = make_const(namer, f"{node.outputs[0].name}_shape", np.asarray(target, dtype=np.int64))
    stats["Reshape"] = stats.get("Reshape", 0) + 1
    result.applied()


def _fold_node(graph, node, opset, types, result, stats) -> None:
    inputs = [t for t in node.inputs if t.name]
    if not all(isinstance(t, gs.Constant) for t in inputs) or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return
    if not _foldable_outputs(graph, node) or not all(_numpy_exact(t.export_dtype) for t in inputs):
        return
    if _compact_table(node):
        result.decline(node, "Cast not folded: a float16 table read as float32 (stored at half the bytes)")
        return
    if node.op in QDQ:
        result.decline(node, f"{node.op} not folded: a Q/DQ pair states the precision (folding a weight's "
                             f"DequantizeLinear would store it float32 and de-quantize the model)")
        return
    outs = _evaluate(node, opset)
    if isinstance(outs, str):
        result.decline(node, f"{node.op} not folded: {outs}")
        return
    in_bytes = sum(nbytes(t) for t in inputs)
    out_bytes = sum(v.nbytes for v in outs)
    if out_bytes > in_bytes + _GROWTH_LIMIT and not all(
            (r.op, i) in _WEIGHT_SLOTS for o in node.outputs for r in o.outputs for i, t in enumerate(r.inputs)
            if t is o):
        result.decline(node, f"{node.op} not folded: its result ({out_bytes} bytes) is much larger than its inputs")
        return
    for out, value in zip(node.outputs, outs):
        expected = types.elem(out)
        if expected and elem_type(value.dtype) != expected:
            result.decline(node, f"{node.op} not folded: evaluated as {value.dtype}, declared type {expected}")
            return
    _replace_with_constant(graph, node, outs)
    stats["folded"] = stats.get("folded", 0) + 1
    result.applied()


def _compact_table(node: gs.Node) -> bool:
    """Cast(to float32) of a float16 table of EXACT_MIN_ELEMENTS or more that no weight slot reads: how
    to_float16 stores the tables float16 holds exactly. Folding it would only double the bytes."""
    if node.op != "Cast" or node.attrs.get("to") != onnx.TensorProto.FLOAT:
        return False
    src = node.inputs[0]
    return (np.dtype(src.export_dtype) == np.float16 and int(np.prod(src.shape)) >= EXACT_MIN_ELEMENTS
            and not all((r.op, i) in _WEIGHT_SLOTS for o in node.outputs for r in o.outputs
                        for i, t in enumerate(r.inputs) if t is o))


def _evaluate(node: gs.Node, opset: int) -> list[np.ndarray] | str:
    """All outputs of `node` on its constant inputs, at `opset`; a reason string when it can't."""
    result = evaluate_node(node, [np.asarray(t.values) if t.name else None for t in node.inputs], opset)
    if isinstance(result, str):
        return result
    for v, o in zip(result, node.outputs):
        if o.name and not _numpy_exact(v.dtype):
            return f"result type {v.dtype} not held exactly by numpy"
    return result
