"""The `onnxrep` command: a thin click wrapper over onnxrep.optimize / verify.

Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 internal error, 4 verification could not
run (onnxruntime cannot run the original: nothing written unless --allow-unverified), 130 interrupted.
Errors are one line on stderr; -v adds the traceback. The options are declared in cli_options.py; each
command builds onnxrep.options' groups from them and hands them on (the logic is in onnxrep.run).
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

from onnxrep.cli_options import (_split_list, bench_runtime_options, deploy_options, output_options,
                                 int8_options, precision_options, verify_options, with_options)
from onnxrep.io import OnnxrepError

EXIT_VERIFY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_UNVERIFIED = 4


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


def _check_json_target(target: str | None) -> None:
    if target and target != "-":
        folder = Path(target).parent
        if Path(target).is_dir() or not folder.is_dir():
            raise OnnxrepError(f"--json {target}: not a file path in an existing folder")


def _write_json(target: str, data: dict) -> None:
    text = json.dumps(data, indent=2, default=str)
    if target == "-":
        click.echo(text)
        return
    try:
        Path(target).write_text(text + "\n")
    except OSError as exc:
        raise OnnxrepError(f"--json {target}: cannot write ({exc.strerror or exc})") from exc


def _verify_kwargs(samples, seed, noise_factor, rtol, atol, input_shapes, input_data) -> dict:
    from onnxrep.verify import load_input_data, parse_shapes

    return dict(samples=samples, seed=seed, rtol=rtol, atol=atol, noise_factor=noise_factor,
                input_shapes=parse_shapes(input_shapes),
                input_data=load_input_data(input_data) if input_data else None)


def _bench(models, labels, *, quiet, runtimes=(), threads=None, input_shapes=(), seed=0, batch=None, warmup=3,
           runs=10, min_time=2.0, ov_device="CPU", plot_path=None):
    """Run onnxrep.bench over `models` (paths or ModelProtos), print its table; returns the BenchReport."""
    from onnxrep import bench as bench_mod
    from onnxrep.verify import parse_shapes

    if plot_path and not bench_mod.plot_available():
        raise OnnxrepError("--plot needs matplotlib: pip install 'onnxrep[plot]'")
    progress = Progress(not quiet)
    try:
        report = bench_mod.run_bench(models, labels=labels, runtimes=bench_mod.parse_runtimes(runtimes) or None,
                                     batches=bench_mod.parse_batches(batch), shapes=parse_shapes(input_shapes),
                                     seed=seed, threads=threads, warmup=warmup, min_runs=runs, min_time=min_time,
                                     ov_device=ov_device, on_step=progress)
    finally:
        progress.done()
    if not quiet:
        click.echo(report.text())
    if plot_path:
        report.plot(plot_path)
    return report


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxrep")
def main():
    """Make YOLOv9 (and RepVGG-style) ONNX exports deployable: fold BatchNorm, merge RepConv branches,
    prune auxiliary heads, and prove the result equal with onnxruntime."""


def _pass_names() -> str:
    from onnxrep.passes import DEFAULT_PIPELINE

    return ", ".join(p.name for p in DEFAULT_PIPELINE)


@main.command()
@click.argument("model", type=click.Path())
@click.argument("output_arg", metavar="[OUTPUT]", required=False, type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None, help="Output path (default: <stem>.opt.onnx beside the input).")
@click.option("--in-place", is_flag=True, help="Allow the output to replace the input file.")
@click.option("--force", is_flag=True, help="Write the output even when verification fails (exit code stays 1).")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime equivalence check.")
@click.option("--allow-unverified", is_flag=True,
              help="Write the result even when verification cannot run (onnxruntime cannot run the original).")
@click.option("--passes", default=None, metavar="NAMES",
              help=f"Comma-separated passes to run, of: {_pass_names()} (default: all, in that order).")
@click.option("--external-data/--no-external-data", default=None,
              help="Save weights in <output>.data (default: when the input had external data or the model is over 2 GB).")
@with_options(output_options)
@with_options(precision_options)
@with_options(int8_options)
@with_options(deploy_options)
@with_options(verify_options)
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the report as JSON ('-' for stdout).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="Show every declined candidate with its reason (and tracebacks).")
@click.option("--bench", is_flag=True, help="Then time the original and the result side by side (see `onnxrep bench`).")
@with_options(bench_runtime_options)
@guarded
def optimize(model, output_arg, output, in_place, force, no_verify, allow_unverified, passes, external_data, samples, seed,
             noise_factor, rtol, atol, input_shapes, input_data, json_path, quiet, verbose, **pass_options):
    """Optimize MODEL and write the result to OUTPUT (or -o; verified with onnxruntime)."""
    from onnxrep import io
    from onnxrep.options import RunOptions
    from onnxrep.run import execute

    if output_arg and output and not io.same_file(Path(output_arg), output):
        raise OnnxrepError(f"two outputs: {output_arg} and -o {output}; give one")
    if "" in (output_arg, output):
        raise OnnxrepError("the output path is empty: give a file name, or leave it out for <stem>.opt.onnx")
    output = output or output_arg
    _deploy_options(pass_options)
    bench_opts = {k: pass_options.pop(k) for k in ("bench", "runtimes", "threads")}  # ours, not optimize()'s

    out = Path(output) if output else io.default_output(model)
    if Path(model).exists() and io.same_file(out, model) and not in_place:
        raise OnnxrepError(f"output {out} is the input file: pass --in-place to overwrite it, or choose -o")
    if not out.parent.is_dir():
        raise OnnxrepError(f"output folder {str(out.parent)!r} does not exist")
    # every other option is checked before anything is written: a bad one must leave no output behind
    _check_json_target(json_path)
    if bench_opts["bench"]:
        from onnxrep import bench as bench_mod

        bench_mod.parse_runtimes(bench_opts["runtimes"])
    # the run's option groups, each validated as it is built: every usage error before the model is loaded
    options = RunOptions.from_kwargs(passes=_split_list(passes) if passes else None, verify=not no_verify,
                                     allow_unverified=allow_unverified,
                                     **_verify_kwargs(samples, seed, noise_factor, rtol, atol, input_shapes, input_data),
                                     **pass_options)
    progress = Progress(not quiet)
    try:
        result = execute(model, options, progress, defer_door=True)
    finally:
        progress.done()
    report = result.report
    if result.ok or force:
        progress("writing")
        use_external = external_data
        if use_external is None and result.source is not None and result.source.external_data:
            use_external = True
        report.after.file_bytes = io.save(result.model, out, external_data=use_external, check=result.door)
        report.output = str(out)
        progress.done()
    if not quiet and json_path != "-":  # `--json -` makes stdout the JSON, and nothing else
        click.echo(report.text(verbose=bool(verbose)))
    data = report.to_dict()
    if bench_opts["bench"] and report.output is None:
        click.echo("onnxrep: bench skipped: verification failed", err=True)
    elif bench_opts["bench"]:
        if not quiet:
            click.echo("")
        data["bench"] = _bench([model, out], ["before", "after"], quiet=quiet, runtimes=bench_opts["runtimes"],
                               threads=bench_opts["threads"], input_shapes=input_shapes, seed=seed).to_dict()
    if json_path:
        _write_json(json_path, data)
    if result.status == "unverified" and not result.ok:
        _fail(f"verification could not run: {result.verification.skipped_reason}; "
              + ("written anyway (--force)" if force else "nothing written (--allow-unverified writes it unverified)"),
              EXIT_UNVERIFIED)
    if not result.ok:
        _fail(f"verification failed: {_failure(result.verification)}"
              + ("; written anyway (--force)" if force else "; nothing written"), EXIT_VERIFY_FAILED)


def _deploy_options(options: dict) -> None:
    """The deployment options checked and parsed: NMS settings without --nms are a mistake, not something to
    ignore; shapes parsed; --names read here (one line on a bad file, not a traceback from option parsing)."""
    ctx = click.get_current_context()
    if not options.get("nms"):
        given = [f"--{k.replace('_', '-')}" for k in ("conf", "iou", "max_det", "class_agnostic", "multi_label")
                 if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise OnnxrepError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} with --nms ort|trt")
    if options.get("overwrite_input_shapes"):
        from onnxrep.verify import parse_shapes

        options["overwrite_input_shapes"] = parse_shapes(options["overwrite_input_shapes"], "--overwrite-input-shape")
    else:
        options["overwrite_input_shapes"] = None
    if options.get("names") is not None:
        from onnxrep.deploy.metadata import read_names

        options["names"] = read_names(options["names"])


def _failure(v) -> str:
    """The first reason a verification failed, in one line."""
    if v.missing:
        return f"output {', '.join(v.missing)} of the original is missing from the result"
    if v.unexpected:
        return f"output {', '.join(v.unexpected)} is not in the original"
    where = next((o for o in v.outputs if not o.ok), None)
    if where:
        return f"output {where.name} diverged: {where.message}"
    low = next(((name, a) for name, a in v.agreements.items() if a["rate"] < a.get("min_agreement", 1)), None)
    if low:
        name, a = low
        return f"output {name}: detections agree {a['rate']:.2%}, below the minimum; worst: {a['worst']}"
    failed = next((c for c in v.deploy if not c["ok"]), None)
    if failed:
        return failed["line"]
    return v.skipped_reason


@main.command()
@click.argument("original", type=click.Path())
@click.argument("optimized", type=click.Path())
@with_options(verify_options)
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the result as JSON ('-' for stdout).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="Tracebacks on errors.")
@guarded
def verify(original, optimized, samples, seed, noise_factor, rtol, atol, input_shapes, input_data, json_path, quiet,
           verbose):
    """Check that OPTIMIZED computes the same outputs as ORIGINAL in onnxruntime (optimizations off).

    Outputs of ORIGINAL that OPTIMIZED does not have are listed as not compared (an aux head dropped on
    purpose); at least one must be compared. Exit 0 equal, 1 different, 4 could not run."""
    from onnxrep import io
    from onnxrep.verify import compatible, verify as run_verify

    kw = _verify_kwargs(samples, seed, noise_factor, rtol, atol, input_shapes, input_data)
    a, _ = io.load(original)
    b, _ = io.load(optimized)
    precision, why = compatible(a, b)   # usage errors before any model runs (no output in common: verify
                                        # returns before running too)
    result = run_verify(a, b, samples=kw["samples"], seed=seed, shapes=kw["input_shapes"],
                        feeds=kw["input_data"], rtol=rtol, atol=atol, noise_factor=noise_factor, precision=precision)
    if not quiet:
        click.echo("\n".join(([why] if why else []) + result.lines()))
    if json_path:
        _write_json(json_path, result.to_dict())
    if not result.ran:
        sys.exit(EXIT_UNVERIFIED)
    if not result.ok:  # nothing compared is nothing proven: that is a failure too
        sys.exit(EXIT_VERIFY_FAILED)


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@with_options(bench_runtime_options)
@click.option("--ov-device", default="CPU", show_default=True, help="OpenVINO device: CPU, GPU, AUTO, ...")
@click.option("--batch", default=None, metavar="SIZES",
              help="Batch sizes for models with a dynamic batch, e.g. 1,8,32 (default: each model's own).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed rounds first.")
@click.option("--runs", type=click.IntRange(min=1), default=10, show_default=True, help="Minimum timed runs per model.")
@click.option("--min-time", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Minimum seconds of timed runs per model.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
              help="Shape for an input with symbolic dimensions, e.g. images=1x3x640x640 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "json_path", default=None, metavar="FILE",
              help="Write the results as JSON ('-' for stdout, instead of the table).")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Bar chart of latency per model and runtime (needs matplotlib: the 'plot' extra).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="Tracebacks on errors.")
@guarded
def bench(models, runtimes, threads, ov_device, batch, warmup, runs, min_time, input_shapes, seed, json_path,
          plot_path, quiet, verbose):
    """Time each MODEL in every available runtime, the models alternating run by run.

    The first MODEL is the baseline: each other model's ratio is the median, over rounds, of its run's
    time over the baseline's run's time in the same round (below 1 is faster)."""
    for target, flag in ((json_path, "--json"), (plot_path, "--plot")):
        if target and target != "-" and not Path(target).resolve().parent.is_dir():
            raise OnnxrepError(f"{flag} {target}: folder does not exist")
    report = _bench(list(models), None, quiet=quiet or json_path == "-", runtimes=runtimes, threads=threads,
                    input_shapes=input_shapes, seed=seed, batch=batch, warmup=warmup, runs=runs, min_time=min_time,
                    ov_device=ov_device, plot_path=plot_path)
    if json_path:
        _write_json(json_path, report.to_dict())


@main.command("inspect")
@click.argument("model", type=click.Path())
@with_options(output_options)
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the analysis as JSON ('-' for stdout, instead of the text).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="List every declined candidate with its reason (and tracebacks).")
@guarded
def inspect_command(model, aux, keep_outputs, drop_outputs, rename_outputs, json_path, quiet, verbose):
    """Describe MODEL and what `optimize` would do to it; changes and writes nothing.

    Inputs and outputs with shapes, opset, op histogram, parameters and MACs, the auxiliary head that
    would be dropped (and why), and per pass how many candidates it would rewrite or decline."""
    from onnxrep.inspect import inspect as run_inspect

    if json_path and json_path != "-" and not Path(json_path).resolve().parent.is_dir():
        raise OnnxrepError(f"--json {json_path}: folder does not exist")
    progress = Progress(not quiet)
    try:
        result = run_inspect(model, aux=aux, keep_outputs=keep_outputs, drop_outputs=drop_outputs,
                             rename_outputs=rename_outputs, on_step=progress)
    finally:
        progress.done()
    if not quiet and json_path != "-":
        click.echo(result.text(verbose=bool(verbose)))
    if json_path:
        _write_json(json_path, result.to_dict())
