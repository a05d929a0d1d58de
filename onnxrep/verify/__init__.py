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

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx

from onnxrep.io import OnnxrepError
from onnxrep.verify.inputs import check_feeds, load_input_data, make_inputs, parse_shapes, resolve_shapes
from onnxrep.verify.noise import Perturbation
from onnxrep.verify.runtime import session, short as _short
from onnxrep.verify.tolerance import NOISE_FACTOR, NOISE_FACTOR_FP16, OutputCheck, compare, dtype_name, output_levels

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
    values: list = field(default_factory=list, repr=False)   # per sample, the optimized model's compared outputs
    levels: dict = field(default_factory=dict, repr=False)   # optimized output -> its tolerance level (tolerance.py)
    ran_as: dict = field(default_factory=dict, repr=False)   # sample -> verify(run_as=...)'s tensors, where it ran
    firsts: dict = field(default_factory=dict)       # sample -> which models' outputs there were the first items
                                                     # of an earlier sample's run (verify/items.py), not run again

    @property
    def status(self) -> str:
        return "skipped" if not self.ran else ("verified" if self.ok else "failed")

    def to_dict(self) -> dict:
        data = asdict(replace(self, values=[], levels={}, ran_as={}))
        del data["values"], data["levels"], data["ran_as"]
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
        if self.firsts:
            shapes += "; " + "; ".join(f"{'both models' if w == 'both' else f'the {w}'} at sample {k + 1}: the first "
                                       f"items of the run before (the graph computes item by item)"
                                       for k, w in sorted(self.firsts.items()))
        for o in self.outputs:
            status = "ok" if o.ok else "FAIL"
            noise = (f"noise level {o.noise:.3g} x{o.noise_factor:g}" if o.noise_measured
                     else f"noise not measured ({self.noise_error or 'not a float output'}): fixed share of the range")
            text = (f"verify {o.name}: {status}  max abs {o.max_abs:.3g} ({o.max_rel:.2g} of its slice's largest value), "
                    f"{o.used:.2f} of tolerance [{noise}, atol {o.atol:g}"
                    f"{f', rtol {o.rtol:g}' if o.rtol else ''}; {self.samples} sample{'s' * (self.samples != 1)}"
                    f"{f': {shapes}' if shapes else ''}]")
            if o.note:
                text += f" ({o.note})"
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


def _as_model(model, structure: bool = False) -> onnx.ModelProto:
    """A ModelProto (borrowed), or the file loaded (only its structure when that is all that is read)."""
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model), load_external_data=not structure)


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

    outputs: list[str]           # the original's outputs computed (the cone of the compared ones), in order
    feeds: list[dict]
    clean: list[dict]            # per sample: output -> value
    noisy: list[dict]            # per sample: output -> the noisy twin's value (empty when not measured)
    noise_measured: bool
    skipped_reason: str = ""     # set when onnxruntime could not run the original
    noise_error: str = ""        # why the noisy twin could not run, when it could not
    as_float16: bool = False     # the twin was perturbed at float16's step
    derived: dict = field(default_factory=dict)   # sample -> the earlier sample whose first items it is: the
                                                  # twin's deviation taken from there, not run again
    proven: dict = field(default_factory=dict)    # sample -> that earlier sample, the original's own outputs
                                                  # taken from there too: its graph computes item by item

    @property
    def ran(self) -> bool:
        return not self.skipped_reason

    def level(self, name: str, precision: str = "same") -> dict | None:
        """{axis: noise level} of one output over all samples (verify/tolerance.py; None: not a float output).
        precision "fp16": without a measurement, the fixed share is float16's."""
        first = np.asarray(self.clean[0][name])
        if not np.issubdtype(first.dtype, np.floating) and dtype_name(first) != "bfloat16":
            return None
        refs = [r[name] for r in self.clean]
        measured = self.noise_measured and self.noisy and all(name in n for n in self.noisy)
        noises = [n[name] for n in self.noisy] if measured else None
        if precision == "fp16":   # float16's step is the least a float16 result moves
            return output_levels(refs, noises, "float16", NOISE_FACTOR_FP16)
        return output_levels(refs, noises, dtype_name(first))


