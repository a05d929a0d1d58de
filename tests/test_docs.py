"""README.md and docs/: short, every measured number rendered from a results file, every option real."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "peer_benchmarks"))
import quote  # noqa: E402

DOCS = quote.documents()

# A number with a unit of measure: a measurement, unless it sits in a quote region (rendered from a results
# file) or in code (commands, real program output, shapes such as 1x3x640x640).
MEASURE = re.compile(r"(?<![\w.^-])\d[\d,.]*\s?(?:ms|s|MB|GB|KB|px|%|x|×)(?![\w])")
# Not measurements: fixed limits and settings stated as facts of a format or a default.
ALLOWED = {
    "2 GB",   # protobuf's size limit: models above it are saved with external data (docs/usage.md)
}


def _prose(text: str) -> str:
    """The text outside quote regions, fenced code blocks and inline code spans."""
    text = quote.REGION.sub("", text)
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_quote_regions_are_what_the_results_files_say(path):
    text = path.read_text()
    assert text == quote.fill(text), f"{path.name}: run `python peer_benchmarks/quote.py` (make docs)"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_measured_number_outside_a_quote_region(path):
    found = [m.group(0) for m in MEASURE.finditer(_prose(path.read_text())) if m.group(0) not in ALLOWED]
    assert not found, f"{path.name}: numbers with units not rendered by quote.py: {found}"


def test_every_region_name_is_known_and_every_renderer_is_used():
    names = {m.group(2) for p in DOCS for m in quote.REGION.finditer(p.read_text())}
    assert names <= set(quote.RENDER)
    assert set(quote.RENDER) <= names


def _options(command: click.Command) -> set[str]:
    # --help is click's own option, not among the params (every command has it: cli.py's context settings)
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} | {"--help"}


def test_every_option_named_in_the_docs_exists():
    from onnxrep.cli import main

    known = set().union(*(_options(c) for c in main.commands.values()))
    for path in DOCS:
        named = set(re.findall(r"(?<![\w-])--[a-zA-Z0-9][a-zA-Z0-9-]*", path.read_text()))
        # options of other programs the docs show beside ours (onnxsim's, onnxslim's, trtexec's, make's)
        named -= {"--outputs", "--onnx", "--fp16", "--saveEngine", "--no-deps", "--list", "--form", "--exporter",
                  "--imgsz", "--overwrite-input-shape", "--import-calibration", "--record-test-time", "--record-families", "--model",
                  "--out", "--check", "--only", "--runs", "--models", "--images", "--calib", "--min-time",
                  "--threads"} - known   # tool_time.py's and int8.py's, in their quoted commands
        assert named <= known, f"{path.name}: {sorted(named - known)} are no option of any onnxrep command"


def test_readme_options_are_exactly_optimizes():
    from onnxrep.cli import main

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Options"):text.index("\n## ", text.index("## Options") + 1)]
    bullets = "\n".join(line for line in section.splitlines() if line.startswith("- **"))
    named = set(re.findall(r"(?<![\w-])--[a-zA-Z0-9][a-zA-Z0-9-]*", bullets))
    assert named == _options(main.commands["optimize"]), (
        f"missing: {sorted(_options(main.commands['optimize']) - named)}, "
        f"not options: {sorted(named - _options(main.commands['optimize']))}")


def test_links_between_pages_resolve():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_the_number_rule_sees_measurements_and_not_code():
    prose = _prose("took 3.3 s and 15 % less, 2.26x faster\n```\n101.4 MB\n```\n`images=1x3x640x640` at 640×640")
    assert [m.group(0) for m in MEASURE.finditer(prose)] == ["3.3 s", "15 %", "2.26x"]
