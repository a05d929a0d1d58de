"""The `onnxrep` command: a thin click wrapper over onnxrep.optimize / verify.

Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 internal error, 130 interrupted.
Errors are one line on stderr; -v adds the traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

from onnxrep.io import OnnxrepError

EXIT_VERIFY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


def _fail(message: str, code: int) -> None:
    click.echo(f"onnxrep: error: {message}", err=True)
    sys.exit(code)


def guarded(func):
    """One clear line and an exit code for every failure; the traceback only with -v."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", 0)
        try:
            return func(*args, **kwargs)
        except OnnxrepError as exc:
            if verbose:
                traceback.print_exc()
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            click.echo("onnxrep: interrupted, nothing written", err=True)
            sys.exit(130)
        except MemoryError:
            _fail("out of memory", EXIT_INTERNAL)
        except Exception as exc:  # a bug of ours: still one line, but say so
            if verbose:
                traceback.print_exc()
            _fail(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", EXIT_INTERNAL)

    return wrapper


class Progress:
    """A one-line status on a terminal's stderr; silent when stderr is piped or -q is given."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._width = 0

    def __call__(self, message: str) -> None:
        if self.enabled:
            text = f"onnxrep: {message}..."
            sys.stderr.write("\r" + text.ljust(self._width))
            sys.stderr.flush()
            self._width = len(text)

    def done(self) -> None:
        if self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


def _split_list(value: str | None) -> tuple:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _write_json(target: str, data: dict) -> None:
    text = json.dumps(data, indent=2, default=str)
    if target == "-":
        click.echo(text)
        return
    try:
        Path(target).write_text(text + "\n")
    except OSError as exc:
        raise OnnxrepError(f"--json {target}: cannot write ({exc.strerror or exc})") from exc


verify_options = [
    click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Random input samples to compare on."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs."),
    click.option("--rtol", type=float, default=None, help="Relative tolerance (default by dtype: 1e-4 for float32)."),
    click.option("--atol", type=float, default=None, help="Absolute tolerance (default by dtype: 1e-4 for float32)."),
    click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
                 help="Shape for an input with symbolic dimensions, e.g. images=1x3x640x640 (repeatable)."),
    click.option("--input-data", type=click.Path(dir_okay=False), default=None,
                 help="A .npz file of real inputs (keys = input names) instead of random ones."),
]


def with_options(options):
    def deco(func):
        for opt in reversed(options):
            func = opt(func)
        return func
    return deco


def _verify_kwargs(samples, seed, rtol, atol, input_shapes, input_data) -> dict:
    from onnxrep.verify import load_input_data, parse_shapes

    return dict(samples=samples, seed=seed, rtol=rtol, atol=atol,
                input_shapes=parse_shapes(input_shapes),
                input_data=load_input_data(input_data) if input_data else None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxrep")
def main():
    """Make YOLOv9 (and RepVGG-style) ONNX exports deployable: fold BatchNorm, merge RepConv branches,
    prune auxiliary heads, and prove the result equal with onnxruntime."""


@main.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None, help="Output path (default: <stem>.opt.onnx beside the input).")
@click.option("--in-place", is_flag=True, help="Allow the output to replace the input file.")
@click.option("--force", is_flag=True, help="Write the output even when verification fails (exit code stays 1).")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime equivalence check.")
@click.option("--passes", default=None, metavar="NAMES", help="Comma-separated passes to run (default: the whole pipeline).")
@click.option("--external-data/--no-external-data", default=None,
              help="Save weights in <output>.data (default: when the input had external data or the model is over 2 GB).")
@with_options(verify_options)
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the report as JSON ('-' for stdout).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="Show every declined candidate with its reason (and tracebacks).")
@guarded
def optimize(model, output, in_place, force, no_verify, passes, external_data, samples, seed, rtol, atol,
             input_shapes, input_data, json_path, quiet, verbose, **pass_options):
    """Optimize MODEL and write the result (verified with onnxruntime)."""
    import onnxrep
    from onnxrep import io

    out = Path(output) if output else io.default_output(model)
    if Path(model).exists() and io.same_file(out, model) and not in_place:
        raise OnnxrepError(f"output {out} is the input file: pass --in-place to overwrite it, or choose -o")
    if not out.parent.is_dir():
        raise OnnxrepError(f"output folder {str(out.parent)!r} does not exist")
    progress = Progress(not quiet)
    try:
        result = onnxrep.optimize(model, passes=_split_list(passes) if passes else None, verify=not no_verify,
                                  on_step=progress, **_verify_kwargs(samples, seed, rtol, atol, input_shapes, input_data),
                                  **pass_options)
    finally:
        progress.done()
    report = result.report
    if result.ok or force:
        progress("writing")
        use_external = external_data
        if use_external is None and result.source is not None and result.source.external_data:
            use_external = True
        report.after.file_bytes = io.save(result.model, out, external_data=use_external)
        report.output = str(out)
        progress.done()
    if not quiet:
        click.echo(report.text(verbose=bool(verbose)))
    if json_path:
        _write_json(json_path, report.to_dict())
    if not result.ok:
        where = next((o for o in result.verification.outputs if not o.ok), None)
        detail = f"output {where.name} diverged: {where.message}" if where else result.verification.skipped_reason
        _fail(f"verification failed: {detail}" + ("; written anyway (--force)" if force else "; nothing written"),
              EXIT_VERIFY_FAILED)


@main.command()
@click.argument("original", type=click.Path())
@click.argument("optimized", type=click.Path())
@with_options(verify_options)
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the result as JSON ('-' for stdout).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="Tracebacks on errors.")
@guarded
def verify(original, optimized, samples, seed, rtol, atol, input_shapes, input_data, json_path, quiet, verbose):
    """Check that OPTIMIZED computes the same outputs as ORIGINAL in onnxruntime (optimizations off)."""
    from onnxrep import io
    from onnxrep.verify import verify as run_verify

    kw = _verify_kwargs(samples, seed, rtol, atol, input_shapes, input_data)
    a, _ = io.load(original)
    b, _ = io.load(optimized)
    result = run_verify(a, b, samples=kw["samples"], seed=seed, shapes=kw["input_shapes"],
                        feeds=kw["input_data"], rtol=rtol, atol=atol)
    if not quiet:
        click.echo("\n".join(result.lines()))
    if json_path:
        _write_json(json_path, result.to_dict())
    if not result.ok:
        sys.exit(EXIT_VERIFY_FAILED)