# Samples the noisy twin runs on. Every one: a slice can be all zeros on one sample (a ReLU channel that no
# pixel of that image lights) and carry a sum of cancelling terms on the next, and only a twin run on that
# sample sees what its rounding does there (a RepVGG block: 26x its level when the twin saw the first only).
NOISE_SAMPLES = None


def reference(original, *, outputs: list[str] | None = None, samples: int = 2, seed: int = 0,
              shapes: dict | None = None, feeds: list[dict] | None = None, as_float16: bool = False,
              selected: set | frozenset = frozenset()) -> Reference:
    """Run the original, cut to the cone of `outputs` (default: all of them), on the verification inputs,
    then its noisy twin (verify/noise.py) on NOISE_SAMPLES of them. One session at a time; the
    ModelProto is borrowed, never changed.

    A sample that is an earlier one's first items (verify/inputs.py: batch 1 after batch 2) gets the twin's
    deviation from that earlier run. The original's own outputs there come from that run too only when its
    graph provably computes item by item (verify/items.py); otherwise it runs on the sample itself, since its
    batch-1 behaviour is what the batch-1 sample proves (a Squeeze without axes, a division by the batch
    size, a Reshape to a literal batch: none computes at batch 1 what it computes for the first item at 2)."""
    original = _as_model(original)
    outputs = [o.name for o in original.graph.output] if outputs is None else list(outputs)
    try:
        sess = session(original, outputs)
    except Exception as exc:  # noqa: BLE001 -- e.g. custom-domain ops: nothing to compare against
        return Reference(outputs, [], [], [], False, f"onnxruntime cannot run the original ({_short(exc)})")
    if feeds is None:
        feeds = make_inputs(original, samples, seed, shapes)
    check_feeds(feeds, sess)
    proven = _proven_samples(original, feeds, outputs)
    clean = []
    for k, feed in enumerate(feeds):
        if k in proven:   # the original's batch-1 result is its batch-2 result's first item (verify/items.py)
            j, b = proven[k]
            clean.append({o: clean[j][o][:b] for o in outputs})
            continue
        try:
            clean.append(dict(zip(outputs, sess.run(outputs, feed))))
        except Exception as exc:  # noqa: BLE001
            return Reference(outputs, feeds, [], [], False, f"onnxruntime failed to run the original ({_short(exc)})")
    del sess
    feeds_noisy = feeds[:NOISE_SAMPLES]
    derived = {k: v for k, v in proven.items() if k < len(feeds_noisy)}
    derived.update(_derived_samples(feeds_noisy, clean, outputs, selected, derived))
    own = [k for k in range(len(feeds_noisy)) if k not in derived]
    noisy, error = _noisy_runs(original, outputs, [feeds_noisy[k] for k in own], [clean[k] for k in own], seed + 1,
                               as_float16, selected)
    if noisy:
        by_sample = dict(zip(own, noisy))
        for k, (j, b) in sorted(derived.items()):
            by_sample[k] = {o: _moved_like(clean[k][o], clean[j][o][:b], by_sample[j][o][:b]) for o in outputs}
        noisy = [by_sample[k] for k in range(len(feeds_noisy))]
    return Reference(outputs, feeds, clean, noisy, not error, noise_error=error, as_float16=as_float16,
                     derived={k: j for k, (j, _) in derived.items()} if noisy else {},
                     proven={k: j for k, (j, _) in proven.items()})


