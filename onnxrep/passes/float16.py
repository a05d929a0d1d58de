"""to_float16: float32 weights and activations  =>  float16, except where float16 would cost accuracy.

Not in the default pipeline: ``optimize(precision="fp16")`` / ``--precision fp16`` runs it after the other
passes, once the graph is final. Decided node by node, in topological order:

  * a node computes in float16 when it is a default-domain op whose output type variable allows float16 and
    is shared with a float32 input (Conv, Add, Concat, Resize's X...): every input slot of that type variable
    becomes float16 (constants converted once, shared by every reader; activations cast once); slots of
    other types keep theirs (Resize's scales are ``tensor(float)`` by the spec, Reshape's shape is int64);
  * it stays float32, with the reason listed in the report, when:
      - it is a Softmax or anything computed from one (YOLO's DFL expectation and the box decode
        ``(anchor -/+ distance) * stride``, whose terms reach hundreds of pixels: float16's step at 512 is
        0.5 px) up to an attention product (a MatMul/Conv weighting another activation by it: YOLO11's
        C2PSA), or an op that accumulates in its own type (Reduce*, Softmax, LogSoftmax, the norms);
      - a value it computes, measured on the verification inputs with the float32 model, reaches 32768
        (float16's largest is 65504) or is non-zero but everywhere below 2^-14 (float16's smallest normal);
      - one of its weights would overflow float16;
      - the user named its op (``--fp32-ops``) or the node (``--fp32-nodes``);
  * graph inputs and outputs stay float32 by default (``keep_io_types``): one Cast after each input read
    in float16, one before each output made in float16; without it they become float16;
  * a large float32 constant that a float32 Add/Sub/Mul/Div reads and float16 holds exactly (YOLO's anchor
    grid and stride tables: halves and powers of two, 100 KB at 640) is stored in float16 and read
    through one Cast to float32: the same values, half the bytes.
Every tensor of one type variable of the op's schema gets one type (float16_types.choose): a node kept in
float32 reads float16 only where its schema allows it, no output shares the variable and nothing would round
(Shape's data, a comparison of float16 activations with 0.5), else its float16 inputs are cast back.
Subgraphs (If, Loop, Scan) stay float32 as written: an outer-scope tensor that became float16 is read, at
any depth, through its float32 Cast.
One Cast per tensor and target type, shared by every reader, and never a Cast of a Cast: a tensor that is
itself a cast of a float16 tensor is read at the source. The result is valid by construction (types follow
each op's schema), which tests check with onnx.checker, shape inference, onnxruntime and OpenVINO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Namer, is_std, model_opset, producer
from onnxrep.ir.private_api import peek
from onnxrep.ir.shapes import infer_types
from onnxrep.passes.base import Context, PassResult
from onnxrep.passes.float16_types import F16_TYPE, Signature, choose, exact_in_float16, signature

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
F16_MAX, F16_TINY = 65504.0, 2.0 ** -14
RANGE_LIMIT = 32768.0
EXACT_MIN_ELEMENTS = 1024            # below this a stored-in-float16 table saves less than its Cast costs
EXACT_READERS = {"Add", "Sub", "Mul", "Div"}
MIXERS = {"MatMul", "Gemm", "Conv", "Einsum", "Mul"}


def _mixes_activations(node: gs.Node, after_softmax: set, dependent: set) -> bool:
    """An attention product: a MatMul-like op, or a Mul, weighting another activation by the Softmax (YOLO11's
    C2PSA; RT-DETR's attention, whose deformable cross-attention multiplies the sampled values by it). Its
    result is in the activations' range, so what follows is not a DFL expectation (a Softmax times a constant
    projection) and the Softmax's float32 rule stops there. An activation is a value computed from the
    inputs' values (`dependent`): strides or a projection made at run time from a shape are not one."""
    return node.op in MIXERS and any(id(t) in dependent and id(t) not in after_softmax for t in node.inputs)


def _input_dependent(graph: gs.Graph) -> set[int]:
    """ids of the tensors whose values depend on the graph inputs' values (Shape, Size and ConstantOfShape
    read only a shape: what they make is not)."""
    dependent = {id(t) for t in graph.inputs}
    for node in graph.nodes:
        if node.op in ("Shape", "Size", "ConstantOfShape"):
            continue
        if any(id(t) in dependent for t in node.inputs):
            dependent.update(id(o) for o in node.outputs)
    return dependent


