"""The ``bnfold`` command line.

Exit codes: 0 success; 1 validation failed (nothing written); 2 usage error or unusable model
(one line on stderr, no traceback unless ``--debug``); 128 + the signal's number when SIGINT,
SIGTERM or SIGHUP stopped it (130, 143, 129; see ``bnfold.signals``), after saying what was and
was not done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from . import signals

from .errors import EXIT_FAILED as EXIT_VALIDATION_FAILED
from .errors import EXIT_OK, EXIT_UNPROVEN, EXIT_USAGE


def _fail(message: str) -> None:
    from .text import printable

    click.echo(f"bnfold: error: {printable(' '.join(message.split()))}", err=True)


class _BnfoldGroup(click.Group):
    """Turns every error into one line on stderr and an exit code; ``--debug`` shows tracebacks.

    Commands run with SIGINT, SIGTERM and SIGHUP raised as ``signals.Interrupted`` in the main
    thread: ``finally`` clauses clean up, the commands say what they did, the exit code is
    128 + the signal's number.
    """

    #: Set by ``--debug`` (on the group or a command, see ``_debug_option``) while the arguments are parsed.
    debug = False

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> NoReturn:
        """click's ``main``, always standalone (``standalone_mode`` is ignored): it exits with the code."""
        args = list(sys.argv[1:] if args is None else args)
        if complete_var is not None:
            extra["complete_var"] = complete_var
        self.debug = False
        try:
            with signals.raising():
                code = self._run(args, prog_name, extra)
        finally:
            _diagnostics_off()  # --debug's handler goes with the command (the CLI may run in a caller's process)
        sys.exit(code or 0)

    def _run(self, args, prog_name, extra: dict) -> int:
        from .errors import BnfoldError

        try:
            code = super().main(args, prog_name=prog_name or "bnfold", standalone_mode=False, **extra)
        except signals.Interrupted as exc:  # before a command could say more (it says what it did itself)
            click.echo(f"bnfold: {exc}", err=True)
            code = exc.exit_code
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help(), err=True)
            code = EXIT_USAGE
        except click.ClickException as exc:
            _fail(exc.format_message())
            code = EXIT_USAGE
        except click.Abort:
            _fail("aborted")
            code = EXIT_USAGE
        except BnfoldError as exc:
            if self.debug:
                traceback.print_exc()
            _fail(str(exc))
            code = EXIT_USAGE
        except Exception as exc:  # a bug or a model shape we did not foresee: still one line
            if self.debug:
                traceback.print_exc()
            detail = str(exc) if isinstance(exc, _InternalError) else f"{type(exc).__name__}: {exc}"
            _fail(f"internal error: {detail} (run with --debug for the traceback)")
            code = EXIT_USAGE
        return code


@contextlib.contextmanager
def _reporting(note: str | None = None):
    """Where a command prints its report: standard output that refuses it (``> /dev/full``, a dead
    terminal) is an OutputError, one line (with ``note``: what was done all the same). A reader that
    closed the pipe (``| head``) has what it wanted: the rest goes nowhere and the command's exit
    code stands (click would exit 1, which here means "validation failed")."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError as broken:
        try:  # what is still buffered, and whatever follows, goes to /dev/null instead of failing again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file descriptor: click's way then
            raise broken from None
    except OSError as exc:
        if exc.filename is not None:
            raise
        from .errors import OutputError

        raise OutputError(f"cannot write to standard output: {exc.strerror or exc}"
                          + (f" ({note})" if note else "")) from None


def _debug_option(expose: bool = True):
    """--debug: tracebacks for errors, given to the group (``bnfold --debug CMD``) or to a command
    (``bnfold CMD --debug``); a command receives it as ``debug`` (``expose``)."""
    def remember(ctx: click.Context, param, value: bool) -> bool:
        root = ctx.find_root().command
        if value and isinstance(root, _BnfoldGroup):
            root.debug = True
        if value:
            from .logs import to_stderr

            to_stderr()
        return bool(value) or bool(getattr(root, "debug", False))

    return click.option("--debug", is_flag=True, is_eager=True, expose_value=expose, callback=remember,
                        help="Show tracebacks, and bnfold's diagnostics (its logger at DEBUG) on stderr.")


def _diagnostics_off() -> None:
    logs = sys.modules.get("bnfold.logs")  # imported only when --debug was given
    if logs is not None:
        logs.stderr_off()


def _rule_options(command):
    """--disable and --ignore, adding to ``[tool.bnfold]``'s ``disable`` and ``ignore``."""
    command = click.option("--ignore", "ignore", multiple=True, metavar="GLOB",
                           help="Skip paths matching this glob, relative to the current folder (repeatable; adds to "
                                "[tool.bnfold] ignore).")(command)
    return click.option("--disable", "disable", multiple=True, metavar="RULE",
                        help="Do not run this rule (repeatable; adds to [tool.bnfold] disable).")(command)