def _proven_samples(original, feeds: list[dict], outputs: list[str]) -> dict[int, tuple[int, int]]:
    """{k: (j, b)}: sample k is the first b items of an earlier sample j and the original's graph computes
    every output item by item (verify/items.py): its outputs on k are its outputs on j's first b items, with
    no run. Anything the proof can't follow (a Squeeze without axes, a division by the batch size) leaves k
    to its own run."""
    from onnxrep.verify.items import itemwise

    proofs = {}

    def proven(k, j, b):
        batched = frozenset(n for n, v in feeds[k].items() if np.shape(v) != np.shape(feeds[j][n]))
        if len({np.shape(feeds[j][n])[0] for n in batched}) != 1:   # one batch size, or "B" means two
            return False
        if batched not in proofs:
            proofs[batched] = itemwise(original, outputs, set(batched))
        return proofs[batched]

    return _first_items_of(feeds, proven)


def _derived_samples(feeds: list[dict], clean: list[dict], outputs: list[str], selected,
                     known: dict | None = None) -> dict[int, tuple[int, int]]:
    """{k: (j, b)}: sample k is the first b items of an earlier sample j (verify/inputs.py makes the batch-1
    sample so) and the original computed each of its outputs item by item there: batch on axis 0, and item
    for item the same values as in j, up to rounding (no jump). The twin's deviation on those items is then
    k's own, and the twin need not run on k. Never for an output chosen through a selection (an NMS output's
    rows are detections, not items)."""
    return _first_items_of(feeds, lambda k, j, b: all(o not in selected and _items(clean[k][o], clean[j][o], b)
                                                      for o in outputs), known)


def _first_items_of(feeds: list[dict], accept, known: dict | None = None) -> dict[int, tuple[int, int]]:
    """{k: (j, b)}: sample k is the first b items of an earlier sample j that is no such sample itself (nor
    in `known`, whose samples are left out too), and accept(k, j, b)."""
    out, known = {}, known or {}
    for k in range(1, len(feeds)):
        if k in known:
            continue
        for j in range(k):
            if j in out or j in known:
                continue
            b = _prefix(feeds[k], feeds[j])
            if b and accept(k, j, b):
                out[k] = (j, b)
                break
    return out


def _prefix(feed: dict, before: dict) -> int:
    """b when `feed` is `before`'s first b items (on axis 0 of at least one input, the others equal), else 0."""
    if set(feed) != set(before):
        return 0
    sizes = set()
    for name, v in feed.items():
        v, w = np.asarray(v), np.asarray(before[name])
        if v.shape == w.shape and np.array_equal(v, w):
            continue
        if v.ndim == w.ndim >= 1 and v.shape[1:] == w.shape[1:] and v.shape[0] < w.shape[0] \
                and np.array_equal(v, w[:v.shape[0]]):
            sizes.add(v.shape[0])
            continue
        return 0
    return sizes.pop() if len(sizes) == 1 else 0


def _items(value, whole, b: int) -> bool:
    v, w = np.asarray(value), np.asarray(whole)
    if v.ndim < 1 or v.ndim != w.ndim or v.shape[0] != b or w.shape[0] <= b or v.shape[1:] != w.shape[1:]:
        return False
    return not _jump(w[:b], v) and np.array_equal(np.isfinite(w[:b]), np.isfinite(v)) \
        if np.issubdtype(v.dtype, np.floating) else bool(np.array_equal(w[:b], v))


def _moved_like(value, clean, noisy):
    """`value` moved as the twin moved `clean` to `noisy` (the same items of the same picture)."""
    v = np.asarray(value)
    if not np.issubdtype(v.dtype, np.floating):
        return v
    with np.errstate(invalid="ignore", over="ignore"):
        moved = v.astype(np.float64) + (np.asarray(noisy, np.float64) - np.asarray(clean, np.float64))
    return np.where(np.isfinite(moved), moved, np.asarray(noisy)).astype(v.dtype)


