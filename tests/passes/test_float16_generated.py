"""Generated models for "never write an invalid model" (issue 25): --precision fp16 over every op, and
subgraphs that read outer-scope tensors.

(b) Every default-domain op at opset 17 and 20 with a type variable that allows float16: one-node models
    and two-node chains (the op then Neg, the op then Less(out, 0.5)), each float input fed from a graph
    input, a constant or a float16 activation (Relu of a graph input), in every mix, converted with
    keep_io_types on and off. Inputs come from the schema (float where a variable allows it, int64/bool
    otherwise, one shape) or from RECIPES for the ops that need particular inputs or attributes. A case whose
    ORIGINAL model onnx.checker or onnxruntime rejects is skipped and counted with its reason: the
    invariant is only "a model onnxruntime loads and runs before still loads and runs after".
(c) If, Loop and Scan whose bodies read outer-scope float tensors (nested too), with precision fp16 and fp32.

The default run takes a sample; `-m slow` runs every case. `python tests/passes/test_float16_generated.py [--all]`
prints the counts (ops covered, cases run, cases skipped and why).
"""

from __future__ import annotations

import collections
import itertools
import random
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxrep

OPSETS = (17, 20)
SHAPE = (2, 3, 4, 4)
SOURCES = ("input", "const", "act")     # a float input: graph input, initializer, float16 activation Relu(input)
POSTS = (None, "Neg", "Less")           # one node, or chained to a float node / a comparison with 0.5
SAMPLE_PER_OP = 2                       # default run: cases per (op, opset)
STATS: dict = {"run": 0, "ops": set(), "skipped": collections.Counter(), "failed": [],
         "skipped_ops": {}}

F = np.float32
I64 = np.int64
x4 = lambda: ("float", SHAPE)            # noqa: E731 -- a float input of the common shape


def _c(value, dtype=I64):
    return ("const", np.asarray(value, dtype))


