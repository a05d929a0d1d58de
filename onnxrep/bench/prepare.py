"""The models to time: loaded once, their inputs, symbolic batch, parameters and MACs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxrep.io import OnnxrepError


@dataclass
class ModelInfo:
    label: str
    source: str                 # the path given, or "<in memory>"
    file_bytes: int | None
    parameters: int
    macs: int | None            # at the bench input shape, batch 1 where the batch is symbolic
    inputs: dict = field(default_factory=dict)   # name -> dims as declared (symbolic dims as names)


@dataclass
class _Model:
    info: ModelInfo
    path: Path                  # what the runtimes load
    inputs: onnx.ModelProto     # a weightless skeleton: the real graph inputs and metadata (make_inputs)


def _declared(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _symbolic_batch(vi: onnx.ValueInfoProto) -> bool:
    dims = vi.type.tensor_type.shape.dim
    return bool(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    inits = {t.name for t in model.graph.initializer}
    skel = onnx.ModelProto()
    skel.graph.input.extend(vi for vi in model.graph.input if vi.name not in inits)
    skel.metadata_props.extend(model.metadata_props)
    return skel


def feed_shapes(skeleton: onnx.ModelProto, batch: int | None, shapes: dict | None) -> tuple[dict | None, int, str]:
    """(input shapes, batch, note) for one model at `batch`: the batch overrides dim 0 of inputs with a
    symbolic batch; a static-batch model at another size is (None, its batch, why it is skipped)."""
    from onnxrep.verify import make_inputs

    known = {vi.name for vi in skeleton.graph.input}
    base = {n: list(a.shape) for n, a in make_inputs(skeleton, 1, 0, batches=(1,), shapes={k: v for k, v in (shapes or {}).items()
                                                                      if k in known})[0].items()}
    first = next((s for s in base.values() if s), [1])
    if batch is None:
        return base, first[0], ""
    dynamic = [vi.name for vi in skeleton.graph.input if _symbolic_batch(vi) and base.get(vi.name)]
    if dynamic:
        for name in dynamic:
            base[name][0] = batch
        return base, batch, ""
    if first[0] == batch:
        return base, batch, ""
    return None, first[0], f"static batch {first[0]}: not run at batch {batch}"


def _macs_at(model: onnx.ModelProto, shapes: dict) -> int | None:
    """MACs with symbolic input dims set to the bench shape (batch 1): count_macs counts a symbolic dim as 1."""
    from onnxrep.report import count_macs

    saved = []
    try:
        for vi in model.graph.input:
            if vi.name in shapes and len(vi.type.tensor_type.shape.dim) == len(shapes[vi.name]):
                saved.append((vi, onnx.TypeProto.FromString(vi.type.SerializeToString())))
                for axis, (d, n) in enumerate(zip(vi.type.tensor_type.shape.dim, shapes[vi.name])):
                    if not (d.HasField("dim_value") and d.dim_value > 0):
                        d.dim_value = 1 if axis == 0 else n
        return count_macs(model) or None
    finally:
        for vi, typ in saved:
            vi.type.CopyFrom(typ)


def _labels(items: Sequence, labels: Sequence[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(items):
            raise ValueError("one label per model")
        names = list(labels)
    else:
        names = [Path(m).name if isinstance(m, (str, os.PathLike)) else f"model{i + 1}" for i, m in enumerate(items)]
    if not labels and len(set(names)) < len(names):  # same names in different folders: use the paths
        names = [str(m) if isinstance(m, (str, os.PathLike)) else n for m, n in zip(items, names)]
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # the same file twice (an A/A run to see the noise) still needs two labels
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


def prepare_models(items: Sequence, workdir: Path, *, labels: Sequence[str] | None = None,
                   shapes: dict | None = None, step: Callable[[str], None] = lambda _m: None) -> list[_Model]:
    """Paths or ModelProtos -> what bench needs; in-memory models are written to `workdir` for the runtimes."""
    from onnxrep import io
    from onnxrep.report import count_parameters

    prepared = []
    for label, item in zip(_labels(items, labels), items):
        step(f"loading {label}")
        if isinstance(item, onnx.ModelProto):
            model, source = item, "<in memory>"
            path = workdir / f"m{len(prepared)}.onnx"
            file_bytes = io.save(model, path)
        elif isinstance(item, (str, os.PathLike)):
            model, info = io.load(item, check=False)
            source, path, file_bytes = str(item), Path(item), info.file_bytes
        else:
            raise TypeError("bench takes paths or onnx.ModelProto")
        skeleton = _skeleton(model)
        base, _, _ = feed_shapes(skeleton, 1, shapes)
        step(f"counting {label}")
        info = ModelInfo(label=label, source=source, file_bytes=file_bytes, parameters=count_parameters(model.graph),
                         macs=_macs_at(model, base or {}), inputs={vi.name: _declared(vi) for vi in skeleton.graph.input})
        prepared.append(_Model(info, path, skeleton))
        del model
    unknown = set(shapes or {}) - {n for m in prepared for n in m.info.inputs}
    if unknown:
        raise OnnxrepError(f"--input-shape names unknown input(s) {sorted(unknown)}; "
                           f"inputs are {sorted({n for m in prepared for n in m.info.inputs})}")
    return prepared
