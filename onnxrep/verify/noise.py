"""The original's own float rounding noise, measured: a noisy twin of its graph beside the clean one.

A correct rewrite changes only how float sums are rounded (a BN scale folded into weights, two kernels
summed into one), and a deep network amplifies those last-bit differences by a factor that depends on the
network and its weights: 1e-6 of the output's range for a trained YOLO, 1e-4 for a random-weight one whose
activations saturate. No fixed tolerance fits both. So the verifier measures the amplification: it runs
the original once more with every rounding step perturbed, and the rewrite may move an output channel only
a small multiple of what that perturbation moved it.

The perturbation: after every floating-point Conv, ConvTranspose, Gemm, MatMul, BatchNormalization,
AveragePool, Add and Sum (the operations a rewrite folds, merges or re-rounds; not the SiLU/decode
arithmetic, which no rewrite touches and which would inflate the estimate), the value is multiplied by
``1 + e·u``, ``u`` uniform in [-1, 1] per element (``RandomUniformLike``, seeded), ``e`` one unit in the
last place of the value's type (2^-23 float32, 2^-10 float16, 2^-7 bfloat16, 2^-52 float64). The data input
of every Conv/Gemm/MatMul is perturbed the same way: a sum much smaller than its terms (cancellation)
rounds like its terms, not like itself, and a rewrite re-rounds exactly such sums.

The noisy copy lives in the *same* model as the original, reading the same weights (one session, no second
copy of the weights): every node output ``t`` gets a twin ``t + SUFFIX``, noise nodes after the ops above,
and one extra graph output per original output. Asking the session only for the original outputs computes
only the clean graph. Nodes with subgraphs (If/Loop/Scan) are not copied: their twins read the clean value.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

SUFFIX = "__onnxrep_noise"
NOISY_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "AveragePool", "Add", "Sum"}
LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
ULP = {TensorProto.FLOAT: 2.0 ** -23, TensorProto.FLOAT16: 2.0 ** -10, TensorProto.BFLOAT16: 2.0 ** -7,
       TensorProto.DOUBLE: 2.0 ** -52}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value, from shape inference on the structure (weights as typed inputs)."""
    from onnxrep.io import structure_view

    types = {t.name: t.data_type for t in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(structure_view(model), check_type=False, strict_mode=False)
        values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    except Exception:  # noqa: BLE001 -- no types: no noise nodes, the caller's floor still applies
        values = list(model.graph.input) + list(model.graph.output)
    for vi in values:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def noisy_twin(model: onnx.ModelProto, seed: int, as_float16: bool = False
               ) -> tuple[list[onnx.NodeProto], list[onnx.ValueInfoProto], dict]:
    """(nodes, graph outputs) to append to `model.graph`, and {original output: its noisy twin's name}.

    as_float16: perturb float32 values by float16's step (2^-10): the noise a float16 copy of this float32
    model may show, which is what a --precision fp16 result is held to."""
    ulps = {**ULP, **({TensorProto.FLOAT: ULP[TensorProto.FLOAT16]} if as_float16 else {})}
    g = model.graph
    types = _elem_types(model)
    twin = {}   # value -> its name in the noisy copy (values not produced by nodes are shared)

    def name(v: str) -> str:
        return twin.get(v, v)

    nodes: list[onnx.NodeProto] = []
    serial = 0

    def perturbed(value: str, elem: int, tag: str) -> str:
        """`value` times (1 + e*u) per element, as a new tensor."""
        nonlocal serial
        serial += 1
        u, out = f"{value}{SUFFIX}_{tag}u", f"{value}{SUFFIX}_{tag}"
        e = ulps[elem]
        gen = TensorProto.DOUBLE if elem == TensorProto.DOUBLE else TensorProto.FLOAT
        nodes.append(helper.make_node("RandomUniformLike", [value], [u], name=f"{u}_gen", dtype=gen,
                                      low=1.0 - e, high=1.0 + e, seed=float(seed * 100_003 + serial)))
        if gen != elem:
            nodes.append(helper.make_node("Cast", [u], [u + "_cast"], name=f"{u}_cast", to=elem))
            u += "_cast"
        nodes.append(helper.make_node("Mul", [value, u], [out], name=f"{out}_mul"))
        return out

    for node in g.node:
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if has_subgraph or not node.output:
            continue
        std = node.domain in ("", "ai.onnx")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = node.name + SUFFIX if node.name else ""   # unnamed stays unnamed: names must be unique
        copy.input[:] = [name(i) if i else "" for i in node.input]
        if std and node.op_type in LINEAR_OPS and node.input and types.get(node.input[0]) in ULP:
            # a sum of terms much larger than itself rounds like its terms: perturb what goes in, too
            copy.input[0] = perturbed(copy.input[0], types[node.input[0]], f"in{serial}")
        outs = []
        for o in node.output:
            if not o:
                outs.append("")
                continue
            twin[o] = o + SUFFIX
            outs.append(o + SUFFIX)
        copy.output[:] = outs
        y = node.output[0]
        elem = types.get(y)
        if std and node.op_type in NOISY_OPS and y and elem in ULP:
            copy.output[0] = f"{y}{SUFFIX}_raw"
            nodes.append(copy)
            nodes.append(helper.make_node("Identity", [perturbed(copy.output[0], elem, "out")], [twin[y]],
                                          name=f"{twin[y]}_id"))
        else:
            nodes.append(copy)
    outputs, pairs = [], {}
    for out in g.output:
        noisy = name(out.name)
        if noisy == out.name or noisy not in {o for n in nodes for o in n.output}:
            continue   # an input or constant passed through: nothing to perturb
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(out)
        vi.name = noisy
        outputs.append(vi)
        pairs[out.name] = noisy
    return nodes, outputs, pairs


class appended:
    """Context manager: `model.graph` with extra nodes and outputs appended, restored on exit."""

    def __init__(self, model: onnx.ModelProto, nodes, outputs):
        self.graph, self.nodes, self.outputs = model.graph, nodes, outputs

    def __enter__(self):
        self.n_nodes, self.n_outputs = len(self.graph.node), len(self.graph.output)
        self.graph.node.extend(self.nodes)
        self.graph.output.extend(self.outputs)
        return self

    def __exit__(self, *exc):
        del self.graph.node[self.n_nodes:]
        del self.graph.output[self.n_outputs:]
        return False