# op -> (inputs, attributes): an input is ("float", shape) (fed by the case's sources) or ("const", array).
RECIPES = {
    "Conv": ([x4(), ("float", (4, 3, 3, 3))], {"pads": [1, 1, 1, 1]}),
    "ConvTranspose": ([x4(), ("float", (3, 4, 3, 3))], {}),
    "DeformConv": ([x4(), ("float", (4, 3, 3, 3)), ("float", (2, 18, 2, 2))], {}),
    "MatMul": ([x4(), ("float", (2, 3, 4, 5))], {}),
    "Gemm": ([("float", (3, 4)), ("float", (4, 5)), ("float", (5,))], {}),
    "Reshape": ([x4(), _c([2, 3, 16])], {}),
    "Expand": ([("float", (3, 1, 1)), _c([2, 3, 4, 4])], {}),
    "Tile": ([x4(), _c([1, 1, 2, 1])], {}),
    "Slice": ([x4(), _c([0, 1]), _c([2, 3]), _c([2, 3])], {}),
    "Gather": ([x4(), _c([0, 2, 1])], {"axis": 2}),
    "GatherElements": ([x4(), _c(np.zeros(SHAPE, I64))], {"axis": 1}),
    "GatherND": ([x4(), _c([[0, 1], [1, 2]])], {}),
    "ScatterElements": ([x4(), _c(np.zeros((2, 3, 4, 1), I64)), ("float", (2, 3, 4, 1))], {"axis": 3}),
    "ScatterND": ([x4(), _c([[0, 1], [1, 2]]), ("float", (2, 4, 4))], {}),
    "Pad": ([x4(), _c([0, 0, 1, 1, 0, 0, 1, 1])], {}),
    "Resize": ([x4(), ("skip",), _c([1, 1, 2, 2], F)], {"mode": "nearest"}),
    "Split": ([x4()], {"axis": 1, "num_outputs": 3}),
    "Concat": ([x4(), x4()], {"axis": 1}),
    "Transpose": ([x4()], {"perm": [0, 2, 3, 1]}),
    "Squeeze": ([("float", (2, 1, 4)), _c([1])], {}),
    "Unsqueeze": ([x4(), _c([1])], {}),
    "TopK": ([x4(), _c([2])], {}),
    "Where": ([_c(np.arange(96).reshape(SHAPE) % 3 == 0, bool), x4(), x4()], {}),
    "Compress": ([x4(), _c([True, False, True], bool)], {"axis": 1}),
    "Clip": ([x4(), ("float", ()), ("float", ())], {}),
    "BatchNormalization": ([x4(), ("float", (3,)), ("float", (3,)), ("float", (3,)), ("pos", (3,))], {}),
    "InstanceNormalization": ([x4(), ("float", (3,)), ("float", (3,))], {}),
    "LayerNormalization": ([x4(), ("float", (4,)), ("float", (4,))], {}),
    "GroupNormalization": ([x4(), ("float", (3,)), ("float", (3,))], {"num_groups": 3}),
    "PRelu": ([x4(), ("float", (3, 1, 1))], {}),
    "LRN": ([x4()], {"size": 3}),
    "MaxPool": ([x4()], {"kernel_shape": [2, 2]}),
    "AveragePool": ([x4()], {"kernel_shape": [2, 2]}),
    "LpPool": ([x4()], {"kernel_shape": [2, 2]}),
    "MaxRoiPool": ([x4(), _c([[0, 0, 0, 2, 2]], F)], {"pooled_shape": [2, 2]}),
    "RoiAlign": ([x4(), ("float", (2, 4)), _c([0, 1])], {}),
    "MaxUnpool": ([x4(), _c(np.arange(2 * 3 * 16).reshape(SHAPE) % 16)], {"kernel_shape": [2, 2]}),
    "DepthToSpace": ([("float", (1, 4, 2, 2))], {"blocksize": 2}),
    "SpaceToDepth": ([x4()], {"blocksize": 2}),
    "Einsum": ([("float", (3, 4)), ("float", (4, 5))], {"equation": "ij,jk->ik"}),
    "CumSum": ([x4(), _c(1)], {}),
    "OneHot": ([_c([0, 2, 1]), _c(4), ("float", (2,))], {}),
    "Trilu": ([x4()], {}),
    "Det": ([("float", (2, 3, 3))], {}),
    "Mod": ([x4(), ("pos", SHAPE)], {"fmod": 1}),
    "Pow": ([("pos", SHAPE), x4()], {}),
    "Log": ([("pos", SHAPE)], {}),
    "Sqrt": ([("pos", SHAPE)], {}),
    "Bernoulli": ([("unit", SHAPE)], {"seed": 1.0}),
    "EyeLike": ([("float", (3, 4))], {}),
    "CastLike": ([x4(), ("float", ())], {}),
    "Cast": ([x4()], {"to": TensorProto.FLOAT16}),
    "ReverseSequence": ([x4(), _c([1, 2])], {"batch_axis": 0, "time_axis": 1}),
    "GridSample": ([x4(), ("unit", (2, 3, 3, 2))], {}),
    "AffineGrid": ([("float", (2, 2, 3)), _c([2, 3, 4, 4])], {}),
    "Col2Im": ([("float", (1, 12, 9)), _c([4, 4]), _c([2, 2])], {}),
    "CenterCropPad": ([x4(), _c([2, 2]), ], {"axes": [2, 3]}),
    "DFT": ([("float", (2, 8, 1))], {}),
    "STFT": ([("float", (1, 32, 1)), _c(4)], {"onesided": 1}),
    "NegativeLogLikelihoodLoss": ([("float", (2, 3, 4)), _c(np.zeros((2, 4), I64))], {}),
    "SoftmaxCrossEntropyLoss": ([("float", (2, 3, 4)), _c(np.zeros((2, 4), I64))], {}),
    "RNN": ([("float", (2, 3, 4)), ("float", (1, 5, 4)), ("float", (1, 5, 5))], {"hidden_size": 5}),
    "GRU": ([("float", (2, 3, 4)), ("float", (1, 15, 4)), ("float", (1, 15, 5))], {"hidden_size": 5}),
    "LSTM": ([("float", (2, 3, 4)), ("float", (1, 20, 4)), ("float", (1, 20, 5))], {"hidden_size": 5}),
    "QuantizeLinear": ([x4(), _c(0.1, F)], {}),
    "DequantizeLinear": ([_c(np.arange(96).reshape(SHAPE) % 7, np.int8), _c(0.1, F)], {}),
    "Hardmax": ([x4()], {}),
    "Shape": ([x4()], {}),
}
# Ops this generator does not build (sequences, optionals, subgraphs: (c) covers those; generators without
# a float input): counted as skipped with this reason.
NOT_BUILT = {"ConcatFromSequence", "SequenceAt", "SequenceConstruct", "SequenceInsert", "SequenceMap",
             "SplitToSequence", "Optional", "OptionalGetElement", "OptionalHasElement", "If", "Loop", "Scan",
             "Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "MelWeightMatrix", "BlackmanWindow",
             "HammingWindow", "HannWindow", "Multinomial"}
