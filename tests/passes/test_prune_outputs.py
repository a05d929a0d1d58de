"""prune_outputs: auxiliary heads recognised by structure and shape, dropped, and everything only they needed
removed by dead-code elimination. Toy detectors built in code; end-to-end on the models builder below."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

import onnxrep
from onnxrep.export import from_graph
from onnxrep.io import OnnxrepError
from onnxrep.passes import Context, eliminate_dead_code
from onnxrep.passes.prune import PruneOutputs, twin_reason
from onnxrep.report import count_parameters
from tests.graphs import init, make_model, vi

NC = 3


class Toy:
    """A small ONNX writer for detector-shaped graphs: image -> trunk -> heads -> outputs."""

    def __init__(self, seed=0, size=16, batch=1):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0
        self.size, self.batch = size, batch

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"/{op}"), **attrs))
        return out

    def const(self, array):
        name = self.name("c")
        self.inits.append(init(name, np.asarray(array)))
        return name

    def conv(self, x, cin, cout, k=3, stride=1, group=1, bias=True, act=True):
        w = self.const(self.rng.normal(0, 0.3, (cout, cin // group, k, k)).astype(np.float32))
        ins = [x, w] + ([self.const(self.rng.normal(0, 0.1, cout).astype(np.float32))] if bias else [])
        y = self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)
        if act:  # SiLU as exported: x * sigmoid(x)
            y = self.node("Mul", [y, self.node("Sigmoid", [y])])
        return y

    def trunk(self, cin=3, cout=8):
        return self.conv(self.conv("images", cin, cout, stride=2), cout, cout)

    def head(self, x, cin, width, convs=2, anchors=64, shape_from=None, stride=None):
        """DualDDetect-like: box and class conv chains, flattened, Concat(box, Sigmoid(cls)) on axis 1.

        shape_from: flatten with view(shape[0], C, -1), shape = Shape(shape_from), as TorchScript writes
        DualDDetect (whose main head takes the batch size from the *aux* head's first input)."""
        box, cls = x, x
        c_box = c_cls = cin
        for _ in range(convs - 1):
            box, c_box = self.conv(box, c_box, width), width
            cls, c_cls = self.conv(cls, c_cls, width), width
        box = self.conv(box, c_box, 4, k=1, act=False)
        cls = self.conv(cls, c_cls, NC, k=1, act=False)
        box = self.node("Reshape", [box, self.view_shape(4, anchors, shape_from)])
        cls = self.node("Reshape", [cls, self.view_shape(NC, anchors, shape_from)])
        box = self.node("Mul", [box, stride or self.const(np.float32(8.0))])
        return self.node("Concat", [box, self.node("Sigmoid", [cls])], axis=1)

    def view_shape(self, channels, anchors, shape_from=None):
        if shape_from is None:
            return self.const(np.array([self.batch, channels, anchors], np.int64))
        batch = self.node("Gather", [self.node("Shape", [shape_from]), self.const(np.int64(0))], axis=0)
        batch = self.node("Unsqueeze", [batch, self.const(np.array([0], np.int64))])
        return self.node("Concat", [batch, self.const(np.array([channels, -1], np.int64))], axis=0)

    def model(self, outputs, names=None, batch_dim=None, extra_inputs=()):
        names = names or [f"output{i}" for i in range(len(outputs))]
        for t, n in zip(outputs, names):  # rename the producing node's output to the graph output name
            for node in self.nodes:
                node.output[:] = [n if o == t else o for o in node.output]
                node.input[:] = [n if i == t else i for i in node.input]
        b = batch_dim or self.batch
        images = vi("images", shape=[b, 3, self.size, self.size if self.size != "H" else "W"])
        return make_model(self.nodes, [images, *extra_inputs],
                          [vi(n) for n in names], self.inits)


def dual(width_aux=16, width_main=8, own_trunk=False, names=None, triple=False, convs=3):
    """Two (three) twin heads; output 0 aux, last output main, like WongKinYiu DualDDetect exports."""
    t = Toy()
    x = t.trunk()
    xa = t.trunk() if own_trunk else x
    heads = [t.head(xa, 8, width_aux, convs)]
    if triple:
        heads.append(t.head(x, 8, 12, convs))
    heads.append(t.head(x, 8, width_main, convs))
    return t.model(heads, names)


def run(model, **ctx):
    graph = gs.import_onnx(model)
    res = PruneOutputs().run(graph, Context(**ctx))
    eliminate_dead_code(graph)
    return graph, res


def export(graph, model):
    return from_graph(graph, model)


def output_names(model):
    return [o.name for o in model.graph.output]


# ------------------------------------------------------------------------------------------ positive


@pytest.mark.parametrize("own_trunk", [False, True])
def test_dual_head_drops_output_0_and_its_branch(own_trunk):
    model = dual(own_trunk=own_trunk)
    main_only = make_model(*_main_only(model, "output1"))
    result = onnxrep.optimize(model)
    assert result.ok
    assert output_names(result.model) == ["output1"]
    out = result.report.outputs
    assert out["dropped"] == ["output0"] and out["kept"] == ["output1"]
    assert "DualDDetect" in out["note"] and "auxiliary" in out["note"]
    assert out["removed"]["parameters"] == count_parameters(model.graph) - count_parameters(main_only.graph)
    assert out["removed"]["conv"] > 0 and out["removed"]["macs"] > 0
    assert count_parameters(result.model.graph) == count_parameters(main_only.graph)
    assert result.report.passes["prune_outputs"]["count"] == 1
    onnx.checker.check_model(result.model, full_check=True)
    text = result.report.text()
    assert "outputs dropped: ['output0']" in text and "removed by pruning" in text


def _main_only(model, keep):
    """The same model cut down by hand to the one output (an independent oracle for DCE)."""
    graph = gs.import_onnx(model)
    graph.outputs = [t for t in graph.outputs if t.name == keep]
    graph.cleanup(remove_unused_graph_inputs=False)
    m = gs.export_onnx(graph)
    return list(m.graph.node), list(m.graph.input), list(m.graph.output), list(m.graph.initializer)


def test_main_output_numbers_unchanged():
    import onnxruntime as ort

    model = dual(own_trunk=True)
    pruned = onnxrep.optimize(model, verify=False).model
    x = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model.SerializeToString(), so).run(["output1"], {"images": x})[0]
    got = ort.InferenceSession(pruned.SerializeToString(), so).run(None, {"images": x})
    assert len(got) == 1 and np.array_equal(ref, got[0])