ACCUMULATING = {"Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceLogSum",
                "ReduceLogSumExp", "ReduceSumSquare", "ReduceProd", "LayerNormalization", "GroupNormalization",
                "InstanceNormalization", "LpNormalization", "MeanVarianceNormalization", "CumSum"}


@dataclass
class Float16Options:
    keep_io_types: bool = True
    fp32_ops: tuple = ()
    fp32_nodes: tuple = ()
    ranges: dict = field(default_factory=dict)   # tensor name -> max |value| measured with the float32 model


def _computes16(node: gs.Node, sig: Signature | None, is_float) -> bool:
    """The node's first output is of a type variable that allows float16 and binds a float input."""
    if sig is None or not sig.outputs or not sig.is_var(sig.outputs[0]) or not sig.allows16[sig.outputs[0]]:
        return False
    return any(node.inputs[i].name and is_float(node.inputs[i]) for i in sig.inputs_of(sig.outputs[0]))


def _add_cast(graph: gs.Graph, namer: Namer, t: gs.Tensor, want16: bool, base: str) -> gs.Variable:
    """A new Cast of `t` to float16 (want16) or float32; its output, named after `base`."""
    out = gs.Variable(namer(f"{base}_{'fp16' if want16 else 'fp32'}"), dtype=np.float16 if want16 else np.float32,
                      shape=t.shape)
    graph.nodes.append(gs.Node("Cast", name=namer(f"{base}/Cast"), attrs={"to": F16 if want16 else F32},
                               inputs=[t], outputs=[out]))
    return out


