"""Does a model compute item by item? A proof from the graph alone, for the verification's batch-1 sample.

verify/inputs.py feeds a symbolic batch as two pictures (A, B) at batch 2, then A alone at batch 1. When the
original provably computes each item of its outputs from the same item of its inputs, and nothing from the
batch size, its result for A at batch 1 *is* the first item of its batch-2 result (up to rounding, which the
tolerance covers), and the original need not run again at batch 1. The optimized model still runs on both.

The proof is an abstract interpretation over the graph, node by node, in this lattice:

    Const          independent of the batched inputs and of the batch size (weights, a constant's shape)
    Item(a, rank)  axis `a` is the batch: slice i depends only on item i of the batched inputs, and every
                   other dim is independent of the batch size
    Vec(entries)   a small int vector (a shape, sizes) some of whose entries are the batch size itself ("B")
                   or some other function of it ("X"); a Const with known small values keeps its entries too

Every op it does not know, every attribute or operand it can't read, every axis it can't place, makes the
proof fail (None): the original then runs at batch 1 as before. It is sound by construction, op by op, never
complete: a Squeeze without axes, a division by the batch size, a Reshape to a literal batch, a reduction or
Softmax over the batch, a Concat with a constant along it, a MaxPool's flat indices: all fail it.
tests/verify/test_items.py checks it by execution on random graphs (what it proves holds at batch 1 and 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxrep.verify.runtime import Cut

__all__ = ["itemwise"]

B, X = "B", "X"   # a Vec entry: the batch size itself; some other function of it
MAX_ENTRIES = 64  # a Const wider than this keeps no entries (weights, not a shape)


class Unproven(Exception):
    """The graph computes something the proof can't follow item by item."""


@dataclass(frozen=True)
class Const:
    shape: tuple | None = None      # known dims (ints), None when unknown
    entries: tuple | None = None    # known small int/bool/float values (flat, for 0-D and 1-D), None unknown
    dtype: int | None = None        # the element type (onnx.TensorProto), where the entries are known


@dataclass(frozen=True)
class Item:
    axis: int
    rank: int


@dataclass(frozen=True)
class Vec:
    entries: tuple                  # ints/bools/floats, None (unknown, batch-independent), B or X
    scalar: bool = False            # 0-D (one entry)
    dtype: int | None = None        # the element type (onnx.TensorProto)


def _vec(entries, scalar=False, dtype=None):
    entries = tuple(entries)
    if any(e in (B, X) for e in entries if isinstance(e, str)):
        return Vec(entries, scalar, dtype)
    return Const(() if scalar else (len(entries),), entries, dtype)


def _dt(state):
    return getattr(state, "dtype", None)


UNARY = {"Relu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
         "Sign", "Erf", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
         "Mish", "Gelu", "ThresholdedRelu", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh",
         "Acosh", "Atanh", "Not", "IsNaN", "IsInf", "Identity", "Cast", "Shrink", "BitwiseNot"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater",
             "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "Mod", "PRelu", "BitShift",
             "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
# input 0 is [N, C, ...] with N the batch; every other input a constant; output 0 the same layout
PER_IMAGE = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
             "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth",
             "GroupNormalization"}
RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
REDUCE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