TYPE_PREFERENCE = ("tensor(float)", "tensor(int64)", "tensor(int32)", "tensor(bool)", "tensor(uint8)")


def covered_ops(opset: int) -> list[str]:
    names = sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain == ""})
    out = []
    for name in names:
        try:
            schema = onnx.defs.get_schema(name, opset, "")
        except onnx.defs.SchemaError:
            continue
        if not schema.deprecated and any("tensor(float16)" in t.allowed_type_strs for t in schema.type_constraints):
            out.append(name)
    return out


def _spec(op: str, opset: int) -> tuple[list, dict] | str:
    """(inputs, attributes) for `op`, or the reason it can't be built."""
    if op in NOT_BUILT:
        return "not built here (sequence, optional, subgraph or no float input)"
    schema = onnx.defs.get_schema(op, opset, "")
    if op in RECIPES:
        inputs, attrs = RECIPES[op]
    else:
        allowed = {t.type_param_str: t.allowed_type_strs for t in schema.type_constraints}
        inputs = []
        for formal in schema.inputs:
            if formal.option == onnx.defs.OpSchema.FormalParameterOption.Optional:
                break
            types = allowed.get(formal.type_str, [formal.type_str])
            kind = next((t for t in TYPE_PREFERENCE if t in types), None)
            if kind is None:
                return f"no tensor type for input {formal.name}"
            spec = {"tensor(float)": ("float", SHAPE), "tensor(bool)": _c(np.ones(SHAPE, bool), bool)}.get(
                kind, _c(np.ones(SHAPE, I64)) if kind == "tensor(int64)" else None)
            if spec is None:
                return f"no generic input of {kind}"
            inputs.extend([spec] * (2 if formal.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else 1))
        attrs = {}
        for name, attr in schema.attributes.items():
            if attr.required:
                return f"required attribute {name} and no recipe"
    if op == "Split" and opset < 18:
        attrs = {"axis": 1}
        inputs = [x4(), _c([1, 1, 1])]
    if op in ("Col2Im", "CenterCropPad", "AffineGrid", "DeformConv") and opset < 18:
        return "not at this opset"
    return inputs, dict(attrs)


def _n_float(inputs) -> int:
    return sum(1 for spec in inputs if spec[0] in ("float", "pos", "unit"))


def _value(kind: str, shape, rng) -> np.ndarray:
    if kind == "pos":
        return np.asarray(rng.uniform(0.5, 2.0, shape), F)
    if kind == "unit":
        return np.asarray(rng.uniform(0.0, 1.0, shape), F)
    return np.asarray(rng.normal(0, 1, shape), F)