def _noisy_runs(original, outputs, feeds, clean, seed, as_float16, selected=frozenset()) -> tuple[list[dict], str]:
    """The twin's outputs per feed ([], why) when it can't run or measure. `selected` outputs (chosen through a
    TopK/ArgMax/NMS index: verify/selection.py) may jump: a near-tie swapped."""
    twin = Perturbation(original, seed, as_float16)
    try:
        sess = session(original, outputs, transform=twin)
        if not twin.moved:
            return [], "no parameter of the arithmetic to perturb"
        noisy = [dict(zip(outputs, sess.run(outputs, feed))) for feed in feeds]
    except Exception as exc:  # noqa: BLE001 -- without the twin, the fixed share of the range stands in
        return [], _short(exc)
    changed = [o for o in outputs if any(np.shape(n[o]) != np.shape(c[o]) for n, c in zip(noisy, clean))]
    if changed:
        return [], f"the perturbed twin's {', '.join(changed)} changed shape"
    if not as_float16:   # one step of float32 rounding moves even a chaotic random-weight network's outputs by
        # a few percent of their range at most (yolov9-e at 640: 1.5 %, as PyTorch and onnxruntime differ); a
        # quarter of it is a jump (an index moved), not rounding
        jumped = [o for o in outputs if o not in selected and any(_jump(c[o], n[o]) for n, c in zip(noisy, clean))]
        if jumped:
            return [], (f"the perturbed twin's {', '.join(jumped)} jumped (more than {JUMP:g} of the output's range: "
                        f"exact arithmetic the twin should not have moved)")
    return noisy, ""


JUMP = 0.25   # the share of an output's range that no rounding step moves it by (see _noisy_runs)


def _jump(clean, noisy) -> bool:
    c, n = np.asarray(clean), np.asarray(noisy)
    if c.dtype not in (np.float32, np.float64) or not c.size:   # float16's own step moves a deep net that far
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        a, b = c.astype(np.float64), n.astype(np.float64)
        finite = np.isfinite(a) & np.isfinite(b)
        scale = float(np.max(np.abs(a[finite]), initial=0.0))
        return bool(np.any(np.abs(a - b)[finite] > JUMP * scale)) if scale else False


def run_outputs(model, feeds: list[dict], names: list[str]) -> list[dict]:
    """`names` of `model` on every feed (float inputs cast to what the model declares: a float16-input model
    after --no-keep-io-types is fed the same numbers)."""
    sess = session(model, names)
    half = {i.name for i in sess.get_inputs() if i.type == "tensor(float16)"}
    out = []
    for feed in feeds:
        feed = {k: (np.asarray(v, np.float16) if k in half else v) for k, v in feed.items()}
        out.append(dict(zip(names, sess.run(names, feed))))
    return out


def plan(original, optimized, renamed: dict | None = None, dropped=None, strict_outputs: bool = False):
    """(pairs (original, optimized), missing, unexpected, not compared): which outputs a verification
    compares, from the two graphs alone (nothing runs)."""
    names = [o.name for o in _as_model(original, structure=True).graph.output]
    new = [o.name for o in _as_model(optimized, structure=True).graph.output]
    return _output_plan(names, new, dict(renamed or {}), dropped, strict_outputs)


def _io_types(model: onnx.ModelProto) -> tuple[dict, dict]:
    """({input: elem type}, {output: elem type}) as the graph declares them (initializers aside)."""
    inits = {t.name for t in model.graph.initializer}
    return ({i.name: i.type.tensor_type.elem_type for i in model.graph.input if i.name not in inits},
            {o.name: o.type.tensor_type.elem_type for o in model.graph.output})


def _computes_in_float16(model: onnx.ModelProto) -> bool:
    from onnxrep.ir.counts import walk_graphs

    half = onnx.TensorProto.FLOAT16
    if any(t.data_type == half for t in model.graph.initializer):
        return True
    return any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute)
               for g in walk_graphs(model.graph) for n in g.node)