def itemwise(model: onnx.ModelProto, outputs: list[str], batched: set[str]) -> bool:
    """True when every one of `outputs` is provably computed item by item along axis 0 of the `batched`
    graph inputs (the other inputs held fixed): see the module docstring."""
    try:
        states = _interpret(model, set(outputs), batched)
    except Exception:  # noqa: BLE001 -- Unproven, or an index or value the graph gets wrong: no proof either way
        return False
    return all(isinstance(states.get(o), Item) and states[o].axis == 0 for o in outputs)


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _interpret(model: onnx.ModelProto, outputs: set[str], batched: set[str]) -> dict:
    g = model.graph
    if not batched:
        raise Unproven("no batched input")
    states: dict = {}
    for t in g.initializer:
        states[t.name] = _const_of(t)
    for vi in g.input:
        if vi.name in states and vi.name not in batched:   # an initializer listed as an input: a default
            states[vi.name] = Const(states[vi.name].shape)     # the feeds may replace (its values unknown)
            continue
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else None
        if vi.name in batched:
            if dims is None or len(dims) < 1:
                raise Unproven(f"input {vi.name}: no rank")
            states[vi.name] = Item(0, len(dims))
        else:
            states[vi.name] = Const(tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
                                    if dims is not None and vi.type.tensor_type.HasField("shape") else None)
    opset = _opset(model)
    for node, needed in zip(g.node, Cut(model, list(outputs)).keep):   # the outputs' cone only
        if not needed:
            continue
        ins = [states.get(i) if i else None for i in node.input]
        if any(i and s is None for i, s in zip(node.input, ins)):
            raise Unproven(f"{node.op_type} reads a value computed by nothing")
        if node.domain not in ("", "ai.onnx") or _has_graph(node) or node.op_type in RANDOM:
            # a custom op may compute anything; a subgraph reads outer values unseen; a random value is not
            # the same in two runs: none is a constant of the proof
            raise Unproven(f"{node.op_type} ({node.domain or 'subgraph or random'})")
        if node.op_type == "Dropout" and (len(ins) > 2 and ins[2] is not None and _values(ins[2]) != (False,)
                                          or opset < 7 and _attr(node, "is_test", 0) == 0):
            raise Unproven("Dropout in training mode (a random mask, even on a constant)")
        outs = _step(node, ins, opset)
        for name, state in zip(node.output, outs):
            if name:
                states[name] = state
    return states


def _has_graph(node) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _const_of(t: onnx.TensorProto) -> Const:
    shape = tuple(t.dims)
    n = int(np.prod(shape)) if shape else 1
    if n <= MAX_ENTRIES and t.data_type not in (onnx.TensorProto.STRING,):
        try:
            return Const(shape, tuple(numpy_helper.to_array(t).reshape(-1).tolist()), t.data_type)
        except Exception:  # noqa: BLE001 -- an external or odd tensor: its shape is enough
            return Const(shape)
    return Const(shape)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _values(state, what="operand") -> tuple:
    """Known batch-independent values of a Const (entries), else Unproven."""
    if isinstance(state, Const) and state.entries is not None and all(e is not None for e in state.entries):
        return state.entries
    raise Unproven(f"{what} not a known constant")


def _ints(node, ins, index: int, attr: str, opset_from: int, opset: int, default=None):
    """An int list given as an attribute (before `opset_from`) or as a constant input (from it); default when
    absent."""
    if opset < opset_from:
        value = _attr(node, attr)
        return default if value is None else [int(v) for v in value]
    if len(ins) > index and ins[index] is not None:
        return [int(v) for v in _values(ins[index], attr)]
    return default


def _norm(axis: int, rank: int) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise Unproven("axis out of range")
    return a