@pytest.mark.parametrize("names", [["output0", "1234"], ["main", "aux"], ["a", "b"]])
def test_decided_by_structure_not_name(names):
    """Output 0 is the auxiliary head whatever it is called (even 'main')."""
    graph, res = run(dual(names=names))
    assert [t.name for t in graph.outputs] == [names[1]]
    assert res.info["dropped"] == [names[0]]


def test_triple_head_keeps_the_last():
    graph, res = run(dual(triple=True))
    assert [t.name for t in graph.outputs] == ["output2"]
    assert res.info["dropped"] == ["output0", "output1"] and "TripleDDetect" in res.info["note"]
    assert res.count == 2


def test_symbolic_batch_dim():
    t = Toy()
    x = t.trunk()
    model = t.model([t.head(x, 8, 16), t.head(x, 8, 8)], batch_dim="batch")
    graph, _ = run(model)
    assert [o.name for o in graph.outputs] == ["output1"]


def test_graph_inputs_and_metadata_survive():
    t = Toy()
    x = t.trunk()
    model = t.model([t.head(x, 8, 16), t.head(x, 8, 8)])
    model.graph.input.append(vi("unused_flag", shape=[1]))
    onnx.helper.set_model_props(model, {"stride": "[8, 16, 32]", "names": "{0: 'a'}"})
    out = onnxrep.optimize(model).model
    assert [i.name for i in out.graph.input] == ["images", "unused_flag"]
    assert {p.key: p.value for p in out.metadata_props} == {"stride": "[8, 16, 32]", "names": "{0: 'a'}"}


def test_no_dead_initializers_or_value_info_left():
    model = dual(own_trunk=True)
    model = onnx.shape_inference.infer_shapes(model)
    assert model.graph.value_info
    out = onnxrep.optimize(model, passes=["prune_outputs"], verify=False).model
    live = {i for n in out.graph.node for i in n.input} | {o for n in out.graph.node for o in n.output}
    assert all(t.name in live for t in out.graph.initializer)
    assert all(v.name in live for v in out.graph.value_info)
    assert len(out.graph.node) < len(model.graph.node)


