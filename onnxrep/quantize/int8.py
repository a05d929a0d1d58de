"""INT8 as Q/DQ, written by onnxruntime's own quantizer on ranges we calibrate once and place by the graph.

    hist = calibrate(model, images)                    # one pass over the calibration images
    q = quantize(model, hist.ranges("percentile-99.999"), "trt", exclude=float_islands(model))

Calibration: onnxruntime.quantization's HistogramCalibrater (every float tensor made an output, one image
at a time so memory stays one image's activations), kept as histograms: every method is then a reading of
the same histograms (MinMax their extremes, percentile their CDF, entropy ORT's KL search), so choosing a
method costs no second calibration. Quantization: onnxruntime.quantization.quantize_static, fed those ranges
through its calibration cache, with the target's settings (TARGETS). Our part is what the graph says:
the float islands excluded, each shared-scale group given one range (the union of its members'), and for
TensorRT the Q/DQ pair on an Add's Conv-fed input removed so the Conv and the Add fuse.
"""

from __future__ import annotations

import contextlib
import io as _pyio
import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxrep.io import OnnxrepError
from onnxrep.quantize.placement import conv_fed, producers, scale_groups


@dataclass(frozen=True)
class Target:
    name: str
    activation: str            # "int8" (symmetric, zero point 0) or "uint8" (asymmetric)
    op_types: tuple | None     # the op types quantized (None: every op onnxruntime can quantize)
    float_outputs: tuple       # op types whose outputs stay float (their consumers quantize them if needed)
    shared_scales: bool        # one scale per Concat/MaxPool/Resize/Slice/Split group
    residual_rule: bool        # no Q/DQ on an Add's Conv-fed input
    quantize_bias: bool        # int32 bias with its DQ (onnxruntime) or float bias (TensorRT)
    why: str


_TRT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "Resize", "Slice", "Split",
            "AveragePool")
TARGETS = {
    "trt": Target("trt", "int8", _TRT_OPS, ("Conv", "ConvTranspose", "Gemm", "MatMul"), True, True, False,
                  "TensorRT explicit quantization: int8 symmetric (zero point 0), per-channel weights, Q/DQ on the "
                  "inputs of Conv/Gemm/MatMul and the residual input of Add, one scale per Concat group"),
    "openvino": Target("openvino", "int8", _TRT_OPS, ("Conv", "ConvTranspose", "Gemm", "MatMul"), True, True, False,
                       "OpenVINO reads Q/DQ as FakeQuantize and runs the int8 symmetric form of the trt target fastest "
                       "on CPU (the same placement)"),
    "ort": Target("ort", "uint8", None, (), False, False, True,
                  "onnxruntime CPU: uint8 activations, int8 per-channel weights, every op onnxruntime has a "
                  "quantized kernel for (QLinearConv, QLinearAdd, QLinearConcat, ...)"),
}

METHODS = ("minmax", "percentile-99.9", "percentile-99.99", "percentile-99.999", "entropy")
SEARCH = ("minmax", "percentile-99.99", "percentile-99.999")   # tried by default (entropy is slow: explicit only)
BINS = 2048


def ort_quantization():
    """onnxruntime.quantization, imported so that it finds its own modules: it imports onnxruntime.transformers,
    which puts its folder at the END of sys.path and imports top-level names such as `float16`; a float16.py
    anywhere earlier on the path, or a `float16` module already imported (our own peer_benchmarks/float16.py in
    a test run), made the import fail. Its folder goes first and foreign modules of those names step aside
    while it imports."""
    import importlib
    import importlib.util
    import sys

    if "onnxruntime.quantization" in sys.modules:
        return sys.modules["onnxruntime.quantization"]
    spec = importlib.util.find_spec("onnxruntime")
    folder = os.path.join(os.path.dirname(spec.origin), "transformers")
    own = set(n[:-3] for n in os.listdir(folder) if n.endswith(".py")) if os.path.isdir(folder) else set()
    foreign = {n: sys.modules.pop(n) for n in list(own) if n in sys.modules
               and not str(getattr(sys.modules[n], "__file__", "") or "").startswith(folder)}
    sys.path.insert(0, folder)
    try:
        return importlib.import_module("onnxruntime.quantization")
    finally:
        sys.path.remove(folder)
        for n, module in foreign.items():   # theirs stay importable under their names for them; ours back
            sys.modules[n] = module