def _step(node, ins: list, opset: int) -> list:
    op = node.op_type
    n_out = len(node.output)
    items = [s for s in ins if isinstance(s, Item)]
    vecs = [s for s in ins if isinstance(s, Vec)]
    if not items and not vecs:   # everything known without the batch
        return _const_step(node, ins, opset)
    if op in ("Shape", "Size"):
        return _vec_step(node, ins, opset)
    if items and vecs and op not in ("Reshape", "Expand", "Resize", "Upsample", "Tile", "Slice", "ConstantOfShape"):
        raise Unproven(f"{op} mixes the batch size into a batched value")
    if vecs and not items:
        return _vec_step(node, ins, opset)
    x = ins[0]
    if op in BROADCAST:
        if opset < 7:
            raise Unproven(f"{op} before opset 7 (its own broadcasting)")
        return [_broadcast(ins, op)]
    if op == "Gather":
        return [_gather(node, ins)]
    if op == "MatMul":
        return [_matmul(ins)]
    if not isinstance(x, Item):
        raise Unproven(f"{op}: the batch is not its data")
    if op in UNARY or op in ("Dropout", "Clip", "CastLike"):
        if not isinstance(x, Item) or any(isinstance(s, Item) for s in ins[1:]):
            raise Unproven(f"{op}: the batch is not its data")
        return [x] + [None] * (n_out - 1) if op == "Dropout" else [x]
    if op in PER_IMAGE or op == "Upsample" or op == "Resize":
        return _per_image(node, ins, opset)
    if op in REDUCE or op in ("ArgMax", "ArgMin"):
        return [_reduce(node, ins, opset)]
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        a = _norm(_attr(node, "axis", -1 if opset >= 13 else 1), x.rank)
        if not isinstance(x, Item) or (x.axis == a if opset >= 13 else x.axis >= a):
            raise Unproven(f"{op} across the batch")
        return [x]
    if op in ("LayerNormalization", "LpNormalization"):
        a = _norm(_attr(node, "axis", -1), x.rank)
        bad = x.axis >= a if op == "LayerNormalization" else x.axis == a
        if not isinstance(x, Item) or bad or any(isinstance(s, Item) for s in ins[1:]):
            raise Unproven(f"{op} across the batch")
        return [x] + [None] * (n_out - 1)
    if op == "CumSum":
        if not isinstance(x, Item) or _norm(int(_values(ins[1], "axis")[0]), x.rank) == x.axis:
            raise Unproven("CumSum along the batch")
        return [x]
    if op == "TopK":
        if not isinstance(x, Item) or _norm(_attr(node, "axis", -1), x.rank) == x.axis:
            raise Unproven("TopK along the batch")
        if opset >= 10:
            _values(ins[1], "K")
        return [x, x][:n_out]
    if op == "Transpose":
        perm = _attr(node, "perm") or list(range(x.rank - 1, -1, -1))
        if not isinstance(x, Item) or sorted(perm) != list(range(x.rank)):
            raise Unproven("Transpose")
        return [Item(list(perm).index(x.axis), x.rank)]
    if op == "Concat":
        a = _attr(node, "axis")
        if a is None or any(not isinstance(s, Item) for s in ins if s is not None) or \
                len({(s.axis, s.rank) for s in items}) != 1 or _norm(a, x.rank) == x.axis:
            raise Unproven("Concat with a constant or along the batch")
        return [x]
    if op == "Split":
        if not isinstance(x, Item) or _norm(_attr(node, "axis", 0), x.rank) == x.axis or \
                any(isinstance(s, Item) for s in ins[1:]):
            raise Unproven("Split along the batch")
        return [x] * n_out
    if op == "Slice":
        return [_slice(node, ins, opset)]
    if op == "GatherElements":
        idx = ins[1]
        if not (isinstance(x, Item) and isinstance(idx, Item) and x == idx) or \
                _norm(_attr(node, "axis", 0), x.rank) == x.axis:
            raise Unproven("GatherElements")
        return [x]
    if op == "Reshape":
        return [_reshape(node, ins)]
    if op == "Flatten":
        a = _attr(node, "axis", 1)
        a = a + x.rank if a < 0 else a
        if not isinstance(x, Item) or x.axis != 0 or a != 1:
            raise Unproven("Flatten that mixes the batch")
        return [Item(0, 2)]
    if op == "Squeeze":
        axes = _ints(node, ins, 1, "axes", 13, opset)
        if not isinstance(x, Item) or not axes:   # none, or an empty list: every dim of size 1 goes
            raise Unproven("Squeeze without axes (it drops a batch of 1)")
        axes = {_norm(a, x.rank) for a in axes}
        if x.axis in axes:
            raise Unproven("Squeeze of the batch")
        return [Item(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes))]
    if op == "Unsqueeze":
        axes = _ints(node, ins, 1, "axes", 13, opset)
        if not isinstance(x, Item) or axes is None:
            raise Unproven("Unsqueeze")
        rank = x.rank + len(axes)
        axes = sorted(_norm(a, rank) for a in axes)
        rest = [k for k in range(rank) if k not in axes]
        return [Item(rest[x.axis], rank)]
    if op in ("Expand", "Tile", "Pad"):
        return [_expand_like(node, ins, opset)]
    if op == "ConstantOfShape":
        raise Unproven("ConstantOfShape of a batched value")
    if op == "Gemm":
        if not (isinstance(x, Item) and x.axis == 0 and not _attr(node, "transA", 0)) or \
                any(isinstance(s, Item) for s in ins[1:]):
            raise Unproven("Gemm across the batch")
        if len(ins) > 2 and ins[2] is not None:
            c = ins[2].shape
            if c is None or (len(c) == 2 and c[0] != 1):
                raise Unproven("Gemm's C has rows")
        return [Item(0, 2)]
    raise Unproven(f"{op} is not known to compute item by item")