def test_idempotent():
    model = onnxrep.optimize(dual(), verify=False).model
    again = onnxrep.optimize(model, verify=False)
    assert again.report.passes["prune_outputs"]["count"] == 0
    assert output_names(again.model) == output_names(model)
    assert len(again.model.graph.node) == len(model.graph.node)
    assert "no auxiliary head" in again.report.outputs["note"]


def test_fixed_point_rounds_keep_the_first_answer():
    """Later pipeline rounds see one output; the report must still say what round one dropped."""
    t = Toy()
    x = t.trunk()
    # a BatchNormalization in the main head makes fold_batchnorm change something: a second round runs
    y = t.node("Conv", [x, t.const(np.ones((8, 8, 1, 1), np.float32))], kernel_shape=[1, 1])
    c = t.const
    y = t.node("BatchNormalization", [y, c(np.ones(8, np.float32)), c(np.zeros(8, np.float32)),
                                      c(np.zeros(8, np.float32)), c(np.ones(8, np.float32))])
    model = t.model([t.head(x, 8, 16), t.head(y, 8, 8)])
    result = onnxrep.optimize(model)
    assert result.ok
    assert result.report.outputs["dropped"] == ["output0"]
    assert "DualDDetect" in result.report.outputs["note"]
    assert result.report.passes["fold_batchnorm"]["count"] == 1


# ------------------------------------------------------------------------------------------ negative


def test_single_output_left_alone():
    t = Toy()
    model = t.model([t.head(t.trunk(), 8, 8)])
    graph, res = run(model)
    assert not res.changed and [o.name for o in graph.outputs] == ["output0"]
    assert "no auxiliary head recognised" in res.info["note"]


def test_two_unrelated_image_outputs_kept():
    t = Toy()
    x = t.trunk()
    a = t.node("Relu", [t.conv(x, 8, 3, act=False)])
    b = t.node("Sigmoid", [t.conv(t.conv(x, 8, 8), 8, 3, act=False)])
    graph, res = run(t.model([a, b]))
    assert not res.changed and len(graph.outputs) == 2
    assert "no auxiliary head recognised" in res.info["note"]


def test_same_shape_not_twins_kept():
    """Both look like detect outputs, but the first is not a head of its own (one Conv, no chain)."""
    t = Toy()
    x = t.trunk()
    box = t.node("Reshape", [t.conv(x, 8, 4, k=1, act=False), t.const(np.array([1, 4, 64], np.int64))])
    cls = t.node("Reshape", [t.conv(x, 8, NC, k=1, act=False), t.const(np.array([1, NC, 64], np.int64))])
    shallow = t.node("Concat", [box, t.node("Sigmoid", [cls])], axis=1)
    graph, res = run(t.model([shallow, t.head(x, 8, 8)]))
    assert not res.changed and len(graph.outputs) == 2
    assert "not twin heads" in res.info["note"] and res.notes


def test_different_structure_kept():
    t = Toy()
    x = t.trunk()
    odd = t.head(x, 8, 8)
    other = t.node("Concat", [t.node("Mul", [t.node("Reshape", [t.conv(x, 8, 4, k=1, act=False),
                                                                 t.const(np.array([1, 4, 64], np.int64))]),
                                             t.const(np.float32(8.0))]),
                              t.node("Sigmoid", [t.node("Reshape", [t.node("Relu", [t.conv(x, 8, NC, act=False)]),
                                                                   t.const(np.array([1, NC, 64], np.int64))])])],
                   axis=1)
    graph, res = run(t.model([other, odd]))
    assert len(graph.outputs) == 2 and "every output kept" in res.info["note"]


def test_twin_heads_on_different_inputs_kept():
    """A siamese/stereo detector: same heads, one per input image. Both are real outputs."""
    t = Toy()
    left = t.trunk()
    right = t.conv(t.conv("images2", 3, 8, stride=2), 8, 8)
    model = t.model([t.head(right, 8, 8), t.head(left, 8, 8)], extra_inputs=[vi("images2", shape=[1, 3, 16, 16])])
    graph, res = run(model)
    assert len(graph.outputs) == 2 and "reads graph inputs" in res.info["note"]