def _settings(disable, ignore):
    """(settings, names of the rules that do not run, ignore globs) from ``[tool.bnfold]`` and the
    flags."""
    from pathlib import Path

    from .config import check_globs, check_rule_names, load_settings

    settings = load_settings(Path.cwd())
    check_rule_names(disable, "--disable")
    check_globs(ignore, "--ignore")
    disabled = frozenset({*settings.disable, *disable})
    globs = [(settings.root, g) for g in settings.ignore] + [(Path.cwd(), g) for g in ignore]
    return settings, disabled, globs


def _rules(disabled: frozenset[str]):
    """The rules that run: every rule (None) unless some are disabled."""
    if not disabled:
        return None
    from .rules import DEFAULT_RULES

    return tuple(r for r in DEFAULT_RULES if r.name not in disabled)


def _input_options(command):
    """--input-shape and --seed: how the random inputs of validation and latency runs are made."""
    command = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed of the random inputs.")(command)
    return click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
                        help="Shape for an input with symbolic dims, e.g. input=1x3x224x224 (repeatable; default: "
                             "batch-like dims 1, the others searched until every output varies).")(command)


_VALIDATION_KEYS = ("inputs", "atol", "rtol", "reference", "validate_timeout", "accept_unproven")


def _validation_options(*, real_inputs: bool = True, settings_hint: str = ""):
    """The options of validation, gathered into one ``validation`` parameter
    (``bnfold.validation.ValidationOptions``, checked once; ``--input-shape`` and ``--seed`` come
    from ``_input_options`` and are added to it)."""
    from .limits import VALIDATE_TIMEOUT

    def decorate(command):
        @functools.wraps(command)
        def gather(*args, **kwargs):
            given = {k: kwargs.pop(k) for k in _VALIDATION_KEYS if k in kwargs}
            kwargs["validation"] = given
            return command(*args, **kwargs)

        options = [
            click.option("--atol", type=float, default=None,
                         help=f"Judge elementwise, |folded - original| <= atol + rtol*|original|, instead of bnfold's "
                              f"scale-relative criterion{settings_hint}."),
            click.option("--rtol", type=float, default=None, help=f"See --atol{settings_hint}."),
            click.option("--reference", type=click.Choice(["original", "float64"]), default=None,
                         help="original: compare with the original, the exact float64 answer only where that does not "
                              "decide (default); float64: judge every output against the exact answer and report each "
                              "model's distance from it."),
            click.option("--validate-timeout", type=click.FloatRange(min=0), default=VALIDATE_TIMEOUT,
                         show_default=True, metavar="SECONDS", callback=lambda ctx, param, value: value or None,
                         help="Abandon a validation after this long; it is then unproven (0: no limit)."),
            click.option("--accept-unproven", is_flag=True, default=None,
                         help=f"Write a fold that validation could not prove (exit 0 with a warning instead of "
                              f"3; a failed one is never written){settings_hint}."),
        ]
        if real_inputs:
            options.insert(0, click.option(
                "--inputs", multiple=True, type=click.Path(path_type=str), metavar="FILE.npz",
                help="Validate on these input sets instead of random ones: .npz files (np.savez(path, "
                     "input=array)), one set each, or folders of them (repeatable)."))
        for option in reversed(options):
            gather = option(gather)
        return gather

    return decorate


def _validation(given: dict, input_shapes: dict, seed: int, settings=None):
    """The ValidationOptions of a command's flags (``[tool.bnfold]`` values where a flag is absent)."""
    from .limits import VALIDATE_TIMEOUT
    from .options import ValidationOptions

    def pick(key, default=None):
        value = given.get(key)
        if value is None and settings is not None:
            value = getattr(settings, key, None)
        return default if value is None else value

    inputs = tuple(given["inputs"]) if given.get("inputs") else None
    return ValidationOptions(input_shapes, inputs, pick("atol"), pick("rtol"), seed, pick("reference", "original"),
                             given.get("validate_timeout", VALIDATE_TIMEOUT), bool(pick("accept_unproven", False))
                             ).checked()


