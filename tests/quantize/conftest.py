"""Shared by the int8 tests: small builder models optimized once, and image-like calibration arrays."""

from __future__ import annotations

import numpy as np
import pytest


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """[n, 3, size, size] float32 in [0, 1]: coarse colour fields, a few filled rectangles, a little noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        coarse = rng.random((3, 4, 4))
        img = np.kron(coarse, np.ones((size // 4, size // 4)))
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, size // 2, 2)
            w, h = rng.integers(size // 8, size // 2, 2)
            img[:, y0:y0 + h, x0:x0 + w] = rng.random((3, 1, 1))
        out[k] = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    return out


@pytest.fixture(scope="session")
def calib_npz(tmp_path_factory):
    """calib_npz(size, n=40) -> path of an .npz with 'images'."""
    root = tmp_path_factory.mktemp("calib")
    made = {}

    def get(size: int, n: int = 40):
        if (size, n) not in made:
            path = root / f"calib-{size}-{n}.npz"
            np.savez(path, images=images(n, size))
            made[(size, n)] = path
        return made[(size, n)]

    return get


@pytest.fixture(scope="session")
def optimized(model_file):
    """optimized(name, imgsz) -> the float model onnxrep optimizes the builder's training form to (cached)."""
    import onnx

    import onnxrep

    cache = {}

    def get(name: str, imgsz: int = 64, **kw) -> onnx.ModelProto:
        key = (name, imgsz, tuple(sorted(kw.items())))
        if key not in cache:
            result = onnxrep.optimize(model_file(name, "bn", imgsz=imgsz, **kw), verify=False)
            cache[key] = result.model
        return cache[key]

    return get
