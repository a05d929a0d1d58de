"""Equivalence of two models in onnxruntime, output by output.

Both models run with ORT graph optimizations *disabled*: ORT's own fusions on both sides would hide a
wrong rewrite (they'd make the same change to the original). Inputs are seeded random values that
respect each input's shape; symbolic dimensions are resolved from --input-shape, else sensible defaults.
A pair passes when every element satisfies

    |a - b| <= atol + rtol * |b| + scale_rtol * max|b|        (b = original, max over the whole output)

and both agree on NaN/Inf positions. The scale term is there because float32 rounding in a deep network
is relative to the magnitudes that were summed, not to each result: a YOLO box coordinate of -1.7 px is
computed as (anchor - distance) * stride from terms of ~600 px, and onnxruntime's own fusions move it by
~2e-6 of the output's range. scale_rtol 2e-5 (float32) sits an order above that floor.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxrep.io import EXTERNAL_DATA_THRESHOLD, OnnxrepError, save, tensor_bytes

# dtype -> (rtol, atol, scale_rtol)
DEFAULT_TOL = {"float32": (1e-4, 1e-4, 2e-5), "float64": (1e-7, 1e-7, 1e-11), "float16": (1e-2, 1e-2, 1e-2),
               "bfloat16": (5e-2, 5e-2, 5e-2)}


@dataclass
class OutputCheck:
    name: str
    shape: list
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    ok: bool
    where: list | None = None   # index of the worst element when it failed
    message: str = ""
    scale_rtol: float = 0.0
    scale: float = 0.0          # max |original| of this output


@dataclass
class Verification:
    ran: bool
    ok: bool
    samples: int = 0
    outputs: list[OutputCheck] = field(default_factory=list)
    skipped_reason: str = ""
    renamed: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        if not self.ran:
            return [f"verification skipped: {self.skipped_reason}"]
        if not self.ok and not self.outputs:
            return [f"verification FAILED: {self.skipped_reason}"]
        out = []
        for o in self.outputs:
            status = "ok" if o.ok else "FAIL"
            of_scale = f" ({o.max_abs / o.scale:.2g} of max |y| {o.scale:.4g})" if o.scale else ""
            text = (f"verify {o.name}: {status}  max abs {o.max_abs:.3g}{of_scale}, max rel {o.max_rel:.3g}  "
                    f"[rtol {o.rtol:g}, atol {o.atol:g}, scale-rtol {o.scale_rtol:g}; "
                    f"{self.samples} sample{'s' * (self.samples != 1)}]")
            if not o.ok and o.message:
                text += f"  {o.message}"
            out.append(text)
        return out


def parse_shapes(specs: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """--input-shape name=1x3x640x640 (or name=1,3,640,640) into {name: [1, 3, 640, 640]}."""
    shapes = {}
    for spec in specs or ():
        name, sep, dims = spec.rpartition("=")
        try:
            values = [int(d) for d in dims.replace(",", "x").split("x") if d]
        except ValueError:
            values = []
        if not sep or not name or not values or any(v <= 0 for v in values):
            raise OnnxrepError(f"--input-shape {spec!r}: expected NAME=DIMxDIM..., e.g. images=1x3x640x640")
        shapes[name] = values
    return shapes


def _resolve_shape(vi: onnx.ValueInfoProto, overrides: dict, hint: int | None) -> list[int]:
    if vi.name in overrides:
        return list(overrides[vi.name])
    dims = vi.type.tensor_type.shape.dim
    shape = []
    for axis, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(d.dim_value)
        elif axis == 0:
            shape.append(1)  # batch
        elif len(dims) == 4 and axis >= 2:
            shape.append(hint or 640)  # an image's spatial size
        else:
            shape.append(1)
    return shape


def _image_hint(model: onnx.ModelProto) -> int | None:
    for p in model.metadata_props:
        if p.key in ("imgsz", "image_size") and p.value.strip("[]() ").split(",")[0].strip().isdigit():
            return int(p.value.strip("[]() ").split(",")[0])
    return None


def make_inputs(model: onnx.ModelProto, samples: int = 1, seed: int = 0, shapes: dict | None = None) -> list[dict]:
    """`samples` feeds for the model's real inputs (initializer-backed inputs are left to their defaults)."""
    init_names = {t.name for t in model.graph.initializer}
    shapes = shapes or {}
    rng = np.random.default_rng(seed)
    hint = _image_hint(model)
    unknown = set(shapes) - {i.name for i in model.graph.input}
    if unknown:
        raise OnnxrepError(f"--input-shape names unknown input(s) {sorted(unknown)}; "
                           f"inputs are {[i.name for i in model.graph.input if i.name not in init_names]}")
    defaults = {t.name: t for t in model.graph.initializer}
    feeds = []
    for _ in range(samples):
        feed = {}
        for vi in model.graph.input:
            if vi.name in init_names:
                # an input with a default: feed a different float value, or an optimizer that baked the
                # default in as a constant would pass unnoticed (integer defaults are usually shapes: kept)
                default = onnx.numpy_helper.to_array(defaults[vi.name])
                if np.issubdtype(default.dtype, np.floating):
                    feed[vi.name] = (default * rng.uniform(0.5, 1.5, default.shape) + rng.normal(0, 0.1, default.shape)
                                     ).astype(default.dtype)
                continue
            elem = vi.type.tensor_type.elem_type
            if not vi.type.HasField("tensor_type"):
                raise OnnxrepError(f"input {vi.name!r} is not a tensor: cannot generate random data for it")
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            shape = _resolve_shape(vi, shapes, hint)
            if np.issubdtype(dtype, np.floating) or elem == onnx.TensorProto.BFLOAT16:
                value = rng.random(shape, dtype=np.float32).astype(dtype)
            elif dtype == np.bool_:
                value = rng.random(shape) < 0.5
            else:
                value = rng.integers(0, 4, size=shape).astype(dtype)
            feed[vi.name] = np.asarray(value)  # rank 0 too: onnxruntime wants arrays, not numpy scalars
        feeds.append(feed)
    return feeds