def compatible(original, optimized) -> tuple[str, str]:
    """Can `optimized` be verified against `original`, and at which precision? From the graphs alone, before
    any run: (precision "same" | "fp16", a line saying why float16 rules apply, or ""). An input whose type
    differs is one clear error naming the adapter that makes such inputs."""
    a, b = _as_model(original, structure=True), _as_model(optimized, structure=True)
    (ins_a, outs_a), (ins_b, outs_b) = _io_types(a), _io_types(b)
    name = onnx.TensorProto.DataType.Name
    for k, t in ins_b.items():
        if k in ins_a and ins_a[k] != t and t:
            hint = (" (an --input-format uint8 adapter's input: verify the model before the adapter, or let "
                    "`onnxrep optimize --input-format` prove it)" if t == onnx.TensorProto.UINT8 else
                    " (--no-keep-io-types: float inputs are fed as the model declares them)" if t == onnx.TensorProto.FLOAT16
                    else "")
            if t != onnx.TensorProto.FLOAT16:
                raise OnnxrepError(f"input {k!r} is {name(t).lower()} in the second model and {name(ins_a[k]).lower()} "
                                   f"in the first: they can't be fed the same data{hint}")
    half = onnx.TensorProto.FLOAT16
    halved = [k for k, t in outs_b.items() if t == half and outs_a.get(k) == onnx.TensorProto.FLOAT]
    if halved or (not _computes_in_float16(a) and _computes_in_float16(b)):
        why = (f"outputs {', '.join(halved)} are float16" if halved else "it computes in float16 (float16 weights "
               "or Casts to float16)")
        return "fp16", (f"verify: the second model is float16 ({why}): float16 rules (noise at float16's step, "
                        f"K {NOISE_FACTOR_FP16:g}, detection agreement)")
    return "same", ""


