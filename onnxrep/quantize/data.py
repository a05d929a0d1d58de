"""Calibration and evaluation images: read, letterboxed as YOLO's own val does, split, labelled.

    calib = load_images("calib/", model)          # Images: .arrays [N, 3, H, W] float32 in [0, 1]
    evals = load_images("coco-val/", model, labels=True)

A folder of images (jpg, jpeg, png, bmp, webp; sorted by name; EXIF rotation applied): each resized so its
long side fits the model's input (bilinear; YOLO's val resizes the long side to imgsz), padded to the
input's H x W with grey 114 centred (YOLO's letterbox), RGB, scaled to [0, 1]. With labels, YOLO txt files
are read from a `labels/` folder beside `images/`, the ultralytics layout (`images/val` -> `labels/val`), or
next to each image: `class cx cy w h` (or a segmentation polygon, taken as its bounding box), normalised to
the original image, turned into pixel x1y1x2y2 boxes in the letterboxed input.

A .npz file: `images` (or the model input's name) [N, C, H, W], float (used as is) or uint8 (divided by
255); with labels, `boxes` [n, 4] pixel x1y1x2y2 in the input, `classes` [n] and `image_index` [n].
Labels may also come as a COCO instances .json (`_from_coco`: classes are its categories sorted by id).

Decoding images needs Pillow (the `int8` extra); an npz needs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxrep.io import OnnxrepError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
PAD = 114


@dataclass
class Images:
    arrays: np.ndarray                       # [N, C, H, W] float32
    source: str
    boxes: np.ndarray | None = None          # [n, 4] x1y1x2y2 in input pixels
    classes: np.ndarray | None = None        # [n]
    image_index: np.ndarray | None = None    # [n]
    names: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrays)

    def subset(self, index) -> "Images":
        index = np.asarray(index)
        sub = Images(self.arrays[index], self.source, names=[self.names[i] for i in index] if self.names else [])
        if self.boxes is not None:
            where = {int(old): new for new, old in enumerate(index)}
            keep = np.isin(self.image_index, index)
            sub.boxes, sub.classes = self.boxes[keep], self.classes[keep]
            sub.image_index = np.array([where[int(i)] for i in self.image_index[keep]], np.int64)
        return sub


def image_input(model: onnx.ModelProto) -> tuple[str, int, int, int]:
    """(name, channels, height, width) of the model's one float image input [B, C, H, W]."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1:
        raise OnnxrepError(f"--precision int8: calibration feeds one image input; the model has {len(inputs)} inputs")
    vi = inputs[0]
    t = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
    if t.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] not in (1, 3) or not all(dims[1:]):
        raise OnnxrepError(f"--precision int8: input {vi.name!r} is not a float32 image [B, C, H, W] with fixed "
                           f"C, H, W (it is {onnx.TensorProto.DataType.Name(t.elem_type)} {dims or 'of unknown shape'})")
    if dims[0] > 1:
        raise OnnxrepError(f"--precision int8: input {vi.name!r} has a fixed batch of {dims[0]}; calibration and the "
                           f"proof feed one image at a time (export at batch 1, or add --dynamic-batch)")
    return vi.name, dims[1], dims[2], dims[3]


def load_images(source, model: onnx.ModelProto, *, labels: bool = False, limit: int | None = None,
                option: str = "--calib") -> Images:
    path = Path(source)
    name, c, h, w = image_input(model)
    if not path.exists():
        raise OnnxrepError(f"{option} {source}: no such file or folder")
    if path.is_file():
        if labels and path.suffix.lower() == ".json":
            return _from_coco(path, (c, h, w), limit, option)
        if path.suffix.lower() != ".npz":
            raise OnnxrepError(f"{option} {source}: expected a folder of images or a .npz file"
                               + (" (or a COCO .json)" if labels else ""))
        return _from_npz(path, name, (c, h, w), labels, limit, option)
    return _from_folder(path, (c, h, w), labels, limit, option)


