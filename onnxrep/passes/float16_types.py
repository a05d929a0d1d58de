"""float16_types: which of a node's tensors must share one type, read from the op's ONNX schema.

Every input and output of a node is bound either to a type variable of its schema or to a fixed type:
Add's A, B, C are all ``T``; Pow's X and Z are ``T``, its exponent Y is ``T1``; Greater's A and B are ``T``
and its output is bool; Resize's X is ``T1``, roi and scales ``T2``. A float16 conversion that changes one
tensor of a variable and not the others writes an invalid model (``Greater(float16, float32)``), so the
conversion decides one type per variable (``choose``), never per op name. The slots of a heterogeneous
variadic (Loop's and Scan's carried values, If's outputs) are each a variable of their own, bound to the
type the subgraph declares: they are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

# The output's type is the input's when the "dtype" attribute is absent (the spec's words, not the schema's).
FOLLOWS_INPUT_WITHOUT_DTYPE = {"EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli"}
F16_TYPE = "tensor(float16)"


@dataclass(frozen=True)
class Signature:
    inputs: tuple    # per input slot: its type variable, or a fixed type string such as "tensor(float)"
    outputs: tuple   # per output slot: the same
    allows16: dict   # type variable -> tensor(float16) is among its allowed types

    def is_var(self, v: str) -> bool:
        return v in self.allows16

    def inputs_of(self, v: str) -> list[int]:
        return [i for i, x in enumerate(self.inputs) if x == v]

    def outputs_of(self, v: str) -> list[int]:
        return [j for j, x in enumerate(self.outputs) if x == v]


def _bind(formals, count: int, side: str) -> list[str] | None:
    """The type variable (or fixed type) of each of `count` actual slots, or None when they don't fit."""
    out = []
    for i in range(count):
        if not formals:
            return None
        formal = formals[min(i, len(formals) - 1)]
        variadic = formal.option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        if i >= len(formals) and not variadic:
            return None
        heterogeneous = variadic and not formal.is_homogeneous
        out.append(f"{formal.type_str}#{side}{i}" if heterogeneous else formal.type_str)
    return out


def signature(node: gs.Node, opset: int) -> Signature | None:
    """The node's binding of slots to types, or None for an op without a default-domain schema."""
    if node.domain not in (None, "", "ai.onnx"):
        return None
    try:
        schema = onnx.defs.get_schema(node.op, opset, "")
    except Exception:  # noqa: BLE001 -- unknown op: leave it as it is
        return None
    inputs = _bind(schema.inputs, len(node.inputs), "in")
    outputs = _bind(schema.outputs, len(node.outputs), "out")
    if inputs is None or outputs is None:
        return None
    allows = {t.type_param_str: F16_TYPE in t.allowed_type_strs for t in schema.type_constraints}
    for v in inputs + outputs:
        if "#" in v:   # a heterogeneous slot keeps the type its subgraph declares
            allows[v] = False
    if node.op in FOLLOWS_INPUT_WITHOUT_DTYPE and "dtype" not in node.attrs and inputs and outputs:
        outputs[0] = inputs[0]
    return Signature(tuple(inputs), tuple(outputs), allows)


def exact_in_float16(t: gs.Tensor, value: np.ndarray | None) -> bool:
    """A float32 constant every value of which float16 holds exactly (0.5, 2, 255, an anchor grid)."""
    if not isinstance(t, gs.Constant) or value is None or value.dtype != np.float32:
        return False
    with np.errstate(over="ignore"):
        return bool(np.array_equal(value.astype(np.float16).astype(np.float32), value))


def choose(sig: Signature, node: gs.Node, compute16: bool, half, is_float, exact) -> dict[str, bool]:
    """One type per float type variable of `node`: True for float16, False for float32.

    half(t): t is float16 now; is_float(t): t is float32 or float16 now; exact(t): a constant float16
    holds exactly. The output's variable is float16 when the node computes in float16. Any other variable
    (or every one, for a node kept float32) is float16 only when it binds no output of a float32 node, its
    schema allows float16, and each of its float inputs already is float16 or a constant float16 holds
    exactly (a comparison of a float16 activation with 0.5): nothing is rounded, no Cast is added.
    Otherwise float32, and its float16 inputs are cast back.
    """
    main = sig.outputs[0] if compute16 and sig.outputs else None
    chosen = {}
    for v in dict.fromkeys(sig.inputs):
        if not sig.is_var(v):
            continue
        floats = [node.inputs[i] for i in sig.inputs_of(v) if node.inputs[i].name and is_float(node.inputs[i])]
        if not floats:
            continue
        if v == main:
            chosen[v] = True
        elif sig.outputs_of(v) and not compute16:
            chosen[v] = False
        else:
            chosen[v] = bool(sig.allows16[v] and any(half(t) for t in floats)
                             and all(half(t) or exact(t) for t in floats))
    return chosen
