"""Loading and saving models: external data, atomic writes, one clear error line for bad files.

Writes are atomic: model (and external data) go to temporary files in the target folder, then are
renamed into place, data first, so a reader never sees a half-written file; on any failure or
interrupt the temporary files are removed and whatever was at the target path is untouched.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxrep.ir.private_api import all_tensors

# Protobuf can't serialise a message over 2 GB; over this many bytes of tensors we save external data.
# A module variable so that tests can lower it instead of building a 2 GB model.
EXTERNAL_DATA_THRESHOLD = int(os.environ.get("ONNXREP_EXTERNAL_DATA_THRESHOLD", 2**31 - 2**26))
# Tensors smaller than this stay inside the .onnx even when the rest goes to external data.
_EXTERNAL_MIN_BYTES = 1024


class OnnxrepError(Exception):
    """A user-facing error: the message is the single line the CLI prints (exit code 2)."""

    exit_code = 2


@dataclass
class LoadInfo:
    path: Path
    external_data: bool   # the model kept (some) tensors in a separate file
    file_bytes: int       # .onnx plus its external data files


def load(path: str | os.PathLike, check: bool = True) -> tuple[onnx.ModelProto, LoadInfo]:
    """Load `path` with its external data. Raises OnnxrepError with one line on any bad input."""
    path = Path(path)
    if not path.exists():
        raise OnnxrepError(f"{path}: no such file")
    if path.is_dir():
        raise OnnxrepError(f"{path}: is a directory, not an ONNX file")
    size = path.stat().st_size
    if size == 0:
        raise OnnxrepError(f"{path}: empty file, not an ONNX model")
    try:
        model = _parse(path)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        raise OnnxrepError(f"{path}: not an ONNX model (protobuf parse failed: {_first_line(exc)})") from exc
    except Exception as exc:  # the protobuf runtime raises its own types on damaged input
        raise OnnxrepError(f"{path}: not an ONNX model ({type(exc).__name__}: {_first_line(exc)})") from exc
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise OnnxrepError(f"{path}: a protobuf file, but not an ONNX model (no graph, opset or IR version)")
    if model.ir_version > onnx.IR_VERSION:
        raise OnnxrepError(f"{path}: unsupported IR version {model.ir_version} "
                           f"(this onnx {onnx.__version__} supports up to {onnx.IR_VERSION})")
    data_files = _check_external_data(model, path)
    if data_files:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise OnnxrepError(f"{path}: cannot read external data ({_first_line(exc)})") from exc
    if check:
        check_model(model, path)
    total = size + sum(f.stat().st_size for f in data_files)
    return model, LoadInfo(path=path, external_data=bool(data_files), file_bytes=total)


def _parse(path: Path) -> onnx.ModelProto:
    """Parse straight from a memory map: no Python bytes copy of the whole file next to the model."""
    model = onnx.ModelProto()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            model.ParseFromString(view)
        finally:
            view.release()
    return model


def load_any(model_or_path, copy: bool = False) -> tuple[onnx.ModelProto, LoadInfo | None, str]:
    """(model, load info or None, label) for a path or an in-memory ModelProto (copied if `copy`)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        model, info = load(model_or_path)
        return model, info, str(model_or_path)
    if isinstance(model_or_path, onnx.ModelProto):
        if copy:
            model = onnx.ModelProto()
            model.CopyFrom(model_or_path)
            return model, None, "<model>"
        return model_or_path, None, "<model>"
    raise TypeError("expected an onnx.ModelProto or a path")


def check_model(model: onnx.ModelProto, label: str | os.PathLike = "model") -> None:
    """onnx.checker on the model's structure, and our own check of every tensor's byte count.

    The checker serialises the model it is given; handing it the weights too would cost two more copies
    of them. So it checks a view in which each large initializer is a typed graph input instead, which
    is the same graph to every rule of the checker except the tensor size check done here.
    """
    try:
        onnx.checker.check_model(structure_view(model))
    except onnx.checker.ValidationError as exc:
        raise OnnxrepError(f"{label}: onnx.checker rejects the model: {_checker_summary(exc)}") from exc
    for tensor in model.graph.initializer:
        reason = _size_mismatch(tensor)
        if reason:
            raise OnnxrepError(f"{label}: onnx.checker rejects the model: tensor {tensor.name!r} {reason}")


def structure_view(model: onnx.ModelProto) -> onnx.ModelProto:
    view = onnx.ModelProto()
    copy_fields(model, view, skip={"graph"})
    copy_fields(model.graph, view.graph, skip={"initializer"})
    inputs = {i.name for i in model.graph.input}
    for tensor in model.graph.initializer:
        if not _is_large(tensor):
            view.graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            view.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return view


def _size_mismatch(tensor: onnx.TensorProto) -> str | None:
    if not tensor.HasField("raw_data"):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # sub-byte and exotic types: the checker's view already covered the rest
        return None
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return None
    expected = int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    if len(tensor.raw_data) != expected:
        return f"has {len(tensor.raw_data)} bytes of data, its shape {list(tensor.dims)} needs {expected}"
    return None