def test_identity_copies_of_one_tensor_kept():
    t = Toy()
    det = t.head(t.trunk(), 8, 8)
    graph, res = run(t.model([t.node("Identity", [det]), t.node("Identity", [det])]))
    assert len(graph.outputs) == 2
    assert "share the same tensor" in res.info["note"]


def test_aux_computed_from_main_kept():
    t = Toy()
    det = t.head(t.trunk(), 8, 8)
    graph, res = run(t.model([t.node("Identity", [det]), det]))
    assert len(graph.outputs) == 2 and "computed from output" in res.info["note"]


def test_outputs_of_one_node_are_not_twins():
    t = Toy()
    x = t.trunk()
    a, b = "s0", "s1"
    t.nodes.append(helper.make_node("Split", [x, t.const(np.array([4, 4], np.int64))], [a, b], axis=1, name="split"))
    graph = gs.import_onnx(t.model([a, b]))
    reason = twin_reason(graph, graph.outputs, [(graph.outputs[1], graph.outputs[0])])
    assert "made by the same node (Split)" in reason


def test_different_dtypes_not_a_layout():
    t = Toy()
    x = t.trunk()
    a, b = t.head(x, 8, 16), t.head(x, 8, 8)
    b16 = t.node("Cast", [b], to=onnx.TensorProto.FLOAT16)
    model = t.model([a, b16])
    graph, _ = run(model)
    assert len(graph.outputs) == 2


def test_aux_keep():
    graph, res = run(dual(), aux="keep")
    assert len(graph.outputs) == 2 and not res.changed and "--aux keep" in res.info["note"]


# ------------------------------------------------------------------------------------------ explicit


@pytest.mark.parametrize("opts, kept", [
    ({"keep_outputs": ("output0",)}, ["output0"]),
    ({"keep_outputs": ("0",)}, ["output0"]),
    ({"keep_outputs": (0,)}, ["output0"]),
    ({"drop_outputs": ("output1",)}, ["output0"]),
    ({"drop_outputs": ("1",)}, ["output0"]),
    ({"drop_outputs": ("0,1",), "keep_outputs": ()}, None),
    ({"keep_outputs": ("output0", "output1")}, ["output0", "output1"]),
])
def test_explicit(opts, kept):
    if kept is None:
        with pytest.raises(OnnxrepError, match="every output"):
            run(dual(), **opts)
        return
    graph, _ = run(dual(), **opts)
    assert [o.name for o in graph.outputs] == kept


def test_explicit_overrides_aux_keep_and_names_win_over_indices():
    graph, _ = run(dual(names=["1", "0"]), aux="keep", drop_outputs=("1",))
    assert [o.name for o in graph.outputs] == ["0"]  # "1" is a name here, not index 1


@pytest.mark.parametrize("opts, message", [
    ({"drop_outputs": ("nope",)}, r"--drop-outputs: unknown output 'nope' \(outputs: output0, output1\)"),
    ({"keep_outputs": ("5",)}, r"--keep-outputs: no output 5 \(the model has 2: output0, output1\)"),
    ({"drop_outputs": ("output0", "output1")}, "would drop every output"),
    ({"keep_outputs": ("output0",), "drop_outputs": ("0",)}, "both name output0"),
    ({"aux": "sometimes"}, "--aux 'sometimes'"),
])
def test_explicit_errors(opts, message):
    with pytest.raises(OnnxrepError, match=message):
        run(dual(), **opts)


# ------------------------------------------------------------------------------------------ rename


