"""metadata_props the deployment side can read: ultralytics' keys where they exist, onnxrep's for the rest.

    stride "32", task "detect", batch "1" (dynamic_batch "N" instead when the batch is symbolic), imgsz "[640, 640]",
    names "{0: 'person', 1: 'bicycle'}" (ultralytics writes a Python dict literal; class0... unless --names),
    onnxrep: box_format, output_layout, input_format, channels, nms (JSON), version
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from onnxrep.io import OnnxrepError


def read_names(path: str) -> list[str]:
    """Class names from a file: a JSON list or {index: name} object, a YAML-like `names:` list or mapping
    (as the YOLO dataset files write it), or plain text with one name per line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise OnnxrepError(f"--names {path}: cannot read ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        data = data.get("names", data)
    if isinstance(data, dict):
        try:
            return [str(data[k]) for k in sorted(data, key=int)]
        except ValueError as exc:
            raise OnnxrepError(f"--names {path}: the keys must be class indices") from exc
    if isinstance(data, list):
        return [str(x) for x in data]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines and lines[0].startswith("names:"):   # the YOLO dataset yaml: "names:" then "  0: person" or "  - person"
        inline = lines[0][len("names:"):].strip()
        if inline.startswith("["):
            return [x.strip().strip("'\"") for x in inline.strip("[]").split(",") if x.strip()]
        lines = [line.split(":", 1)[1].strip() if ":" in line else line.lstrip("- ").strip() for line in lines[1:]]
        lines = [x.strip("'\"") for x in lines]
    if not lines:
        raise OnnxrepError(f"--names {path}: no class names in the file")
    return lines


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set (or replace) metadata_props entries; others are kept."""
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def deploy_metadata(head, image_dims: list | None, names: list[str] | None, settings: dict) -> dict[str, str]:
    from onnxrep import __version__

    values = {"onnxrep_version": __version__}
    if head is not None:   # a model without a recognised detection head is no "detect" task
        values = {"task": "detect", **values}
        if names is not None and len(names) != head.nc:
            raise OnnxrepError(f"--names: {len(names)} names for a head with {head.nc} classes")
        labels = names or [f"class{k}" for k in range(head.nc)]
        values["names"] = repr(dict(enumerate(labels)))
        values["box_format"] = "xyxy" if "nms" in settings else head.box_coding   # det_boxes are corners
        if head.stride:
            values["stride"] = str(head.stride)
    if image_dims:
        if isinstance(image_dims[0], int) and image_dims[0] > 0:
            values["batch"] = str(image_dims[0])
        else:   # ultralytics readers take "batch" as an int: a symbolic one gets its own key
            values["dynamic_batch"] = str(image_dims[0] or "?")
        if all(isinstance(d, int) and d > 0 for d in image_dims[2:4]):
            values["imgsz"] = str(list(image_dims[2:4]))
    values.update({k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in settings.items()})
    return values