def _const_step(node, ins, opset) -> list:
    """A node none of whose inputs depends on the batch: Const outputs, with entries where cheaply known."""
    op = node.op_type
    if op == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return [_const_of(a.t)]
            dtype = onnx.TensorProto.INT64 if a.name.startswith("value_int") else onnx.TensorProto.FLOAT
            if a.name in ("value_int", "value_float"):
                return [Const((), (onnx.helper.get_attribute_value(a),), dtype)]
            if a.name in ("value_ints", "value_floats"):
                v = tuple(onnx.helper.get_attribute_value(a))
                return [Const((len(v),), v, dtype)]
        return [Const()]
    if op in ("Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Add", "Sub",
              "Mul", "Div", "Equal", "Where", "Reshape") and all(s is None or isinstance(s, Const) for s in ins):
        try:
            out = _vec_step(node, ins, opset)
            if all(isinstance(s, Const) or s is None for s in out):
                return out
        except Unproven:
            pass
    try:   # the shape alone, for the ops that build a table (an anchor grid stored in float16, read through a Cast)
        shape = _const_shape(node, ins, opset)
    except (Unproven, ValueError, TypeError, IndexError):
        shape = None
    return [Const(shape)] + [Const()] * (len(node.output) - 1)


def _const_shape(node, ins, opset) -> tuple | None:
    op, x = node.op_type, ins[0] if ins else None
    known = (lambda s: s is not None and s.shape is not None and None not in s.shape)
    if op in UNARY or op in ("Clip", "Dropout", "CastLike", "Softmax", "LogSoftmax"):
        return x.shape if known(x) else None
    if op in BROADCAST:
        if not all(known(s) for s in ins if s is not None):
            return None
        return tuple(np.broadcast_shapes(*[s.shape for s in ins if s is not None]))
    if not known(x):
        return None
    if op == "Transpose":
        perm = _attr(node, "perm") or list(range(len(x.shape) - 1, -1, -1))
        return tuple(x.shape[p] for p in perm)
    if op == "Unsqueeze":
        axes = _ints(node, ins, 1, "axes", 13, opset)
        rank = len(x.shape) + len(axes)
        axes = {_norm(a, rank) for a in axes}
        rest = iter(x.shape)
        return tuple(1 if k in axes else next(rest) for k in range(rank))
    if op == "Squeeze":
        axes = _ints(node, ins, 1, "axes", 13, opset)
        axes = {k for k, d in enumerate(x.shape) if d == 1} if not axes else {_norm(a, len(x.shape)) for a in axes}
        return tuple(d for k, d in enumerate(x.shape) if k not in axes)
    if op == "Reshape":
        e = [int(v) for v in _values(ins[1], "shape")]
        e = [x.shape[k] if v == 0 and not _attr(node, "allowzero", 0) else v for k, v in enumerate(e)]
        if -1 in e:
            rest = int(np.prod([v for v in e if v != -1]))
            e[e.index(-1)] = int(np.prod(x.shape)) // rest if rest else 0
        return tuple(e)
    if op == "Expand":
        return tuple(np.broadcast_shapes(x.shape, tuple(int(v) for v in _values(ins[1], "shape"))))
    if op == "Concat":
        if not all(known(s) for s in ins):
            return None
        a = _norm(_attr(node, "axis"), len(x.shape))
        return tuple(sum(s.shape[a] for s in ins) if k == a else d for k, d in enumerate(x.shape))
    return None


def _entries(state):
    """(entries, scalar) of a Vec or a Const with known entries; Unproven otherwise."""
    if isinstance(state, Vec):
        return list(state.entries), state.scalar
    if isinstance(state, Const) and state.entries is not None and state.shape is not None and len(state.shape) <= 1:
        return list(state.entries), len(state.shape) == 0
    raise Unproven("not a small vector")


