"""quantize/data.py (calibration and labelled images) and proof.py (mAP by pycocotools, the comparisons)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxrep.io import OnnxrepError
from onnxrep.quantize.data import letterbox, load_images, split
from onnxrep.quantize.proof import compare, detections_for_map, mean_ap, output_error
from tests.graphs import make_model, vi


def _model(h=64, w=64, dtype=np.float32, shape=None):
    from onnx import helper

    node = helper.make_node("Relu", ["images"], ["y"], name="relu")
    return make_model([node], [vi("images", dtype, shape or [1, 3, h, w])], [vi("y", dtype, shape or [1, 3, h, w])])


def test_npz_images_uint8_scaled_and_errors(tmp_path):
    m = _model()
    arr = np.random.default_rng(0).integers(0, 256, (5, 3, 64, 64)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", images=arr)
    got = load_images(tmp_path / "a.npz", m)
    assert got.arrays.dtype == np.float32 and np.allclose(got.arrays * 255, arr)
    np.savez(tmp_path / "b.npz", other=arr)
    np.savez(tmp_path / "c.npz", images=arr[:, :, :32])
    np.savez(tmp_path / "d.npz", images=np.full((2, 3, 64, 64), np.nan, np.float32))
    np.savez(tmp_path / "e.npz", images=arr.astype(np.int32))
    (tmp_path / "f.npz").write_bytes(b"not a zip")
    for name, words in (("b", "no array named"), ("c", r"the model takes \[N, 3, 64, 64\]"), ("d", "NaN"),
                        ("e", "expected float or uint8"), ("f", "not a readable .npz"), ("none", "no such file")):
        with pytest.raises(OnnxrepError, match=words):
            load_images(tmp_path / f"{name}.npz", m)
    with pytest.raises(OnnxrepError, match="labels need arrays"):
        load_images(tmp_path / "a.npz", m, labels=True)


def test_the_input_must_be_a_float_image():
    from onnxrep.quantize.data import image_input

    assert image_input(_model(48, 80)) == ("images", 3, 48, 80)
    with pytest.raises(OnnxrepError, match="not a float32 image"):
        image_input(_model(dtype=np.float16))
    with pytest.raises(OnnxrepError, match="not a float32 image"):
        image_input(_model(shape=[1, 3, "h", "w"]))
    with pytest.raises(OnnxrepError, match="fixed batch of 4"):
        image_input(_model(shape=[4, 3, 8, 8]))
    assert image_input(_model(shape=["batch", 3, 8, 8])) == ("images", 3, 8, 8)


def test_folder_letterbox_and_yolo_labels(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    img = np.zeros((50, 100, 3), np.uint8)   # 100 wide, 50 high
    img[:, :50] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    # one box: centre (0.25, 0.5), size (0.5, 1.0) of the original: x 0..50, y 0..50 px
    (tmp_path / "labels" / "a.txt").write_text("2 0.25 0.5 0.5 1.0\n")
    Image.fromarray(img).save(tmp_path / "images" / "b.jpg")   # no label file: no objects
    got = load_images(tmp_path, _model(64, 64), labels=True)
    assert got.arrays.shape == (2, 3, 64, 64) and got.names == ["a.png", "b.jpg"]
    # resized by 0.64 to 64x32, padded 16 rows above and below with grey 114
    a = got.arrays[0]
    assert np.allclose(a[:, :16], 114 / 255) and np.allclose(a[:, 48:], 114 / 255)
    assert a[0, 30, 5] > 0.9 and a[1, 30, 5] < 0.1 and a[0, 30, 60] < 0.1
    assert got.classes.tolist() == [2] and got.image_index.tolist() == [0]
    assert np.allclose(got.boxes[0], [0, 16, 32, 48])
    (tmp_path / "labels" / "a.txt").write_text("2 0.25 0.5\n")
    with pytest.raises(OnnxrepError, match=r"a.txt:1: expected 'class cx cy w h'"):
        load_images(tmp_path, _model(64, 64), labels=True)
    (tmp_path / "images" / "c.png").write_bytes(b"broken")
    with pytest.raises(OnnxrepError, match="c.png: not a readable image"):
        load_images(tmp_path, _model(64, 64))


def test_letterbox_keeps_the_aspect():
    from PIL import Image

    arr, r, px, py = letterbox(Image.new("RGB", (30, 60)), 64, 64)
    assert arr.shape == (3, 64, 64) and (r, px, py) == (64 / 60, 16, 0)


def test_split_holds_out_the_last_images(tmp_path):
    m = _model()
    np.savez(tmp_path / "a.npz", images=np.arange(30, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 64, 64), np.float32))
    calib, held = split(load_images(tmp_path / "a.npz", m), 8, 16)
    assert calib.arrays[:, 0, 0, 0].tolist() == list(range(8)) and held.arrays[:, 0, 0, 0].tolist() == list(range(14, 30))
    with pytest.raises(OnnxrepError, match="at least 20 needed"):
        split(load_images(tmp_path / "a.npz", m, limit=19), 8, 16)


def _gt(n_images=4, nc=3, seed=0):
    """Labelled images (data.Images-like) and a perfect anchors-last output [B, 4+nc, A] for them."""
    from onnxrep.quantize.data import Images

    rng = np.random.default_rng(seed)
    boxes, classes, index = [], [], []
    y = np.zeros((n_images, 4 + nc, 50), np.float32)
    y[:, :4] = np.array([10, 10, 4, 4], np.float32)[None, :, None]   # background anchors: small boxes, score 0
    for i in range(n_images):
        for k in range(3):
            x1, y1 = rng.uniform(0, 100, 2)
            w, h = rng.uniform(10, 40, 2)
            c = int(rng.integers(0, nc))
            boxes.append([x1, y1, x1 + w, y1 + h])
            classes.append(c)
            index.append(i)
            y[i, :4, k] = [x1 + w / 2, y1 + h / 2, w, h]
            y[i, 4 + c, k] = 0.9
    images = Images(np.zeros((n_images, 3, 8, 8), np.float32), "test", np.array(boxes), np.array(classes), np.array(index))
    return images, y


def test_mean_ap_of_perfect_detections_is_100_and_falls_when_boxes_move():
    images, y = _gt()
    assert mean_ap(y, "anchors-last", images)["map50_95"] == pytest.approx(100, abs=0.01)
    moved = y.copy()
    moved[:, 0, :3] += 0.3 * moved[:, 2, :3]   # IoU about 0.54: counts at 0.5, not at 0.75
    m = mean_ap(moved, "anchors-last", images)
    assert m["map50"] == pytest.approx(100, abs=0.01) and m["map50_95"] < 30
    wrong = y.copy()
    wrong[:, 4:] = wrong[:, 4:][:, ::-1]   # every class swapped (with 3 classes the middle one stays)
    assert mean_ap(wrong, "anchors-last", images)["map50_95"] < 100
    first = np.transpose(y, (0, 2, 1))
    assert mean_ap(first, "anchors-first", images)["map50_95"] == pytest.approx(100, abs=0.01)


def test_detections_for_map_are_multi_label_and_nms_per_class():
    y = np.zeros((1, 6, 3), np.float32)
    y[0, :4] = np.array([[50, 50, 52], [50, 50, 50], [20, 20, 20], [20, 20, 20]], np.float32)
    y[0, 4:, 0] = [0.8, 0.6]     # one anchor, two classes: both kept
    y[0, 4:, 1] = [0.7, 0.0]     # same box as anchor 0, class 0: suppressed by 0's class-0 detection
    y[0, 4:, 2] = [0.0, 0.0005]  # below conf 0.001
    (rows,) = detections_for_map(y)
    assert sorted((round(r[4], 2), r[5]) for r in rows) == [(0.6, 1), (0.8, 0)]


def test_compare_and_output_error():
    images, y = _gt(n_images=8)
    ref = {"det": y, "logits": np.eye(4, 12, dtype=np.float32), "feat": np.ones((2, 3, 4), np.float32)}
    kinds = {"det": "anchors-last"}
    assert output_error(ref, ref, kinds) == 0
    facts = compare(ref, ref, kinds, 0.95)
    assert facts["det"]["kind"] == "detections" and facts["det"]["agreement"] == 1 and facts["det"]["ok"]
    assert facts["logits"]["kind"] == "top-1" and facts["logits"]["ok"]
    assert facts["feat"]["kind"] == "sqnr" and facts["feat"]["ok"]
    bad = {"det": y.copy(), "logits": np.eye(4, 12, k=1, dtype=np.float32), "feat": np.ones((2, 3, 4), np.float32) * 1.2}
    bad["det"][:, 4:] = 0
    facts = compare(ref, bad, kinds, 0.95)
    assert not facts["det"]["ok"] and not facts["logits"]["ok"] and not facts["feat"]["ok"]   # 1.2x: SQNR 14 dB
    assert output_error(ref, bad, kinds) > output_error(ref, {**ref, "feat": ref["feat"] * 1.01}, kinds) > 0
    assert output_error(ref, {**ref, "feat": ref["feat"] * np.nan}, kinds) == np.inf
    # an embedding-like [B, K] whose argmax agrees but whose values do not: SQNR fails it
    emb = {"e": np.tile(np.arange(12, dtype=np.float32), (4, 1))}
    facts = compare(emb, {"e": emb["e"] * 3}, {}, 0.95)["e"]
    assert facts["kind"] == "top-1" and facts["agreement"] == 1 and not facts["ok"]
    # JSON-ready: plain bools, a finite SQNR for an exact output
    exact = compare(emb, emb, {}, 0.95)["e"]
    assert type(exact["ok"]) is bool and exact["ok"] and np.isfinite(exact["sqnr_db"])
    import json
    assert json.loads(json.dumps(exact))["ok"] is True


def test_eval_on_a_model_without_a_detection_output_is_refused_before_any_run(tmp_path):
    from onnxrep.quantize import Int8Options, load_data

    m = _model(64, 64)
    arr = np.random.default_rng(0).random((32, 3, 64, 64), np.float32)
    np.savez(tmp_path / "a.npz", images=arr, boxes=np.zeros((1, 4)), classes=np.zeros(1), image_index=np.zeros(1))
    load_data(m, Int8Options(calib=str(tmp_path / "a.npz")))
    with pytest.raises(OnnxrepError, match="--eval: the model has no YOLO detection output"):
        load_data(m, Int8Options(calib=str(tmp_path / "a.npz"), eval=str(tmp_path / "a.npz")))


def test_ultralytics_layout_polygons_and_exif(tmp_path):
    """Found by review: labels in labels/val for images/val were not found (an mAP on no objects 'passed'),
    polygons were read as cx cy w h, and a rotated phone photo was letterboxed unrotated."""
    from PIL import Image

    from onnxrep.quantize.data import load_images

    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    img = Image.new("RGB", (64, 32), (255, 0, 0))   # stored landscape, EXIF says: rotate to portrait
    exif = Image.Exif()
    exif[0x0112] = 6   # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "images" / "val" / "a.jpg", exif=exif)
    (tmp_path / "labels" / "val" / "a.txt").write_text("1 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
    got = load_images(tmp_path / "images" / "val", _model(64, 64), labels=True, option="--eval")
    assert got.classes.tolist() == [1]
    # displayed as 32 wide x 64 high: fits 64 high, padded 16 left and right; box the middle half of it
    assert np.allclose(got.boxes[0], [16 + 8, 16, 16 + 24, 48])
    assert np.allclose(got.arrays[0][:, :, :16], 114 / 255) and got.arrays[0][0, 32, 32] > 0.9


def test_coco_json_labels(tmp_path):
    """--eval instances_val.json: images beside it or in ../val/; categories sorted by id become 0..n-1;
    crowd boxes left out; a category the json does not declare is an error."""
    import json

    from PIL import Image

    (tmp_path / "val").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (100, 50)).save(tmp_path / "val" / "a.jpg")
    data = {"images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50}],
            "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 90, "bbox": [0, 0, 50, 50], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [10, 10, 5, 5], "iscrowd": 1}]}
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text(json.dumps(data))
    got = load_images(path, _model(64, 64), labels=True, option="--eval")
    assert got.classes.tolist() == [1] and got.image_index.tolist() == [0]
    assert np.allclose(got.boxes[0], [0, 16, 32, 48])   # scale 0.64, padded 16 rows
    data["annotations"][0]["category_id"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(OnnxrepError, match="category 5, not among"):
        load_images(path, _model(64, 64), labels=True, option="--eval")
    data["images"][0]["file_name"] = "missing.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(OnnxrepError, match="'missing.jpg' not found"):
        load_images(path, _model(64, 64), labels=True, option="--eval")