def _bench_options(command):
    """How latency is measured (bnfold bench, optimize --bench); defaults from bnfold.latency."""
    from . import latency as d  # the defaults only: no onnx or numpy import for --help

    for option in reversed((
        click.option("--runs", type=click.IntRange(min=d.MIN_PAIRS), default=d.RUNS, show_default=True,
                     help="Most original/folded pairs timed per setting."),
        click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=d.TIME_BUDGET,
                     show_default=True, metavar="SECONDS",
                     help=f"Stop timing a setting after this long (at least {d.MIN_PAIRS} pairs), or after --runs "
                          "pairs, whichever comes first."),
        click.option("--warmup", type=click.IntRange(min=0), default=d.WARMUP, show_default=True,
                     help="Untimed runs of each model before timing."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="onnxruntime intra-op threads (default: onnxruntime's own choice)."),
        click.option("--provider", default=None, metavar="NAME",
                     help="onnxruntime execution provider, e.g. CUDAExecutionProvider (default: CPU; must be available)."),
    )):
        command = option(command)
    return command


def _bench_progress(runs: int):
    """A progress bar on stderr for a person watching; nothing for pipes and CliRunner."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from rich.console import Console

    from .latency.report import progress_bar

    return progress_bar(Console(stderr=True), runs)


def _format_options(formats: dict[str, str]):
    """--format (``formats``: name -> what it prints) and --json, its alias for --format json, gathered
    into one ``fmt`` parameter (default text); a usage error (exit 2) when the two disagree."""
    def decorate(command):
        @functools.wraps(command)
        def gather(*args, fmt=None, as_json=False, **kwargs):
            if as_json and fmt not in (None, "json"):
                raise click.UsageError(f"--json and --format {fmt} disagree; give one of them")
            return command(*args, fmt="json" if as_json else fmt or "text", **kwargs)

        gather = click.option("--json", "as_json", is_flag=True, help="Same as --format json.")(gather)
        return click.option("--format", "fmt", type=click.Choice(list(formats)), default=None,
                            help="; ".join(f"{k}: {v}" for k, v in formats.items()) + " (default: text).")(gather)

    return decorate


@click.group(cls=_BnfoldGroup)
@click.version_option(package_name="bnfold")
@_debug_option(expose=False)
def cli() -> None:
    """Fold BatchNormalization into the linear op next to it, prove nothing changed, report."""


@cli.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="Output file, or with several MODELs (or a folder) the output folder, created if missing; results "
                   "keep their paths relative to the folder they were found under (default: each MODEL's name with "
                   ".folded before its suffix, beside it).")
@click.option("--in-place", is_flag=True, help="Replace each MODEL with the folded model (atomically).")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Run original and folded model with onnxruntime and compare outputs.")
@_input_options
@_validation_options()
@click.option("--external-data", is_flag=True,
              help="Store tensors in a side file <OUTPUT>.data (automatic when the input had external data or the result exceeds 2 GB).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fold this many files at once, each in its own process.")
@click.option("--bench", "bench", is_flag=True,
              help="Also measure the latency of MODEL against the result (as bnfold bench does) and add it to the report.")
@_bench_options
@_format_options({"text": "tables for a terminal", "json": "one JSON document",
                   "markdown": "GitHub-flavoured markdown for a PR comment or $GITHUB_STEP_SUMMARY",
                   "github": "a GitHub Actions annotation per file"})
@_rule_options
@_debug_option()
def optimize(models, output, in_place, validate, input_shapes, seed, validation, external_data, jobs,
             bench, runs, time_budget, warmup, threads, provider, fmt, disable, ignore, debug) -> int:
    """Fold each MODEL and write the result, validated, atomically.

    MODEL is a model file, a folder (searched recursively for *.onnx, skipping *.folded.onnx) or a
    glob pattern. Settings come from [tool.bnfold] in the nearest pyproject.toml, as for check. With several, every file is folded whatever happens to the others; a summary
    table (or with --json {"files": [...], "summary": {...}}) follows. Exit codes: 0 success;
    1 a validation failed (nothing written for that file); 2 a file was unusable; 3 a validation
    could not prove the fold (nothing written, unless --accept-unproven); 128 + the
    signal's number (130 for Ctrl-C) after SIGINT/SIGTERM/SIGHUP: the files in progress are
    rolled back, none is started after it, and the summary says which is which.

    \b
    Example:
      bnfold optimize models/resnet_stack.onnx -o resnet_stack.folded.onnx
      bnfold optimize models/ more.onnx -o folded/ -j 4
      bnfold optimize models/resnet_stack.onnx --bench --time-budget 5
    """
    from .batch import is_batch
    from .errors import BnfoldError, UsageError
    from .options import OptimizeOptions
    from .pipeline import optimize as run_optimize
    from .inputs import parse_input_shapes

    # Malformed options are usage errors before any work (an input name a file lacks is that file's error).
    if output == "":
        raise UsageError("-o/--output: an empty path; give the output file (or, for several models, a folder)")
    try:
        shapes = parse_input_shapes(input_shapes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings, disabled, globs = _settings(disable, ignore)
    options = OptimizeOptions(in_place=in_place, validate_output=validate,
                              validation=_validation(validation, shapes, seed, settings), external_data=external_data,
                              rules=_rules(disabled))
    if is_batch(models):
        if bench:
            raise UsageError("--bench measures one model at a time; give a single MODEL file")
        return _optimize_batch(models, output, options.checked(), globs, jobs, fmt, debug)
    [model] = models
    if output is not None and os.path.isdir(output):  # an existing folder: the result keeps the file's name
        output = os.path.join(output, os.path.basename(model))
    if bench:
        from .latency.runner import BenchOptions

        options = dataclasses.replace(options, bench=BenchOptions(runs=runs, time_budget=time_budget, warmup=warmup,
                                                                  threads=threads, provider=provider))
    options = options.checked()
    from . import staging
    from .batch import Job, destination
    from .io import check_names

    dest = destination(Job(model, output), in_place)
    check_names(model, dest, external_data)  # names that cannot exist: before any work
    mark = staging.commit_count()
    try:
        with _bench_progress(runs) if bench else contextlib.nullcontext(None) as on_progress:
            if options.bench is not None:
                options = dataclasses.replace(options, bench=dataclasses.replace(options.bench, on_progress=on_progress))
            report = run_optimize(model, output, options=options)
    except signals.Interrupted as exc:
        done = (f"written → {dest} (before the signal took effect)" if staging.commit_count() > mark
                else "rolled back, nothing written")
        click.echo(f"bnfold: {exc}: {model}: {done}", err=True)
        return exc.exit_code
    except BnfoldError:
        raise
    except Exception as exc:  # name the file in the one-line error
        raise _InternalError(model, exc) from exc
    with _reporting(f"{report.output} was written" if report.written else None):
        if fmt == "json":
            from . import jsonout

            click.echo(jsonout.dumps(report.to_dict()))
        elif fmt in ("markdown", "github"):
            from . import formats

            to_text = formats.optimize_markdown if fmt == "markdown" else formats.optimize_github
            click.echo(to_text(report), nl=False)
        else:
            from .report import render
            from .textout import Out

            render(report, Out())
    if report.bench_error:
        why = "it validated" if report.validation is not None else "validation was off"
        click.echo(f"bnfold: warning: {' '.join(report.bench_error.split())} (the output was written: {why})", err=True)
    reason = report.validation.reason if report.validation is not None else None  # (there is one when it ran)
    if report.unproven_accepted:
        from .validation import failure_reason

        click.echo(f"bnfold: warning: {model}: written although validation could not prove the fold "
                   f"({' '.join(failure_reason(reason).split())}; --accept-unproven)", err=True)
    if not report.ok:
        from .validation import failure_reason

        if report.verdict == "unproven":
            _fail(f"{model}: validation could not prove the fold ({failure_reason(reason)}); "
                  "nothing written (--accept-unproven writes it)")
            return EXIT_UNPROVEN
        _fail(f"{model}: validation failed ({failure_reason(reason)}); nothing written")
        return EXIT_VALIDATION_FAILED
    return EXIT_OK


def _optimize_batch(models, output, options, ignore, jobs, fmt, debug) -> int:
    """``bnfold optimize`` on several files: see ``bnfold.batch``."""
    from . import batch
    from .errors import UsageError

    in_place = options.in_place
    if output is not None and in_place:
        raise UsageError("--in-place and an output folder contradict each other; give one")
    if output is not None and os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"{output}: with several models the output must be a folder, and this is a file")
    todo = batch.collect_jobs(models, output, in_place=in_place, external_data=options.external_data, ignore=ignore)
    if all(j.error for j in todo):  # nothing to fold: the errors alone, no report
        for job in todo:
            if job.error:  # (every one)
                _fail(job.error)
        return EXIT_USAGE
    if output is not None:
        os.makedirs(output, exist_ok=True)
    if sys.stderr.isatty():  # a progress bar only for a person watching; CliRunner and pipes stay clean
        from rich import progress as bar
        from rich.console import Console

        columns = (bar.TextColumn("folding"), bar.BarColumn(), bar.MofNCompleteColumn(), bar.TimeElapsedColumn())
        progress = bar.Progress(*columns, console=Console(stderr=True), transient=True)
        task = progress.add_task("fold", total=len(todo))
        try:
            with signals.held():  # its refresh thread inherits the blocked signals: they reach the main thread
                progress.start()
            outcomes, interrupted = batch.run_jobs(todo, options, workers=jobs, debug=debug,
                                                   on_done=lambda _: progress.advance(task))
        finally:
            progress.stop()
    else:
        outcomes, interrupted = batch.run_jobs(todo, options, workers=jobs, debug=debug)
    with _reporting():
        if fmt == "json":
            from . import jsonout

            click.echo(jsonout.dumps(batch.to_json(outcomes, interrupted)))
        elif fmt in ("markdown", "github"):
            from . import formats

            to_text = formats.batch_markdown if fmt == "markdown" else formats.batch_github
            click.echo(to_text(outcomes, interrupted), nl=False)
        else:
            from .textout import Out

            batch.render_summary(outcomes, Out(), interrupted)
    for outcome in outcomes:
        if debug and outcome.traceback:
            click.echo(outcome.traceback, err=True, nl=False)
    for line in batch.error_lines(outcomes):
        click.echo(line, err=True)
    if interrupted is not None:
        click.echo(batch.interrupted_line(outcomes, interrupted), err=True)
    return batch.exit_code(outcomes, interrupted)


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--fix", is_flag=True, help="Fold in place, validated, atomically (a file whose fold does not validate is left untouched).")
@_format_options({"text": "one line per finding", "json": "one JSON document",
                   "markdown": "GitHub-flavoured markdown tables for a PR comment or $GITHUB_STEP_SUMMARY",
                   "github": "GitHub Actions annotations"})
@click.option("-v", "--verbose", is_flag=True, help="Also list every node left in place and why.")
@_rule_options
@_validation_options(real_inputs=False, settings_hint=" (for --fix; default: [tool.bnfold])")
@_debug_option()
def check(paths, fix, fmt, verbose, disable, ignore, validation, debug) -> int:
    """Report what can fold in each model, like a linter; exit 1 when something can.

    PATH is a model, a folder (searched recursively for *.onnx) or a glob pattern. Settings come
    from [tool.bnfold] in the nearest pyproject.toml (atol, rtol, disable, ignore); flags add to
    or override them. Exit codes: 0 nothing to fold (or everything fixed); 1 something to fold
    (or a fix failed validation, or could not be proven: the file is left untouched); 2 a PATH matched nothing, a file could not be read (the others
    are still checked) or a setting is wrong; 128 + the signal's number after SIGINT/SIGTERM/
    SIGHUP (the fix in progress is rolled back, the files after it are not started).

    \b
    Example:
      bnfold check models/ 'exported/*.onnx'
      bnfold check --fix models/resnet_stack.onnx
      bnfold check --disable bn-linear --ignore 'third_party/**' models/
    """
    from .check import exit_code, render, run_check

    settings, disabled, globs = _settings(disable, ignore)
    # Validation runs only with --fix; without it the flags are still checked (a bad --atol is a
    # usage error), and only the tolerance flags can be wrong (click and [tool.bnfold] check the rest).
    if fix or validation.get("atol") is not None or validation.get("rtol") is not None:
        validation = _validation(validation, {}, 0, settings)
    else:
        validation = None  # bnfold.validation imports onnx and numpy
    checks, interrupted = run_check(paths, fix=fix, ignore=globs, validation=validation, disable=disabled)
    out, err = render(checks, "text" if fmt == "markdown" else fmt, verbose=verbose, interrupted=interrupted)
    if fmt == "markdown":
        from .formats import check_markdown

        out = [check_markdown(checks, verbose=verbose, interrupted=interrupted).rstrip("\n")]
    with _reporting():
        for line in out:
            click.echo(line)
    for line in err:
        click.echo(line, err=True)
    return exit_code(checks, fix=fix, interrupted=interrupted)


@cli.command()
@click.argument("model", type=click.Path(path_type=str, dir_okay=False))
@click.argument("folded", required=False, type=click.Path(path_type=str, dir_okay=False))
@_bench_options
@click.option("--rounds", type=click.IntRange(min=3), default=None, metavar="N",
              help="Rounds per setting, each with a fresh session of each model (default 30; fewer when --time-budget "
                   "runs out first).")
@click.option("--check-outputs/--no-check-outputs", default=True, show_default=True,
              help="Refuse unless FOLDED computes MODEL's outputs (one seeded run, per-dtype tolerance); turn off "
                   "to time models that deliberately differ.")
@_input_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (raw per-run latencies included).")
@click.option("--plot", "plot", type=click.Path(path_type=str, dir_okay=False), metavar="FILE.png",
              help="Draw the latency distributions and the speedups with their intervals (needs bnfold[plot]).")
@_debug_option()
def bench(model, folded, runs, time_budget, warmup, threads, provider, rounds, check_outputs, input_shapes, seed,
          as_json, plot, debug) -> int:
    """Latency of MODEL against FOLDED (default: MODEL folded in memory) with onnxruntime.

    FOLDED must have MODEL's inputs and outputs and compute the same outputs on one seeded input
    (--no-check-outputs skips the outputs); otherwise nothing is timed. Two settings, both
    reported: "disabled" (ORT_DISABLE_ALL: the graph as written, what a runtime that does not
    fuse pays) and "default" (onnxruntime's default level, which fuses Conv+BN itself at session
    creation: what a plain onnxruntime deployment sees). Per setting, in --rounds rounds of fresh
    sessions: session creation (timed), warm-up, then interleaved original/folded pairs in ABBA
    order, until --runs pairs or --time-budget seconds. The speedups (per run: over rounds;
    session creation: over ABBA blocks of rounds) have exact intervals; the four hold together at
    95% (Bonferroni), and each states its resolution. An interval that contains 1 is reported as no
    measurable difference. Exit codes: 0 measured (also when --plot then fails: a warning says
    so, the results are printed); 2 unusable or incomparable model or option, or the runtime
    could not run a model (one line on stderr, nothing measured).

    \b
    Example:
      bnfold bench models/resnet_stack.onnx
      bnfold bench original.onnx folded.onnx --threads 1 --time-budget 30 --json > latency.json
      bnfold bench models/resnet_stack.onnx --plot latency.png
    """
    from .errors import BnfoldError, UsageError
    from .latency.runner import BenchOptions
    from .latency.runner import bench as run_bench
    from .inputs import parse_input_shapes

    try:
        shapes = parse_input_shapes(input_shapes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if plot is not None:  # before measuring: a missing matplotlib or an unwritable path must not waste the run
        from .latency.plot import check_destination, require_matplotlib

        require_matplotlib()
        check_destination(plot)
    options = BenchOptions(runs=runs, time_budget=time_budget, warmup=warmup, threads=threads, provider=provider,
                           check_outputs=check_outputs)
    if rounds is not None:
        options = dataclasses.replace(options, rounds=rounds)
    options = options.checked()
    try:
        with _bench_progress(runs) as on_progress:
            result = run_bench(model, folded, input_shapes=shapes, seed=seed,
                               options=dataclasses.replace(options, on_progress=on_progress))
    except BnfoldError:
        raise
    except Exception as exc:  # name the file in the one-line error
        raise _InternalError(model, exc) from exc
    with _reporting():
        if as_json:
            from . import jsonout

            click.echo(jsonout.dumps(result.to_dict()))
        else:
            from .latency.report import render_bench
            from .textout import Out

            render_bench(result, Out())
    if plot is not None:  # after the results are out: a failure here costs the figure only
        from .latency.plot import plot_bench

        try:
            plot_bench(result, plot)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"bnfold: warning: {plot}: the plot could not be written ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:200]}); the results above are complete", err=True)
        else:
            if not as_json:
                click.echo(f"Plot: {plot}")
    return EXIT_OK


class _InternalError(Exception):
    def __init__(self, model: str, exc: Exception):
        super().__init__(f"{model}: {type(exc).__name__}: {exc}")


def main() -> None:
    """Console-script entry point.

    The process ends without the interpreter's teardown: every file is written and closed (and
    every staged folder removed) before ``cli.main`` returns, so all that is left is freeing the
    model's objects one by one, 30-60 ms of a 0.4 s run for nothing.

    What the terminal's encoding cannot show (a node named in CJK on a latin-1 terminal) is written
    as a backslash escape: an encoding error would turn a written model into exit 2.
    """
    signals.install()  # so that a signal in the last steps, after the command's own handling, still ends here
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (a caller's replacement): as it is
            pass
    try:
        cli.main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except signals.Interrupted as exc:
        code = exc.exit_code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (``| head``): nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