def _quiet():
    """onnxruntime.quantization prints progress and logs a pre-processing hint: not ours to show."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(_pyio.StringIO()))
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    stack.callback(logging.disable, previous)
    return stack


class Histograms:
    """Every float tensor's histogram over the calibration images (onnxruntime's HistogramCollector)."""

    def __init__(self, collector, tensors: set[str], images: int):
        self.collector = collector
        self.tensors = tensors
        self.images = images

    def ranges(self, method: str) -> dict[str, tuple[float, float]]:
        hist = self.collector.histogram_dict
        if method == "minmax":
            return {k: (float(h[2]), float(h[3])) for k, h in hist.items()}
        HistogramCollector = ort_quantization().calibrate.HistogramCollector
        if method.startswith("percentile-"):
            c = HistogramCollector("percentile", False, BINS, 128, float(method.split("-", 1)[1]), "same")
            c.histogram_dict = hist
        elif method == "entropy":   # ORT's KL search is quadratic in the bins: read it on a 4x coarser histogram
            c = HistogramCollector("entropy", False, BINS // 4, 128, 99.999, "same")
            c.histogram_dict = {k: rebin(h, max(1, len(h[0]) // (BINS // 4))) for k, h in hist.items()}
        else:
            raise OnnxrepError(f"--calib-method {method!r}: choose one of {', '.join(METHODS)}")
        with _quiet():
            result = c.compute_collection_result()
        out = {}
        for k, v in result.items():
            h = hist[k]
            lo, hi = max(float(v[0]), float(h[2])), min(float(v[1]), float(h[3]))   # never wider than what was seen
            stride = float(h[1][1] - h[1][0]) if len(h[1]) > 1 else 0.0
            if hi - lo <= stride:   # a sparse tensor's percentile collapsed to (0, 0) or one bin: its extremes
                lo, hi = float(h[2]), float(h[3])
            out[k] = (lo, hi)
        return out


def rebin(h, k: int):
    """ORT's value histogram (counts, edges symmetric about 0, min, max, threshold) with every k bins merged
    into one, zero-count bins added at both ends first so that 0 stays an edge."""
    counts, edges = np.asarray(h[0]), np.asarray(h[1])
    n = len(counts)
    pad = (-(n // 2)) % k
    if pad:
        stride = edges[1] - edges[0]
        counts = np.concatenate([np.zeros(pad, counts.dtype), counts, np.zeros(pad, counts.dtype)])
        left = edges[0] - stride * np.arange(pad, 0, -1, dtype=edges.dtype)
        right = edges[-1] + stride * np.arange(1, pad + 1, dtype=edges.dtype)
        edges = np.concatenate([left, edges, right]).astype(np.asarray(h[1]).dtype)
    merged = counts.reshape(-1, k).sum(1)
    threshold = h[4] + pad * (edges[1] - edges[0]) if len(h) > 4 else None
    rest = (h[2], h[3]) + ((np.asarray(threshold, dtype=np.asarray(h[4]).dtype),) if len(h) > 4 else ())
    return (merged, edges[::k], *rest)


def _bound_merges(collector) -> None:
    """ORT's merge of a histogram with a wider image keeps the old bin width and adds bins to reach the new
    range: a dark first image (range 1e-4) then a bright one asked numpy for 20 million bins and failed. Before
    the merge, the old histogram is coarsened (bins merged in pairs, 0 kept an edge) until the merged one
    fits in 2 x BINS."""
    if getattr(collector, "_onnxrep_bounded", False):
        return
    original = collector.merge_histogram

    def merge(old, data, new_min, new_max, new_threshold):
        while True:
            counts, edges, threshold = old[0], old[1], old[4]
            stride = float(edges[1] - edges[0]) if len(edges) > 1 else 0.0
            if new_threshold <= threshold or threshold == 0 or stride <= 0:
                break
            half = int((float(new_threshold) - float(threshold)) // stride + 1)
            if len(counts) + 2 * half <= 2 * BINS:
                break
            old = rebin(old, 2)
        return original(old, data, new_min, new_max, new_threshold)

    collector.merge_histogram = merge
    collector._onnxrep_bounded = True


def _bounded(collector) -> None:
    """Keep every histogram within 2 x BINS: ORT's merge adds bins at the same width whenever a later image
    widens the range (a dark first image made histograms of 600k bins, and entropy's search quadratic in them)."""
    hist = collector.histogram_dict
    for k, h in hist.items():
        while len(h[0]) > 2 * BINS:
            h = rebin(h, 2)
        hist[k] = h


def calibrate(model: onnx.ModelProto, feeds: list[dict]) -> Histograms:
    """Run the model on each feed (one at a time) and keep every float tensor's histogram."""
    HistogramCalibrater = ort_quantization().calibrate.HistogramCalibrater
    with tempfile.TemporaryDirectory(prefix="onnxrep-int8-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        with _quiet():
            cal = HistogramCalibrater(path, None, os.path.join(tmp, "augmented.onnx"), method="entropy",
                                      num_bins=BINS, num_quantized_bins=128)
            cal.augment_graph()
            cal.create_inference_session()
            for feed in feeds:
                cal.collect_data(_Reader([feed]))
                _bound_merges(cal.collector)
                _bounded(cal.collector)
        collector, tensors = cal.collector, set(cal.tensors_to_calibrate)
        del cal
    return Histograms(collector, tensors, len(feeds))


class _Reader:
    def __init__(self, feeds):
        self.feeds = list(feeds)

    def get_next(self):
        return self.feeds.pop(0) if self.feeds else None

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def unify(ranges: dict, groups: list[set[str]]) -> dict:
    """Each group's members get the union of their ranges (one scale per group)."""
    out = dict(ranges)
    for group in groups:
        present = [ranges[t] for t in group if t in ranges]
        if not present:
            continue
        lo, hi = min(r[0] for r in present), max(r[1] for r in present)
        for t in group:
            if t in ranges:
                out[t] = (lo, hi)
    return out


def quantize(model: onnx.ModelProto, ranges: dict, target: str, exclude) -> onnx.ModelProto:
    """The Q/DQ model: onnxruntime's quantize_static on `ranges`, the target's settings, `exclude` float."""
    oq = ort_quantization()
    CalibrationMethod, QuantFormat, QuantType, quantize_static = (oq.CalibrationMethod, oq.QuantFormat, oq.QuantType,
                                                                  oq.quantize_static)
    TensorsData, save_tensors_data = oq.calibrate.TensorsData, oq.calibrate.save_tensors_data

    t = TARGETS[target]
    model = at_least_opset_13(model)
    if t.shared_scales:
        ranges = unify(ranges, scale_groups(model, set(exclude)))
    data = TensorsData(CalibrationMethod.MinMax,
                       {k: (np.array(lo, np.float32), np.array(hi, np.float32)) for k, (lo, hi) in ranges.items()})
    extra = {"ActivationSymmetric": t.activation == "int8", "WeightSymmetric": True, "QuantizeBias": t.quantize_bias,
             "OpTypesToExcludeOutputQuantization": list(t.float_outputs)}
    with tempfile.TemporaryDirectory(prefix="onnxrep-int8-") as tmp:
        src, dst, cache = (os.path.join(tmp, f) for f in ("float.onnx", "int8.onnx", "ranges.json"))
        onnx.save(model, src)
        save_tensors_data(data, cache)
        try:
            with _quiet():
                quantize_static(src, dst, None, QuantFormat.QDQ,
                                op_types_to_quantize=list(t.op_types) if t.op_types else None, per_channel=True,
                                activation_type=QuantType.QInt8 if t.activation == "int8" else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude), extra_options=extra,
                                calibration_cache_path=cache)
        except Exception as exc:  # noqa: BLE001 -- onnxruntime's quantizer on a graph it can't handle: one line
            raise OnnxrepError(f"onnxruntime's quantizer failed on this model ({type(exc).__name__}: {str(exc)[:300]}); "
                               f"--int8-exclude the node it names, or report it") from None
        q = onnx.load(dst)
    _restore(q, model)
    if t.residual_rule:
        fuse_residuals(q, model)
    compact(q)
    return q


def compact(q: onnx.ModelProto) -> None:
    """The bytes a Q/DQ model needs and no more: quantize_static's inferred value_info dropped (runtimes infer
    it) and identical zero points stored once (onnxruntime writes one per tensor and per weight, all zeros in
    the int8 targets). On gelan-t the file went from 0.307 to under 0.30 of float32."""
    del q.graph.value_info[:]
    g = q.graph
    zero_points = {n.input[2] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                   and len(n.input) > 2 and n.input[2]}
    outer = {i for sub in _subgraphs(g) for n in sub.node for i in n.input}
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for init in g.initializer:
        if init.name not in zero_points or init.name in outer:
            continue
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        alias[init.name] = first.setdefault(key, init.name)
    alias = {k: v for k, v in alias.items() if k != v}
    if not alias:
        return
    for n in g.node:
        for k, name in enumerate(n.input):
            if name in alias:
                n.input[k] = alias[name]
    keep = [i for i in g.initializer if i.name not in alias]
    del g.initializer[:]
    g.initializer.extend(keep)


def _subgraphs(g: onnx.GraphProto):
    from onnxrep.ir.counts import walk_graphs

    return [sub for sub in walk_graphs(g) if sub is not g]


MIN_OPSET = 13   # per-channel DequantizeLinear (its axis attribute) is opset 13


def opset(model: onnx.ModelProto) -> int:
    return next((x.version for x in model.opset_import if x.domain in ("", "ai.onnx")), 0)


def at_least_opset_13(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at opset 13 when it is older (onnx's version converter; the int8 proof compares the result
    with the float model itself, so a conversion that changed a number fails there). onnxruntime's quantizer
    writes per-channel DequantizeLinear (axis) whatever the opset: at 10-12 that is an invalid model."""
    if opset(model) >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001 -- the converter's many failure types: one line
        raise OnnxrepError(f"--precision int8 needs opset >= {MIN_OPSET} (per-channel Q/DQ); converting this opset "
                           f"{opset(model)} model failed: {type(exc).__name__}: {str(exc)[:200]}") from None


def _restore(q: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """What quantize_static's re-save loses: the float model's metadata (deployment metadata included) and
    producer."""
    del q.metadata_props[:]
    q.metadata_props.extend(model.metadata_props)
    q.producer_name, q.producer_version = model.producer_name, model.producer_version


def fuse_residuals(q: onnx.ModelProto, model: onnx.ModelProto) -> int:
    """TensorRT's Conv+Add fusion: an Add whose input is DQ(Q(t)), t fed by a Conv (through its activation) and
    read by nothing else in the float model, reads t itself; the residual input keeps its Q/DQ. Returns the
    number of Adds rewired; Q/DQ pairs left unread are removed."""
    g = q.graph
    prod = producers(g)
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    fprod = producers(model.graph)
    rewired = 0
    for node in g.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for k, name in enumerate(node.input):
            dq = prod.get(name)
            qn = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if qn is None or qn.op_type != "QuantizeLinear":
                continue
            t = qn.input[0]
            if readers.get(t, 0) == 1 and conv_fed(fprod, t):
                node.input[k] = t
                rewired += 1
                break
    _drop_unread_qdq(g)
    return rewired


def _drop_unread_qdq(g: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes nothing reads, then the initializers only they read (subgraphs count as readers)."""
    from onnxrep.ir.counts import walk_graphs

    dropped: set[str] = set()
    while True:
        read = {i for sub in walk_graphs(g) for n in sub.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            dropped.update(n.input)
            g.node.remove(n)
    unread = dropped - read
    keep = [i for i in g.initializer if i.name not in unread]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