def _checker_summary(exc: Exception) -> str:
    """The checker's message in one line (it spreads the node's name and op over several)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(ln.replace("==> Context:", "(in").rstrip(":") + (")" if ln.startswith("==> Context:") else "")
                    for ln in lines) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + "..."


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _check_external_data(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Every external-data file exists and is long enough; returns the distinct files."""
    files: dict[Path, int] = {}
    base = path.parent.resolve()
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = _external_entries(tensor)
        location = info.get("location", "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or base not in target.parents:
            raise OnnxrepError(f"{path}: tensor {tensor.name!r} points outside the model's folder ({location!r})")
        if not target.is_file():
            raise OnnxrepError(f"{path}: external data file {location!r} is missing (expected beside the model)")
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        files[target] = max(files.get(target, 0), end)
    for target, end in files.items():
        if target.stat().st_size < end:
            raise OnnxrepError(f"{path}: external data file {target.name!r} is truncated "
                               f"({target.stat().st_size} bytes, tensors need {end})")
    return list(files)


def tensor_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for tensor in all_tensors(model):
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else 0
    return total


def default_output(path: str | os.PathLike) -> Path:
    path = Path(path)
    stem = path.name[:-5] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.opt.onnx")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def save(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None,
         check: Callable | None = None) -> int:
    """Write `model` atomically to `path`; returns the bytes written (model plus external data).

    external_data None: only when the tensors would not fit in one protobuf (over 2 GB).
    The external data file is ``<name>.data`` beside the model, as PyTorch's exporter writes it.
    check: called with the written temporary file before it takes `path`'s name (an exception leaves nothing
    written); with external data (whose file name the model records) it is called with None before writing.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxrepError(f"{path}: output folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxrepError(f"{path}: output folder {str(folder)!r} is not writable")
    if external_data is None:
        external_data = tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD
    if check is not None and external_data:
        check(None)
        check = None
    data_name = path.name + ".data"
    temps: list[Path] = []
    try:
        tmp_data = _tempfile(folder, data_name, temps) if external_data else None
        tmp_model = _tempfile(folder, path.name, temps)
        with open(tmp_model, "wb") as fh:
            if tmp_data is not None:
                with open(tmp_data, "wb") as data_fh:
                    _write_model(fh, model, data_fh, data_name)
                    data_fh.flush()
                    os.fsync(data_fh.fileno())
            else:
                _write_model(fh, model)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(tmp_model)
        if tmp_data is not None:
            os.replace(tmp_data, folder / data_name)
        os.replace(tmp_model, path)
        temps.clear()
    except OSError as exc:
        raise OnnxrepError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    written = path.stat().st_size
    if external_data:
        written += (folder / data_name).stat().st_size
    return written


def _umask() -> int:
    """The process umask, read without changing it (os.umask(0) would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022   # no /proc (macOS, Windows): the usual default


def copy_fields(src, dst, skip: set[str]) -> None:
    """Copy every set field of a protobuf message except `skip` (cheap when the skipped ones are the big ones)."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


_GRAPH_TAG = bytes([(onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number << 3) | 2])
_INITIALIZER_TAG = bytes([(onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number << 3) | 2])


def _write_model(fh, model: onnx.ModelProto, data_fh=None, location: str | None = None, initializers=None) -> None:
    """Serialize `model` one initializer at a time, never the whole model in memory at once.

    Protobuf merges repeated occurrences of an embedded message, so the model is written as: the model
    without its initializers, then one ``graph { initializer }`` fragment per tensor (`initializers`, an
    iterable, instead of the model's own when given). With `data_fh`, large tensors' bytes go there
    (page-aligned) and the model points at `location`. The caller's model is not modified.
    """
    head = onnx.ModelProto()
    copy_fields(model, head, skip={"graph"})
    copy_fields(model.graph, head.graph, skip={"initializer"})
    offset = 0
    if data_fh is not None:  # tensors outside graph.initializer (Constant nodes, subgraphs): head is our copy
        offset = _move_to_external(head, data_fh, location, offset)
    fh.write(head.SerializeToString())
    for tensor in model.graph.initializer if initializers is None else initializers:
        if data_fh is not None and _is_large(tensor):
            ref = onnx.TensorProto()
            copy_fields(tensor, ref, skip={"raw_data"})
            offset = _store_external(ref, tensor.raw_data, data_fh, location, offset)
            body = ref.SerializeToString()
        else:
            body = tensor.SerializeToString()
        fragment = _INITIALIZER_TAG + _varint(len(body)) + body
        fh.write(_GRAPH_TAG + _varint(len(fragment)))
        fh.write(fragment)


def _is_large(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("raw_data") and len(tensor.raw_data) >= _EXTERNAL_MIN_BYTES


def _store_external(tensor: onnx.TensorProto, raw: bytes, data_fh, location: str, offset: int) -> int:
    """Append `raw` to the data file (page-aligned, so runtimes can mmap) and point `tensor` at it."""
    pad = (-offset) % 4096
    data_fh.write(b"\0" * pad)
    offset += pad
    data_fh.write(raw)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return offset + len(raw)


def _tempfile(folder: Path, name: str, temps: list[Path]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:  # mkstemp makes it 0600; a model is an ordinary file, readable as the umask allows
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    temps.append(Path(tmp))
    return Path(tmp)


def _move_to_external(model: onnx.ModelProto, data_fh, location: str, offset: int) -> int:
    """Move every large tensor of `model` (which the caller owns) to the data file."""
    for tensor in all_tensors(model):
        if _is_large(tensor):
            offset = _store_external(tensor, tensor.raw_data, data_fh, location, offset)
    return offset
