"""Deployment adapters around the optimized graph: input format, output layout or NMS, metadata.

    deployed = apply(optimized, DeployOptions(nms="ort", input_format="uint8-nhwc", bgr=True))
    checks = check(deployed, feeds)          # each adapter proven, see below

They come after the passes and after the optimized graph was verified against the original, in stages,
each checked against the one before on the same inputs:

  1. input format (deploy/preprocess.py): the folded model against the same model with the preprocessing
     spelled out op by op (bit-exact to numpy's), at the verifier's noise tolerance, on uint8 images;
  2. output layout (deploy/layout.py) or NMS (deploy/nms.py): the head's tensor inside the final model must
     equal the stage-1 model's output bit for bit, and the new outputs must equal numpy's transpose/split or
     reference NMS (deploy/nms_reference.py) of it, exactly. TensorRT's EfficientNMS_TRT cannot run in
     onnxruntime: its node's attributes are checked, and the boxes and scores it is fed must equal what the
     reference NMS takes.
  3. metadata (deploy/metadata.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import onnx

from onnxrep.deploy.head import DetectionHead, the_head
from onnxrep.deploy.heads_other import join_split
from onnxrep.deploy.layout import LAYOUTS, add_layout
from onnxrep.deploy.metadata import deploy_metadata, set_metadata
from onnxrep.deploy.nms import NmsSettings, add_nms
from onnxrep.deploy.preprocess import FORMATS, add_input_format, image_input
from onnxrep.io import OnnxrepError

__all__ = ["DeployOptions", "Deployed", "apply", "check", "LAYOUTS", "FORMATS"]


@dataclass(frozen=True)
class DeployOptions:
    nms: str | None = None              # "ort" | "trt"
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 100
    class_agnostic: bool = False
    multi_label: bool = False
    output_layout: str = "anchors-last"
    input_format: str = "float"
    bgr: bool = False
    names: list[str] | None = None
    metadata: bool = False              # write metadata even when no other adapter is asked for

    def __post_init__(self):
        self.validate()

    def active(self) -> bool:
        return bool(self.nms or self.output_layout != "anchors-last" or self.input_format != "float" or self.bgr
                    or self.names is not None or self.metadata)

    def validate(self) -> None:
        if self.output_layout not in LAYOUTS:
            raise OnnxrepError(f"--output-layout {self.output_layout!r}: choose {', '.join(LAYOUTS)}")
        if self.input_format not in FORMATS:
            raise OnnxrepError(f"--input-format {self.input_format!r}: choose {', '.join(FORMATS)}")
        if self.nms and self.output_layout != "anchors-last":
            raise OnnxrepError("--nms replaces the head's output with detections: --output-layout does not apply")
        if self.nms:
            self.nms_settings.check()

    @property
    def nms_settings(self) -> NmsSettings | None:
        return (NmsSettings(self.nms, self.conf, self.iou, self.max_det, self.class_agnostic, self.multi_label)
                if self.nms else None)


@dataclass
class Deployed:
    model: onnx.ModelProto              # the final model
    options: DeployOptions
    head: DetectionHead | None
    head_tensor: str | None = None      # the head's output tensor inside the final model
    outputs: dict = field(default_factory=dict)   # role -> output name (layouts)
    stage_in: onnx.ModelProto | None = None       # after the input adapter (None: no input adapter)
    stage_in_explicit: onnx.ModelProto | None = None
    base: onnx.ModelProto | None = None           # the optimized model the adapters started from
    info: dict = field(default_factory=dict)      # for the report
    info_explicit: dict = field(default_factory=dict)
    split: DetectionHead | None = None            # a split head, joined into `head` before the adapters


def apply(model: onnx.ModelProto, options: DeployOptions) -> Deployed:
    """The adapted model (the input is not modified)."""
    options.validate()
    needs_head = options.nms or options.output_layout != "anchors-last"
    if needs_head:
        head = the_head(model, "--nms" if options.nms else "--output-layout")
    else:   # for the metadata only (stride, names): a model without a head still gets the rest
        try:
            head = the_head(model, "--names")
        except OnnxrepError:
            if options.names is not None:
                raise
            head = None
    split = None
    if needs_head and head.layout == "split":   # boxes + scores outputs joined into one [B, 4+nc, A] first
        split, model = head, copy.deepcopy(model)
        head = join_split(model, head)
    result = Deployed(model=copy.deepcopy(model), options=options, head=None, base=model, split=split)
    info = {}
    if split is not None:
        info["split"] = {"boxes": split.output, "scores": split.scores, "joined": head.output}
    image_dims = None
    if options.input_format != "float" or options.bgr:
        explicit = copy.deepcopy(model)
        result.info_explicit = add_input_format(explicit, options.input_format, options.bgr, explicit=True)
        info["explicit_image"] = result.info_explicit["image"]
        info["input"] = add_input_format(result.model, options.input_format, options.bgr)
        result.stage_in, result.stage_in_explicit = copy.deepcopy(result.model), explicit
    try:
        vi = image_input(model, "metadata")
        image_dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]
    except OnnxrepError:
        pass
    settings = {}
    if needs_head:
        head = copy.copy(head)
        result.head = head
        if options.nms:
            add_nms(result.model, head, options.nms_settings)
            settings["nms"] = options.nms_settings.to_dict()
            info["nms"] = settings["nms"]
        else:
            result.outputs = add_layout(result.model, head, options.output_layout)
            settings["output_layout"] = options.output_layout
            shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
                      for o in result.model.graph.output if o.name in result.outputs.values()}
            info["output_layout"] = {"layout": options.output_layout, "outputs": result.outputs, "shapes": shapes}
        result.head_tensor = head.output
    if options.input_format != "float" or options.bgr:
        settings["input_format"] = options.input_format
        settings["channels"] = "BGR" if options.bgr else "RGB"
    meta = deploy_metadata(head, image_dims, options.names, settings)
    set_metadata(result.model, meta)
    info["metadata"] = meta
    result.info = info
    return result   # the run's door checks it (run.check_structure), at the level the original passes


def check(deployed: Deployed, feeds: list[dict], *, seed: int = 0, rtol=None, atol=None,
          noise_factor=None, values: list[dict] | None = None, final: dict | None = None) -> list[dict]:
    """Prove each adapter (see the module docstring). feeds: the verification inputs of the optimized
    model (float images); the uint8 ones are made from their shapes. values: the optimized model's outputs
    on `feeds` (the verification computed them); final: sample -> the final model's tensors where the
    verification ran the final model itself (verify(run_as=...)). Each check: name, ok, line."""
    from onnxrep.deploy.checks import as_input_types, check_input, check_outputs

    checks = []
    if deployed.split is not None and values is not None:   # the join in numpy: the final model's must equal it
        values = [{**v, deployed.head.output: _joined(v, deployed.split)} if deployed.split.output in v else v
                  for v in values]
    feeds = as_input_types(deployed.base, feeds)
    feeds_final = feeds
    if deployed.stage_in is not None:
        c, feeds_final, values = check_input(deployed, feeds, seed=seed, rtol=rtol, atol=atol,
                                             noise_factor=noise_factor)
        checks.append(c)
    if deployed.head is not None:
        checks.append(check_outputs(deployed, feeds_final, values, final if deployed.stage_in is None else None))
    return checks


def _joined(values: dict, split: DetectionHead):
    """numpy's join of a split head's outputs (what heads_other.join_split computes in the graph)."""
    from onnxrep.verify.detections import join_split as join

    return join(values[split.output], values[split.scores], split.boxes_first, split.scores_first)
