"""What an output looks like, as the layout and twin checks ask it: rank, static dims, type, printable shape."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def _rank(t: gs.Tensor) -> int | None:
    return len(t.shape) if t.shape is not None else None



def _dim(t: gs.Tensor, axis: int):
    """A static dimension, or None when unknown or symbolic."""
    if t.shape is None or len(t.shape) <= axis:
        return None
    d = t.shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None



def _same_dims(a, b) -> bool:
    """Equal where both are static; a symbolic dimension can't be told apart from anything."""
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, (int, np.integer)) and isinstance(y, (int, np.integer))) or x == y
               for x, y in zip(a, b))



def _same_type(a: gs.Tensor, b: gs.Tensor) -> bool:
    if a.shape is None or b.shape is None or not _same_dims(a.shape, b.shape):
        return False
    return a.dtype is None or b.dtype is None or a.dtype == b.dtype



def _fmt_shape(t: gs.Tensor) -> str:
    return "[?]" if t.shape is None else "[" + ", ".join(str(d) for d in t.shape) + "]"