class ToFloat16:
    name = "to_float16"

    def __init__(self, options: Float16Options | None = None):
        self.o = options or Float16Options()
        self._peaks: dict[str, float] = {}   # node -> the value that kept it float32 (range rules)

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult()
        opset = model_opset(graph)
        types = infer_types(graph)
        namer = Namer(graph)
        is16: dict[int, bool] = {}
        casts: dict[tuple[int, int], gs.Tensor] = {}
        consts: dict[int, gs.Constant] = {}
        kept: dict[str, list[str]] = {}
        flushed = [0]   # weight elements too small for float16 (they become 0)

        def elem(t: gs.Tensor) -> int:
            if isinstance(t, gs.Constant):
                return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(peek(t).dtype)) if t.shape is not None else 0
            return types.elem(t)

        def as_type(t: gs.Tensor, want16: bool) -> gs.Tensor:
            """`t` in float16 (want16) or float32: itself, a converted constant, or one shared Cast."""
            if isinstance(t, gs.Constant):
                if not want16:
                    return t
                if id(t) not in consts:
                    value = peek(t)
                    value16 = value.astype(np.float16)
                    flushed[0] += int(np.count_nonzero((value != 0) & (value16 == 0)))
                    consts[id(t)] = (t, gs.Constant(namer(f"{t.name}_fp16"), value16))
                return consts[id(t)][1]
            if is16.get(id(t), False) == want16:
                return t
            src = producer(t)   # never a Cast of a Cast: read the tensor that was cast
            if src is not None and is_std(src, "Cast") and src.inputs and is16.get(id(src.inputs[0]), False) == want16 \
                    and elem(src.inputs[0]) in (F16, F32):
                return src.inputs[0]
            key = (id(t), want16)
            if key not in casts:
                out = _add_cast(graph, namer, t, want16, t.name)
                is16[id(out)] = want16
                casts[key] = out
            return casts[key]

        if not self.o.keep_io_types:
            for t in graph.inputs:
                if elem(t) == F32:
                    t.dtype = np.float16
                    is16[id(t)] = True
        def half(t: gs.Tensor) -> bool:
            return bool(is16.get(id(t)))

        def is_float(t: gs.Tensor) -> bool:   # a tensor this pass manages: float32 in the model, or made float16
            return half(t) or elem(t) == F32

        def exact16(t: gs.Tensor) -> bool:
            return exact_in_float16(t, peek(t) if isinstance(t, gs.Constant) else None)

        def bind(node: gs.Node, sig: Signature | None, compute16: bool) -> None:
            """Every tensor of one type variable gets the one type `choose` picks; outputs follow."""
            if sig is None:   # no schema to read: float32 in, as before
                for i, t in enumerate(list(node.inputs)):
                    if t.name and half(t):
                        node.inputs[i] = as_type(t, False)
                return
            chosen = choose(sig, node, compute16, half, is_float, exact16)
            for i, t in enumerate(list(node.inputs)):
                if t.name and is_float(t):
                    v = sig.inputs[i]
                    want16 = chosen[v] if sig.is_var(v) else v == F16_TYPE
                    if half(t) != want16:
                        node.inputs[i] = as_type(t, want16)
            for j, o in enumerate(node.outputs):
                if chosen.get(sig.outputs[j]) and types.elem(o) in (F32, 0):
                    if o.dtype is not None:   # typed in the file: stays typed (untyped ones add no value_info)
                        o.dtype = np.float16
                    is16[id(o)] = True

        after_softmax: set[int] = set()
        self._dependent = _input_dependent(graph)
        for node in list(graph.nodes):
            self._feed_subgraphs(node, as_type, half)
            floats = [t for t in node.inputs if t.name and (elem(t) in (F32, F16) or is16.get(id(t)))]
            if not floats and not any(types.elem(o) == F32 for o in node.outputs):
                continue
            sig = signature(node, opset)
            if not any(types.elem(o) in (F32, F16) for o in node.outputs):   # Shape, Size, comparisons...
                if any(id(t) in after_softmax for t in node.inputs) and node.op not in ("Shape", "Size"):
                    after_softmax.update(id(o) for o in node.outputs)
                bind(node, sig, False)
                continue
            reason = self._keep_reason(node, opset, after_softmax, elem)
            if reason is None and not _computes16(node, sig, is_float):
                reason = "its type can't be float16" if sig is not None else "no schema"
            if reason is not None:
                if node.op in ("Softmax", "LogSoftmax") or (any(id(t) in after_softmax for t in node.inputs)
                                                           and not _mixes_activations(node, after_softmax,
                                                                                      self._dependent)):
                    after_softmax.update(id(o) for o in node.outputs if node.op not in ("Shape", "Size"))
                label = node.name or node.op
                kept.setdefault(reason, []).append(f"{label} ({self._peaks[node.name]:.3g})"
                                                   if node.name in self._peaks else label)
                bind(node, sig, False)
                continue
            bind(node, sig, True)
            result.count += 1
        exact = self._store_exact(graph, namer, as_type, consts)
        self._outputs(graph, namer, is16, is_float)
        for t in graph.inputs + graph.outputs:
            if not isinstance(t, gs.Constant):   # an initializer that is a graph output keeps its type
                t.dtype = np.float16 if is16.get(id(t)) else t.dtype
        interface = {id(t) for t in graph.inputs + graph.outputs}
        for old, half in consts.values():   # a weight read only in float16 keeps its name
            if not old.outputs and id(old) not in interface:
                half.name, old.name = old.name, half.name
        result.changed = bool(result.count or exact["tables"])
        result.info["float16"] = {"nodes": result.count, "kept_float32": {r: len(v) for r, v in kept.items()},
                                  "kept_nodes": kept, "weights_flushed_to_zero": flushed[0],
                                  "exact_tables": exact}
        return result

    @staticmethod
    def _store_exact(graph: gs.Graph, namer: Namer, as_type, consts: dict) -> dict:
        """float32 constants of EXACT_MIN_ELEMENTS or more whose every float32 reader is an Add/Sub/Mul/Div
        of this graph, and whose every value float16 holds exactly: stored in float16 (the copy float16
        readers share), read through one Cast. Bytes saved: the float32 table, less its float16 copy when
        nothing else had made one."""
        top = {id(n) for n in graph.nodes}
        interface = {id(t) for t in graph.inputs + graph.outputs}   # an input's default can be fed: not a table
        tables, saved = 0, 0
        for node in list(graph.nodes):
            if not is_std(node) or node.op not in EXACT_READERS:
                continue
            for t in list(node.inputs):
                value = peek(t) if isinstance(t, gs.Constant) and id(t) not in interface else None
                if value is None or value.dtype != np.float32 or value.size < EXACT_MIN_ELEMENTS:
                    continue
                if not all(id(r) in top and is_std(r) and r.op in EXACT_READERS for r in t.outputs):
                    continue   # another float32 reader would keep the float32 table as well
                with np.errstate(over="ignore"):
                    if not np.array_equal(value.astype(np.float16).astype(np.float32), value):
                        continue
                shared = id(t) in consts
                out = _add_cast(graph, namer, as_type(t, True), False, t.name)
                for reader in list(t.outputs):
                    for i, x in enumerate(list(reader.inputs)):
                        if x is t:
                            reader.inputs[i] = out
                tables += 1
                saved += value.nbytes - (0 if shared else value.size * 2)
        return {"tables": tables, "bytes_saved": saved}

    def _keep_reason(self, node: gs.Node, opset: int, after_softmax: set, elem) -> str | None:
        if not is_std(node) or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return "not a default-domain op without subgraphs"
        if node.name in self.o.fp32_nodes:
            return "named by --fp32-nodes"
        if node.op in self.o.fp32_ops:
            return f"{node.op} named by --fp32-ops"
        if node.op in ("Softmax", "LogSoftmax"):
            return ("Softmax (a DFL's, or attention's): it, and a DFL's expectation and box decode after it, stay "
                    "float32")
        if node.op in ACCUMULATING:
            return f"{node.op} accumulates in its own type"
        if any(id(t) in after_softmax for t in node.inputs) and \
                not _mixes_activations(node, after_softmax, self._dependent):
            return "computed from a Softmax (DFL expectation, box decode: terms of hundreds of pixels)"
        if node.op == "Cast":
            return "a Cast of the model's own"
        for o in node.outputs:
            peak = self.o.ranges.get(o.name)
            if peak is not None and peak >= RANGE_LIMIT:
                self._peaks[node.name] = peak
                return "its values reach 32768 or more on the verification inputs (float16's largest is 65504)"
            if peak is not None and 0 < peak < F16_TINY:
                self._peaks[node.name] = peak
                return f"all its values are below {F16_TINY:.2g} (float16's smallest normal)"
        for t in node.inputs:
            if isinstance(t, gs.Constant) and np.issubdtype(peek(t).dtype, np.floating):
                big = float(np.max(np.abs(peek(t)))) if peek(t).size else 0.0
                if big > F16_MAX:
                    self._peaks[node.name] = big
                    return "a weight beyond 65504 (float16's largest)"
        return None

    @staticmethod
    def _feed_subgraphs(node: gs.Node, as_type, half) -> None:
        """Subgraphs stay float32 as written: every read of an outer-scope tensor that became float16, at
        any depth (a Loop in an If's branch), reads its float32 Cast instead, made in the outer graph before
        `node` (the tensors of a subgraph never become float16; ONNX forbids an outer-scope tensor as a
        subgraph output, so every read is a node's)."""
        for sub in node.subgraphs(recursive=True):
            for inner in sub.nodes:
                for i, t in enumerate(list(inner.inputs)):
                    if t.name and half(t):
                        inner.inputs[i] = as_type(t, False)

    def _outputs(self, graph: gs.Graph, namer: Namer, is16: dict, is_float) -> None:
        """Float graph outputs keep float32 (keep_io_types) or become float16: one Cast at the boundary."""
        for k, out in enumerate(list(graph.outputs)):
            if not is_float(out) or bool(is16.get(id(out))) != self.o.keep_io_types:
                continue   # already the type the interface wants
            want16 = not self.o.keep_io_types
            src = producer(out)
            if src is None:
                continue
            inner = gs.Variable(namer(f"{out.name}_{'fp32' if want16 else 'fp16'}"),
                                dtype=np.float32 if want16 else np.float16, shape=out.shape)
            src.outputs[src.outputs.index(out)] = inner
            for reader in list(out.outputs):
                reader.inputs[reader.inputs.index(out)] = inner
            graph.nodes.append(gs.Node("Cast", name=namer(f"{out.name}/Cast"), attrs={"to": F16 if want16 else F32},
                                       inputs=[inner], outputs=[out]))
            out.dtype = np.float16 if want16 else np.float32
            is16[id(inner)] = not want16
            is16[id(out)] = want16