def test_rename_main_to_output0():
    model = dual()
    result = onnxrep.optimize(model, rename_outputs=True, verify=False)
    assert output_names(result.model) == ["output0"]
    assert result.report.outputs["renamed"] == {"output1": "output0"}
    assert result.report.outputs["kept"] == ["output0"]
    onnx.checker.check_model(result.model, full_check=True)
    import onnxruntime as ort

    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(["output1"], {"images": x})[0]
    got = ort.InferenceSession(result.model.SerializeToString()).run(["output0"], {"images": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_rename_verifies():
    result = onnxrep.optimize(dual(), rename_outputs=True)
    assert result.ok


def test_rename_off_by_default_and_report_names_final():
    result = onnxrep.optimize(dual(names=["output0", "917"]), verify=False)
    assert output_names(result.model) == ["917"] and result.report.outputs["kept"] == ["917"]
    assert "renamed" not in result.report.outputs


def test_rename_refused_when_output0_taken():
    graph, res = run(dual(), keep_outputs=("output0", "output1"), rename_outputs=True)
    assert [o.name for o in graph.outputs] == ["output0", "output1"]
    assert "not renamed" in res.info["note"] and "renamed" not in res.info


def test_rename_refused_when_a_live_tensor_is_output0():
    t = Toy()
    x = t.trunk()
    model = t.model([t.head(x, 8, 16), t.head(x, 8, 8)], names=["a", "b"])
    # the trunk tensor feeding both heads is called output0
    for node in model.graph.node:
        node.output[:] = ["output0" if o == x else o for o in node.output]
        node.input[:] = ["output0" if i == x else i for i in node.input]
    graph, res = run(model, rename_outputs=True)
    assert [o.name for o in graph.outputs] == ["b"]
    assert "not renamed: a tensor of the graph is already called 'output0'" in res.info["note"]


def test_rename_single_output_model():
    t = Toy()
    graph, res = run(t.model([t.head(t.trunk(), 8, 8)], names=["1024"]), rename_outputs=True)
    assert [o.name for o in graph.outputs] == ["output0"] and res.info["renamed"] == {"1024": "output0"}


# ------------------------------------------------------------------------------- shape-only dependencies


def _shape_read_dual(batch="N", own_trunk=True):
    """Both heads flatten with the batch size of the *aux* head's input, as TorchScript exports DualDDetect."""
    t = Toy(batch=batch)
    x = t.trunk()
    xa = t.conv(t.conv(x, 8, 8), 8, 8) if own_trunk else x   # an aux-only neck
    return t.model([t.head(xa, 8, 16, shape_from=xa), t.head(x, 8, 8, shape_from=xa)], batch_dim=batch)


@pytest.mark.parametrize("batch", ["N", 1])
def test_main_reading_aux_shape_is_rewired(batch):
    model = _shape_read_dual(batch)
    result = onnxrep.optimize(model, passes=["prune_outputs"], input_shapes={"images": [3, 3, 16, 16]}
                              if batch == "N" else None)
    assert result.ok and result.verification.ran
    pruned = result.model
    # the aux-only neck (2 Convs) is gone: only trunk (2) + main head (4) Convs remain
    assert sum(n.op_type == "Conv" for n in pruned.graph.node) == 6
    assert "Shape read" in result.report.outputs["note"]
    if batch == "N":  # still dynamic: the batch now comes from a kept tensor, not a constant
        assert any(n.op_type == "Shape" for n in pruned.graph.node)
        import onnxruntime as ort

        x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
        ref = ort.InferenceSession(model.SerializeToString()).run(["output1"], {"images": x})[0]
        got = ort.InferenceSession(pruned.SerializeToString()).run(None, {"images": x})[0]
        np.testing.assert_array_equal(ref, got)


def test_constants_shared_by_the_heads_are_not_where_they_meet():
    """Regression (every real DualDDetect file): both heads read one pooled constant and one anchor scale
    computed from shapes through a long chain (TorchScript, dynamic batch); they are still twins."""
    t = Toy(batch="N")
    x = t.trunk()
    scale = t.node("Cast", [t.node("Gather", [t.node("Shape", [x]), t.const(np.int64(2))], axis=0)], to=1)
    for op in ("Mul", "Add", "Sub", "Mul", "Add", "Div", "Mul", "Sub", "Add", "Mul"):   # deeper than 8
        scale = t.node(op, [scale, t.const(np.float32(1.5))])
    shared = t.const(np.float32(0.5))
    stride = t.node("Mul", [scale, shared])
    model = t.model([t.head(x, 8, 16, shape_from=x, stride=stride), t.head(x, 8, 8, shape_from=x, stride=stride)],
                    batch_dim="N")
    graph, res = run(model)
    assert [o.name for o in graph.outputs] == ["output1"], res.info["note"]
    assert "twin heads confirmed" in res.info["note"]


def test_shape_read_never_rewired_to_a_tensor_computed_from_it():
    """Regression (real yolov9-m/c TorchScript exports, 'Cycle detected in graph'): the only kept tensor
    whose batch provably equals the dropped one's is the Reshape that reads that very Shape."""
    from onnx import helper

    nodes = [
        helper.make_node("Transpose", ["x"], ["aux"], perm=[1, 0]),                   # [N, 4], dropped side
        helper.make_node("Relu", ["aux"], ["dropped"]),
        helper.make_node("Shape", ["aux"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Reshape", ["s", "target"], ["kept"]),                       # [N, 4] from [4, N]
    ]
    inits = [init("zero", np.int64(0)), init("axes", np.array([0], np.int64)), init("minus_one", np.array([-1], np.int64))]
    model = make_model(nodes, [vi("x", shape=[4, "N"])], [vi("dropped"), vi("kept")], inits)
    result = onnxrep.optimize(model, drop_outputs=("dropped",), input_shapes={"x": [4, 3]})
    assert result.ok and result.verification.ran, result.report.text()
    assert output_names(result.model) == ["kept"]
    onnx.checker.check_model(result.model, full_check=True)


def test_reshape_target_pieces_of_several_elements_map_to_the_right_axes():
    """Regression: a Reshape target Concat(Shape(z)[0:2], Unsqueeze(Gather(Shape(x), 1)), [1]) was read as one
    element per piece, so R's axis 1 (z's T) was taken for x's S, and the kept output's read of a dropped
    tensor's S was re-pointed at R: the result computed a different shape whenever S != T."""
    from onnx import helper

    nodes = [
        helper.make_node("Unsqueeze", ["z", "ax2"], ["z3"]),                       # [N, T, 1]
        helper.make_node("Unsqueeze", ["x", "ax1"], ["x3"]),                       # [N, 1, S]
        helper.make_node("MatMul", ["z3", "x3"], ["w"]),                            # [N, T, S]
        helper.make_node("Shape", ["z"], ["zs"], start=0, end=2),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "one"], ["s"], axis=0),
        helper.make_node("Unsqueeze", ["s", "ax0"], ["s1"]),
        helper.make_node("Concat", ["zs", "s1", "ones"], ["target"], axis=0),
        helper.make_node("Reshape", ["w", "target"], ["r"]),                        # [N, T, S, 1]
        helper.make_node("Unsqueeze", ["x", "ax23"], ["xd"]),                       # [N, S, 1, 1]: dropped only
        helper.make_node("Relu", ["xd"], ["dropped"]),
        helper.make_node("Shape", ["xd"], ["ds"]),
        helper.make_node("Gather", ["ds", "one"], ["d1"], axis=0),
        helper.make_node("Unsqueeze", ["d1", "ax0"], ["d2"]),
        helper.make_node("Concat", ["d2", "minus_one"], ["kt"], axis=0),
        helper.make_node("Reshape", ["r", "kt"], ["kept"]),                         # [S, N*T]
    ]
    inits = [init("one", np.int64(1)), init("ax0", np.array([0], np.int64)), init("ax1", np.array([1], np.int64)),
             init("ax2", np.array([2], np.int64)), init("ax23", np.array([2, 3], np.int64)),
             init("ones", np.array([1], np.int64)), init("minus_one", np.array([-1], np.int64))]
    model = make_model(nodes, [vi("z", shape=["N", "T"]), vi("x", shape=["N", "S"])], [vi("dropped"), vi("kept")],
                       inits)
    result = onnxrep.optimize(model, drop_outputs=("dropped",))
    assert result.verified, result.report.text()
    shapes = result.verification.shapes[0]
    assert shapes["z"][1] != shapes["x"][1]          # S and T were fed different sizes


def test_shape_read_without_proof_is_left_and_said():
    """The kept output reads a symbolic size no kept tensor provably has: the aux part it needs stays."""
    t = Toy()
    x = t.trunk()
    pooled = t.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])   # H/4: no kept tensor has it
    height = t.node("Unsqueeze", [t.node("Gather", [t.node("Shape", [pooled]), t.const(np.int64(2))], axis=0),
                                  t.const(np.array([0], np.int64))])
    target = t.node("Concat", [t.const(np.array([1, 8], np.int64)), height, t.const(np.array([-1], np.int64))], axis=0)
    kept = t.node("Reshape", [t.node("Relu", [x]), target])
    t.size = "H"
    model = t.model([t.node("Relu", [pooled]), kept], names=["aux", "kept"])
    result = onnxrep.optimize(model, passes=["prune_outputs"], drop_outputs=("aux",),
                              input_shapes={"images": [1, 3, 32, 32]})
    assert result.ok and output_names(result.model) == ["kept"]
    assert "for their shape only" in result.report.outputs["note"]
    assert any(n.op_type == "AveragePool" for n in result.model.graph.node)


