"""Detector families other than YOLOv9/YOLOv7/timm, built by their own code (issue 27).

One module per family (``fam_<family>.py``); each declares, with no heavy import at module level,

    MODELS = {"yolov8n": ["torchscript", "dynamo", "dynamo-raw", "official"], ...}   # name -> exporter forms
    QUICK = ["yolov8n"]                                                             # the CI member(s)
    MISSING = ("ultralytics",)                                                      # modules it needs

and ``export(name, forms, out, seed)``, run by ``tests/real/export_models.py`` in its own interpreter, which
writes what every real-tier model writes (``export_models.py``'s docstring): ``<name>.<form>.onnx`` for each
form, ``<name>.deploy.onnx`` (the family's own deploy conversion, exported by TorchScript), ``<name>.json``
(``main_output``/``main_outputs``, ``outputs``, ``deploy``: Conv count, Conv parameters, BatchNormalization
count of the deploy export; ``deploy_matches_main``) and ``<name>.npz`` (``images``, ``images_b2``, ``y<i>``,
``y<i>_b2``: the family model's own outputs). ``official`` is the export the family's users run (its own
export function or command), whatever it does first.
"""

from __future__ import annotations

import importlib

MODULES = ("fam_ultralytics", "fam_yolov6", "fam_yolonas", "fam_ppyoloe")


def _load(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def registry() -> dict[str, tuple[str, list[str]]]:
    """model name -> (family module, forms), over the family modules that exist."""
    found = {}
    for module in MODULES:
        try:
            fam = _load(module)
        except ModuleNotFoundError:
            continue
        for name, forms in fam.MODELS.items():
            found[name] = (module, list(forms))
    return found


def quick() -> list[str]:
    names = []
    for module in MODULES:
        try:
            names += list(_load(module).QUICK)
        except ModuleNotFoundError:
            continue
    return names


def missing(name: str) -> str | None:
    """Why the family of `name` can't be built here (its code is not installed), or None."""
    import importlib.util

    module, _ = registry()[name]
    for mod in _load(module).MISSING:
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (make install-real)"
    return None


def export(name: str, forms: list[str], out, seed: int = 0) -> None:
    module, _ = registry()[name]
    _load(module).export(name, forms, out, seed)
