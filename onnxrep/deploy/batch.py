"""The batch dimension: a static export made dynamic, a dynamic one fixed, any input shape fixed.

make_dynamic_batch (``--dynamic-batch``): a model exported at batch B bakes B into constants: Reshape
targets ``[1, 144, -1]``, Expand shapes, Resize sizes. The image input's batch becomes the symbolic
``batch``, and each such constant whose first entry is B and which shapes a tensor computed from the batch
inputs becomes ``Concat(Shape(input)[0:1], rest)``: the batch read at run time, the rest unchanged. A
tensor without the batch that a Concat joins, off the batch axis, to one with it (a constant ``[1, A, 1]``
column of ones) is expanded to the batch read the same way.
Which inputs carry the batch: the image (the first input of the highest rank) and every input whose first
dim is its B, except, at B = 1, an input of another rank: a ``[1]`` threshold or a ``[1, 4]`` table next to a
``[1, 3, H, W]`` image is a 1 that is no batch, so it keeps its shape, and so do the constants that shape
what is computed from it alone. Where the
batch sits anywhere else (a Split or Tile along axis 0, a Reshape folding the batch into another axis), it
is a clear error, not a guess. check_batches proves the result: the verification's samples (each at the
exported batch) stacked into one batch of 3, each item equal to its sample's own result within the
network's measured float noise (the runtime's kernels round differently at different batch sizes, so
bit-equality is not what "runs at any batch" can mean).

fix_input_shapes (``--static-batch N``, ``--overwrite-input-shape``): symbolic input dims become the given
numbers *before* the passes, so canonicalize folds the Shape chains that computed them (a dynamic-batch
TorchScript export's Shape -> Gather -> Concat -> Reshape) into constants, as onnxsim's
--overwrite-input-shape does; verification then feeds that shape.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxrep.io import OnnxrepError

BATCH = "batch"
SHAPED_BY = {"Reshape": 1, "Expand": 1, "Resize": 3}   # op -> the input holding a full output shape


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]], option: str) -> None:
    """Set the named inputs' dims (in place). A static dim may only be given its own value."""
    inputs = {vi.name: vi for vi in _data_inputs(model)}
    named = {}
    for name, dims in shapes.items():
        if name not in inputs:
            raise OnnxrepError(f"{option}: no input named {name!r} (inputs: {', '.join(inputs)})")
        have = inputs[name].type.tensor_type.shape.dim
        if len(have) != len(dims):
            raise OnnxrepError(f"{option}: {name} has rank {len(have)}, {len(dims)} dims given")
        for d, want in zip(have, dims):
            if want < 1 or (d.HasField("dim_value") and d.dim_value != want):
                raise OnnxrepError(f"{option}: {name} dim {d.dim_value or d.dim_param!r} cannot become {want}")
        for d, want in zip(have, dims):
            if d.dim_param:
                named[d.dim_param] = int(want)
            d.Clear()
            d.dim_value = int(want)
    # the same symbolic name elsewhere (the outputs' "batch") is the same number now
    for vi in list(model.graph.value_info) + list(model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in named:
                value = named[d.dim_param]
                d.Clear()
                d.dim_value = value


def static_batch_shapes(model: onnx.ModelProto, n: int) -> dict[str, list[int]]:
    """--static-batch N: every data input's first dim is N, the others as they are (they must be static)."""
    out = {}
    for vi in _data_inputs(model):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if not dims or any(d is None for d in dims[1:]):
            raise OnnxrepError(f"--static-batch: input {vi.name} has symbolic dims besides the batch "
                               f"(fix them with --overwrite-input-shape)")
        out[vi.name] = [n] + dims[1:]
    return out


def refine_output_shapes(model: onnx.ModelProto, batch: str | None = None) -> None:
    """Graph outputs get the shapes inference finds (weights left out of the view); `batch`: a symbolic first
    dim is named so."""
    from onnxrep.io import structure_view

    try:
        inferred = onnx.shape_inference.infer_shapes(structure_view(model), data_prop=True)
    except Exception:  # noqa: BLE001 -- the declared shapes stay
        return
    for vi, got in zip(model.graph.output, inferred.graph.output):
        if got.type.tensor_type.HasField("shape"):
            vi.type.CopyFrom(got.type)
        dims = vi.type.tensor_type.shape.dim
        if batch and dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = batch


def _first_dim(vi: onnx.ValueInfoProto) -> int | None:
    dims = vi.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def batch_inputs(model: onnx.ModelProto) -> tuple[list[onnx.ValueInfoProto], int]:
    """(the inputs that carry the batch, image first; the batch B they were exported at): see the module
    docstring. An error when the image's batch is not static or a rank-equal input has another one."""
    inputs = _data_inputs(model)
    listing = "; the model's inputs: " + ", ".join(
        f"{vi.name} {[d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]}" for vi in inputs)
    ranks = [len(vi.type.tensor_type.shape.dim) for vi in inputs]
    if not inputs or max(ranks) == 0:
        raise OnnxrepError("--dynamic-batch: no input has a batch (first dim)" + listing)
    image = inputs[ranks.index(max(ranks))]
    b0 = _first_dim(image)
    carry = [vi for vi, r in zip(inputs, ranks) if r and _first_dim(vi) == b0 and (b0 != 1 or r == max(ranks))]
    clash = [vi for vi, r in zip(inputs, ranks) if vi not in carry and r and (r == max(ranks) or _first_dim(vi) is None)]
    if b0 is None or clash:
        raise OnnxrepError("--dynamic-batch: every input that carries the batch needs the same static batch "
                           "(first dim)" + listing)
    return [image] + [vi for vi in carry if vi is not image], b0


def make_dynamic_batch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` whose inputs take any batch (see the module docstring); and what was rewritten."""
    from onnxrep.export import from_graph
    from onnxrep.ir.constants import at_opset, const_value
    from onnxrep.ir.graph import Namer, import_model, is_std, model_opset
    from onnxrep.ir.shapes import infer_types

    inputs, b0 = batch_inputs(model)
    graph = import_model(model)
    types = infer_types(graph)
    namer = Namer(graph)
    data_names = [vi.name for vi in inputs]     # not an initializer listed among the inputs (IR < 4)
    data_inputs = sorted((t for t in graph.inputs if t.name in data_names), key=lambda t: data_names.index(t.name))
    first_input = data_inputs[0]
    batched = _batched_tensors(graph, data_inputs)
    shape = gs.Variable(namer("onnxrep_batch/shape"), dtype=np.int64, shape=[len(first_input.shape)])
    batch = gs.Variable(namer("onnxrep_batch/batch"), dtype=np.int64, shape=[1])
    new_nodes = [gs.Node("Shape", namer("onnxrep_batch/Shape"), inputs=[first_input], outputs=[shape]),
                 gs.Node("Slice", namer("onnxrep_batch/Slice"), inputs=[
                     shape, gs.Constant(namer("onnxrep_batch/zero"), np.array([0], np.int64)),
                     gs.Constant(namer("onnxrep_batch/one"), np.array([1], np.int64))], outputs=[batch])]
    rewritten, refused = [], []
    with at_opset(model_opset(graph)):
        for node in graph.nodes:
            if not any(t.name in batched for t in node.inputs):
                continue   # computes from constants and non-batch inputs only: its shapes have no batch
            _refuse_batch_axis_ops(node, b0, refused, types)
            if is_std(node, "Concat"):
                _batch_concat_inputs(node, batched, b0, types, namer, batch, new_nodes, rewritten, refused)
                continue
            k = SHAPED_BY.get(node.op)
            if k is None or len(node.inputs) <= k or not node.inputs[k].name:
                continue
            target = const_value(node.inputs[k])
            if target is None or target.ndim != 1 or target.size == 0 or int(target[0]) != b0:
                continue
            if const_value(node.inputs[0]) is not None:
                continue   # shapes a constant, not an activation
            why = _not_the_batch(node, target, b0, types)
            if why:
                refused.append(why)
                continue
            rest = gs.Constant(namer(f"{node.name}/rest"), np.asarray(target[1:], np.int64))
            full = gs.Variable(namer(f"{node.name}/shape_dynamic"), dtype=np.int64, shape=[target.size])
            new_nodes.append(gs.Node("Concat", namer(f"{node.name}/batch_shape"), attrs={"axis": 0},
                                     inputs=[batch, rest], outputs=[full]))
            node.inputs[k] = full
            rewritten.append(f"{node.op} {node.name}")
    if refused:
        raise OnnxrepError("--dynamic-batch: the batch is baked where it cannot be read at run time: "
                           + "; ".join(refused))
    graph.nodes.extend(new_nodes)
    for vi in data_inputs:
        vi.shape = [BATCH] + list(vi.shape[1:])
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = from_graph(graph, model)
    del out.graph.value_info[:]          # shapes that still say b0
    declared = [onnx.TypeProto.FromString(vi.type.SerializeToString()) for vi in out.graph.output]
    for vi in out.graph.output:
        vi.type.tensor_type.ClearField("shape")
    refine_output_shapes(out, BATCH)
    for vi, old in zip(out.graph.output, declared):
        if not vi.type.tensor_type.HasField("shape") and old.tensor_type.HasField("shape"):
            vi.type.CopyFrom(old)        # inference could not tell: the declared shape, its batch renamed
            dims = vi.type.tensor_type.shape.dim
            if dims and dims[0].dim_value == b0:
                dims[0].Clear()
                dims[0].dim_param = BATCH
    static = [vi.name for vi in _data_inputs(model) if vi.name not in data_names]
    return out, {"from": b0, "rewritten": rewritten, "static_inputs": static}


def _batched_tensors(graph: gs.Graph, sources: list[gs.Tensor]) -> set[str]:
    """Names of the tensors computed (in part) from the batch inputs."""
    reached = {t.name for t in sources}
    for node in graph.toposort().nodes:
        if any(t.name in reached for t in node.inputs):
            reached.update(t.name for t in node.outputs)
    return reached


def _batch_concat_inputs(node: gs.Node, batched: set, b0: int, types, namer, batch: gs.Variable, new_nodes: list,
                         rewritten: list, refused: list) -> None:
    """A Concat off the batch axis joins a batch-carrying tensor with one that is not (YOLOv6's objectness
    ones [1, A, 1], a constant): every input of such a Concat has the batch as its first dim, so the constant
    one is expanded to the batch read at run time (Expand(t, Concat(batch, Shape(t)[1:]))). A constant holding
    a batch > 1 can't be expanded: refused."""
    dims_out = types.dims(node.outputs[0])
    rank = len(dims_out) if dims_out else 0
    if not rank or node.attrs.get("axis", 0) % rank == 0:
        return
    for k, t in enumerate(list(node.inputs)):
        dims = types.dims(t)
        if t.name in batched or not dims or len(dims) != rank or dims[0] != b0:
            continue
        if b0 != 1:
            refused.append(f"Concat {node.name!r}: its input {t.name!r} holds the batch {b0} in a constant")
            continue
        base = f"{node.name}/{k}"
        shape = gs.Variable(namer(f"{base}/shape"), dtype=np.int64, shape=[rank])
        rest = gs.Variable(namer(f"{base}/rest"), dtype=np.int64, shape=[rank - 1])
        full = gs.Variable(namer(f"{base}/batch_shape"), dtype=np.int64, shape=[rank])
        out = gs.Variable(namer(f"{base}/batched"), dtype=t.dtype)
        new_nodes += [gs.Node("Shape", namer(f"{base}/Shape"), inputs=[t], outputs=[shape]),
                      gs.Node("Slice", namer(f"{base}/Slice"), inputs=[
                          shape, gs.Constant(namer(f"{base}/one"), np.array([1], np.int64)),
                          gs.Constant(namer(f"{base}/end"), np.array([rank], np.int64))], outputs=[rest]),
                      gs.Node("Concat", namer(f"{base}/Concat"), attrs={"axis": 0}, inputs=[batch, rest], outputs=[full]),
                      gs.Node("Expand", namer(f"{base}/Expand"), inputs=[t, full], outputs=[out])]
        node.inputs[k] = out
        rewritten.append(f"Concat {node.name} (its input {t.name} follows the batch)")


def _not_the_batch(node: gs.Node, target: np.ndarray, b0: int, types) -> str:
    """Why entry 0 of this shape constant may not be the batch ('' when it is): Expand shapes align to the
    right, Resize sizes with `axes` list only those axes, and the data's own first dim must be b0."""
    dims = types.dims(node.inputs[0])
    if node.op == "Expand" and (not dims or len(dims) != target.size):
        return f"Expand {node.name!r}: its shape does not name every axis of its input"
    axes = node.attrs.get("axes") if node.op == "Resize" else None
    if axes is not None and (not dims or int(axes[0]) % len(dims) != 0):   # entry 0 sizes axis axes[0]
        return f"Resize {node.name!r}: its sizes are for axes {list(axes)}"
    if dims and isinstance(dims[0], (int, np.integer)) and dims[0] != b0:
        return f"{node.op} {node.name!r}: its input's first dim is {dims[0]}, not the batch {b0}"
    return ""


def _refuse_batch_axis_ops(node: gs.Node, b0: int, refused: list, types) -> None:
    """Ops whose constants would cut, repeat or fold the batch axis. Only a batch > 1 shows there: at batch
    1, a 1 that means the batch and a 1 that does not look alike (check_batches then tells)."""
    from onnxrep.ir.constants import const_value

    if b0 <= 1:
        return
    if node.op == "Reshape" and const_value(node.inputs[0]) is None:
        target = const_value(node.inputs[1])
        dims = types.dims(node.inputs[0])
        if target is not None and target.size and dims and dims[0] == b0 and int(target[0]) not in (b0, 0):
            refused.append(f"Reshape {node.name!r} folds the batch into another axis")
    axis = node.attrs.get("axis", 0)
    if node.op == "Split" and axis == 0:
        refused.append(f"Split {node.name!r} along the batch axis")
    if node.op == "Tile" and len(node.inputs) > 1:
        reps = const_value(node.inputs[1])
        if reps is not None and reps.size and int(reps[0]) != 1:
            refused.append(f"Tile {node.name!r} repeats the batch axis")


def check_batches(model: onnx.ModelProto, feeds: list[dict], verification=None, *, noise_factor=None) -> dict:
    """Run `model` once on the verification's samples stacked into one batch, in reverse order and the last
    one again (two samples: batch 3, an odd size, items s1, s0, s1: an item read from the wrong position
    shows), and compare each item with the model's own result for that sample alone, which the verification
    computed (`verification.values`), at the tolerance of that output (verify/tolerance.py: the original's
    measured noise, from the verification's reference). One sample (--samples 1) is stacked with its mirror
    image, whose own result is computed too."""
    from onnxrep.verify import run_outputs
    from onnxrep.verify.runtime import short
    from onnxrep.verify.tolerance import compare

    batched = {vi.name for vi in model.graph.input if vi.type.tensor_type.shape.dim
               and vi.type.tensor_type.shape.dim[0].dim_param == BATCH}
    names = [o.name for o in model.graph.output]
    # an input without the batch is one tensor for the whole batch: only samples that agree on it stack
    singles = [f for f in feeds if all(k in batched or np.array_equal(v, feeds[0][k]) for k, v in f.items())]
    if verification is None:   # on its own: the model against itself, its noise measured here
        from onnxrep.verify import reference

        ref = reference(model, feeds=singles)
        if not ref.ran:
            return {"check": "batch", "ok": False, "line": f"dynamic batch: FAIL, {ref.skipped_reason}"}
        alone, levels = ref.clean, {name: ref.level(name) for name in names}
    else:
        values = dict(zip(map(id, feeds), verification.values))
        alone, levels = [values.get(id(f), {}) for f in singles], verification.levels
    if not all(set(names) <= set(v) for v in alone):
        alone = run_outputs(model, singles, names)
    if len(singles) == 1:   # its mirror image (the last axis reversed) is the second sample
        mirror = {k: (np.ascontiguousarray(v[..., ::-1]) if k in batched and np.ndim(v) >= 2 else v)
                  for k, v in singles[0].items()}
        singles.append(mirror)
        alone = alone + run_outputs(model, [mirror], names)
    order = list(range(len(singles)))[::-1] + [len(singles) - 1]   # 2 samples: batch 3, items s1, s0, s1
    stacked = {k: np.concatenate([singles[i][k] for i in order]) if k in batched else singles[0][k]
               for k in singles[0]}
    n = int(np.shape(next(stacked[k] for k in stacked if k in batched))[0])
    try:
        got = run_outputs(model, [stacked], names)[0]
    except Exception as exc:  # noqa: BLE001 -- a model that cannot run at batch n fails the check
        return {"check": "batch", "ok": False, "line": f"dynamic batch: FAIL, batch {n} does not run ({short(exc)})"}
    worst, problems = 0.0, []
    for name in names:
        value = np.asarray(got[name])
        parts = [np.asarray(alone[i][name]) for i in order]
        sizes = [p.shape[0] if p.ndim else 0 for p in parts]
        if value.ndim == 0 or value.shape[0] != sum(sizes):
            problems.append(f"batch {n}: output {name} has shape {list(value.shape)}")
            continue
        level = levels.get(name)   # the measured noise (None: the fixed share of the range)
        start = 0
        for i, (part, size) in zip(order, zip(parts, sizes)):
            c = compare(name, part, value[start:start + size], level, factor=noise_factor)
            start += size
            worst = max(worst, c.used)
            if not c.ok:
                problems.append(f"batch {n} item of sample {i} {name}: {c.message}")
    ok = not problems
    line = (f"dynamic batch: {'ok' if ok else 'FAIL'}, batch {n} (samples {', '.join(map(str, order))} stacked): "
            f"each item equal to its sample's own result ({worst:.2f} of tolerance)")
    if problems:
        line += "; " + "; ".join(problems[:3])
    return {"check": "batch", "ok": ok, "line": line}