# ------------------------------------------------------------------------------- end to end: YOLOv9 builder

models = pytest.importorskip("models")

_FAST = [  # one per feature: BN form, official naming, MIT layout with dynamic batch, TorchScript shape chains
    ("yolov9-t", dict(form="bn")),
    ("yolov9-t", dict(form="bn", naming="official")),
    ("yolov9-t", dict(form="bn", layout="mit", batch="batch")),
    ("yolov9-t", dict(exporter="official", batch="batch")),
    # real TorchScript files pool constants across the heads (one onnx::Split_<n> for both heads' Split, the
    # MIT AUX anc2vec weight an Identity of the Main one, one Gather index): never where two heads meet
    ("yolov9-t", dict(exporter="torchscript")),
    ("yolov9-t", dict(exporter="mit")),
    # TorchScript at a dynamic batch: CBFuse's Resize sizes read the batch off the aux branch at run time
    ("yolov9-c", dict(exporter="torchscript", batch="batch")),
]
_SLOW = [(name, kw) for name in ("yolov9-t", "yolov9-s", "yolov9-m", "yolov9-c", "yolov9-e")
         for kw in (dict(form="bn"), dict(form="folded"), dict(form="fused"), dict(form="bn", naming="official"),
                    dict(exporter="torchscript"), dict(exporter="official"), dict(exporter="official", batch="b"),
                    dict(exporter="dynamo"), dict(exporter="dynamo-raw"), dict(exporter="mit"),
                    dict(form="fused", layout="mit"))
         if (name, kw) not in _FAST and not (name == "yolov9-e" and "mit" in str(kw))]
