"""Train a small YOLOv9 on synthetic shapes with its own code and loss, then export it (run as a script).

    python tests/real/train_synthetic.py OUTDIR [--model gelan-t] [--imgsz 160] [--steps 3000] [--batch 16]

Why: float16's accuracy on a detector depends on its weights. A random-weight model scores every anchor
about the same and its boxes come from near-uniform DFL distributions, so tiny activation changes move
them a lot; a trained one is confident where there are objects. No trained checkpoint can be downloaded
here, so this trains one: the official YOLOv9 code (``yolov9pip``, built from ``models/arch.py``'s tables
as in export_models.py) and its own task-aligned loss (``utils/loss_tal.py``; ``loss_tal_dual.py`` for the
dual-head yolov9-X), AdamW, on images of filled rectangles, ellipses and crosses (3 classes, 1-4 objects of
12-45 % of the image, random colours, on smooth noisy backgrounds). Seeded (data and initialisation):
two runs here ended at the same losses, though multithreaded CPU kernels promise no bit-identical weights.

Writes OUTDIR/<model>-synth.<imgsz>.onnx (TorchScript exporter, eval mode, dynamic batch, opset 17: the
training form, BN folded by the exporter, RepConvN branches and the aux head kept) and
OUTDIR/<model>-synth.<imgsz>.npz: held-out images (``images``), their boxes (``boxes``, pixels x1y1x2y2,
``classes``, ``image_index``) and PyTorch's main-head output on them (``output``), plus the final losses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

NC = 3
VERSION = 1   # of the data and the training: bump it when either changes, and cached models are retrained


def synth_batch(rng: np.random.Generator, batch: int, size: int):
    """Images [B,3,S,S] in [0,1], targets [n,6] (image, class, cx, cy, w, h; normalised) and boxes [n,6]
    (image, class, x1, y1, x2, y2; pixels)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    imgs, targets, boxes = [], [], []
    for b in range(batch):
        coarse = rng.random((3, 4, 4)).astype(np.float32)
        bg = np.stack([np.kron(c, np.ones((size // 4, size // 4), np.float32)) for c in coarse])
        img = 0.5 * bg + 0.25 + rng.normal(0, 0.06, (3, size, size)).astype(np.float32)
        for _ in range(rng.integers(1, 5)):
            cls = int(rng.integers(0, NC))
            w, h = rng.uniform(0.12, 0.45, 2) * size
            cx, cy = rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2)
            dx, dy = (xx - cx) / (w / 2), (yy - cy) / (h / 2)
            if cls == 0:
                mask = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
            elif cls == 1:
                mask = dx * dx + dy * dy <= 1
            else:
                mask = ((np.abs(dx) <= 1) & (np.abs(dy) <= 0.3)) | ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1))
            colour = rng.random(3).astype(np.float32)
            img[:, mask] = colour[:, None]
            targets.append([b, cls, cx / size, cy / size, w / size, h / size])
            boxes.append([b, cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        imgs.append(np.clip(img, 0, 1))
    return (np.stack(imgs).astype(np.float32), np.array(targets, np.float32).reshape(-1, 6),
            np.array(boxes, np.float32).reshape(-1, 6))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="gelan-t")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(HERE))   # export_models.py, only when run as a script (the tests import synth_batch)
    if args.threads:
        torch.set_num_threads(args.threads)
    import export_models as em

    yolo, _, _ = em._setup_yolov9()
    dual = args.model.startswith("yolov9")
    if dual:
        from utils.loss_tal_dual import ComputeLoss
    else:
        from utils.loss_tal import ComputeLoss

    torch.manual_seed(args.seed)
    model = yolo.DetectionModel(em._yolo_cfg(args.model, NC))
    model.hyp = {"cls_pw": 1.0, "fl_gamma": 0.0, "label_smoothing": 0.0}
    loss_fn = ComputeLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    rng = np.random.default_rng(args.seed)
    model.train()
    t0, losses = time.time(), []
    for step in range(args.steps):
        imgs, targets, _ = synth_batch(rng, args.batch, args.imgsz)
        pred = model(torch.from_numpy(imgs))
        loss, items = loss_fn(pred, torch.from_numpy(targets))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        losses.append(items.numpy().tolist())
        if step % 50 == 0 or step == args.steps - 1:
            mean = np.mean(losses[-50:], axis=0)
            print(f"step {step:5d}  box {mean[0]:.3f} cls {mean[1]:.3f} dfl {mean[2]:.3f}  "
                  f"{time.time() - t0:6.0f} s", flush=True)

    model.eval()
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True
    stem = f"{args.model}-synth.{args.imgsz}"
    path = {ext: args.out / f"{stem}.{ext}" for ext in ("onnx", "npz", "json")}
    args.out.mkdir(parents=True, exist_ok=True)
    names = ["output0", "output1"] if dual else ["output0"]
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    em._export(model, x, path["onnx"], "torchscript", names, dynamic_batch=True)
    imgs, _, boxes = synth_batch(np.random.default_rng(args.seed + 10_000), 8, args.imgsz)
    with torch.no_grad():
        out = model(torch.from_numpy(imgs))
    out = out[-1] if isinstance(out, (list, tuple)) else out
    out = out[0] if isinstance(out, (list, tuple)) else out
    np.savez(path["npz"], images=imgs, output=out.numpy(), image_index=boxes[:, 0].astype(np.int64),
             classes=boxes[:, 1].astype(np.int64), boxes=boxes[:, 2:])
    path["json"].write_text(json.dumps({
        "version": VERSION, "model": args.model, "imgsz": args.imgsz, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "seed": args.seed, "final_loss_box_cls_dfl": np.mean(losses[-50:], axis=0).tolist(),
        "train_seconds": round(time.time() - t0, 1)}, indent=1))
    print(f"wrote {path['onnx']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