def _vec_step(node, ins, opset) -> list:
    """Ops on shapes and sizes (Vec or small Const values): their entries followed."""
    op = node.op_type
    if op == "Shape":
        x = ins[0]
        if isinstance(x, Item):
            dims = [None] * x.rank
            dims[x.axis] = B
        elif isinstance(x, Const) and x.shape is not None:
            dims = list(x.shape)
        elif isinstance(x, Vec):
            dims = [len(x.entries)] if not x.scalar else []
        else:
            raise Unproven("Shape of a value of unknown rank")
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        r = len(dims)
        start = min(max(start + r if start < 0 else start, 0), r)
        end = r if end is None else min(max(end + r if end < 0 else end, 0), r)
        return [_vec(dims[start:end], dtype=onnx.TensorProto.INT64)]
    if op == "Size":
        if isinstance(ins[0], Const) and ins[0].shape is not None and None not in ins[0].shape:
            return [_vec([int(np.prod(ins[0].shape))], True, onnx.TensorProto.INT64)]
        return [_vec([X], True, onnx.TensorProto.INT64)]
    if op in ("Cast", "Identity"):
        e, scalar = _entries(ins[0])
        if op == "Cast":
            e = [_cast(v, _attr(node, "to")) for v in e]
        return [_vec(e, scalar, _attr(node, "to") if op == "Cast" else _dt(ins[0]))]
    if op == "Gather":
        e, scalar = _entries(ins[0])
        if scalar:
            raise Unproven("Gather from a scalar")
        idx, idx_scalar = _entries(ins[1])
        if isinstance(ins[1], Vec) or any(i is None for i in idx):
            raise Unproven("Gather at an unknown index")
        return [_vec([e[int(i)] for i in idx], idx_scalar, _dt(ins[0]))]
    if op == "Unsqueeze":
        e, scalar = _entries(ins[0])
        if not scalar or _ints(node, ins, 1, "axes", 13, opset) not in ([0], [-1]):
            raise Unproven("Unsqueeze to more than a vector")
        return [_vec(e, dtype=_dt(ins[0]))]
    if op == "Squeeze":
        e, scalar = _entries(ins[0])
        if scalar or len(e) != 1:
            raise Unproven("Squeeze of a vector")
        return [_vec(e, True, _dt(ins[0]))]
    if op == "Concat":
        out = []
        for s in ins:
            e, scalar = _entries(s)
            if scalar:
                raise Unproven("Concat of a scalar")
            out += e
        return [_vec(out, dtype=_dt(ins[0]))]
    if op == "Slice":
        e, scalar = _entries(ins[0])
        if scalar:
            raise Unproven("Slice of a scalar")
        if opset < 10:
            starts, ends, axes, steps = _attr(node, "starts"), _attr(node, "ends"), _attr(node, "axes", [0]), [1]
        else:
            starts, ends = _values(ins[1]), _values(ins[2])
            axes = _values(ins[3]) if len(ins) > 3 and ins[3] is not None else [0]
            steps = _values(ins[4]) if len(ins) > 4 and ins[4] is not None else [1]
        if list(axes) not in ([0], [-1]) or len(starts) != 1 or steps[0] != 1:   # a forward slice: Python's
            raise Unproven("Slice of a vector")                                   # clamping is ONNX's there
        return [_vec(e[int(starts[0]):int(ends[0])], dtype=_dt(ins[0]))]
    if op in ("Add", "Sub", "Mul", "Div", "Equal", "Where", "Max", "Min"):
        return [_vec_arith(op, ins)]
    if op == "ConstantOfShape":
        e, _ = _entries(ins[0])
        if any(v == X for v in e) or sum(v == B for v in e) != 1:
            raise Unproven("ConstantOfShape of a batch-dependent shape")
        return [Item(e.index(B), len(e))]
    if op == "Expand":   # a constant broadcast to the batch: every item the same
        shape, _ = _entries(ins[1])
        data = ins[0]
        if not isinstance(data, Const) or data.shape is None or any(v == X for v in shape) or \
                sum(v == B for v in shape) != 1:
            raise Unproven("Expand to a batch-dependent shape")
        j = shape.index(B)
        rank = max(len(shape), len(data.shape))
        pos = j + rank - len(shape)
        k = pos - (rank - len(data.shape))
        if 0 <= k < len(data.shape) and data.shape[k] != 1:
            raise Unproven("Expand of a constant with rows along the batch")
        return [Item(pos, rank)]
    raise Unproven(f"{op} of the batch size")


T = onnx.TensorProto
_INT_RANGE = {T.INT64: 2 ** 63, T.INT32: 2 ** 31, T.INT16: 2 ** 15, T.INT8: 2 ** 7}