IMGSZ = 64


def _ort_run(model, names=None, batch=2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else batch for d in inp.shape], dtype=np.float32)
    return sess.run(names, {inp.name: x})


def _check_against_converted(name, kw):
    mit = kw.get("layout") == "mit" or kw.get("exporter") == "mit"
    model = models.build(name, imgsz=IMGSZ, **kw)
    converted = models.build(name, "converted", imgsz=IMGSZ, layout="mit" if mit else "ultralytics")
    names = output_names(model)
    try:
        ref = _ort_run(model, names[:9] if mit else [names[1]])
    except Exception as exc:  # the builder's own file, not ours
        pytest.xfail(f"models builder: onnxruntime can't run the original ({str(exc)[:160]})")
    try:
        onnx.checker.check_model(model, full_check=True)
        valid = True
    except Exception:  # e.g. a declared output shape the graph doesn't compute: hold the result to no more
        valid = False

    pruned = onnxrep.optimize(model, passes=["prune_outputs"], verify=False)
    result = onnxrep.optimize(model, verify=False)
    main = names[:9] if mit else [names[1]]
    for res in (pruned, result):
        assert output_names(res.model) == main, res.report.outputs.get("note")
        assert res.report.outputs["dropped"] == (names[9:] if mit else [names[0]])
    assert "MultimediaTechLab" in result.report.outputs["note"] if mit else "DualDDetect" in result.report.outputs["note"]
    onnx.checker.check_model(result.model, full_check=valid)
    # the deployable model, exactly: Conv nodes and Conv weight+bias elements of the converted form
    assert models.count_convs(result.model) == models.count_convs(converted)
    assert result.report.after.parameters == count_parameters(converted.graph)
    removed = result.report.outputs["removed"]
    assert removed["parameters"] > 0 and removed["macs"] > 0 and removed["conv"] > 0

    for got, want in zip(_ort_run(pruned.model), ref):  # pruning alone: bit-identical
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_ort_run(result.model), ref):  # whole pipeline: float rounding of the folds
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("name, kw", _FAST, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in _FAST])
def test_yolov9_becomes_its_converted_form(name, kw):
    _check_against_converted(name, kw)