def load_input_data(path: str | os.PathLike) -> list[dict]:
    try:
        with np.load(path) as data:
            return [{k: data[k] for k in data.files}]
    except Exception as exc:
        raise OnnxrepError(f"--input-data {path}: cannot read as .npz ({exc})") from exc


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(bool)": np.bool_, "tensor(int16)": np.int16, "tensor(uint16)": np.uint16}


def check_feeds(feeds: list[dict], session) -> None:
    """Inputs that don't fit the model are the user's mistake (exit 2), not a reason to skip verification."""
    spec = {i.name: i for i in list(session.get_inputs()) + list(session.get_overridable_initializers())}
    for feed in feeds:
        unknown = sorted(set(feed) - set(spec))
        if unknown:
            raise OnnxrepError(f"input data names unknown input(s) {unknown}; the model's inputs are {sorted(spec)}")
        for name, value in feed.items():
            want = _ORT_TYPES.get(spec[name].type)
            if want is not None and np.asarray(value).dtype != want:
                raise OnnxrepError(f"input {name!r}: data is {np.asarray(value).dtype}, the model wants {np.dtype(want).name}")
            rank = len(spec[name].shape)
            if np.ndim(value) != rank:
                raise OnnxrepError(f"input {name!r}: data has rank {np.ndim(value)}, the model wants rank {rank} "
                                   f"{spec[name].shape}")
            for axis, (have, need) in enumerate(zip(np.shape(value), spec[name].shape)):
                if isinstance(need, int) and need > 0 and have != need:
                    raise OnnxrepError(f"input {name!r}: data has {have} on axis {axis}, the model wants {need}")


