"""The builder against /work/shared/yolov9-graphs.md: fingerprints, folding math, wiring, quirks."""
import collections
import math
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import models
from models.__main__ import main as cli

# yolov9-graphs.md section 3 (nc 80): (Conv nodes, Conv weight+bias elements) per form, BN nodes.
REFERENCE = {
    "yolov9-t": [(305, 3_695_408), (305, 3_706_544), (251, 3_674_576), (186, 2_407_632)],
    "yolov9-s": [(305, 9_764_576), (305, 9_784_544), (251, 9_659_168), (186, 7_105_888)],
    "yolov9-m": [(247, 32_814_016), (247, 32_846_224), (223, 32_667_400), (140, 19_978_672)],
    "yolov9-c": [(255, 51_100_160), (255, 51_141_120), (231, 50_880_768), (145, 25_288_768)],
    "yolov9-e": [(375, 69_410_624), (375, 69_470_144), (319, 68_669_632), (262, 57_345_920)],
}
BN_NODES = {"yolov9-t": 291, "yolov9-s": 291, "yolov9-m": 230, "yolov9-c": 238, "yolov9-e": 356}
_built = {}


@pytest.fixture(scope="module", autouse=True)
def _reuse_weights():
    """Forms of one model share their raw parameters: draw each Conv module once per module run."""
    with models.reuse_weights(max_bytes=1 << 30):
        yield


def build(name, form=None, **kw):
    """models.build; yolov9-t/gelan-t models are memoised for this module (many tests read them)."""
    if not name.endswith("-t"):
        return models.build(name, form, **kw)
    key = (name, form, tuple(sorted((k, repr(v)) for k, v in kw.items())))
    if key not in _built:
        _built[key] = models.build(name, form, **kw)
    return _built[key]


def session(model):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run(model, x):
    s = session(model)
    return s.run(None, {s.get_inputs()[0].name: x})


def image(size, batch=1, seed=1):
    return np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32)


