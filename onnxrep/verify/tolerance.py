"""The rule an optimized output must meet, element by element, against the original's.

Per output, per channel c (axis 1 of a rank >= 2 output: the 4 box rows and nc class rows of a YOLO
``[B, 4+nc, A]`` are channels, as are the columns of ``[N, C]``; a rank <= 1 output is one channel):

    |a - b| <= atol + rtol·|b| + K · level[c]
    level[c] = max(noise[c], Q90_{c' ~ c}(noise[c'] / scale[c']) · scale[c], ulp · scale[c])

b the original, a the optimized, over every sample. noise[c] is the most the noisy twin of the original
(verify/noise.py: one rounding step perturbed at every operation) moved channel c on any sample; scale[c]
the largest |b| in the channel. The pooled term, the 90th percentile of the relative noise over the
channels c' ~ c of like magnitude (scale within 10x: class rows pool with class rows, box rows with box
rows), keeps a channel whose noise happened to be small in these samples from getting a tolerance far
below its neighbours' (the maximum of a few thousand heavy-tailed errors varies 10-50x between draws of
the noise); the ulp term is one unit in the last place of the channel's magnitude.
K = 20 (``--noise-factor``): on the real-exporter tier and the builder models (45 models and forms) no
correct rewrite used more than a third of it, while a 1 % change of one Conv kernel moves a
well-conditioned model's outputs 100-1,000x its noise level (tests/test_verify.py; README, "Verification").
When the noisy twin can't run (an op it can't wrap), K·level falls back to a fixed share of the output's
largest magnitude (2e-5 float32, 1e-2 float16) and the report says so. NaN and Inf must sit at the same
places with the same signs; integer, bool and string outputs must be equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_FACTOR = 20.0
# A float16 model against its float32 original (optimize --precision fp16): the twin is perturbed at float16's
# step, the same error the conversion makes, once per linear op instead of at every op. Over 57 models
# (builder yolov9/gelan t-e in five exporters' forms, the real-exporter tier's YOLOv9, GELAN, YOLOv7 and timm
# files) a correct conversion moved each output at most 2.2x that level (median 1.0): K = 6.
NOISE_FACTOR_FP16 = 6.0
# Without a noise measurement, K x level is this share of the output's largest magnitude (the fixed rule
# onnxrep used before measuring noise: float32 re-association in a deep net stays ~1e-6 of the range).
UNMEASURED = {"float32": 2e-5, "float64": 1e-11, "float16": 1e-2, "bfloat16": 5e-2}
QUANTILE = 0.9
LIKE = 10.0      # channels whose magnitudes are within this factor pool their relative noise
# dtype -> (unit in the last place relative to the magnitude, default atol). The atol only matters where a
# whole channel of the original is 0 (its level is 0 too): there it forgives a subnormal and nothing more.
DTYPES = {"float32": (2.0 ** -23, 1e-30), "float64": (2.0 ** -52, 1e-300), "float16": (2.0 ** -10, 2.0 ** -24),
          "bfloat16": (2.0 ** -7, 1e-30)}


def dtype_name(array: np.ndarray) -> str:
    return "bfloat16" if str(array.dtype) == "bfloat16" else array.dtype.name


def per_channel(x: np.ndarray) -> np.ndarray:
    """max |x| per channel (see the module docstring), as float64 [C]."""
    a = np.abs(np.asarray(x, np.float64))
    a = np.where(np.isfinite(a), a, 0.0)
    if a.ndim >= 2 and a.size:
        return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).max(axis=1) if a.shape[1] else np.zeros(0)
    return np.array([a.max() if a.size else 0.0])


def channel_of(shape: tuple, index: tuple) -> int:
    return int(index[1]) if len(shape) >= 2 else 0


@dataclass
class OutputCheck:
    name: str
    shape: list
    max_abs: float
    max_rel: float
    ok: bool
    where: list | None = None     # index of the worst element (by share of its tolerance)
    message: str = ""
    used: float = 0.0             # the largest share of its tolerance any element used (<= 1 passes)
    noise: float = 0.0            # the largest noise level of any channel
    noise_factor: float = NOISE_FACTOR
    rtol: float = 0.0
    atol: float = 0.0
    channels: int = 1
    noise_measured: bool = True


def levels(noise: np.ndarray | None, scale: np.ndarray, dtype: str, factor: float = NOISE_FACTOR) -> np.ndarray:
    """level[c] of the module docstring (noise None: not measured: K x level is UNMEASURED[dtype] of the
    output's range, for the K `factor` it will be multiplied by)."""
    ulp = DTYPES.get(dtype, (2.0 ** -23, 0.0))[0]
    floor = ulp * scale
    if noise is None:   # not measured (the noisy twin could not run): a fixed share of the output's range
        share = UNMEASURED.get(dtype, 1e-2) / factor
        return np.maximum(floor, share * (float(scale.max()) if scale.size else 0.0))
    noise = np.asarray(noise, np.float64)
    pooled = np.zeros_like(scale)
    live = np.flatnonzero(scale > 0)
    if live.size:
        order = live[np.argsort(scale[live])]
        sorted_scale = scale[order]
        rel = noise[order] / sorted_scale
        lo = np.searchsorted(sorted_scale, sorted_scale / LIKE, side="left")
        hi = np.searchsorted(sorted_scale, sorted_scale * LIKE, side="right")
        for k, c in enumerate(order):
            pooled[c] = float(np.quantile(rel[lo[k]:hi[k]], QUANTILE)) * scale[c]
    return np.maximum.reduce([noise, pooled, floor])


def compare(name: str, ref: np.ndarray, got: np.ndarray, level: np.ndarray | None = None, *,
            rtol: float | None = None, atol: float | None = None, factor: float | None = None) -> OutputCheck:
    """One output, one sample. level: per-channel noise level (levels()); None = the ulp floor of `ref`."""
    dtype = dtype_name(ref)
    rtol = 0.0 if rtol is None else rtol
    atol = DTYPES.get(dtype, (0.0, 0.0))[1] if atol is None else atol
    factor = NOISE_FACTOR if factor is None else factor
    base = dict(rtol=rtol, atol=atol, noise_factor=factor)
    if ref.dtype != got.dtype:
        return OutputCheck(name, list(ref.shape), float("inf"), float("inf"), False,
                           message=f"dtype {got.dtype} != original {ref.dtype}", **base)
    if ref.shape != got.shape:
        return OutputCheck(name, list(ref.shape), float("inf"), float("inf"), False,
                           message=f"shape {list(got.shape)} != original {list(ref.shape)}", **base)
    if not np.issubdtype(ref.dtype, np.number) or ref.dtype == np.bool_ or np.issubdtype(ref.dtype, np.integer):
        equal = np.array_equal(ref, got)
        return OutputCheck(name, list(ref.shape), 0.0 if equal else float("inf"), 0.0 if equal else float("inf"),
                           equal, message="" if equal else "values differ", **base)
    a = ref.astype(np.float64)
    b = got.astype(np.float64)
    if level is None:
        level = levels(None, per_channel(a), dtype)
    finite = np.isfinite(a) & np.isfinite(b)
    special_ok = (np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(np.isinf(a), np.isinf(b))
                  and np.array_equal(a[np.isinf(a)], b[np.isinf(a)]))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(a - b), 0.0)
    magnitude = np.abs(np.where(finite, a, 0.0))
    if a.ndim >= 2:
        shape = [1] * a.ndim
        shape[1] = a.shape[1]
        lev = np.asarray(level, np.float64).reshape(shape)
    else:
        lev = np.asarray(level, np.float64).reshape(-1)[:1]
    tol = atol + rtol * magnitude + factor * lev
    share = diff / np.maximum(tol, 1e-300)
    bad = diff > tol
    ok = special_ok and not bad.any()
    # relative error where it means something: not on elements near 0 for their channel (below 1e-3 of its range)
    if a.ndim >= 2:
        chan_scale = per_channel(a).reshape(shape)
    else:
        chan_scale = np.asarray(per_channel(a)).reshape(-1)[:1]
    rel = np.where(magnitude > np.maximum(1e-3 * chan_scale, atol), diff / np.maximum(magnitude, 1e-300), 0.0)
    where, message = None, ""
    if share.size:
        idx = np.unravel_index(int(np.argmax(share)), share.shape)
        where = [int(i) for i in idx]
        if not special_ok:
            message = "NaN/Inf positions differ"
        elif not ok:
            c = channel_of(a.shape, idx)
            message = (f"worst at {where} (channel {c}): original {a[idx]:.6g}, optimized {b[idx]:.6g}, "
                       f"off by {diff[idx]:.3g} = {share[idx]:.3g}x its tolerance "
                       f"(noise level {float(lev.reshape(-1)[c if lev.size > 1 else 0]):.3g})")
    return OutputCheck(name, list(ref.shape), float(diff.max()) if diff.size else 0.0,
                       float(rel.max()) if rel.size else 0.0, ok, where, message,
                       used=float(share.max()) if share.size else 0.0,
                       noise=float(np.max(level)) if np.size(level) else 0.0,
                       channels=int(np.size(level)), **base)