def verify(original, optimized, *, samples: int = 2, seed: int = 0, shapes: dict | None = None,
           feeds: list[dict] | None = None, rtol: float | None = None, atol: float | None = None,
           noise_factor: float | None = None, renamed: dict | None = None, dropped=None,
           strict_outputs: bool = False, ref: Reference | None = None, precision: str = "same",
           detections: dict | None = None, stack: tuple | None = None, run_as: tuple | None = None) -> Verification:
    """Run both models on the same inputs and compare their outputs (see the module docstring).

    original/optimized: ModelProto or path. renamed: original output name -> new name. dropped: outputs of
    the original removed on purpose. strict_outputs: the optimized outputs must be exactly the original's
    minus `dropped` (optimize() asks for this; the `verify` command only lists what it could not compare).
    ref: the original's side computed once by reference() (several optimized models against one original);
    it must hold the compared outputs. precision: "fp16" when `optimized` computes in float16 what
    `original` computes in float32: the noise is measured at float16's step, and YOLO outputs get the
    detection agreement check (`detections`: conf, iou, max_det, min_agreement; `heads`: output -> layout,
    else found in the original's graph). The result's `values` hold the optimized model's compared outputs
    per sample, for the checks that follow (batch, adapters) to reuse.
    stack: (runs, batched inputs) for a model made dynamic: each run a list of sample indices fed as one
    batch (their `batched` inputs concatenated on axis 0, the others the first's), each item compared with
    the original's own result for its sample; the proof of the batch is added to `deploy`.
    run_as: (model, tensors, aliases): the compared outputs are computed by running `model` instead of
    `optimized`, a model that holds them as its own tensors (a deployment adapter's final model, built on
    `optimized`: what is written is then what is proven; aliases: optimized output -> its tensor's name in
    `model` where the adapter renamed it), `tensors` of it computed in the same runs and kept in `ran_as`
    for the samples that ran (the adapter's outputs: its check need not run the model again for them).
    `optimized` still decides which outputs are compared.
    """
    from onnxrep.verify.selection import scored_inputs, selected_tensors

    renamed = dict(renamed or {})
    pairs, missing, unexpected, not_compared = plan(original, optimized, renamed, dropped, strict_outputs)
    if not pairs:
        return Verification(ran=True, ok=False, missing=missing, unexpected=unexpected,
                            skipped_reason="no output of the original is in the optimized model")
    structure = _as_model(original, structure=True)   # a path is read once here (without external data)
    reached = selected_tensors(structure)
    scored, unmatched = {}, []   # the floats a selection chose by, compared like outputs (verify/selection.py)
    if reached & {a for a, _ in pairs}:
        found, unmatched = scored_inputs(structure, _as_model(optimized, structure=True))
        scored = {(a, b): what for a, b, what in found}
        if ref is not None:
            unmatched += [f"{what}: {a} (not in the given reference)" for (a, _), what in scored.items()
                          if a not in ref.outputs]
            scored = {k: v for k, v in scored.items() if k[0] in ref.outputs}
    if ref is not None:
        lacking = [a for a, _ in pairs if a not in ref.outputs]
        if lacking or ref.as_float16 != (precision == "fp16"):
            raise ValueError(f"verify(ref=...): the reference lacks {lacking}" if lacking else
                             f"verify(ref=...): a reference measured at {'float16' if ref.as_float16 else 'its own'} "
                             f"step for precision {precision!r}")
    compared = pairs + [k for k in scored if k not in pairs]
    selected = reached & {a for a, _ in compared}
    ref = ref or reference(original, outputs=[a for a, _ in compared], samples=samples, seed=seed, shapes=shapes,
                           feeds=feeds, as_float16=precision == "fp16", selected=selected)
    if not ref.ran:
        return Verification(ran=False, ok=False, skipped_reason=ref.skipped_reason)
    runs, batched = stack or ([[k] for k in range(len(ref.feeds))], set())
    names = [b for _, b in compared]
    # a sample that is an earlier one's first items, for a model whose graph computes item by item: its
    # outputs are that run's first items (verify/items.py), as for the original
    runner, extra, aliases = (optimized, [], {}) if stack or run_as is None else run_as
    inner = [aliases.get(n, n) for n in names]   # the compared outputs' tensors in the model that runs
    firsts = {} if stack else _proven_samples(_as_model(runner, structure=True), ref.feeds, inner)
    runs = [r for r in runs if not (len(r) == 1 and r[0] in firsts)]
    try:
        outs = run_outputs(runner, [_stacked(ref.feeds, run, batched) for run in runs],
                           list(dict.fromkeys(inner + list(extra))))
    except Exception as exc:  # noqa: BLE001 -- the original runs but ours does not: a failure, not a skip
        return Verification(ran=True, ok=False, skipped_reason=f"onnxruntime cannot run the optimized model ({_short(exc)})")
    ran_as = {run[0]: {e: out[e] for e in extra} for run, out in zip(runs, outs) if extra and len(run) == 1}
    outs = [{n: out[i] for n, i in zip(names, inner)} for out in outs]
    pieces, problems = _pieces(runs, outs, ref.feeds, batched, names)   # (sample, its outputs), one per item
    for k, (j, b) in sorted(firsts.items()):
        got = next(g for i, g in pieces if i == j)
        pieces.append((k, {n: np.asarray(got[n])[:b] for n in names}))
    gots = [next(got for k, got in pieces if k == i) for i in range(len(ref.feeds)) if any(k == i for k, _ in pieces)]
    checks, levels = [], {}
    for a, b in compared:
        level = levels[b] = ref.level(a, precision)
        # chosen through a selection: each element held to the loosest of its slices; where the twin itself
        # jumped there (its selection swapped rows: RT-DETR's decoder scores), to the whole output's level
        swapped = a in selected and level and any(_jump(c[a], n[a]) for c, n in zip(ref.clean, ref.noisy) if a in n)
        if swapped:
            level = {None: np.array([max(float(np.max(v, initial=0.0)) for v in level.values())])}
        worst = None
        for k, got in pieces:
            clean = ref.clean[k]
            want = np.asarray(clean[a])
            have = np.asarray(got[b])
            if precision == "fp16" and have.dtype == np.float16 and want.dtype != np.float16:
                have = have.astype(want.dtype)
            c = compare(b if a == b else f"{a} -> {b}", want, have, level, rtol=rtol, atol=atol,
                        factor=noise_factor if noise_factor is not None or precision != "fp16" else NOISE_FACTOR_FP16,
                        loosest=a in selected)
            c.noise_measured = ref.noise_measured and all(a in n for n in ref.noisy)
            c.note = (scored[(a, b)] + ("; " if a in selected else "") if (a, b) in scored else "") + (
                ("chosen through a selection's index, where the twin swapped rows: held to its whole-output level"
                 if swapped else "chosen through a selection's index: each element held to the loosest of its "
                                 "slices' levels") if a in selected else "")
            if worst is None or (worst.ok and not c.ok) or (worst.ok == c.ok and c.used > worst.used):
                worst = c
        checks.append(worst)
    for what in unmatched:   # a check that could not run is never a pass
        checks.append(OutputCheck(what, [], float("inf"), float("inf"), False, message=(
            "not found in the optimized model: the outputs chosen through it can't be verified")))
    ok = all(c.ok for c in checks) and not missing and not unexpected and len(gots) == len(ref.feeds)
    agreements = {}
    if precision == "fp16" and len(gots) == len(ref.feeds):
        agreements = _agreements(original, pairs, ref, gots, detections or {}, reached)
        ok = ok and all(a["rate"] >= a["min_agreement"] for a in agreements.values())
    deploy = []
    if stack:
        how = "; ".join(f"sample{'s' * (len(r) > 1)} {', '.join(map(str, r))} at batch "
                        f"{sum(_batch_of(ref.feeds[k], batched) for k in r)}" for r in runs)
        line = (f"dynamic batch: {'ok' if ok and not problems else 'FAIL'}, {how}: each item equal to the "
                f"original's result for its sample (the outputs' checks above)")
        deploy.append({"check": "batch", "ok": not problems, "line": line + "".join(f"; {p}" for p in problems[:3])})
        ok = ok and not problems
    return Verification(ran=True, ok=ok, samples=len(ref.feeds), outputs=checks, agreements=agreements,
                        renamed={a: b for a, b in pairs if a != b}, missing=missing, unexpected=unexpected,
                        not_compared=not_compared, shapes=[{k: list(np.shape(v)) for k, v in f.items()} for f in ref.feeds],
                        noise_measured=ref.noise_measured, noise_error=ref.noise_error, values=gots,
                        levels=levels, deploy=deploy, ran_as=ran_as, firsts={
                            k: "both" if k in ref.proven and k in firsts else "original" if k in ref.proven else "optimized"
                            for k in sorted(set(ref.proven) | set(firsts))})