def anchors(size):
    return sum((size // s) ** 2 for s in (8, 16, 32))


def assert_close(a, b, what, rtol=2e-5):
    """float32 rounding of ~100 layers: relative to the output's scale (boxes reach ~imgsz)."""
    err = np.abs(a.astype(np.float64) - b).max() / np.abs(b).max()
    assert err < rtol, f"{what}: max error {err:.3g} of the output scale"


def ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


# -- fingerprints ------------------------------------------------------------------------------------

def test_api_constants():
    assert models.NAMES == ("yolov9-t", "yolov9-s", "yolov9-m", "yolov9-c", "yolov9-e",
                            "gelan-t", "gelan-s", "gelan-m", "gelan-c", "gelan-e")
    assert models.FORMS == ("bn", "folded", "fused", "converted")
    assert set(models.EXPORTERS) == {"torchscript", "official", "dynamo", "dynamo-raw", "mit"}


@pytest.mark.parametrize("name,form", [(n, f) for n in REFERENCE for f in models.FORMS])
def test_conv_counts_match_reference(name, form):
    m = build(name, form, imgsz=64)          # counts do not depend on imgsz
    assert models.count_convs(m) == REFERENCE[name][models.FORMS.index(form)]
    assert ops(m)["BatchNormalization"] == (BN_NODES[name] if form == "bn" else 0)


@pytest.mark.parametrize("kw", [dict(identity_dedup=True), dict(constant_nodes=True), dict(dynamo_bias=True)],
                         ids=["identity", "constant", "dynamo_bias"])
def test_counts_see_through_identity_constant_and_computed_bias(kw):
    m = models.build("yolov9-t", "bn", imgsz=64, **kw)
    assert models.count_convs(m) == REFERENCE["yolov9-t"][0]


@pytest.mark.parametrize("size", ["t", "c"])
def test_gelan_fused_is_the_converted_yolov9(size):
    conv = build(f"yolov9-{size}", "converted", imgsz=64)
    gelan = models.build(f"gelan-{size}", "fused", imgsz=64)
    assert gelan.SerializeToString() == conv.SerializeToString()


# -- the folding math and the main/aux wiring ------------------------------------------------------

# (model, imgsz, extra options of the folded form, full checker); m and e are big, c's checker slow
FORM_CASES = [
    pytest.param("yolov9-t", 160, {}, True, id="t"),
    pytest.param("yolov9-s", 64, {}, True, id="s"),
    pytest.param("yolov9-c", 64, {"cbfuse": "reducesum"}, False, id="c"),
    pytest.param("yolov9-c", 64, {"cbfuse": "reducesum"}, True, id="c-checker", marks=pytest.mark.slow),
    pytest.param("yolov9-m", 64, {}, True, id="m", marks=pytest.mark.slow),
    pytest.param("yolov9-e", 64, {"cbfuse": "reducesum"}, True, id="e", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,size,folded_kw,check", FORM_CASES)
def test_forms_compute_the_same(name, size, folded_kw, check):
    """bn, folded and fused agree on both heads; converted reproduces the main head (output 1).

    The folded form of c and e also uses the ReduceSum CBFuse, so that variant is checked too."""
    x = image(size)
    outs = {}
    for form in models.FORMS:
        kw = folded_kw if form == "folded" else {}
        m = build(name, form, imgsz=size, **kw)
        if check:
            onnx.checker.check_model(m, full_check=True)
        outs[form] = run(m, x)
        del m
    ref = outs["bn"]
    assert [o.shape for o in ref] == [(1, 84, anchors(size))] * 2
    for form in ("folded", "fused"):
        for i in (0, 1):
            assert_close(outs[form][i], ref[i], f"{form} output {i}")
    assert len(outs["converted"]) == 1
    assert_close(outs["converted"][0], ref[1], "converted vs main")
    # the aux head is a different computation, not a copy of the main one
    assert np.abs(ref[0] - ref[1]).max() > 1.0
    # realistic activations: boxes spread, nothing saturated or non-finite
    for o in ref:
        assert np.isfinite(o).all()
        wh = o[0, 2:4]
        assert wh.std() > 1.0 and wh.min() > 0 and wh.max() < 16 * 32 * 2
        assert 0 <= o[0, 4:].min() and o[0, 4:].max() < 0.5   # bias init: ~5 objects per image


def test_bn_form_is_far_from_identity_and_faithful():
    m = build("yolov9-t", "bn", imgsz=64)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    for n in bns:
        attrs = {a.name: a.f for a in n.attribute}
        assert attrs["epsilon"] == pytest.approx(1e-3) and attrs["momentum"] == pytest.approx(0.97)
    gamma, beta, mean, var = (np.concatenate([inits[n.input[i]] for n in bns]) for i in (1, 2, 3, 4))
    assert np.abs(gamma - 1).mean() > 0.2 and np.abs(beta).mean() > 0.5
    assert np.abs(mean).mean() > 0.1
    # variances over decades, some comparable to eps (a fold with eps 1e-5 would show)
    assert var.min() < 1e-3 < 1.0 < var.max()
    # every BN-fed Conv has no bias, as PyTorch's bias=False
    prod = producers(m)
    assert all(len(prod[n.input[0]].input) == 2 for n in bns)


def test_detection_head_initialisation():
    nc = 7
    m = build("yolov9-t", "folded", imgsz=64, nc=nc)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for box, cls in (("cv2", "cv3"), ("cv4", "cv5")):          # aux half, main half
        for i, s in enumerate((8, 16, 32)):
            np.testing.assert_array_equal(inits[f"model.29.{box}.{i}.2.bias"], np.ones(64, np.float32))
            np.testing.assert_allclose(inits[f"model.29.{cls}.{i}.2.bias"],
                                       np.full(nc, math.log(5 / nc / (640 / s) ** 2)), rtol=1e-6)
    for dfl in ("dfl", "dfl2"):
        np.testing.assert_array_equal(inits[f"model.29.{dfl}.conv.weight"].ravel(), np.arange(16))
    assert [o.name for o in m.graph.output] == ["output0", "output1"]
    assert run(m, image(64))[0].shape == (1, 4 + nc, anchors(64))


def test_wiring_follows_the_layer_tables():
    names = {n.name: n for n in build("yolov9-c", "bn", imgsz=64).graph.node}
    # yolov9-c: the aux backbone starts again from the image (row 26 reads input 0)
    assert names["/model.26/conv/Conv"].input[0] == "images"
    assert names["/model.1/conv/Conv"].input[0] == "images"
    # ADown: AveragePool(k2, s1, p0), halves, MaxPool(k3, s2, p1)
    ap = {a.name: list(a.ints) for a in names["/model.4/AveragePool"].attribute if a.ints}
    assert ap == {"kernel_shape": [2, 2], "pads": [0, 0, 0, 0], "strides": [1, 1]}
    mp = {a.name: list(a.ints) for a in names["/model.4/MaxPool"].attribute if a.ints}
    assert mp == {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}
    t = {n.name: n for n in build("yolov9-t", "bn", imgsz=64).graph.node}
    # yolov9-t: the aux SPPELAN (row 22) is a neck on the main backbone's row 8
    assert t["/model.22/cv1/conv/Conv"].input[0] == t["/model.8/cv4/act/Mul"].output[0]
    # RepConvN: 3x3 (pad 1) and 1x1 (pad 0) branches on one input, summed, then SiLU
    c1, c2 = (t[f"/model.4/cv2/cv2.0/m/m.0/cv1/conv{i}/conv/Conv"] for i in (1, 2))
    assert c1.input[0] == c2.input[0]
    k = {n.name: {a.name: list(a.ints) for a in n.attribute if a.ints} for n in (c1, c2)}
    assert k[c1.name]["kernel_shape"] == [3, 3] and k[c2.name]["pads"] == [0, 0, 0, 0]


@pytest.mark.slow
def test_yolov9_e_main_branch_uses_cblinear():
    m = build("yolov9-e", "converted", imgsz=64)
    convs = {n.name for n in m.graph.node if n.op_type == "Conv"}
    assert {f"/model.{i}/conv/Conv" for i in range(10, 15)} <= convs     # CBLinear rows 10-14 stay
    assert ops(m)["Resize"] > 2                                         # CBFuse resizes
    assert "/model.15/conv/Conv" in convs                               # gelan-e keeps Silence at 0


def test_same_seed_same_bytes_and_converted_weights_come_from_the_main_branch():
    a = build("yolov9-t", "fused", imgsz=64)
    assert models.build("yolov9-t", "fused", imgsz=64).SerializeToString() == a.SerializeToString()
    b = models.build("yolov9-t", "fused", imgsz=64, seed=1)
    assert a.graph.initializer[0].raw_data != b.graph.initializer[0].raw_data
    # weights do not depend on imgsz
    c = models.build("yolov9-t", "fused", imgsz=96)
    assert [t.raw_data for t in a.graph.initializer if t.name.startswith("model.")] == \
           [t.raw_data for t in c.graph.initializer if t.name.startswith("model.")]
    dual = {t.raw_data for t in a.graph.initializer}
    conv = build("yolov9-t", "converted", imgsz=64)
    assert all(t.raw_data in dual for t in conv.graph.initializer if t.name.startswith("model."))


# -- shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["yolov9-t", "gelan-t"])
def test_640_output_shapes_by_shape_inference(name):
    m = models.build(name, "fused")
    for o in m.graph.output:               # forget the declared shapes, infer them from the graph
        o.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in inferred.graph.output]
    assert shapes == [[1, 84, 8400]] * (2 if name.startswith("yolov9") else 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov9-t", "yolov9-c", "gelan-e"])
def test_640_runs(name, model_file):
    outs = run(str(model_file(name, "fused")), image(640))
    assert [o.shape for o in outs] == [(1, 84, 8400)] * (2 if name.startswith("yolov9") else 1)


@pytest.mark.parametrize("nc,size", [(1, 96), (80, 64), (3, (64, 128))])
def test_shapes_follow_nc_and_imgsz(nc, size):
    h, w = (size, size) if isinstance(size, int) else size
    m = models.build("gelan-t", "fused", imgsz=size, nc=nc)
    s = session(m)
    out = s.run(None, {"images": np.zeros((1, 3, h, w), np.float32)})[0]
    assert out.shape == (1, 4 + nc, sum((h // s) * (w // s) for s in (8, 16, 32)))


def test_symbolic_batch():
    m = build("yolov9-t", "folded", imgsz=64, batch="N")
    s = session(m)
    assert s.get_inputs()[0].shape == ["N", 3, 64, 64]
    x = image(64, batch=2)
    both = s.run(None, {"images": x})
    one = s.run(None, {"images": x[1:]})
    assert both[1].shape == (2, 84, anchors(64))
    assert_close(both[1][1:], one[1], "batch row 1")


# -- exporter quirks: each must keep the numbers and show the structure real files have ----------

def test_quirks_keep_the_numbers():
    x = image(64)
    ref = run(build("yolov9-t", "bn", imgsz=64), x)
    for kw in (dict(identity_dedup=True), dict(constant_nodes=True), dict(constant_nodes="small"),
               dict(shape_chains=True), dict(dynamo_bias=True), dict(naming="official"),
               dict(identity_dedup=True, constant_nodes=True, shape_chains=True, dynamo_bias=True, opset=18)):
        m = models.build("yolov9-t", "bn", imgsz=64, **kw)
        onnx.checker.check_model(m, full_check=True)
        for a, b in zip(run(m, x), ref):
            np.testing.assert_array_equal(a, b, err_msg=str(kw))


def test_identity_dedup_reshares_identical_initializers():
    m = build("yolov9-t", "folded", imgsz=64, identity_dedup=True)
    ids = [n for n in m.graph.node if n.op_type == "Identity" and n.input[0].startswith("model.")]
    # box biases (all 1.0) at 6 levels, class biases equal between heads, dfl == dfl2
    assert len(ids) == 5 + 3 + 1
    data = [t.raw_data for t in m.graph.initializer]
    assert len(data) == len(set(data))
    prod = producers(m)
    assert any(prod.get(n.input[2]) is not None and prod[n.input[2]].op_type == "Identity"
               for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2)


def test_constant_nodes():
    m = build("yolov9-t", "fused", imgsz=64, constant_nodes=True)
    assert len(m.graph.initializer) == 0
    prod = producers(m)
    assert all(prod[n.input[1]].op_type == "Constant" for n in m.graph.node if n.op_type == "Conv")
    small = build("yolov9-t", "fused", imgsz=64, constant_nodes="small")
    assert all(t.name.startswith("model.") for t in small.graph.initializer)


def test_shape_chains():
    m = build("yolov9-t", "fused", imgsz=64, shape_chains=True)
    prod = producers(m)
    reshapes = [n for n in m.graph.node if n.op_type == "Reshape"]
    chain = []
    node = prod[reshapes[0].input[1]]
    while True:
        chain.append(node.op_type)
        if node.op_type == "Shape":
            break
        node = prod[node.input[0]]
    assert chain == ["Concat", "Unsqueeze", "Gather", "Shape"]
    assert ops(build("yolov9-t", "fused", imgsz=64))["Shape"] == 0


def test_dynamo_raw_preset():
    m = build("yolov9-t", exporter="dynamo-raw", imgsz=64)
    assert m.opset_import[0].version == 18
    prod = producers(m)
    bn_convs = [prod[n.input[0]] for n in m.graph.node if n.op_type == "BatchNormalization"]
    for c in bn_convs:
        bias = prod[c.input[2]]
        assert bias.op_type == "Expand" and prod[bias.input[0]].op_type == "CastLike"
    resize = [n for n in m.graph.node if n.op_type == "Resize"]
    assert all(prod[n.input[2]].attribute[0].name == "value_floats" for n in resize)
    assert models.count_convs(m) == REFERENCE["yolov9-t"][0]
    with pytest.raises(ValueError, match="form='bn'"):
        models.build("yolov9-t", "folded", dynamo_bias=True)


@pytest.mark.parametrize("exporter,form,names", [
    ("torchscript", "folded", ["output0", "output1"]),
    ("official", "fused", ["output0", None]),
    ("dynamo", "folded", ["output0", "output1"]),
])
def test_presets(exporter, form, names):
    m = build("yolov9-t", exporter=exporter, imgsz=64)
    assert models.count_convs(m) == REFERENCE["yolov9-t"][models.FORMS.index(form)]
    got = [o.name for o in m.graph.output]
    assert got[0] == names[0] and (got[1] == names[1] or names[1] is None and got[1].isdigit())
    assert m.opset_import[0].version == (18 if exporter == "dynamo" else 17)
    onnx.checker.check_model(m, full_check=True)
    assert_close(run(m, image(64))[1], run(build("yolov9-t", "bn", imgsz=64), image(64))[1], exporter)
    # explicit arguments win over the preset
    explicit = models.build("yolov9-t", "bn", exporter=exporter, imgsz=64)
    assert models.count_convs(explicit) == REFERENCE["yolov9-t"][0]


@pytest.mark.parametrize("opset", range(13, 22))
def test_opsets(opset):
    m = models.build("yolov9-t", "fused", imgsz=64, opset=opset, shape_chains=True)
    assert m.opset_import[0].version == opset
    onnx.checker.check_model(m, full_check=True)
    assert run(m, image(64))[1].shape == (1, 84, anchors(64))


def test_float16():
    m = build("yolov9-t", "folded", imgsz=64, dtype="float16")
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    out = run(m, image(64).astype(np.float16))
    ref = run(build("yolov9-t", "folded", imgsz=64), image(64))
    assert out[1].dtype == np.float16
    assert_close(out[1], ref[1], "float16 vs float32", rtol=3e-3)


def test_external_data(model_file):
    path = model_file("yolov9-t", "folded", imgsz=64, external_data=True)
    data = path.with_name(path.name + ".data")
    assert data.exists() and data.stat().st_size > 3_000_000 > path.stat().st_size
    m = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"yolov9-t.onnx.data"}
    ref = run(build("yolov9-t", "folded", imgsz=64), image(64))
    assert_close(run(str(path), image(64))[1], ref[1], "external data")
    # saving must not turn the caller's model into an external-data one, nor append to old data
    mem = build("yolov9-t", "folded", imgsz=64)
    size = data.stat().st_size
    models.save(mem, path, external_data=True)
    assert mem.graph.initializer[0].HasField("raw_data") and not mem.graph.initializer[0].external_data
    assert data.stat().st_size == size


def test_mit_layout():
    m = build("yolov9-t", "bn", imgsz=64, layout="mit")
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.input[0].name == "input"
    assert [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim][0] == "batch_size"
    names = [o.name for o in m.graph.output]
    assert len(names) == 18 and names[0] == "output" and all(n.isdigit() for n in names[1:])
    x = image(64, batch=2)
    out = run(m, x)
    for level, hw in enumerate((8, 4, 2)):
        cls, anchor, box = out[3 * level: 3 * level + 3]
        assert cls.shape == (2, 80, hw, hw) and box.shape == (2, 4, hw, hw)
        assert anchor.shape == (2, 16, 4, hw, hw)
    # Main first, then AUX: the class logits are those of output 1 (main) / 0 (aux)
    ref = run(build("yolov9-t", "bn", imgsz=64, batch="b"), x)
    for head, first in ((1, 0), (0, 9)):
        logits = np.concatenate([out[first + 3 * i].reshape(2, 80, -1) for i in range(3)], 2)
        np.testing.assert_allclose(1 / (1 + np.exp(-logits)), ref[head][:, 4:], atol=1e-6)
    conv = build("yolov9-t", "converted", imgsz=64, layout="mit")
    assert len(conv.graph.output) == 9


def test_invalid_arguments():
    bad = [dict(name="yolov9-x"), dict(form="merged"), dict(imgsz=100), dict(opset=12), dict(opset=22),
           dict(nc=0), dict(batch=0), dict(dtype="bfloat16"), dict(exporter="tf"), dict(cbfuse="mul"),
           dict(layout="mit", naming="official"), dict(dynamo_bias=True, opset=14), dict(constant_nodes="x")]
    for kw in bad:
        kw = {"name": "yolov9-t", **kw}
        with pytest.raises(ValueError):
            models.build(kw.pop("name"), imgsz=kw.pop("imgsz", 64), **kw)


def test_cli(tmp_path, capsys):
    assert cli(["--list"]) == 0
    assert "yolov9-e" in capsys.readouterr().out
    out = tmp_path / "y.onnx"
    assert cli(["yolov9-t", "--form", "fused", "--imgsz", "64", "-o", str(out)]) == 0
    assert models.count_convs(onnx.load(str(out))) == REFERENCE["yolov9-t"][2]
    assert cli(["gelan-t", "--exporter", "dynamo", "--imgsz", "64", "-o", str(tmp_path / "d.onnx")]) == 0
    assert (tmp_path / "d.onnx.data").exists()
    assert cli(["yolov9-t", "--imgsz", "100", "-o", str(out)]) == 2


def test_cli_module_entry_point():
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "models", "--list"], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0 and "dynamo-raw" in r.stdout


@pytest.mark.slow
def test_big_builds_are_quick():
    import time
    t = time.perf_counter()
    models.build("yolov9-e", "bn")
    assert time.perf_counter() - t < 30      # a few seconds on an idle 2-core machine
