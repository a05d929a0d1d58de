"""The real-exporter tier: models built by their own PyTorch code, exported by PyTorch's exporters.

Needs the `real` extra (`pip install -e '.[real]'`, `make test-real`); skipped when torch or the model code
is missing. Exports run in a subprocess (tests/real/export_models.py) and are cached per torch version in
out/real-exports/, so a second run only optimizes. ONNXREP_REAL_MODELS picks the models: `quick` (the CI
set: yolov9-t, gelan-t, the four timm families, two small YOLOv7-style nets), `all` (adds yolov9-s/m/c/e,
the official yolov7-tiny, yolov7 and yolov7-w6 configurations, and the trained models), or a comma-separated
list. The trained models (`gelan-t-synth`, `yolov9-t-synth`: tests/real/train_synthetic.py, 16 and 38
minutes on 2 cores, cached in out/trained/) are for the float16 accuracy test, test_trained_fp16.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.real import families

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
QUICK = ["yolov9-t", "gelan-t", "repvgg_a0", "mobileone_s0", "repvit_m0_9", "repghostnet_050", "v7mini-idetect",
         "v7mini-iaux"]
V7_FULL = ["yolov7-tiny", "yolov7", "yolov7-w6"]     # the official training configurations, full size
TRAINED = ["gelan-t-synth", "yolov9-t-synth"]   # trained on synthetic shapes (train_synthetic.py)
FAMILIES = families.registry()   # other libraries' detectors: tests/real/families (issue 27)
QUICK = QUICK + families.quick()
ALL = QUICK + ["yolov9-s", "yolov9-m", "yolov9-c", "yolov9-e"] + V7_FULL + TRAINED + [m for m in FAMILIES if m not in QUICK]
TIMM = {"repvgg_a0", "mobileone_s0", "repvit_m0_9", "repghostnet_050"}
NO_OFFICIAL = TIMM | {"v7mini-idetect", "v7mini-iaux"} | set(V7_FULL)   # the official fuse()+TorchScript path is YOLOv9's


def _selection() -> list[str]:
    choice = os.environ.get("ONNXREP_REAL_MODELS", "quick")
    if choice == "quick":
        return QUICK
    if choice == "all":
        return ALL
    return [m for m in choice.split(",") if m]


def selected_models() -> list[str]:
    """The selected models that export_models.py builds with random weights."""
    return [m for m in _selection() if m not in TRAINED]


def selected_trained() -> list[str]:
    """The selected models that train_synthetic.py trains."""
    return [m for m in _selection() if m in TRAINED]


V7 = {"v7mini-idetect", "v7mini-iaux"} | set(V7_FULL)


def forms_of(model: str) -> list[str]:
    """Exporter forms; YOLOv7 also in eval mode with the grid decode ("-grid": in-place writes, ScatterND)."""
    if model in FAMILIES:
        return FAMILIES[model][1]
    return (["torchscript", "dynamo", "dynamo-raw"] + ([] if model in NO_OFFICIAL else ["official"])
            + (["torchscript-grid", "dynamo-grid"] if model in V7 else []))


def _missing(model: str | None = None) -> str | None:
    if model in FAMILIES:
        return families.missing(model)
    for module, what in (("torch", "torch"), ("yolov9", "yolov9pip"), ("timm", "timm"), ("yolov7_package", "yolov7-package")):
        if importlib.util.find_spec(module) is None:
            return f"{what} is not installed (pip install -e '.[real]')"
    return None


class Export:
    """What one model's exports and its own PyTorch code say (see export_models.py)."""

    def __init__(self, folder: Path, model: str):
        self.folder, self.model = folder, model
        self.info = json.loads((folder / f"{model}.json").read_text())
        with np.load(folder / f"{model}.npz") as data:
            self.data = {k: data[k] for k in data.files}

    def path(self, form: str) -> Path:
        return self.folder / f"{self.model}.{form}.onnx"

    @property
    def main(self) -> int:
        return self.info["main_output"]

    @property
    def mains(self) -> list[int]:
        """The outputs the deploy form keeps (YOLOv7's raw heads: one per level)."""
        return self.info.get("main_outputs", [self.info["main_output"]])


def _cache(kind: str) -> Path:
    """out/<kind>/<torch version>/, or skip the test when the real extra is missing."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    import torch

    root = REPO / "out" / kind / torch.__version__.replace("+", "_")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _run_script(script: str, root: Path, args: list, what: str, timeout: int) -> None:
    """tests/real/<script> root *args, in its own interpreter (the official code imports itself as `models`)
    and in root (where an exporter's stray report files land)."""
    cmd = [sys.executable, "-I", str(HERE / script), str(root), *map(str, args)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="session")
def real_export():
    root = _cache("real-exports")
    done: dict[str, Export] = {}

    def get(model: str) -> Export:
        reason = _missing(model)
        if reason:
            pytest.skip(reason)
        if model not in done:
            wanted = forms_of(model) + ["deploy"] + (["deploy-grid"] if model in V7 else [])
            if not all((root / f"{model}.{f}.onnx").exists() for f in wanted) or not (root / f"{model}.json").exists():
                _run_script("export_models.py", root, [f"{model}:{','.join(forms_of(model))}"], f"exporting {model}", 1800)
            done[model] = Export(root, model)
        return done[model]

    return get


@pytest.fixture(scope="session")
def trained_model():
    """get('gelan-t-synth') -> (path of the ONNX training-form export, its npz, its json): trained on first use."""
    root = _cache("trained")

    from tests.real.train_synthetic import VERSION

    def get(name: str):
        paths = [root / f"{name}.160.{ext}" for ext in ("onnx", "npz", "json")]
        if not all(p.exists() for p in paths) or json.loads(paths[2].read_text()).get("version") != VERSION:
            _run_script("train_synthetic.py", root, ["--model", name.removesuffix("-synth"), "--imgsz", 160],
                        f"training {name}", 7200)
        return paths

    return get
