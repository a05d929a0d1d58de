"""The optimizers compared, each as the command line a user would type, run in a fresh process.

Every tool gets the input path and an output path; what it writes (a .onnx, maybe external data beside
it) lands in a folder of its own, so the file size is everything in that folder. Where a tool has no
command line (onnxoptimizer, onnxruntime's offline optimizer) the command is the few lines of Python a
user would write, run with `python -c`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent

# onnxoptimizer: BatchNorm folding plus every elimination pass, as its README suggests for inference.
ONNXOPTIMIZER_CODE = """\
import sys, onnx, onnxoptimizer
model = onnx.load(sys.argv[1])
passes = ["fuse_bn_into_conv"] + [p for p in onnxoptimizer.get_available_passes() if p.startswith("eliminate_")]
onnx.save(onnxoptimizer.optimize(model, passes), sys.argv[2])
"""

# onnxruntime's offline optimization: a session at ORT_ENABLE_BASIC (the portable level: constant
# folding, redundant-node elimination, Conv+BN/Add/Mul fusion) writing its optimized graph.
# An input with external data gets an optimized model with external data of its own (else ORT's output
# points at the input's .data file by a relative path that doesn't resolve from the output's folder).
ORT_BASIC_CODE = """\
import os, sys, onnx, onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
options.optimized_model_filepath = sys.argv[2]
if any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(sys.argv[1], load_external_data=False).graph.initializer):
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     os.path.basename(sys.argv[2]) + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
"""


@dataclass(frozen=True)
class Tool:
    name: str            # key in the results
    label: str           # what the tables show
    dist: str            # the distribution whose version is reported
    module: str          # importable module that must exist for the tool to be available
    prunes: bool         # drops the auxiliary head (so its outputs are comparable to onnxrep's)
    how: str             # the command, as shown in BENCHMARKS.md

    def argv(self, inp: str, out: str, *, main_output: str, json_path: str) -> list[str]:
        py = sys.executable
        if self.name == "onnxrep":
            return [str(BIN / "onnxrep"), "optimize", inp, "-o", out, "--no-verify", "--json", json_path, "-q"]
        if self.name == "onnxsim":
            return [str(BIN / "onnxsim"), inp, out]
        if self.name == "onnxslim":
            return [str(BIN / "onnxslim"), inp, out]
        if self.name == "onnxslim-outputs":
            return [str(BIN / "onnxslim"), inp, out, "--outputs", main_output]
        if self.name == "onnxoptimizer":
            return [py, "-c", ONNXOPTIMIZER_CODE, inp, out]
        if self.name == "ort-basic":
            return [py, "-c", ORT_BASIC_CODE, inp, out]
        if self.name == "polygraphy":
            return [str(BIN / "polygraphy"), "surgeon", "sanitize", "--fold-constants", inp, "-o", out]
        raise KeyError(self.name)

    def verify_argv(self, inp: str, out: str, json_path: str) -> list[str]:
        """onnxrep only: the same run with its onnxruntime verification on (timed separately)."""
        return [str(BIN / "onnxrep"), "optimize", inp, "-o", out, "--json", json_path, "-q"]

    def availability(self) -> tuple[bool, str]:
        if importlib.util.find_spec(self.module) is None:
            return False, f"{self.dist} is not installed (pip install -e '.[bench]')"
        return True, ""

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return ""


TOOLS = (
    Tool("onnxrep", "onnxrep", "onnxrep", "onnxrep", True, "onnxrep optimize IN -o OUT --no-verify"),
    Tool("onnxsim", "onnxsim", "onnxsim", "onnxsim", False, "onnxsim IN OUT"),
    Tool("onnxslim", "onnxslim", "onnxslim", "onnxslim", False, "onnxslim IN OUT"),
    Tool("onnxslim-outputs", "onnxslim --outputs main", "onnxslim", "onnxslim", True,
         "onnxslim IN OUT --outputs <main output name>"),
    Tool("onnxoptimizer", "onnxoptimizer", "onnxoptimizer", "onnxoptimizer", False,
         "onnxoptimizer.optimize(model, ['fuse_bn_into_conv', every 'eliminate_*' pass])"),
    Tool("ort-basic", "onnxruntime basic", "onnxruntime", "onnxruntime", False,
         "InferenceSession(IN, ORT_ENABLE_BASIC, optimized_model_filepath=OUT)"),
    Tool("polygraphy", "polygraphy sanitize", "polygraphy", "polygraphy", False,
         "polygraphy surgeon sanitize --fold-constants IN -o OUT"),
)
BY_NAME = {t.name: t for t in TOOLS}
PEERS = tuple(t.name for t in TOOLS if t.name != "onnxrep")
