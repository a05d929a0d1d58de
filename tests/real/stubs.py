"""Stand-ins for modules the official YOLOv9 code, the YOLOv7 code (yolov7-package) and timm import at import
time but never use to build or export a model (torchvision's NMS, IPython's display, pkg_resources, cv2, pandas...).

Only modules that are *missing* are stubbed: an installed one is always used. A stub module answers any
attribute with a permissive dummy (callable, subclassable, attribute-settable), so `import cv2;
cv2.setNumThreads(0)` or `pd.options.display.max_columns = 10` at import time pass. Anything that really
needs the module fails loudly at call time with the module's name.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

STUBBED = ("torchvision", "IPython", "pkg_resources", "cv2", "pandas", "requests", "seaborn", "thop", "psutil",
           "scipy", "torchaudio", "wget")


class _DummyMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        child = _DummyMeta(name, (cls,), {})   # distinct per name: enum members stay distinct dict keys
        setattr(cls, name, child)
        return child

    def __call__(cls, *args, **kwargs):
        return cls

    def __iter__(cls):
        return iter(())

    def __or__(cls, other):
        return cls

    __ror__ = __or__


class Dummy(metaclass=_DummyMeta):
    """Whatever a stubbed module is asked for."""


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        child = _DummyMeta(name, (Dummy,), {})
        setattr(self, name, child)
        return child


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, fullname, path=None, target=None):
        root = fullname.split(".")[0]
        if root not in self.roots:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0"
        if spec.name == "pkg_resources":  # version checks run at import time: answer them for real
            from packaging.version import parse

            module.parse_version = parse
        if spec.name == "IPython":  # matplotlib asks whether it runs inside IPython: it does not
            module.version_info = (9, 0, 0)
            module.get_ipython = lambda: None
        return module

    def exec_module(self, module):
        pass


def install() -> list[str]:
    """Stub every module of STUBBED that can't be imported. Returns the stubbed names."""
    missing = []
    for name in STUBBED:
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            missing.append(name)
        elif name == "torchvision":  # PyPI's torchvision beside the CPU torch wheel fails at import
            try:
                importlib.import_module(name)
            except Exception:
                for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                    del sys.modules[key]
                missing.append(name)
    if missing:
        sys.meta_path.insert(0, _Finder(missing))
    return missing
