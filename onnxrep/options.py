"""What a run is asked to do, as small frozen groups, each validated when it is built.

    options = RunOptions.from_kwargs(precision="fp16", nms="ort", dynamic_batch=True)

Every usage error is raised here, before the first model is loaded (the CLI builds these groups from its
flags; ``onnxrep.optimize(path, **kwargs)`` from its keyword arguments). The deployment group is
deploy.DeployOptions, validated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from onnxrep.deploy import DeployOptions
from onnxrep.io import OnnxrepError
from onnxrep.quantize import Int8Options


def as_tuple(value) -> tuple:
    """Output and node selections: a name, an index, or a sequence of them."""
    if value is None:
        return ()
    return (value,) if isinstance(value, (str, int)) else tuple(value)


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to keep (the prune_outputs pass)."""

    aux: str = "auto"                 # "auto": drop a recognised training-only head; "keep": keep every output
    keep: tuple = ()                  # names or 0-based indices; overrides aux
    drop: tuple = ()
    rename: bool = False              # the kept main output becomes 'output0'

    def __post_init__(self):
        object.__setattr__(self, "keep", as_tuple(self.keep))
        object.__setattr__(self, "drop", as_tuple(self.drop))
        if self.aux not in ("auto", "keep"):
            raise OnnxrepError(f"--aux {self.aux!r}: choose auto or keep")