def _session(model: onnx.ModelProto | str | os.PathLike, workdir: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        if tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
            path = Path(workdir) / f"m{len(os.listdir(workdir))}.onnx"
            save(model, path, external_data=True)
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def _dtype_name(array: np.ndarray) -> str:
    return "bfloat16" if str(array.dtype) == "bfloat16" else array.dtype.name


def compare(name: str, ref: np.ndarray, got: np.ndarray, rtol: float | None, atol: float | None,
            scale_rtol: float | None = None) -> OutputCheck:
    drt, dat, dsr = DEFAULT_TOL.get(_dtype_name(ref), (0.0, 0.0, 0.0))
    rtol = drt if rtol is None else rtol
    atol = dat if atol is None else atol
    scale_rtol = dsr if scale_rtol is None else scale_rtol
    if ref.dtype != got.dtype:
        return OutputCheck(name, list(ref.shape), float("inf"), float("inf"), rtol, atol, False,
                           message=f"dtype {got.dtype} != original {ref.dtype}")
    if ref.shape != got.shape:
        return OutputCheck(name, list(ref.shape), float("inf"), float("inf"), rtol, atol, False,
                           message=f"shape {list(got.shape)} != original {list(ref.shape)}")
    if not np.issubdtype(ref.dtype, np.number) or ref.dtype == np.bool_:
        equal = np.array_equal(ref, got)
        return OutputCheck(name, list(ref.shape), 0.0 if equal else float("inf"), 0.0 if equal else float("inf"),
                           rtol, atol, equal, message="" if equal else "values differ")
    a = ref.astype(np.float64)
    b = got.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    special_ok = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[np.isinf(a)], b[np.isinf(a)]) \
        and np.array_equal(np.isinf(a), np.isinf(b))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: handled by special_ok above
        diff = np.where(finite, np.abs(a - b), 0.0)
    # relative error where it means something: elements that aren't ~0 (there atol governs)
    rel = np.where(np.abs(a) > max(atol, 1e-12), diff / np.maximum(np.abs(a), 1e-300), 0.0)
    magnitude = np.abs(np.where(finite, a, 0.0))
    scale = float(magnitude.max()) if magnitude.size else 0.0
    bad = diff > atol + rtol * magnitude + scale_rtol * scale
    ok = special_ok and not bad.any()
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    where, message = None, ""
    if not ok:
        if not special_ok:
            message = "NaN/Inf positions differ"
        else:
            idx = np.unravel_index(int(np.argmax(np.where(bad, diff, -1.0))), diff.shape)
            where = [int(i) for i in idx]
            message = f"worst at {where}: original {a[idx]:.6g}, optimized {b[idx]:.6g}"
    return OutputCheck(name, list(ref.shape), max_abs, max_rel, rtol, atol, ok, where, message, scale_rtol, scale)


def verify(original, optimized, *, samples: int = 1, seed: int = 0, shapes: dict | None = None,
           feeds: list[dict] | None = None, rtol: float | None = None, atol: float | None = None,
           scale_rtol: float | None = None, renamed: dict | None = None) -> Verification:
    """Run both models on the same inputs and compare every output present in both.

    original/optimized: ModelProto or path. `renamed` maps original output names to new names when the
    optimizer renamed outputs (e.g. --rename-outputs).
    """
    renamed = dict(renamed or {})
    with tempfile.TemporaryDirectory(prefix="onnxrep-verify-") as work:
        try:
            ref_sess = _session(original, work)
        except Exception as exc:  # e.g. custom-domain ops: nothing to compare against
            return Verification(ran=False, ok=True, skipped_reason=f"onnxruntime cannot run the original ({_short(exc)})")
        try:
            new_sess = _session(optimized, work)
        except Exception as exc:  # the original runs but ours does not: that is a failure, not a skip
            return Verification(ran=True, ok=False, skipped_reason=f"onnxruntime cannot load the optimized model ({_short(exc)})")
        ref_outputs = [o.name for o in ref_sess.get_outputs()]
        new_outputs = {o.name for o in new_sess.get_outputs()}
        # an original output whose name was given to another (renamed) output is gone, not that one
        taken = set(renamed.values()) - set(renamed)
        pairs = [(n, renamed.get(n, n)) for n in ref_outputs
                 if renamed.get(n, n) in new_outputs and (n in renamed or n not in taken)]
        if not pairs:  # an optimizer always keeps at least one of the original's outputs
            return Verification(ran=True, ok=False, skipped_reason="no output of the original is in the optimized model")
        if feeds is None:
            ref_model = original if isinstance(original, onnx.ModelProto) else onnx.load(str(original), load_external_data=False)
            feeds = make_inputs(ref_model, samples, seed, shapes)
        check_feeds(feeds, ref_sess)
        checks: dict[str, OutputCheck] = {}
        for feed in feeds:
            try:
                ref = ref_sess.run([a for a, _ in pairs], feed)
            except Exception as exc:
                return Verification(ran=False, ok=True, skipped_reason=f"onnxruntime failed to run the original ({_short(exc)})")
            try:
                got = new_sess.run([b for _, b in pairs], feed)
            except Exception as exc:
                return Verification(ran=True, ok=False, skipped_reason=f"onnxruntime failed to run the optimized model ({_short(exc)})")
            for (a, b), r, g in zip(pairs, ref, got):
                c = compare(b if a == b else f"{a} -> {b}", np.asarray(r), np.asarray(g), rtol, atol, scale_rtol)
                prev = checks.get(a)
                if prev is None or (prev.ok and not c.ok) or (prev.ok == c.ok and c.max_abs > prev.max_abs):
                    checks[a] = c
    outs = [checks[a] for a, _ in pairs]
    return Verification(ran=True, ok=all(c.ok for c in outs), samples=len(feeds), outputs=outs,
                        renamed={a: b for a, b in pairs if a != b})


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")