def _batch_of(feed: dict, batched: set) -> int:
    return int(np.shape(next((feed[k] for k in feed if k in batched), [0]))[0]) if batched else 1


def _stacked(feeds: list[dict], run: list[int], batched: set) -> dict:
    """One run's inputs: the samples' batched inputs concatenated on axis 0, the others the first sample's."""
    if len(run) == 1:
        return feeds[run[0]]
    return {k: (np.concatenate([feeds[i][k] for i in run]) if k in batched else v) for k, v in feeds[run[0]].items()}


def _pieces(runs, outs, feeds, batched, names) -> tuple[list, list[str]]:
    """Each run's outputs cut back into one dict per sample; problems (an output whose batch is not the
    run's) in words."""
    pieces, problems = [], []
    for run, out in zip(runs, outs):
        if len(run) == 1:
            pieces.append((run[0], out))
            continue
        sizes = [_batch_of(feeds[k], batched) for k in run]
        bad = [n for n in names if np.ndim(out[n]) == 0 or np.shape(out[n])[0] != sum(sizes)]
        if bad:
            problems += [f"batch {sum(sizes)}: output {n} has shape {list(np.shape(out[n]))}" for n in bad]
            continue
        starts = np.cumsum([0] + sizes)
        for k, lo, hi in zip(run, starts[:-1], starts[1:]):
            pieces.append((k, {n: np.asarray(out[n])[lo:hi] for n in names}))
    return pieces, problems