def _cast(v, to):
    """One entry cast as ONNX does: an integer kept where the target holds it exactly (the batch size too, in
    an int32/int64 or a float32/float64), every other known value unknown (float truncation, wraparound,
    rounding), a batch-dependent one batch-dependent."""
    if isinstance(v, str):
        return B if v == B and to in (T.INT64, T.INT32, T.FLOAT, T.DOUBLE) else X
    if v is None or isinstance(v, bool) or not isinstance(v, int):
        return None
    if to in _INT_RANGE:
        return v if -_INT_RANGE[to] <= v < _INT_RANGE[to] else None
    if to in (T.FLOAT, T.DOUBLE) and abs(v) <= 2 ** 24:
        return float(v)   # exact, and a float: arithmetic on it is then unknown (float32 rounds)
    return None


def _vec_arith(op, ins):
    es = [_entries(s) for s in ins]
    dtype = _dt(ins[1]) if op == "Where" else _dt(ins[0])
    wide = dtype == onnx.TensorProto.INT64   # arithmetic on known values only in int64 (no narrower wraparound)
    n = max(len(e) for e, _ in es)
    scalar = all(s for _, s in es)
    if any(len(e) not in (1, n) for e, _ in es):
        raise Unproven("shapes that don't broadcast")
    cols = [[e[k if len(e) == n else 0] for e, _ in es] for k in range(n)]
    out = []
    for vals in cols:
        out.append(_entry(op, vals, wide))
    return _vec(out, scalar, onnx.TensorProto.BOOL if op == "Equal" else dtype)


def _entry(op, vals, wide: bool = True):
    if op == "Where":
        c, a, b = vals
        if isinstance(c, str):   # chosen by the batch size: batch-dependent whatever the branches
            return X
        if c is None or not isinstance(c, bool):
            return X if any(isinstance(v, str) for v in (a, b)) else None
        return a if c else b
    a, b = vals
    dep = [v for v in (a, b) if isinstance(v, str)]
    if not dep:
        if not (_plain_int(a) and _plain_int(b)):   # unknown, or float arithmetic (its rounding is the
            return None                             # tensor's type's, not Python's): unknown, independent
        if not wide and op != "Equal":   # int32/int16/int8 arithmetic wraps at its own width: unknown
            return None
        if op == "Div":
            if b == 0:
                return None
            q = abs(a) // abs(b)
            r = q if (a >= 0) == (b > 0) else -q   # ONNX's integer division truncates toward zero
        else:
            r = {"Add": a + b, "Sub": a - b, "Mul": a * b, "Equal": a == b, "Max": max(a, b), "Min": min(a, b)}[op]
        return r if isinstance(r, bool) or -2 ** 63 <= r < 2 ** 63 else None
    if op == "Equal":   # the batch size is at least 1
        other = b if a in (B, X) else a
        if (a == B or b == B) and _plain_int(other) and other < 1:
            return False
        return X
    if a == B and _plain_int(b) and (op in ("Add", "Sub") and b == 0 or op in ("Mul", "Div") and b == 1):
        return B
    if b == B and op in ("Add", "Mul") and _plain_int(a) and a == (0 if op == "Add" else 1):
        return B
    return X


def _plain_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _broadcast(ins, op) -> Item:
    items = [s for s in ins if isinstance(s, Item)]
    offsets = {s.rank - s.axis for s in items}   # the batch's position from the right
    if len(offsets) != 1:
        raise Unproven(f"{op}: batches at different axes")
    off = offsets.pop()
    rank = max(s.rank for s in items)
    for s in ins:
        if s is None or isinstance(s, Item):
            continue
        if not isinstance(s, Const) or s.shape is None or None in s.shape:
            raise Unproven(f"{op} with an operand of unknown shape")
        rank = max(rank, len(s.shape))
        if len(s.shape) >= off and s.shape[len(s.shape) - off] != 1:
            raise Unproven(f"{op} with a constant that has rows along the batch")
    if op == "PRelu" and not isinstance(ins[0], Item):
        raise Unproven("PRelu with a batched slope")
    return Item(rank - off, rank)