@pytest.mark.slow
@pytest.mark.parametrize("name, kw", _SLOW,
                         ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in _SLOW])
def test_yolov9_becomes_its_converted_form_all(name, kw):
    _check_against_converted(name, kw)


@pytest.mark.parametrize("name", ["gelan-t", pytest.param("gelan-c", marks=pytest.mark.slow)])
def test_gelan_left_alone(name):
    model = models.build(name, "fused", imgsz=IMGSZ)
    result = onnxrep.optimize(model, passes=["prune_outputs"])
    assert result.ok and output_names(result.model) == output_names(model)
    assert len(result.model.graph.node) == len(model.graph.node)
    assert result.report.passes["prune_outputs"]["count"] == 0
    assert "no auxiliary head recognised" in result.report.outputs["note"]


def test_converted_form_is_a_fixed_point():
    model = models.build("yolov9-t", "converted", imgsz=IMGSZ, naming="official")
    result = onnxrep.optimize(model, verify=False)
    assert result.report.passes["prune_outputs"]["count"] == 0
    assert models.count_convs(result.model) == models.count_convs(model)


def test_mit_aux_kept_on_request():
    model = models.build("yolov9-t", "fused", imgsz=IMGSZ, layout="mit")
    result = onnxrep.optimize(model, aux="keep", passes=["prune_outputs"])
    assert len(result.model.graph.output) == 18 and result.ok


# ------------------------------------------------------------------------------------ YOLOv7 IAuxDetect


def _iaux(levels=2, aux_convs=2, own_trunk=False, implicit=True):
    """IAuxDetect raw outputs: per level lead = permute(view(Conv1x1(x + a) * m)), aux = the same of a plain
    Conv1x1 after its own 3x3 Conv on an *earlier* neck map; lead outputs first."""
    t = Toy()
    x0 = t.trunk()                                   # [1, 8, 8, 8]
    neck = t.conv(x0, 8, 8)                          # the lead heads' input
    early = t.trunk() if own_trunk else x0           # the aux heads read an earlier map (or a trunk of their own)
    na, no = 3, 6

    def raw(y):
        y = t.node("Reshape", [y, t.const(np.array([1, na, no, 8, 8], np.int64))])
        return t.node("Transpose", [y], perm=[0, 1, 3, 4, 2])

    leads, auxes = [], []
    for _ in range(levels):
        x = t.node("Add", [neck, t.const(np.float32(np.random.default_rng(0).normal(0, 1, (1, 8, 1, 1))))]) \
            if implicit else neck
        y = t.conv(x, 8, na * no, k=1, act=False)
        if implicit:
            y = t.node("Mul", [y, t.const(np.float32(np.random.default_rng(1).uniform(0.5, 1.5, (1, na * no, 1, 1))))])
        leads.append(raw(y))
        a = early
        for _ in range(aux_convs - 1):
            a = t.conv(a, 8, 8)
        auxes.append(raw(t.conv(a, 8, na * no, k=1, act=False)))
    return t.model(leads + auxes)


def test_iaux_lead_kept_aux_dropped():
    model = _iaux()
    result = onnxrep.optimize(model)
    assert result.verified
    assert output_names(result.model) == ["output0", "output1"]
    assert "IAuxDetect" in result.report.outputs["note"]
    # the implicit Add/Mul around the lead Convs folded: only Convs and data movement left in the heads
    assert count_ops_named(result.model, "Mul") == count_ops_named(model, "Mul") - 2 - 2   # 2 implicit, 2 aux SiLU


def count_ops_named(model, op):
    return sum(n.op_type == op for n in model.graph.node)


@pytest.mark.parametrize("kw,reason", [
    (dict(aux_convs=1), "of its own"),
    (dict(own_trunk=True), "reads nothing the lead heads compute"),
])
def test_iaux_declines(kw, reason):
    graph, res = run(_iaux(**kw))
    assert len(graph.outputs) == 4
    assert reason in res.info["note"], res.info["note"]