@dataclass(frozen=True)
class VerifyOptions:
    """The onnxruntime proof (verify/)."""

    enabled: bool = True
    samples: int = 2
    seed: int = 0
    input_shapes: dict | None = None  # input -> dims, for symbolic dims
    input_data: list | None = None    # the user's feeds instead of generated ones
    rtol: float | None = None
    atol: float | None = None
    noise_factor: float | None = None
    allow_unverified: bool = False    # a result onnxruntime could not prove (it cannot run the original) is still ok

    def __post_init__(self):
        if self.samples < 1:
            raise OnnxrepError(f"--samples {self.samples}: must be at least 1")
        for name in ("rtol", "atol", "noise_factor"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise OnnxrepError(f"--{name.replace('_', '-')} {value}: must be a number >= 0")


@dataclass(frozen=True)
class PrecisionOptions:
    """float32, or float16 where it is safe (passes/float16.py)."""

    precision: str = "fp32"
    keep_io_types: bool = True
    fp32_ops: tuple = ()
    fp32_nodes: tuple = ()
    min_agreement: float | None = None   # detections that must agree with the float32 model (verify/detections.py):
                                         # default 0.99 for fp16, 0.95 for int8

    def __post_init__(self):
        object.__setattr__(self, "fp32_ops", as_tuple(self.fp32_ops))
        object.__setattr__(self, "fp32_nodes", as_tuple(self.fp32_nodes))
        if self.precision not in ("fp32", "fp16", "int8"):
            raise OnnxrepError(f"precision {self.precision!r}: choose fp32, fp16 or int8")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise OnnxrepError(f"min agreement {self.min_agreement}: must be between 0 and 1")

    @property
    def agreement(self) -> float:
        if self.min_agreement is not None:
            return self.min_agreement
        return 0.95 if self.precision == "int8" else 0.99


@dataclass(frozen=True)
class BatchOptions:
    """The batch dimension (deploy/batch.py): made symbolic after the passes, or fixed before them."""

    dynamic: bool = False
    static: int | None = None
    overwrite_input_shapes: dict | None = None   # input -> dims written into the model itself

    def __post_init__(self):
        if self.dynamic and (self.static is not None or self.overwrite_input_shapes):
            raise OnnxrepError("--dynamic-batch and --static-batch / --overwrite-input-shape contradict each other")
        if self.static is not None and self.static < 1:
            raise OnnxrepError(f"--static-batch {self.static}: must be at least 1")

    @property
    def fixes_shapes(self) -> bool:
        return self.static is not None or bool(self.overwrite_input_shapes)


# optimize()'s keyword arguments -> (group, field)
_KWARGS = {
    "aux": ("outputs", "aux"), "keep_outputs": ("outputs", "keep"), "drop_outputs": ("outputs", "drop"),
    "rename_outputs": ("outputs", "rename"),
    "verify": ("verify", "enabled"), "samples": ("verify", "samples"), "seed": ("verify", "seed"),
    "input_shapes": ("verify", "input_shapes"), "input_data": ("verify", "input_data"), "rtol": ("verify", "rtol"),
    "atol": ("verify", "atol"), "noise_factor": ("verify", "noise_factor"),
    "allow_unverified": ("verify", "allow_unverified"),
    "precision": ("precision", "precision"), "keep_io_types": ("precision", "keep_io_types"),
    "fp32_ops": ("precision", "fp32_ops"), "fp32_nodes": ("precision", "fp32_nodes"),
    "min_agreement": ("precision", "min_agreement"),
    "dynamic_batch": ("batch", "dynamic"), "static_batch": ("batch", "static"),
    "overwrite_input_shapes": ("batch", "overwrite_input_shapes"),
    **{f.name: ("deploy", f.name) for f in fields(DeployOptions)},
    "int8_target": ("int8", "target"), "calib": ("int8", "calib"), "calib_size": ("int8", "calib_size"),
    "calib_method": ("int8", "calib_method"), "int8_exclude": ("int8", "exclude"), "int8_budget": ("int8", "budget"),
    "eval": ("int8", "eval"), "max_map_drop": ("int8", "max_map_drop"),
}
_GROUPS = {"outputs": OutputOptions, "verify": VerifyOptions, "precision": PrecisionOptions, "batch": BatchOptions,
           "deploy": DeployOptions, "int8": Int8Options}


@dataclass(frozen=True)
class RunOptions:
    """Everything one run is asked to do: the passes to run and one group per concern."""

    passes: tuple | None = None       # pass names, in pipeline order (None: all of DEFAULT_PIPELINE)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    precision: PrecisionOptions = field(default_factory=PrecisionOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)
    deploy: DeployOptions = field(default_factory=DeployOptions)
    int8: Int8Options = field(default_factory=Int8Options)

    def __post_init__(self):
        from onnxrep.passes import select

        self._check_int8()

        if self.passes is not None:
            object.__setattr__(self, "passes", as_tuple(self.passes))
        try:
            select(list(self.passes) if self.passes is not None else None)
        except ValueError as exc:
            raise OnnxrepError(str(exc)) from exc

    def _check_int8(self) -> None:
        """int8 needs calibration images and its own proof; the adapters that change the head come later."""
        q, d = self.int8, self.deploy
        if self.precision.precision != "int8":
            given = [flag for flag, value, default in (
                ("--calib", q.calib, None), ("--eval", q.eval, None), ("--int8-target", q.target, "trt"),
                ("--calib-method", q.calib_method, None), ("--int8-exclude", q.exclude, ()),
                ("--int8-budget", q.budget, 0), ("--calib-size", q.calib_size, 128),
                ("--max-map-drop", q.max_map_drop, 1.0)) if value != default]
            if given:
                raise OnnxrepError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} with --precision int8")
            return
        if not q.calib:
            raise OnnxrepError("--precision int8 needs calibration images: --calib DIR (or data.npz); random inputs "
                               "are not calibration")
        if not self.verify.enabled:
            raise OnnxrepError("--precision int8 with --no-verify: the int8 model is written only when its accuracy "
                               "proof holds (use --force to write one that misses it)")
        blocked = [flag for flag, on in (("--nms", d.nms), ("--output-layout", d.output_layout != "anchors-last"),
                                         ("--input-format", d.input_format != "float"), ("--bgr", d.bgr)) if on]
        if blocked:
            raise OnnxrepError(f"--precision int8 with {', '.join(blocked)}: not in one run yet (the adapters' proof "
                               f"compares with the float model); quantize, then run `onnxrep optimize MODEL.int8.onnx "
                               f"{' '.join(blocked)} ...` on the int8 model")
        if self.precision.min_agreement is not None:
            object.__setattr__(self, "int8", replace(q, min_agreement=self.precision.min_agreement))

    @classmethod
    def from_kwargs(cls, passes=None, **kwargs) -> "RunOptions":
        """The groups from optimize()'s flat keyword arguments (an unknown one is a TypeError, as in a call)."""
        parts: dict[str, dict] = {g: {} for g in _GROUPS}
        for key, value in kwargs.items():
            if key not in _KWARGS:
                raise TypeError(f"optimize() got an unexpected keyword argument {key!r}")
            group, name = _KWARGS[key]
            parts[group][name] = value
        if parts["deploy"].get("names") is not None:
            parts["deploy"]["names"] = list(parts["deploy"]["names"])
        return cls(passes=passes, **{g: _GROUPS[g](**values) for g, values in parts.items()})