def _per_image(node, ins, opset) -> list:
    op = node.op_type
    x = ins[0]
    if not isinstance(x, Item) or x.axis != 0:
        raise Unproven(f"{op}: the batch not on axis 0")
    if op == "Resize" or op == "Upsample":
        if _attr(node, "axes") is not None:
            raise Unproven("Resize with axes")
        ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        policy = _attr(node, "keep_aspect_ratio_policy", b"stretch")
        if ctm in (b"tf_crop_and_resize", b"tf_half_pixel_for_nn") or policy != b"stretch":
            raise Unproven("Resize whose crop, coordinates or aspect policy reach the batch axis")
        at = (lambda k: ins[k] if len(ins) > k else None)
        scales = at(2) if op == "Resize" and opset >= 11 else (at(1) if op == "Resize" or opset >= 9 else None)
        sizes = at(3) if op == "Resize" and opset >= 11 else None
        if op == "Upsample" and opset < 9:
            scales = Const((x.rank,), tuple(_attr(node, "scales") or ()))
        if sizes is not None:
            e, _ = _entries(sizes)
            if len(e) != x.rank or e[0] != B or any(v == B or v == X for v in e[1:]):
                raise Unproven("Resize to a batch-dependent size")
        elif scales is not None and not (isinstance(scales, Const) and scales.shape == (0,)):
            s = _values(scales, "scales")
            if len(s) != x.rank or s[0] != 1:
                raise Unproven("Resize that scales the batch")
        else:
            raise Unproven("Resize without scales or sizes")
        if op == "Resize" and ins[1] is not None and isinstance(ins[1], (Item, Vec)):
            raise Unproven("Resize with a batched roi")
        return [x]
    if any(isinstance(s, (Item, Vec)) for s in ins[1:]):
        raise Unproven(f"{op} with a batched parameter")
    if op == "BatchNormalization" and (_attr(node, "training_mode", 0) or opset < 7 and not _attr(node, "is_test", 0)
                                       or sum(bool(o) for o in node.output) > 1):
        raise Unproven("BatchNormalization in training mode (or with its statistics as outputs)")
    if op == "GroupNormalization" and x.rank < 2:
        raise Unproven("GroupNormalization")
    return [x] + [None] * (len(node.output) - 1)   # MaxPool's indices are flat over the batch: unproven


def _reduce(node, ins, opset) -> Item:
    op, x = node.op_type, ins[0]
    if not isinstance(x, Item) or any(isinstance(s, Item) for s in ins[1:]):
        raise Unproven(f"{op} of batched axes")
    keep = _attr(node, "keepdims", 1)
    if op in ("ArgMax", "ArgMin"):
        axes = [_attr(node, "axis", 0)]
    else:
        since = 13 if op == "ReduceSum" else 18
        axes = _ints(node, ins, 1, "axes", since, opset)
        if not axes:
            if opset >= since and _attr(node, "noop_with_empty_axes", 0):   # the attribute exists from then on
                return x
            raise Unproven(f"{op} over every axis")
    axes = {_norm(a, x.rank) for a in axes}
    if x.axis in axes:
        raise Unproven(f"{op} over the batch")
    if keep:
        return x
    return Item(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes))


def _slice(node, ins, opset) -> Item:
    x = ins[0]
    if not isinstance(x, Item) or any(isinstance(s, (Item, Vec)) for s in ins[1:]):
        raise Unproven("Slice with batched bounds")
    if opset < 10:
        starts, ends = _attr(node, "starts"), _attr(node, "ends")
        axes = _attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:   # bounds on other axes need only be batch-independent (Const): their values don't matter
        n = ins[1].shape[0] if ins[1].shape and len(ins[1].shape) == 1 and ins[1].shape[0] is not None else None
        axes = _values(ins[3], "axes") if len(ins) > 3 and ins[3] is not None else (
            list(range(n)) if n is not None else None)
        if axes is None:
            raise Unproven("Slice of unknown axes")
        def at(k, j, default):
            if len(ins) <= k or ins[k] is None:
                return default
            e = ins[k].entries
            return e[j] if e is not None and j < len(e) else None
        starts = [at(1, j, None) for j in range(len(axes))]
        ends = [at(2, j, None) for j in range(len(axes))]
        steps = [at(4, j, 1) for j in range(len(axes))]
    for a, s, e, st in zip(axes, starts, ends, steps):
        if _norm(int(a), x.rank) == x.axis and not (s == 0 and e is not None and int(e) >= 2 ** 31 - 1 and st == 1):
            raise Unproven("Slice along the batch")
    return x


