"""Which runtimes this machine offers (onnxruntime CPU/CUDA/TensorRT, OpenVINO), and one timed session per
model in them (ORT keeps its default full optimizations: this measures deployment)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass


from onnxrep.io import OnnxrepError


# name -> (onnxruntime provider, label); CPU is always there, the others only in some builds.
_ORT = {
    "ort-cpu": ("CPUExecutionProvider", "onnxruntime CPU"),
    "ort-cuda": ("CUDAExecutionProvider", "onnxruntime CUDA"),
    "ort-tensorrt": ("TensorrtExecutionProvider", "onnxruntime TensorRT"),
}
RUNTIME_NAMES = (*_ORT, "openvino")
_ALIASES = {"cpu": "ort-cpu", "ort": "ort-cpu", "onnxruntime": "ort-cpu", "cuda": "ort-cuda",
            "tensorrt": "ort-tensorrt", "trt": "ort-tensorrt", "ort-trt": "ort-tensorrt", "ov": "openvino"}


# ------------------------------------------------------------------------------------------ runtimes


@dataclass(frozen=True)
class Runtime:
    name: str
    label: str
    available: bool
    reason: str = ""      # why not available
    version: str = ""
    cpu: bool = True      # --threads applies


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def discover(ov_device: str = "CPU") -> list[Runtime]:
    """Every runtime bench knows, each marked available or not (with the reason)."""
    import onnxruntime as ort

    offered = set(ort.get_available_providers())
    found = []
    for name, (provider, label) in _ORT.items():
        ok = provider in offered
        found.append(Runtime(name, label, ok, "" if ok else f"this onnxruntime {ort.__version__} does not offer {provider}",
                             ort.__version__, cpu=name == "ort-cpu"))
    on_cpu = ov_device.upper().startswith("CPU")
    if importlib.util.find_spec("openvino") is not None:  # find_spec: don't pay openvino's import here
        found.append(Runtime("openvino", f"OpenVINO {ov_device}", True, "", _dist_version("openvino"), cpu=on_cpu))
    else:
        found.append(Runtime("openvino", f"OpenVINO {ov_device}", False,
                             "openvino is not installed (pip install 'onnxrep[openvino]')", cpu=on_cpu))
    return found


def parse_runtimes(values: Sequence[str] | None) -> list[str]:
    """--runtime values (repeatable, comma-separated, aliases allowed) as canonical names, in order."""
    names: list[str] = []
    for value in values or ():
        for raw in value.split(","):
            key = raw.strip().lower()
            if not key:
                continue
            name = _ALIASES.get(key, key)
            if name not in RUNTIME_NAMES:
                raise OnnxrepError(f"--runtime {raw.strip()!r}: unknown runtime (known: {', '.join(RUNTIME_NAMES)})")
            if name not in names:
                names.append(name)
    return names


def select_runtimes(requested: Sequence[str] | None, found: list[Runtime]) -> tuple[list[Runtime], list[Runtime]]:
    """(runtimes to run, unavailable ones skipped). Nothing requested: every available one."""
    by_name = {r.name: r for r in found}
    wanted = [by_name[n] for n in requested] if requested else found
    chosen = [r for r in wanted if r.available]
    skipped = [r for r in wanted if not r.available]
    if not chosen:
        raise OnnxrepError("no runtime to bench: " + "; ".join(f"{r.name}: {r.reason}" for r in skipped))
    return chosen, skipped


def parse_batches(value: str | None) -> list[int] | None:
    """--batch 1,8,32 -> [1, 8, 32]; None when not given (each model at its own batch)."""
    if not value:
        return None
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s <= 0 for s in sizes):
        raise OnnxrepError(f"--batch {value!r}: expected positive sizes, e.g. 1,8,32")
    return list(dict.fromkeys(sizes))


# ------------------------------------------------------------------------------------------ sessions


_OV_CORE = None


def _ov_core():
    global _OV_CORE
    if _OV_CORE is None:
        import openvino as ov

        _OV_CORE = ov.Core()
    return _OV_CORE


def open_session(runtime: Runtime, path: str | os.PathLike, feed: dict, *, threads: int | None = None,
                 ov_device: str = "CPU") -> Callable[[], object]:
    """A session for `path` in `runtime`, as a no-argument function that runs it once on `feed`."""
    if runtime.name == "openvino":
        core = _ov_core()
        model = core.read_model(str(path))
        if any(not p.get_partial_shape().is_static for p in model.inputs):
            model.reshape({name: list(a.shape) for name, a in feed.items()})  # compile static, as deployed
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads and runtime.cpu:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(model, ov_device, config)
        request = compiled.create_infer_request()
        return lambda: request.infer(feed)

    import onnxruntime as ort

    provider = _ORT[runtime.name][0]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads and runtime.cpu:
        options.intra_op_num_threads = threads
    providers = {"CPUExecutionProvider": [provider],
                 "CUDAExecutionProvider": [provider, "CPUExecutionProvider"],
                 "TensorrtExecutionProvider": [provider, "CUDAExecutionProvider", "CPUExecutionProvider"]}[provider]
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != provider:  # ORT falls back silently: timing that would be a lie
        raise RuntimeError(f"{provider} did not initialise (onnxruntime fell back to {session.get_providers()[0]})")
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, feed)