def _from_coco(path: Path, chw, limit, option: str) -> Images:
    """COCO instances json: its images found in the json's folder, an images/ folder beside it, or the folder
    named after the json's split (instances_val2017.json -> ../val2017/); classes are the json's categories
    sorted by id, numbered 0..n-1 (YOLO's coco80 order for COCO itself); crowd boxes are left out."""
    import json

    try:
        data = json.loads(path.read_text())
        images, annotations, categories = data["images"], data.get("annotations", []), data["categories"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OnnxrepError(f"{option} {path}: not a COCO instances json ({type(exc).__name__}: {exc})") from None
    index = {c["id"]: k for k, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    split = path.stem.split("_")[-1]
    roots = [path.parent, path.parent / "images", path.parent.parent / split, path.parent.parent / "images" / split]
    _pillow()   # fail before reading anything when Pillow is missing
    images = sorted(images, key=lambda im: im["file_name"])[:limit]
    arrays, boxes, classes, where = [], [], [], []
    by_image: dict = {}
    for a in annotations:
        if not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    for k, im in enumerate(images):
        f = next((r / im["file_name"] for r in roots if (r / im["file_name"]).is_file()), None)
        if f is None:
            raise OnnxrepError(f"{option} {path}: image {im['file_name']!r} not found in {', '.join(map(str, roots))}")
        arr, _, r, px, py = _read(f, chw, option)
        arrays.append(arr)
        for a in by_image.get(im["id"], []):
            x, y, bw, bh = a["bbox"]
            if a["category_id"] not in index:
                raise OnnxrepError(f"{option} {path}: annotation {a.get('id')} has category {a['category_id']}, "
                                   f"not among the json's categories")
            boxes.append([x * r + px, y * r + py, (x + bw) * r + px, (y + bh) * r + py])
            classes.append(index[a["category_id"]])
            where.append(k)
    if not arrays:
        raise OnnxrepError(f"{option} {path}: no images in the json")
    return Images(np.stack(arrays), str(path), np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64),
                  np.array(where, np.int64), [im["file_name"] for im in images])


def _from_npz(path: Path, name: str, chw, labels: bool, limit, option: str) -> Images:
    try:
        with np.load(path) as d:
            data = {k: d[k] for k in d.files}
    except Exception as exc:  # noqa: BLE001 -- a damaged or foreign file: one line
        raise OnnxrepError(f"{option} {path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    key = next((k for k in ("images", name) if k in data), None)
    if key is None:
        raise OnnxrepError(f"{option} {path}: no array named 'images' or {name!r} (it has {', '.join(data) or 'none'})")
    arr = data[key]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(chw):
        raise OnnxrepError(f"{option} {path}: {key!r} is {list(arr.shape)}; the model takes [N, {chw[0]}, {chw[1]}, {chw[2]}]")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    else:
        raise OnnxrepError(f"{option} {path}: {key!r} is {arr.dtype}; expected float or uint8 images")
    if not np.all(np.isfinite(arr)):
        raise OnnxrepError(f"{option} {path}: {key!r} holds NaN or infinite values")
    n = len(arr) if limit is None else min(limit, len(arr))
    images = Images(arr, str(path), names=[f"{key}[{i}]" for i in range(len(arr))])
    if labels:
        missing = [k for k in ("boxes", "classes", "image_index") if k not in data]
        if missing:
            raise OnnxrepError(f"{option} {path}: labels need arrays {', '.join(missing)} (pixel x1y1x2y2 boxes, "
                               f"their classes and image indices)")
        images.boxes = np.asarray(data["boxes"], np.float64).reshape(-1, 4)
        images.classes = np.asarray(data["classes"], np.int64).reshape(-1)
        images.image_index = np.asarray(data["image_index"], np.int64).reshape(-1)
        if not len(images.boxes) == len(images.classes) == len(images.image_index):
            raise OnnxrepError(f"{option} {path}: boxes, classes and image_index differ in length")
    return images.subset(np.arange(n)) if n < len(arr) else images


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise OnnxrepError("reading image folders needs Pillow: pip install 'onnxrep[int8]' (or give a .npz)") from None
    return Image


def letterbox(img, h: int, w: int) -> tuple[np.ndarray, float, float, float]:
    """A PIL RGB image -> ([3, h, w] float32 in [0, 1], scale, pad x, pad y)."""
    Image = _pillow()
    w0, h0 = img.size
    r = min(h / h0, w / w0)
    nw, nh = max(1, round(w0 * r)), max(1, round(h0 * r))
    resized = img.resize((nw, nh), Image.BILINEAR) if (nw, nh) != (w0, h0) else img
    canvas = np.full((h, w, 3), PAD, np.uint8)
    px, py = (w - nw) // 2, (h - nh) // 2
    canvas[py:py + nh, px:px + nw] = np.asarray(resized, np.uint8)
    return canvas.transpose(2, 0, 1).astype(np.float32) / 255.0, r, px, py


def _read(f: Path, chw, option: str):
    """One image file -> ([C, H, W] letterboxed, its (width, height) after the EXIF rotation, scale, pad x,
    pad y); a damaged file is one error line naming it."""
    Image = _pillow()
    from PIL import ImageOps

    c, h, w = chw
    try:
        with Image.open(f) as im:
            im = ImageOps.exif_transpose(im)   # a phone photo's rotation, as the labels (and cv2) see it
            img = im.convert("RGB" if c == 3 else "L").convert("RGB")
            arr, r, px, py = letterbox(img, h, w)
    except Exception as exc:  # noqa: BLE001 -- a damaged image: name it
        raise OnnxrepError(f"{option} {f}: not a readable image ({type(exc).__name__}: {exc})") from None
    return (arr[:1] if c == 1 else arr), img.size, r, px, py


def _from_folder(path: Path, chw, labels: bool, limit, option: str) -> Images:
    _pillow()   # fail before reading anything when Pillow is missing
    folder = path / "images" if (path / "images").is_dir() else path
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise OnnxrepError(f"{option} {path}: no images ({', '.join(sorted(IMAGE_EXTS))})")
    arrays, boxes, classes, index = [], [], [], []
    for k, f in enumerate(files):
        arr, (w0, h0), r, px, py = _read(f, chw, option)
        arrays.append(arr)
        if labels:
            for cls, box in _yolo_labels(path, folder, f, option):
                cx, cy, bw, bh = box * np.array([w0, h0, w0, h0])
                boxes.append([(cx - bw / 2) * r + px, (cy - bh / 2) * r + py, (cx + bw / 2) * r + px,
                              (cy + bh / 2) * r + py])
                classes.append(cls)
                index.append(k)
    images = Images(np.stack(arrays), str(path), names=[f.name for f in files])
    if labels:
        images.boxes = np.array(boxes, np.float64).reshape(-1, 4)
        images.classes = np.array(classes, np.int64)
        images.image_index = np.array(index, np.int64)
    return images


def _yolo_labels(root: Path, folder: Path, image: Path, option: str):
    """(class, [cx, cy, w, h] normalised) per object: labels/ beside images/, the ultralytics layout
    (.../images/val/x.jpg -> .../labels/val/x.txt), or next to the image. A polygon (segmentation labels:
    class x1 y1 x2 y2 ...) becomes its bounding box."""
    parts = image.parts
    swapped = [Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
               for i in range(len(parts) - 1, -1, -1) if parts[i] == "images"]
    candidates = [root / "labels" / (image.stem + ".txt"), *swapped, image.with_suffix(".txt")]
    label = next((p for p in candidates if p.is_file()), None)
    if label is None:
        return   # an image without objects
    for n, line in enumerate(label.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, values = int(float(parts[0])), np.array([float(v) for v in parts[1:]])
        except ValueError:
            values = np.array([])
        if len(parts) < 5 or (values.size != 4 and (values.size % 2 or values.size < 6)):
            raise OnnxrepError(f"{option} {label}:{n}: expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 "
                               f"y3 ...' (YOLO txt), got {line.strip()!r}")
        if values.size > 4:   # a polygon: its bounding box
            xs, ys = values[0::2], values[1::2]
            values = np.array([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2, xs.max() - xs.min(),
                               ys.max() - ys.min()])
        yield cls, values


def split(images: Images, calib_size: int, held_out: int) -> tuple[Images, Images]:
    """(calibration images, held-out images): the held-out are the last `held_out`, never calibrated on."""
    n = len(images)
    if n < held_out + 4:
        raise OnnxrepError(f"--calib {images.source}: {n} images; at least {held_out + 4} needed ({held_out} held out "
                           f"to choose the method and to prove the result, 4 or more to calibrate on)")
    cal = np.arange(min(calib_size, n - held_out))
    return images.subset(cal), images.subset(np.arange(n - held_out, n))