def _gather(node, ins) -> Item:
    data, idx = ins[0], ins[1]
    if isinstance(idx, Vec) or isinstance(data, Vec):
        raise Unproven("Gather with a batch-dependent index")
    if isinstance(data, Item):
        if isinstance(idx, Item) or not isinstance(idx, Const) or idx.shape is None:
            raise Unproven("Gather at batched indices")
        a = _norm(_attr(node, "axis", 0), data.rank)
        if a == data.axis:
            raise Unproven("Gather along the batch")
        n = len(idx.shape)
        return Item(data.axis if data.axis < a else data.axis + n - 1, data.rank + n - 1)
    if isinstance(data, Const) and isinstance(idx, Item) and data.shape is not None:   # per-item indices
        a = _norm(_attr(node, "axis", 0), len(data.shape))
        return Item(a + idx.axis, len(data.shape) + idx.rank - 1)
    raise Unproven("Gather")


def _reshape(node, ins) -> Item:
    x, shape = ins[0], ins[1]
    if not isinstance(x, Item) or x.axis != 0:
        raise Unproven("Reshape of a value batched past axis 0")
    e, scalar = _entries(shape)
    allowzero = _attr(node, "allowzero", 0)
    if scalar:
        raise Unproven("Reshape to a scalar shape")
    first = e[0] if e else None
    batch_kept = first == B or (first == 0 and not allowzero)
    if not batch_kept or any(v in (B, X) for v in e[1:] if isinstance(v, str)):
        raise Unproven("Reshape to a shape that doesn't keep the batch on axis 0")
    return Item(0, len(e))


def _expand_like(node, ins, opset) -> Item:
    op, x = node.op_type, ins[0]
    if not isinstance(x, Item):
        raise Unproven(f"{op} of a constant by a batched value")
    if op == "Expand":
        e, _ = _entries(ins[1])
        rank = max(x.rank, len(e))
        k = x.axis + rank - x.rank - (rank - len(e))   # the shape's entry at the batch's position
        if any(v == X for v in e) or any(v == B for j, v in enumerate(e) if j != k) or \
                (0 <= k < len(e) and e[k] not in (1, B)):
            raise Unproven("Expand along the batch")
        return Item(x.axis + rank - x.rank, rank)
    if op == "Tile":
        reps = _values(ins[1], "repeats")
        if len(reps) != x.rank or reps[x.axis] != 1:
            raise Unproven("Tile along the batch")
        return x
    pads = _ints(node, ins, 1, "pads", 11, opset) if opset >= 11 else _attr(node, "pads", _attr(node, "paddings"))
    if pads is None or len(pads) != 2 * x.rank:
        raise Unproven("Pad")
    axes = ins[3] if len(ins) > 3 and ins[3] is not None else None
    if axes is not None:
        raise Unproven("Pad with axes")
    if pads[x.axis] or pads[x.axis + x.rank]:
        raise Unproven("Pad along the batch")
    if len(ins) > 2 and isinstance(ins[2], (Item, Vec)):
        raise Unproven("Pad with a batched value")
    return x


def _matmul(ins) -> Item:
    a, b = ins[0], ins[1]
    ranks = []
    for s in (a, b):
        if isinstance(s, Item):
            ranks.append(s.rank)
        elif isinstance(s, Const) and s.shape is not None:
            ranks.append(len(s.shape))
        else:
            raise Unproven("MatMul with an operand of unknown rank")
    ra, rb = ranks
    if ra < 2 or rb < 2:
        raise Unproven("MatMul of a vector")
    rank = max(ra, rb)
    positions = set()
    for s, r, row in ((a, ra, True), (b, rb, False)):
        if not isinstance(s, Item):
            continue
        if s.axis == r - 2:
            if not row:
                raise Unproven("MatMul contracting the batch")
            positions.add(rank - 2)
        elif s.axis == r - 1:
            if row:
                raise Unproven("MatMul contracting the batch")
            positions.add(rank - 1)
        else:
            positions.add(s.axis + rank - r)
    if len(positions) != 1:
        raise Unproven("MatMul of two batched operands at different axes")
    pos = positions.pop()
    if pos < rank - 2:   # a broadcast batch dim: the constant's own dim there is 1 or absent
        for s, r in ((a, ra), (b, rb)):
            if isinstance(s, Const):
                k = pos - (rank - r)
                if 0 <= k and s.shape[k] != 1:
                    raise Unproven("MatMul with a constant that has rows along the batch")
    elif isinstance(a, Item) and isinstance(b, Item):
        raise Unproven("MatMul of two batched operands")
    return Item(pos, rank)