def build(op: str, opset: int, inputs, attrs, sources, post, seed=0):
    """The model and its feeds: `op` with float inputs fed per `sources`, then `post`."""
    rng = np.random.default_rng(seed)
    nodes, graph_inputs, inits, feeds, names = [], [], [], {}, []
    k = 0
    for i, spec in enumerate(inputs):
        if spec[0] == "skip":
            names.append("")
        elif spec[0] == "const":
            inits.append(numpy_helper.from_array(spec[1], f"c{i}"))
            names.append(f"c{i}")
        else:
            value = _value(spec[0], spec[1], rng)
            source = sources[k]
            k += 1
            if source == "const":
                inits.append(numpy_helper.from_array(value, f"w{i}"))
                names.append(f"w{i}")
                continue
            graph_inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(value.shape)))
            feeds[f"x{i}"] = np.asarray(np.abs(value) if source == "act" else value, F)   # Relu keeps it: same values
            if source == "act":
                nodes.append(helper.make_node("Relu", [f"x{i}"], [f"r{i}"]))
            names.append(f"r{i}" if source == "act" else f"x{i}")
    schema = onnx.defs.get_schema(op, opset, "")
    n_out = 3 if op == "Split" else (len(schema.outputs) if op not in ("Dropout", "BatchNormalization", "Unique") else 1)
    outs = [f"y{j}" for j in range(n_out)]
    nodes.append(helper.make_node(op, names, outs, **attrs))
    if post is not None:
        probe = helper.make_model(helper.make_graph(nodes, "g", graph_inputs, [], inits),
                                  opset_imports=[helper.make_opsetid("", opset)])
        probe = onnx.shape_inference.infer_shapes(probe)
        elem = {v.name: v.type.tensor_type.elem_type for v in probe.graph.value_info}.get(outs[0])
        if elem != TensorProto.FLOAT:   # a bool or int output: a reader of its own type, or a Cast to float
            nodes.append(helper.make_node("Identity", [outs[0]], ["z"]) if post == "Neg" else
                         helper.make_node("Cast", [outs[0]], ["z"], to=TensorProto.FLOAT))
        elif post == "Neg":
            nodes.append(helper.make_node("Neg", [outs[0]], ["z"]))
        else:
            inits.append(numpy_helper.from_array(np.asarray(0.5, F), "half"))
            nodes.append(helper.make_node("Less", [outs[0], "half"], ["z"]))
        outs = outs[1:] + ["z"]
    graph = helper.make_graph(nodes, "g", graph_inputs, [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    del model.graph.output[:]
    model.graph.output.extend(known[o] for o in outs)
    return model, feeds


def _session(model: onnx.ModelProto):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    for cut in ("Could not find an implementation", "NOT_IMPLEMENTED", "Type Error", "ShapeInferenceError",
                "is not a registered function", "Unsupported", "INVALID_ARGUMENT", "InferenceError"):
        if cut in text:
            return cut
    return text[:60]


def run_case(op: str, opset: int, sources, post, keep_io: bool) -> str | None:
    """None when the case ran and held, or the reason it was skipped. Asserts the invariant."""
    spec = _spec(op, opset)
    if isinstance(spec, str):
        return spec
    inputs, attrs = spec
    try:
        model, feeds = build(op, opset, inputs, attrs, sources, post)
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 -- the original is not a valid model: nothing to keep valid
        return f"original rejected by onnx.checker: {_short(e)}"
    try:
        _session(model).run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return f"original rejected by onnxruntime: {_short(e)}"
    result = onnxrep.optimize(model, precision="fp16", verify=False, keep_io_types=keep_io)
    half = result.model
    feeds16 = {k: (v if keep_io else v.astype(np.float16)) for k, v in feeds.items()}
    where = f"{op} opset {opset} sources {sources} post {post} keep_io_types {keep_io}"
    try:
        onnx.checker.check_model(half, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{where}: onnx.checker rejects the float16 model: {_short(e)} | {e}") from e
    try:
        _session(half).run(None, feeds16)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{where}: onnxruntime rejects the float16 model: {e}") from e
    return None


def cases(op: str, opset: int, limit: int | None, seed: int = 0) -> list[tuple]:
    """(sources, post, keep_io_types) for `op`: every mix when limit is None, else a sample of `limit`."""
    spec = _spec(op, opset)
    n = _n_float(spec[0]) if not isinstance(spec, str) else 0
    mixes = list(itertools.product(SOURCES, repeat=n))
    if len(mixes) > 27:
        mixes = random.Random(f"{op}{opset}").sample(mixes, 27)
    all_cases = list(itertools.product(mixes, POSTS, (True, False)))
    if limit is None:
        return all_cases
    return random.Random(f"{op}{opset}{seed}").sample(all_cases, min(limit, len(all_cases)))


def _check_op(op: str, opset: int, limit: int | None) -> None:
    failures, reasons = [], collections.Counter()
    for sources, post, keep_io in cases(op, opset, limit):
        try:
            reason = run_case(op, opset, sources, post, keep_io)
        except AssertionError as e:
            failures.append(str(e)[:400])
            STATS["failed"].append(str(e)[:200])
            continue
        if reason is None:
            STATS["run"] += 1
            STATS["ops"].add((op, opset))
        else:
            STATS["skipped"][reason] += 1
            STATS["skipped_ops"].setdefault(reason, set()).add(op)
            reasons[reason] += 1
    assert not failures, f"{len(failures)} invalid float16 models, first: {failures[0]}"
    if reasons and not any(o == (op, opset) for o in STATS["ops"]):
        pytest.skip(f"{op}: every case skipped: {dict(reasons)}")


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    """The counts at the end of the module (shown with -s): cases run, ops covered, skips and why."""
    yield
    print("\n" + report())


OP_PARAMS = [(op, opset) for opset in OPSETS for op in covered_ops(opset)]


@pytest.mark.parametrize("op,opset", OP_PARAMS[::7], ids=lambda v: str(v))
def test_float16_keeps_every_op_valid_sample(op, opset):
    _check_op(op, opset, SAMPLE_PER_OP)


@pytest.mark.slow
@pytest.mark.parametrize("op,opset", OP_PARAMS, ids=lambda v: str(v))
def test_float16_keeps_every_op_valid_all(op, opset):
    _check_op(op, opset, None)


# ---------------------------------------------------------------- (c) subgraphs reading outer-scope tensors

def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, F), name)


def _body_reader(kind: str, outer: str, out: str, k: int):
    """Nodes of a body that read outer-scope `outer` and write `out`: one op, or a comparison and Where."""
    if kind == "add":
        return [helper.make_node("Add", [outer, f"b{k}"], [out])], [_const(f"b{k}", 1.0)]
    if kind == "greater":
        return ([helper.make_node("Greater", [outer, f"b{k}"], [f"g{k}"]),
                 helper.make_node("Where", [f"g{k}", outer, f"z{k}"], [out])],
                [_const(f"b{k}", 0.5), _const(f"z{k}", 0.0)])
    return [helper.make_node("Mul", [outer, outer], [out])], []


def subgraph_model(control: str, reader: str, nested: bool, outer_is_input: bool, opset: int = 17):
    """x -> Conv -> h; a control-flow node whose body reads h (or x) from the outer scope."""
    rng = np.random.default_rng(0)
    shape = [1, 4, 6, 6]
    outer = "x" if outer_is_input else "h"
    conv = helper.make_node("Conv", ["x", "W"], ["h"], pads=[1, 1, 1, 1])

    def body(name, out, k, inputs=(), extra_outputs=()):
        nodes, inits = _body_reader(reader, outer, out, k)
        if nested:   # the read happens one If deeper
            inner = helper.make_graph(nodes, f"{name}_in", [], [_vi(out, shape)], inits)
            other = helper.make_graph([helper.make_node("Identity", [outer], [f"{out}_e"])], f"{name}_ie", [],
                                      [_vi(f"{out}_e", shape)])
            nodes, inits = [helper.make_node("If", ["cond"], [out], then_branch=inner, else_branch=other)], []
        return helper.make_graph(nodes + list(extra_outputs), name, list(inputs),
                                 [_vi(out, shape)] if not extra_outputs else [], inits)

    inputs = [_vi("x", shape), _vi("cond", [], TensorProto.BOOL)]
    feeds = {"x": rng.random(shape, dtype=F), "cond": np.array(True)}
    if control == "If":
        node = helper.make_node("If", ["cond"], ["y"], then_branch=body("then", "t", 0),
                                else_branch=body("else", "e", 1))
    elif control == "Loop":
        b_nodes, b_inits = _body_reader(reader, outer, "r", 2)
        if nested:
            inner = helper.make_graph(b_nodes, "lin", [], [_vi("r", shape)], b_inits)
            other = helper.make_graph([helper.make_node("Identity", [outer], ["r_e"])], "lie", [], [_vi("r_e", shape)])
            b_nodes, b_inits = [helper.make_node("If", ["cond"], ["r"], then_branch=inner, else_branch=other)], []
        b_nodes = b_nodes + [helper.make_node("Add", ["acc", "r"], ["acc_out"]),
                             helper.make_node("Identity", ["cond_in"], ["cond_out"])]
        loop_body = helper.make_graph(b_nodes, "loop", [_vi("i", [], TensorProto.INT64),
                                                        _vi("cond_in", [], TensorProto.BOOL), _vi("acc", shape)],
                                      [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out", shape)], b_inits)
        node = helper.make_node("Loop", ["trip", "", "h"], ["y"], body=loop_body)
    else:   # Scan over the outer h's first axis of a stacked copy, adding the outer-scope tensor
        b_nodes, b_inits = _body_reader(reader, outer, "r", 3)
        b_nodes = b_nodes + [helper.make_node("Add", ["s", "r"], ["s_out"]),
                             helper.make_node("Identity", ["s_out"], ["o"])]
        scan_body = helper.make_graph(b_nodes, "scan", [_vi("s", shape), _vi("e", [6, 6])],
                                      [_vi("s_out", shape), _vi("o", shape)], b_inits)
        node = helper.make_node("Scan", ["h", "hs"], ["y", "ys"], body=scan_body, num_scan_inputs=1)
    nodes = [conv]
    inits = [_const("W", rng.normal(0, 0.3, (4, 4, 3, 3))), numpy_helper.from_array(np.asarray(2, I64), "trip")]
    if control == "Scan":
        nodes.append(helper.make_node("Squeeze", ["h", "ax0"], ["hs"]))
        inits.append(numpy_helper.from_array(np.asarray([0], I64), "ax0"))
    nodes.append(node)
    outputs = [_vi("y", shape)] + ([_vi("ys", [4] + shape)] if control == "Scan" else [])
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9
    return model, feeds


SUBGRAPH_CASES = list(itertools.product(("If", "Loop", "Scan"), ("add", "greater", "square"), (False, True),
                                        (False, True), ("fp16", "fp32"), (True, False), OPSETS))


def _subgraph_case(control, reader, nested, outer_is_input, precision, keep_io, opset):
    if precision == "fp32" and not keep_io:
        return   # keep_io_types only matters for fp16
    model, feeds = subgraph_model(control, reader, nested, outer_is_input, opset)
    onnx.checker.check_model(model, full_check=True)
    ref = _session(model).run(None, feeds)
    kw = {"keep_io_types": keep_io} if precision == "fp16" else {}
    result = onnxrep.optimize(model, precision=precision, verify=False, **kw)
    onnx.checker.check_model(result.model, full_check=True)
    feeds_out = feeds if keep_io or precision == "fp32" else {k: (v.astype(np.float16) if v.dtype == F else v)
                                                               for k, v in feeds.items()}
    got = _session(result.model).run(None, feeds_out)
    tol = 2e-2 if precision == "fp16" else 1e-5
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b.astype(F), a, rtol=tol, atol=tol)
    STATS["run"] += 1


@pytest.mark.parametrize("case", SUBGRAPH_CASES[::5], ids=str)
def test_subgraphs_reading_outer_scope_stay_valid_sample(case):
    _subgraph_case(*case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBGRAPH_CASES, ids=str)
def test_subgraphs_reading_outer_scope_stay_valid_all(case):
    _subgraph_case(*case)


def report() -> str:
    ops = sorted(STATS["ops"])
    lines = [f"cases run: {STATS['run']}, ops covered (op, opset): {len(ops)} ({len({o for o, _ in ops})} ops), "
             f"skipped: {sum(STATS['skipped'].values())}, failed: {len(STATS['failed'])}"]
    lines += [f"  skipped {n:5d}: {reason} ({', '.join(sorted(STATS['skipped_ops'][reason]))})"
              for reason, n in STATS["skipped"].most_common()]
    lines += [f"  FAILED: {f}" for f in STATS["failed"][:20]]
    return "\n".join(lines)


if __name__ == "__main__":   # python tests/passes/test_float16_generated.py [--all]: run the generators, print counts
    every = "--all" in sys.argv
    for op, opset in OP_PARAMS:
        try:
            _check_op(op, opset, None if every else SAMPLE_PER_OP)
        except (AssertionError, pytest.skip.Exception):
            pass
    for case in SUBGRAPH_CASES if every else SUBGRAPH_CASES[::5]:
        try:
            _subgraph_case(*case)
        except Exception as e:  # noqa: BLE001
            STATS["failed"].append(f"subgraph {case}: {_short(e)}")
    print(report())
