"""Equivalence of two models in onnxruntime, output by output, channel by channel.

    verification = verify(original, optimized, dropped=["output0"])
    verification.status   # "verified" | "failed" | "skipped" (onnxruntime could not run the original)

Both models run in onnxruntime with graph optimizations *disabled* (ORT's own fusions on both sides would
hide a wrong rewrite), one session at a time, on the same inputs (verify/inputs.py: two samples by
default, a symbolic batch at 2 then 1, image-like pictures for image inputs). The original runs together
with its noisy twin (verify/noise.py), which measures how much float rounding this network amplifies; each
optimized output must stay within a small multiple of that, per channel (verify/tolerance.py).

The set of outputs is checked too: every output of the original must be in the optimized model (renamed
ones followed), except those the optimizer dropped on purpose; no output may appear from nowhere.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxrep.io import EXTERNAL_DATA_THRESHOLD, save, tensor_bytes
from onnxrep.verify.inputs import check_feeds, load_input_data, make_inputs, parse_shapes, resolve_shapes
from onnxrep.verify.noise import appended, noisy_twin
from onnxrep.verify.tolerance import NOISE_FACTOR, NOISE_FACTOR_FP16, OutputCheck, compare, dtype_name, levels, per_channel

__all__ = ["verify", "reference", "Reference", "Verification", "OutputCheck", "compare", "make_inputs", "parse_shapes", "load_input_data",
           "resolve_shapes", "NOISE_FACTOR"]


@dataclass
class Verification:
    ran: bool
    ok: bool
    samples: int = 0
    outputs: list[OutputCheck] = field(default_factory=list)
    skipped_reason: str = ""      # why it could not run (ran False), or why it failed without an output to blame
    renamed: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)     # outputs of the original lost without being dropped
    unexpected: list = field(default_factory=list)  # outputs of the optimized model the original doesn't have
    not_compared: list = field(default_factory=list)  # outputs absent from the optimized model (verify command)
    shapes: list = field(default_factory=list)      # per sample, the input shapes fed
    noise_measured: bool = True
    noise_error: str = ""
    agreements: dict = field(default_factory=dict)   # output -> detection agreement (float16 results)
    deploy: list = field(default_factory=list)       # the deployment adapters' checks (onnxrep/deploy)

    @property
    def status(self) -> str:
        return "skipped" if not self.ran else ("verified" if self.ok else "failed")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["status"] = self.status
        return data

    def lines(self) -> list[str]:
        if not self.ran:
            return [f"verification could not run: {self.skipped_reason}"]
        out = []
        if self.missing:
            out.append(f"verify: FAIL  output{'s' * (len(self.missing) > 1)} {', '.join(self.missing)} of the original "
                       f"missing from the optimized model (no pass dropped them)")
        if self.unexpected:
            out.append(f"verify: FAIL  output{'s' * (len(self.unexpected) > 1)} {', '.join(self.unexpected)} "
                       f"not in the original")
        if not self.outputs and self.skipped_reason:
            out.append(f"verification FAILED: {self.skipped_reason}")
        shapes = "; ".join(", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in s.items()) for s in self.shapes)
        for o in self.outputs:
            status = "ok" if o.ok else "FAIL"
            noise = (f"noise level {o.noise:.3g} x{o.noise_factor:g}" if o.noise_measured
                     else f"noise not measured ({self.noise_error or 'not a float output'}): fixed share of the range")
            text = (f"verify {o.name}: {status}  max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}, "
                    f"{o.used:.2f} of tolerance [{noise}, atol {o.atol:g}"
                    f"{f', rtol {o.rtol:g}' if o.rtol else ''}; {self.samples} sample{'s' * (self.samples != 1)}"
                    f"{f': {shapes}' if shapes else ''}]")
            if not o.ok and o.message:
                text += f"  {o.message}"
            out.append(text)
        for name in self.not_compared:
            out.append(f"verify {name}: not compared (absent from the optimized model)")
        for name, a in self.agreements.items():
            out.append(f"verify {name}: {a['line']}")
        out.extend(f"verify deploy {c['line']}" for c in self.deploy)
        return out

    def add_deploy(self, checks: list[dict]) -> None:
        self.deploy = self.deploy + checks
        self.ok = self.ok and all(c["ok"] for c in checks)


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


def _as_model(model) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _output_plan(ref_outputs, new_outputs, renamed, dropped, strict):
    """(pairs (original, optimized), missing, unexpected, not compared)."""
    dropped = set(dropped or ())
    taken = set(renamed.values()) - set(renamed)   # a name given to another (renamed) output
    pairs, missing, not_compared = [], [], []
    for n in ref_outputs:
        target = renamed.get(n, n)
        if n in dropped:
            continue
        if target in new_outputs and (n in renamed or n not in taken):
            pairs.append((n, target))
        elif strict:
            missing.append(n)
        else:
            not_compared.append(n)
    expected = {b for _, b in pairs}
    unexpected = sorted(set(new_outputs) - expected) if strict else []
    return pairs, missing, unexpected, not_compared


@dataclass
class Reference:
    """The original's side of a verification: its outputs and its noisy twin's, per sample."""

    outputs: list[str]           # the original's graph outputs, in order
    feeds: list[dict]
    clean: list[dict]            # per sample: output -> value
    noisy: list[dict]            # per sample: output -> the noisy twin's value (empty when not measured)
    noise_measured: bool
    skipped_reason: str = ""     # set when onnxruntime could not run the original
    noise_error: str = ""        # why the noisy twin could not run, when it could not

    @property
    def ran(self) -> bool:
        return not self.skipped_reason


def reference(original, *, samples: int = 2, seed: int = 0, shapes: dict | None = None,
              feeds: list[dict] | None = None, as_float16: bool = False) -> Reference:
    """Run the original (with its noisy twin) on the verification inputs. The ModelProto is borrowed: the
    twin is appended for the session and removed again before this returns."""
    original = _as_model(original)
    outputs = [o.name for o in original.graph.output]
    with tempfile.TemporaryDirectory(prefix="onnxrep-verify-") as work:
        noisy_nodes, noisy_outputs, twins = noisy_twin(original, seed + 1, as_float16)
        sess, noise_ok, noise_error = None, True, ""
        try:
            with appended(original, noisy_nodes, noisy_outputs):
                sess = _session(original, work)
        except Exception as exc:  # noqa: BLE001 -- without the twin, the fixed share of the range stands in
            noise_ok, noise_error = False, _short(exc)
        if sess is None:
            try:
                sess = _session(original, work)
            except Exception as exc:  # noqa: BLE001 -- e.g. custom-domain ops: nothing to compare against
                return Reference(outputs, [], [], [], False, f"onnxruntime cannot run the original ({_short(exc)})")
        if feeds is None:
            feeds = make_inputs(original, samples, seed, shapes)
        check_feeds(feeds, sess)
        noisy = [twins[a] for a in outputs if a in twins] if noise_ok else []
        clean_all, noisy_all = [], []
        for feed in feeds:
            try:
                values = sess.run(outputs + noisy, feed)
            except Exception as exc:  # noqa: BLE001
                return Reference(outputs, feeds, [], [], False, f"onnxruntime failed to run the original ({_short(exc)})")
            clean_all.append(dict(zip(outputs, values[:len(outputs)])))
            noisy_all.append({a: v for a, v in zip([x for x in outputs if x in twins] if noisy else [],
                                                   values[len(outputs):])})
    return Reference(outputs, feeds, clean_all, noisy_all, noise_ok, noise_error=noise_error)


def verify(original, optimized, *, samples: int = 2, seed: int = 0, shapes: dict | None = None,
           feeds: list[dict] | None = None, rtol: float | None = None, atol: float | None = None,
           noise_factor: float | None = None, renamed: dict | None = None, dropped=None,
           strict_outputs: bool = False, ref: Reference | None = None, precision: str = "same",
           detections: dict | None = None) -> Verification:
    """Run both models on the same inputs and compare their outputs (see the module docstring).

    original/optimized: ModelProto or path. renamed: original output name -> new name. dropped: outputs of
    the original removed on purpose. strict_outputs: the optimized outputs must be exactly the original's
    minus `dropped` (optimize() asks for this; the `verify` command only lists what it could not compare).
    ref: the original's side computed once by reference() (several optimized models against one original).
    precision: "fp16" when `optimized` computes in float16 what `original` computes in float32: the noise is
    measured at float16's step, and YOLO outputs get the detection agreement check (`detections`: conf, iou,
    max_det, min_agreement).
    """
    renamed = dict(renamed or {})
    ref = ref or reference(original, samples=samples, seed=seed, shapes=shapes, feeds=feeds,
                           as_float16=precision == "fp16")
    if not ref.ran:
        return Verification(ran=False, ok=False, skipped_reason=ref.skipped_reason)
    new_model = optimized if isinstance(optimized, onnx.ModelProto) else onnx.load(str(optimized), load_external_data=False)
    pairs, missing, unexpected, not_compared = _output_plan(ref.outputs, [o.name for o in new_model.graph.output],
                                                            renamed, dropped, strict_outputs)
    if not pairs:
        return Verification(ran=True, ok=False, missing=missing, unexpected=unexpected,
                            skipped_reason="no output of the original is in the optimized model")
    with tempfile.TemporaryDirectory(prefix="onnxrep-verify-") as work:
        try:
            new_sess = _session(optimized, work)
        except Exception as exc:  # the original runs but ours does not: a failure, not a skip
            return Verification(ran=True, ok=False, skipped_reason=f"onnxruntime cannot load the optimized model ({_short(exc)})")
        gots = []
        half = {i.name for i in new_sess.get_inputs() if i.type == "tensor(float16)"}   # keep_io_types off
        for feed in ref.feeds:
            feed = {k: (np.asarray(v, np.float16) if k in half else v) for k, v in feed.items()}
            try:
                gots.append(dict(zip([b for _, b in pairs], new_sess.run([b for _, b in pairs], feed))))
            except Exception as exc:  # noqa: BLE001
                return Verification(ran=True, ok=False, skipped_reason=f"onnxruntime failed to run the optimized model ({_short(exc)})")
        del new_sess
    checks = []
    for a, b in pairs:
        level = _level(a, ref.clean, ref.noisy, ref.noise_measured, precision)
        worst = None
        for clean, got in zip(ref.clean, gots):
            want = np.asarray(clean[a])
            have = np.asarray(got[b])
            if precision == "fp16" and have.dtype == np.float16 and want.dtype != np.float16:
                have = have.astype(want.dtype)
            c = compare(b if a == b else f"{a} -> {b}", want, have, level, rtol=rtol, atol=atol,
                        factor=noise_factor if noise_factor is not None or precision != "fp16" else NOISE_FACTOR_FP16)
            c.noise_measured = ref.noise_measured and all(a in n for n in ref.noisy)
            if worst is None or (worst.ok and not c.ok) or (worst.ok == c.ok and c.used > worst.used):
                worst = c
        checks.append(worst)
    ok = all(c.ok for c in checks) and not missing and not unexpected
    agreements = {}
    if precision == "fp16":
        agreements = _agreements(pairs, ref, gots, detections or {})
        ok = ok and all(a["rate"] >= a["min_agreement"] for a in agreements.values())
    return Verification(ran=True, ok=ok, samples=len(ref.feeds), outputs=checks, agreements=agreements,
                        renamed={a: b for a, b in pairs if a != b}, missing=missing, unexpected=unexpected,
                        not_compared=not_compared, shapes=[{k: list(np.shape(v)) for k, v in f.items()} for f in ref.feeds],
                        noise_measured=ref.noise_measured, noise_error=ref.noise_error)


EPS_FACTOR = 4.0   # a tie: scores within 4x the largest move the noisy twin shows at float16's step
TWIN_SLACK = 2.5   # the conversion may disagree 2.5x as often as the twin does (it moved outputs <= 2.2x as far)


def _agreements(pairs, ref: Reference, gots: list[dict], settings: dict) -> dict:
    """Detection agreement per YOLO-shaped output (verify/detections.py).

    The float32 model is also compared with its own noisy twin (itself, rounded at float16's step): a model
    whose detections move that much under float16 rounding alone (a chaotic random-weight network) can't
    be asked for more. The minimum is then lowered to 1 - TWIN_SLACK x the twin's disagreement share, and
    the report says so; a well-conditioned model's twin agrees fully and the minimum stands."""
    from onnxrep.verify.detections import agreement, is_yolo_output

    out = {}
    minimum = settings.get("min_agreement", 0.99)
    options = {k: v for k, v in settings.items() if k in ("conf", "iou", "max_det")}
    for a, b in pairs:
        first = np.asarray(ref.clean[0][a])
        if not is_yolo_output(first.shape) or not np.issubdtype(first.dtype, np.floating):
            continue
        clean = [np.asarray(c[a]) for c in ref.clean]
        eps, twin = None, None
        if ref.noise_measured and all(a in n for n in ref.noisy):   # float16 rounding's own effect on the scores
            noisy = [np.asarray(n[a], first.dtype) for n in ref.noisy]
            eps = EPS_FACTOR * max(float(np.max(np.abs(np.asarray(c, np.float64)[:, 4:] - np.asarray(n, np.float64)[:, 4:])))
                                   for c, n in zip(clean, noisy))
            twin = agreement(clean, noisy, eps=eps, **options)
        result = agreement(clean, [np.asarray(g[b], first.dtype) for g in gots], eps=eps, **options)
        required = minimum if twin is None else min(minimum, 1.0 - TWIN_SLACK * (1.0 - twin.rate))
        line = result.line()
        if required < minimum:
            line += (f"; the float32 model agrees {twin.rate:.2%} with itself under float16 rounding, so "
                     f"{required:.2%} is required instead of {minimum:.2%}")
        out[b] = {**result.to_dict(), "min_agreement": required, "twin_rate": None if twin is None else twin.rate,
                  "line": line}
    return out


def _level(name: str, refs: list[dict], noises: list[dict], noise_ok: bool, precision: str = "same") -> np.ndarray | None:
    """Per-channel noise level of one output over all samples (None: not a float output). precision
    "fp16": without a measurement, the fixed share is float16's."""
    first = np.asarray(refs[0][name])
    if not np.issubdtype(first.dtype, np.floating) and dtype_name(first) != "bfloat16":
        return None
    if first.ndim >= 2 and any(np.asarray(r[name]).shape[1] != first.shape[1] for r in refs):
        return None   # the channel count depends on the input: compare each sample on its own floor
    scale = np.max([per_channel(r[name]) for r in refs], axis=0)
    noise = None
    if noise_ok and all(name in n for n in noises):
        with np.errstate(invalid="ignore", over="ignore"):   # inf - inf: per_channel skips non-finite values
            noise = np.max([per_channel(np.asarray(n[name], np.float64) - np.asarray(r[name], np.float64))
                            for r, n in zip(refs, noises)], axis=0)
    if precision == "fp16" and noise is None:
        return levels(None, scale, "float16", NOISE_FACTOR_FP16)
    return levels(noise, scale, dtype_name(first))


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")
