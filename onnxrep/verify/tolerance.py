"""The rule an optimized output must meet, element by element, against the original's.

No axis of an output is privileged: YOLO heads come as ``[B, 4+nc, A]``, ``[B, A, 4+nc]`` (YOLOv5/v7's decoded
``[B, A, 5+nc]``), split boxes and scores, prototypes ``[B, 32, H, W]``, logits ``[N, C]``, NMS rows ``[N, 6]``,
and the axis whose slices share a scale (the box rows in pixels, the class rows in 0..1) is a different one
in each. So the level is computed along *every* axis, and each element gets the tightest:

    |a - b| <= atol + rtol·|b| + K · min_k level_k[i_k]          (i_k: the element's index along axis k)
    level_k[j] = max(noise_k[j], Q90_{j' ~ j}(noise_k[j'] / scale_k[j']) · scale_k[j], ulp · scale_k[j])

b the original, a the optimized, over every sample. noise_k[j] is the most the noisy twin of the original
(verify/noise.py: one rounding step perturbed at every operation) moved any element of slice j of axis k on
any sample; scale_k[j] the largest |b| in that slice. Every slice holding an element holds that element's own
noise, so no axis gives an element less than K times its own measured noise: taking the minimum can only
tighten a tolerance towards the slice that shares the element's scale (the class rows of an anchors-first
head, found along its last axis), never below what the twin showed. The pooled term, the 90th percentile of
the relative noise over the slices j' ~ j of like magnitude (scale within 10x, on a grid of 1/16 decade:
class rows pool with class rows, box rows with box rows), keeps a slice whose noise happened to be small in
these samples from getting a tolerance far below its neighbours' (the maximum of a few thousand
heavy-tailed errors varies 10-50x between draws of the noise), and a slice with fewer than 3 like slices
(itself included) pools with every slice of its axis; a slice of fewer than 256 elements over all
samples (an anchor's 4 + nc values) pools at the 99th percentile instead, since its own maximum is a
handful of draws (at the 90th, a quiet anchor's box failed honest rewrites of real exports at 1.2-1.4x its
tolerance); the ulp term is one unit in the last place of the slice's magnitude. An axis whose length
differs between samples (a symbolic batch fed 2 then 1) is not used; a rank <= 1 output, or one with no
usable axis, has one level.

K = 20 (``--noise-factor``): no correct rewrite of the 28 builder models and forms used more than 0.077 of
it (float16 conversions, K = 3: see NOISE_FACTOR_FP16), while a 1 % change of one Conv
kernel moves a well-conditioned model's outputs 100-1,000x its noise level (the mutation sweeps in tests/).
When the noisy twin can't run (an op it can't wrap), K·level falls back to a fixed share of the output's
largest magnitude (2e-5 float32, 1e-2 float16) and the report says so. NaN and Inf must sit at the same
places with the same signs; integer, bool and string outputs must be equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_FACTOR = 20.0
# A float16 model against its float32 original (optimize --precision fp16): the twin is perturbed at float16's
# step, the error the conversion makes. K was 6; the twin at float16's step moves outputs 7x (median, up to
# 15x) as far as an honest conversion does, so at K = 6 a bias moved by a tenth of its range passed at 0.8 of
# its tolerance (tests/verify/test_layouts.py's float16 sweeps, prototypes and YOLOv7 grid, each missed one
# mutation beyond 4K x the honest deviation); at K = 3 both sweeps catch every one they must, and no
# correct conversion of the builder models uses more than the share calibrate_noise.py records
# (peer_benchmarks/results/calibration.json: fp16_used).
NOISE_FACTOR_FP16 = 3.0
# Without a noise measurement, K x level is this share of the output's largest magnitude (the fixed rule
# onnxrep used before measuring noise: float32 re-association in a deep net stays ~1e-6 of the range).
UNMEASURED = {"float32": 2e-5, "float64": 1e-11, "float16": 1e-2, "bfloat16": 5e-2}
QUANTILE = 0.9
LIKE = 10.0      # slices whose magnitudes are within this factor pool their relative noise
GRID = 16        # ... measured on a grid of 1/GRID decade (a few hundred quantiles for any axis length)
MIN_POOL = 3     # slices a pool needs; fewer: the quantile over every slice of the axis
LARGE_SLICE = 256   # elements (over all samples) a slice needs for its pooled noise to be a 90th percentile
SMALL_QUANTILE = 0.99   # ... below it, nearly the most its like slices show
# dtype -> (unit in the last place relative to the magnitude, default atol). The atol only matters where a
# whole slice of the original is 0 (its level is 0 too): there it forgives a subnormal and nothing more.
DTYPES = {"float32": (2.0 ** -23, 1e-30), "float64": (2.0 ** -52, 1e-300), "float16": (2.0 ** -10, 2.0 ** -24),
          "bfloat16": (2.0 ** -7, 1e-30)}

Level = dict   # axis (None: the whole output) -> level per index along that axis, float64


def dtype_name(array: np.ndarray) -> str:
    return "bfloat16" if str(array.dtype) == "bfloat16" else array.dtype.name


def per_axis(x: np.ndarray, axis: int | None) -> np.ndarray:
    """max |x| (finite values only) per index along `axis` (None: one value for the whole), float64."""
    a = np.abs(np.asarray(x, np.float64))
    a = np.where(np.isfinite(a), a, 0.0)
    if axis is None or a.ndim == 0:
        return np.array([a.max(initial=0.0)])
    others = tuple(k for k in range(a.ndim) if k != axis)
    return a.max(axis=others, initial=0.0) if others else a


def per_channel(x: np.ndarray) -> np.ndarray:
    """max |x| along axis 1 of a rank >= 2 array (one value for rank <= 1): the channel of NCHW tensors."""
    x = np.asarray(x)
    return per_axis(x, 1 if x.ndim >= 2 else None)


def axes_of(shapes: list[tuple]) -> list[int | None]:
    """The axes a level is computed along, for an output seen with these shapes (one per sample)."""
    first = shapes[0]
    if len(first) < 2 or any(len(s) != len(first) for s in shapes):
        return [None]
    axes = [k for k in range(len(first)) if all(s[k] == first[k] for s in shapes)]
    return axes or [None]


@dataclass
class OutputCheck:
    name: str
    shape: list
    max_abs: float
    max_rel: float                # the largest |a - b| relative to the largest |b| of the element's slice
    ok: bool
    where: list | None = None     # index of the worst element (by share of its tolerance)
    message: str = ""
    used: float = 0.0             # the largest share of its tolerance any element used (<= 1 passes)
    noise: float = 0.0            # the largest noise level of any slice
    noise_factor: float = NOISE_FACTOR
    rtol: float = 0.0
    atol: float = 0.0
    channels: int = 1             # slices the levels were computed for, over all axes
    noise_measured: bool = True
    axis: int | None = None       # the axis whose level bounded the worst element
    note: str = ""                # what the compared tensor is, when not simply an output (verify/selection.py)


def _pooled(noise: np.ndarray, scale: np.ndarray, seen: np.ndarray, quantile: float = QUANTILE) -> np.ndarray:
    """Q90 of the relative noise over the slices of like magnitude (within LIKE, on the GRID), times scale.
    The relative noise of a slice is its noise over its magnitude on the samples the twin ran on (`seen`);
    a slice that was all zeros there has none of its own, and one with fewer than MIN_POOL like slices
    (itself included) takes the Q90 of all."""
    pooled = np.zeros_like(scale)
    known = np.flatnonzero(seen > 0)
    live = np.flatnonzero(scale > 0)
    if not known.size or not live.size:
        return pooled
    cells_known = np.round(np.log10(scale[known]) * GRID).astype(np.int64)
    order = np.argsort(cells_known, kind="stable")
    cells, rel = cells_known[order], (noise[known] / seen[known])[order]
    overall = float(np.quantile(rel, quantile))
    reach = int(round(np.log10(LIKE) * GRID))
    cell = np.round(np.log10(scale[live]) * GRID).astype(np.int64)
    for c in np.unique(cell):
        lo, hi = np.searchsorted(cells, c - reach, "left"), np.searchsorted(cells, c + reach, "right")
        # a pool of fewer than MIN_POOL slices is one or two draws, not a distribution: a lone sparse slice
        # (a Relu channel with one live value, computed by cancellation from terms 30x larger) got K x its
        # own near-zero noise and failed an honest rewrite at 1.9x; it takes the Q90 of all slices instead
        q = float(np.quantile(rel[lo:hi], quantile)) if hi - lo >= MIN_POOL else overall
        members = live[cell == c]
        pooled[members] = q * scale[members]
    return pooled


def levels(noise: np.ndarray | None, scale: np.ndarray, dtype: str, factor: float = NOISE_FACTOR,
           seen: np.ndarray | None = None, per_slice: int | None = None) -> np.ndarray:
    """level_k of the module docstring along one axis (noise None: not measured: K x level is
    UNMEASURED[dtype] of the output's range, for the K `factor` it will be multiplied by). seen: the slices'
    magnitudes on the samples the noise was measured on (default: scale)."""
    scale = np.asarray(scale, np.float64)
    ulp = DTYPES.get(dtype, (2.0 ** -23, 0.0))[0]
    floor = ulp * scale
    if noise is None:   # not measured (the noisy twin could not run): a fixed share of the output's range
        share = UNMEASURED.get(dtype, 1e-2) / factor
        return np.maximum(floor, share * (float(scale.max()) if scale.size else 0.0))
    noise = np.asarray(noise, np.float64)
    seen = scale if seen is None else np.asarray(seen, np.float64)
    # a slice of few elements (an anchor's 4 + nc values) estimates its noise from a handful of draws: it takes
    # the most its like slices show, not their 90th percentile, so it is never the tightest by chance
    quantile = QUANTILE if per_slice is None or per_slice >= LARGE_SLICE else SMALL_QUANTILE
    return np.maximum.reduce([noise, _pooled(noise, scale, seen, quantile), floor])


def output_levels(refs: list, noises: list | None, dtype: str, factor: float = NOISE_FACTOR) -> Level:
    """{axis: level along it} for one output seen in `refs` (one array per sample), its noisy twin's values
    in `noises` for the first len(noises) samples (None: not measured)."""
    refs = [np.asarray(r) for r in refs]
    out = {}
    for axis in axes_of([r.shape for r in refs]):
        scale = np.max([per_axis(r, axis) for r in refs], axis=0)
        noise = seen = None
        if noises is not None:
            with np.errstate(invalid="ignore", over="ignore"):   # inf - inf: per_axis skips non-finite values
                noise = np.max([per_axis(np.asarray(n, np.float64) - np.asarray(r, np.float64), axis)
                                for r, n in zip(refs, noises)], axis=0)
            seen = np.max([per_axis(r, axis) for r in refs[:len(noises)]], axis=0)
        per_slice = int(sum(np.size(r) for r in refs) // max(1, np.size(scale)))
        out[axis] = levels(noise, scale, dtype, factor, seen, per_slice)
    return out


def _as_level(level, a: np.ndarray, dtype: str) -> Level:
    if level is None:
        return output_levels([a], None, dtype)
    if isinstance(level, dict):
        return level
    level = np.asarray(level, np.float64).reshape(-1)   # a bare array: levels along the channel axis 1
    return {1: level} if a.ndim >= 2 and level.size == a.shape[1] and level.size > 1 else {None: level[:1]}


def _broadcast(level: Level, shape: tuple, loosest: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(the tightest level per element (loosest: the loosest), the axis it came from as an index into list(level))."""
    best, which = None, None
    for k, (axis, values) in enumerate(level.items()):
        view = [1] * len(shape)
        if axis is not None and len(shape):
            view[axis] = values.size
            v = values.reshape(view)
        else:
            v = np.full(view, float(values.max(initial=0.0)))
        if best is None:
            best, which = np.broadcast_to(v, shape).copy(), np.zeros(shape, np.int8)
        else:
            tighter = (v > best) if loosest else (v < best)
            best = np.where(tighter, v, best)
            which = np.where(tighter, np.int8(k), which)
    return best, which


def compare(name: str, ref: np.ndarray, got: np.ndarray, level=None, *,
            rtol: float | None = None, atol: float | None = None, factor: float | None = None,
            loosest: bool = False) -> OutputCheck:
    """One output, one sample. level: {axis: level} (output_levels()), a bare array along axis 1, or None
    (the fixed share of the range: no noise measured). loosest: each element held to the loosest of its
    slices' levels, not the tightest (an output chosen through a selection's index: verify/selection.py)."""
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
    level = _as_level(level, a, dtype)
    axes = list(level)
    finite = np.isfinite(a) & np.isfinite(b)
    special_ok = (np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(np.isinf(a), np.isinf(b))
                  and np.array_equal(a[np.isinf(a)], b[np.isinf(a)]))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(a - b), 0.0)
    magnitude = np.abs(np.where(finite, a, 0.0))
    lev, which = _broadcast(level, a.shape, loosest)
    tol = atol + rtol * magnitude + factor * lev
    share = diff / np.maximum(tol, 1e-300)
    ok = special_ok and not (diff > tol).any()
    # the error relative to the largest magnitude of the element's slice (the one of least magnitude along
    # any axis: the class row of a score, the box row of a coordinate); relative to the element itself, any
    # value near 0 would read as a large error
    slice_scale, _ = _broadcast({axis: per_axis(a, axis) for axis in axes}, a.shape)
    rel = np.where(slice_scale > 0, diff / np.maximum(slice_scale, 1e-300), 0.0)
    where, message, axis = None, "", None
    if share.size:
        idx = np.unravel_index(int(np.argmax(share)), share.shape)
        where = [int(i) for i in idx]
        axis = axes[int(which[idx])]
        if not special_ok:
            message = "NaN/Inf positions differ"
        elif not ok:
            along = "the whole output" if axis is None else f"channel {where[axis]} of axis {axis}"
            message = (f"worst at {where}: original {a[idx]:.6g}, optimized {b[idx]:.6g}, off by {diff[idx]:.3g} = "
                       f"{share[idx]:.3g}x its tolerance (noise level {lev[idx]:.3g}, {along})")
    top = max((float(v.max(initial=0.0)) for v in level.values()), default=0.0)
    return OutputCheck(name, list(ref.shape), float(diff.max()) if diff.size else 0.0,
                       float(rel.max()) if rel.size else 0.0, ok, where, message,
                       used=float(share.max()) if share.size else 0.0, noise=top,
                       channels=int(sum(np.size(v) for v in level.values())), axis=axis, **base)