# A tie: scores within 1.5x the largest move the noisy twin shows at float16's step. An honest float16
# conversion moved the scores at most 0.68x that far (yolov9-e; 0.42x or less on the others) over the 28
# builder models and forms of peer_benchmarks/calibrate_noise.py (it writes out/calibration.json).
EPS_FACTOR = 1.5
TWIN_SLACK = 2.5   # the conversion may disagree 2.5x as often as the twin does (it moved outputs <= 2.2x as far)


def _agreements(original, pairs, ref: Reference, gots: list[dict], settings: dict, chosen: set) -> dict:
    """Detection agreement per YOLO detection output, in whatever layout (verify/detections.py: the layouts
    the deploy code recognises in the original's graph, else [B, 4+nc, A] / [B, A, 4+nc] by shape; never an
    output in `chosen`, computed through a selection's index: verify/selection.py).

    The float32 model is also compared with its own noisy twin (itself, rounded at float16's step): a model
    whose detections move that much under float16 rounding alone (a chaotic random-weight network) can't
    be asked for more. The minimum is then lowered to 1 - TWIN_SLACK x the twin's disagreement share, and
    the report says so; a well-conditioned model's twin agrees fully and the minimum stands."""
    from onnxrep.verify.detections import agreement, detection_view, head_layouts

    out = {}
    minimum = settings.get("min_agreement", 0.99)
    options = {k: v for k, v in settings.items() if k in ("conf", "iou", "max_det")}
    layouts = settings.get("heads")
    if layouts is None:   # an output chosen through a selection's index (`chosen`: RT-DETR's top-300 rows) is no head
        layouts = head_layouts(_as_model(original), {a: np.shape(ref.clean[0][a]) for a, _ in pairs if a not in chosen})
    for a, b in pairs:
        first = np.asarray(ref.clean[0][a])
        layout = layouts.get(a)
        if layout is None or not np.issubdtype(first.dtype, np.floating):
            continue
        found = {}   # the reference's detections, shared by the twin's and the result's agreement
        try:
            clean = [detection_view(c, a, layout) for c in ref.clean]
            eps, twin = None, None
            if ref.noise_measured and all(a in n for n in ref.noisy):   # float16 rounding's own effect on the scores
                noisy = [detection_view(n, a, layout, dtype=first.dtype) for n in ref.noisy]
                eps = EPS_FACTOR * max(float(np.max(np.abs(c[:, 4:] - n[:, 4:]), initial=0.0))
                                       for c, n in zip(clean, noisy))
                twin = agreement(clean, noisy, eps=eps, cache=found, **options)
            news = [detection_view({**g, a: g[b]}, a, layout, rename=dict(pairs), dtype=first.dtype) for g in gots]
        except KeyError:   # a split head's scores output is not among the compared ones
            continue
        result = agreement(clean, news, eps=eps, cache=found, **options)
        required = minimum if twin is None else min(minimum, 1.0 - TWIN_SLACK * (1.0 - twin.rate))
        line = result.line() + (f" [{layout.split(':')[0]}]" if layout != "anchors-last" else "")
        if required < minimum:
            line += (f"; the float32 model agrees {twin.rate:.2%} with itself under float16 rounding, so "
                     f"{required:.2%} is required instead of {minimum:.2%}")
        out[b] = {**result.to_dict(), "min_agreement": required, "twin_rate": None if twin is None else twin.rate,
                  "line": line, "layout": layout}
    return out


def _level(name: str, refs: list[dict], noises: list[dict], noise_ok: bool, precision: str = "same") -> dict | None:
    """{axis: level} of one output (Reference.level for values not held in a Reference)."""
    return Reference([name], [], refs, noises, noise_ok).level(name, precision)
