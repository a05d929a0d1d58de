"""--precision fp16 on trained YOLOv9 models: the accuracy criterion of the float16 issue.

The models (ONNXREP_REAL_MODELS=all, or gelan-t-synth / yolov9-t-synth) are trained by their own code and
loss on synthetic shapes (train_synthetic.py) and exported by TorchScript in training form (aux head,
RepConvN branches). First the training is shown to have worked: the PyTorch model finds the held-out
images' objects, and the export computes what PyTorch does. Then `onnxrep optimize --precision fp16` must
give a verified model half the size of the float32 one whose boxes stay within 1 px and whose scores stay
within 3 % of the float32 model's on the 100 top-scoring anchors of 64 new images (those scoring
at least 0.001, the conf YOLOv9's val.py computes mAP at: a trained model scores background anchors 1e-6,
where float16 moves the score by a few % of itself and no metric ever sees it), and whose detections agree
(tie-aware) at least 99 %.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxrep
from onnxrep.verify.detections import _boxes, _iou, agreement, top_anchor_errors
from tests.real.conftest import selected_trained
from tests.real.test_real_exports import run
from tests.real.train_synthetic import synth_batch

pytestmark = pytest.mark.real


def _recall(out: np.ndarray, data: dict) -> float:
    """Share of the ground-truth objects that some anchor finds: that class scored >= 0.25, box IoU >= 0.5."""
    found = total = 0
    for b in range(out.shape[0]):
        pred = _boxes(out[b])
        for box, cls in zip(data["boxes"][data["image_index"] == b], data["classes"][data["image_index"] == b]):
            total += 1
            found += bool(np.any((_iou(box, pred) >= 0.5) & (out[b, 4 + cls] >= 0.25)))
    return found / total


@pytest.mark.parametrize("name", selected_trained())
def test_the_training_worked_and_the_export_is_faithful(trained_model, name):
    path, npz, info = trained_model(name)
    with np.load(npz) as d:
        data = {k: d[k] for k in d.files}
    recall = _recall(data["output"], data)
    print(f"\n{name}: recall {recall:.3f} of {len(data['classes'])} held-out objects; {info.read_text()}")
    assert recall >= 0.9, json.loads(info.read_text())
    model = onnx.load(str(path))
    out, ref = run(model, data["images"])[-1], data["output"]   # float32 rounding: boxes 3e-4 px, scores 2e-6
    assert np.abs(out[:, :4] - ref[:, :4]).max() <= 1e-5 * np.abs(ref[:, :4]).max()
    assert np.abs(out[:, 4:] - ref[:, 4:]).max() <= 1e-4


@pytest.mark.parametrize("name", selected_trained())
def test_float16_of_a_trained_model_meets_the_accuracy_criterion(trained_model, name):
    path, _, info = trained_model(name)
    images, _, boxes = synth_batch(np.random.default_rng(20_000), 64, json.loads(info.read_text())["imgsz"])
    held_out = [{"images": images[:4]}, {"images": images[4:8]}]    # verification on images with objects
    fp32 = onnxrep.optimize(path)
    fp16 = onnxrep.optimize(path, precision="fp16", input_data=held_out)
    assert fp32.ok and fp16.ok, fp16.report.text()
    onnx.checker.check_model(fp16.model, full_check=True)
    ratio = fp16.model.ByteSize() / fp32.model.ByteSize()
    assert abs(ratio - 0.5) <= 0.02 * 0.5, ratio

    ref, got = run(fp32.model, images)[0], run(fp16.model, images)[0]
    # the 100 best anchors of each image that score at least 0.001, the conf of YOLOv9's mAP evaluation
    px, rel, checked = top_anchor_errors(ref, got, top=100, min_score=0.001)
    px_all, rel_all, _ = top_anchor_errors(ref, got, top=100)
    agree = agreement([ref], [got], conf=0.25, min_detections=1)   # at the detect default, never lowered
    print(f"\n{name}: fp16/fp32 size {ratio:.4f}; 100 best anchors scoring >= 0.001: box {px:.3f} px, "
          f"score {rel:.2%} ({checked} anchors; without the 0.001 floor: {px_all:.3f} px, {rel_all:.2%}); {agree.line()}")
    assert px <= 1.0 and rel <= 0.03 and checked >= len(boxes), (px, rel, checked)   # an anchor per object at least
    assert not agree.conf_lowered and agree.matched >= 0.9 * len(boxes) and agree.rate >= 0.99, agree
    (verified,) = fp16.verification.agreements.values()   # on 8 images (conf lowered if < 20 detections)
    assert verified["rate"] >= 0.99 and verified["matched"] >= 20, verified
