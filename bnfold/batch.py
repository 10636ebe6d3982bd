"""Batch runs of ``bnfold optimize``: many files and folders, sequentially or in worker processes.

Three steps, each its own function: ``collect_jobs`` turns the command-line PATHs into jobs (one
input file and where its result goes), reusing ``check.collect`` for folders and globs;
``run_jobs`` folds each through ``pipeline.optimize`` (in this process, or in worker processes,
``bnfold.workers``) and returns one ``Outcome`` per job, in input order; ``summary``, ``to_json``
and ``render_summary`` report them.

Where results go:

* with an output folder, at the input's path relative to the folder PATH it was found under
  (for a glob, relative to the part of the pattern before the first wildcard; for a file PATH,
  just its name), sub-folders created as needed;
* without one, beside the input as ``<stem>.folded.onnx`` (or in place with ``in_place``).

Folder and glob searches skip ``*.folded.onnx`` files (earlier results) and anything inside the
output folder; a file named on the command line is always taken. Two inputs whose results (or
their side files, ``<result>.data``) would land on the same path are an error for the later input;
a result or side file that would overwrite another input or one of its external data files is an
error for the input whose result it is.

Exit codes (``exit_code``): 2 when a PATH matched nothing or a file was unusable (the others are
still folded); else 1 when a validation failed (nothing written for that file); else 0. A failed
file never leaves a partial output: ``pipeline.optimize`` stages every write (``bnfold.staging``).

Interrupts and failures: on SIGINT, SIGTERM or SIGHUP (``bnfold.signals``) no job starts any
more, the jobs in progress are rolled back (or finished, when their output was already moving
into place), every job's Outcome says ``written``, ``rolled back`` or ``not started``, and the
exit code is 128 + the signal's number. A worker that dies fails only the job it held, with the
reason; its staging folder is swept and a new worker takes its place.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import signals, staging
from .errors import EXIT_FAILED, EXIT_OK, EXIT_UNPROVEN, EXIT_USAGE, BnfoldError
from .options import OptimizeOptions

if TYPE_CHECKING:
    from .pipeline import Report
    from .textout import Out

FOLDED_SUFFIX = ".folded.onnx"

OK, VALIDATION_FAILED, UNPROVEN, UNUSABLE = "ok", "validation failed", "unproven", "unusable"
#: A signal stopped the run: the job was in progress and was undone (nothing written), or never began.
ROLLED_BACK, NOT_STARTED = "rolled back", "not started"
#: ``Outcome.status`` as the ``--json`` document and the summary table spell it.
STATUS_WORDS = {OK: "written", VALIDATION_FAILED: "validation failed", UNPROVEN: "not proven", UNUSABLE: "unusable",
                ROLLED_BACK: "rolled back", NOT_STARTED: "not started"}


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes (``output`` None: the pipeline's default).

    ``error`` is set when the job cannot run at all: a PATH that matched nothing, or an output
    that collides with another job's.
    """

    input: str
    output: str | None = None
    error: str | None = None


#: The options of every file of a batch: ``bnfold.options.OptimizeOptions`` (without ``bench``).
Options = OptimizeOptions


@dataclass
class Outcome:
    """What happened to one job: its ``Report`` (without the model: ``Report.detached``), or the
    one-line error.

    ``interrupted`` is set when a signal stopped the run before this job's report was made:
    ROLLED_BACK, NOT_STARTED, or OK when its output had moved into place just before the signal
    took effect (``output`` says where; there is no report).
    """

    input: str
    report: Report | None = None
    error: str | None = None
    traceback: str | None = None
    interrupted: str | None = None
    output: str | None = None

    @property
    def status(self) -> str:
        if self.interrupted is not None:
            return self.interrupted
        if self.report is None:
            return UNUSABLE
        if self.report.ok:
            return OK
        return UNPROVEN if self.report.verdict == "unproven" else VALIDATION_FAILED

    @property
    def written(self) -> bool:
        return self.report.written if self.report is not None else self.interrupted == OK

    def to_dict(self) -> dict:
        """The report document plus ``error`` (None) and ``status`` (``STATUS_WORDS``); a file without
        a report gets the same core keys."""
        if self.report is not None:
            return {**self.report.to_dict(), "error": None, "status": STATUS_WORDS[self.status]}
        return {"input": self.input, "output": self.output if self.written else None, "written": self.written,
                "ok": self.written, "error": self.error, "status": STATUS_WORDS[self.status]}


# -- collecting jobs -------------------------------------------------------------------------


def is_batch(paths: list[str] | tuple[str, ...]) -> bool:
    """Several PATHs, a folder, or a glob pattern; one existing-or-plain file PATH is a single run."""
    if len(paths) != 1:
        return True
    path = paths[0]
    return os.path.isdir(path) or (not os.path.lexists(path) and glob.has_magic(path))


def collect_jobs(paths, output_dir: str | os.PathLike | None = None, *, in_place: bool = False,
                 external_data: bool = False, ignore: Sequence[tuple[Path, str]] = ()) -> list[Job]:
    """One Job per input file named by ``paths`` (files, folders, globs), in order, each file once;
    files matching ``ignore`` (``check.collect``) are left out.

    A job whose result's name (or its side file's, when it gets one: ``external_data``, or an
    input with external data) is longer than the file system allows is an error (``io.check_names``).
    """
    from .check import collect

    out_root = Path(output_dir) if output_dir is not None else None
    out_real = os.path.realpath(out_root) if out_root is not None else None
    jobs: list[Job] = []
    seen: set[str] = set()
    for arg in paths:
        searched = not os.path.isfile(arg)  # a folder or a glob: its files were found, not named
        base = arg if os.path.isdir(arg) else _glob_base(arg)
        found = collect([arg], ignore)
        kept = 0  # files of this PATH left after skipping earlier results (duplicates count)
        for item in found:
            if item.error:
                jobs.append(Job(item.path, error=item.error))
                continue
            key = os.path.realpath(item.path)
            if searched and (item.path.endswith(FOLDED_SUFFIX) or _inside(key, out_real)):
                continue
            kept += 1
            if key in seen:
                continue
            seen.add(key)
            if out_root is None:
                jobs.append(Job(item.path))
            else:
                rel = os.path.relpath(item.path, base) if searched else os.path.basename(item.path)
                jobs.append(Job(item.path, str(out_root / rel)))
        if searched and not kept and not any(item.error for item in found):
            why = "no .onnx file to fold in this folder" if os.path.isdir(arg) else "matches no file to fold"
            jobs.append(Job(arg, error=f"{arg}: {why} (*{FOLDED_SUFFIX} files and the output folder are skipped)"))
    return [_check_names(j, in_place, external_data) for j in _reject_collisions(jobs, in_place)]


def _check_names(job: Job, in_place: bool, external_data: bool) -> Job:
    from .io import check_names

    if job.error is None:
        try:
            check_names(job.input, destination(job, in_place), external_data)
        except BnfoldError as exc:
            return Job(job.input, error=str(exc))
    return job


def destination(job: Job, in_place: bool) -> Path:
    """Where a job's result goes (as ``pipeline.optimize`` decides it)."""
    from .pipeline import default_output

    return Path(os.path.realpath(job.input)) if in_place else Path(job.output or default_output(job.input))


def _glob_base(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard (``exported/**/*.onnx`` → ``exported``)."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _inside(path: str, folder: str | None) -> bool:
    return folder is not None and (path == folder or path.startswith(folder + os.sep))


def _reject_collisions(jobs: list[Job], in_place: bool) -> list[Job]:
    """A job writes its result and the result's side file (``<result>.data``). Neither may land on
    another job's (symlinks resolved), nor on a file another job reads: its input or one of that
    input's external data files (however spelled, ``io.file_id``). Files the job's own input reads
    are ``pipeline.optimize``'s business (only ``in_place`` may replace them).
    """
    from .io import file_id

    runnable = [j for j in jobs if j.error is None]
    writes = {j.input: _written(j, in_place) for j in runnable}
    readers: dict[tuple[int, int] | None, set[str]] = {}  # a file some job reads -> the inputs that read it
    for job in runnable:
        readers.setdefault(file_id(job.input), set()).add(job.input)
    # A file must exist to be read, so data files matter only for targets already on disk (earlier
    # results, or a clash), and then only for inputs whose folder holds one (external data must lie
    # inside the model's folder): only those are read, structure only. A fresh output tree reads none.
    existing = [t for targets in writes.values() for t in targets if os.path.exists(t)]
    for job in runnable:
        folder = os.path.dirname(os.path.realpath(job.input))
        if any(_inside(t, folder) for t in existing):
            for f in _data_files(job.input):
                readers.setdefault(file_id(f), set()).add(job.input)
    owners: dict[str, str] = {}
    checked: list[Job] = []
    for job in jobs:
        if job.error is None:
            job = _collision(job, writes[job.input], owners, readers) or job
            if job.error is None:
                owners.update((t, job.input) for t in writes[job.input])
        checked.append(job)
    return checked


def _written(job: Job, in_place: bool) -> list[str]:
    """The real paths a job writes: its result and the result's side file."""
    from .io import side_file

    dst = destination(job, in_place)
    return [os.path.realpath(dst), os.path.realpath(side_file(dst))]


def _collision(job: Job, targets: list[str], owners: dict[str, str], readers: dict) -> Job | None:
    """The job turned into an error when one of its targets is another job's target or is read by another job."""
    from .io import file_id

    for target, what in zip(targets, ("its result", "its result's side file")):
        if target in owners:
            return Job(job.input, error=f"{job.input}: {what} would overwrite the result of {owners[target]}")
        others = sorted(readers.get(file_id(target) or (), set()) - {job.input})
        if others:
            read = (f"the input {others[0]}" if file_id(target) == file_id(others[0])
                    else f"external data of the input {others[0]} ({os.path.basename(target)})")
            return Job(job.input, error=f"{job.input}: {what} would overwrite {read}")
    return None


def _data_files(path: str) -> list[Path]:
    """The external data files of the model at ``path`` (from its structure); none when it cannot be
    read: the job reports that itself when it runs."""
    from .io import read_model

    try:
        return read_model(path, check=False, lazy=True)[1]
    except BnfoldError:
        return []


# -- running jobs ----------------------------------------------------------------------------


def fold_job(job: Job, options: Options, debug: bool = False) -> Outcome:
    """Run ``pipeline.optimize`` on one job; every error becomes the Outcome's one-line message.

    Top-level so that a worker process can run it; returns plain data (the report as a dict). In
    a worker, the parent's ``signals.ABORT`` stops it: the Outcome then says whether the output
    was written before it took effect (OK) or rolled back.
    """
    mark = staging.commit_count()
    try:
        with signals.abortable():
            return _fold(job, options, debug)
    except signals.Interrupted:
        return _cut_short(job, options, mark)


def _fold(job: Job, options: Options, debug: bool) -> Outcome:
    if job.error:
        return Outcome(job.input, error=job.error)
    from .pipeline import optimize

    try:
        report = optimize(job.input, job.output, options=options)
    except BnfoldError as exc:
        return Outcome(job.input, error=str(exc), traceback=traceback.format_exc() if debug else None)
    except Exception as exc:  # a model shape nobody foresaw: one line naming the file, go on
        return Outcome(job.input, error=f"{job.input}: {type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc() if debug else None)
    return Outcome(job.input, report=report.detached())


def _cut_short(job: Job, options: Options, mark: int) -> Outcome:
    """The Outcome of a job a signal stopped: written if its output moved into place after ``mark``."""
    if staging.commit_count() > mark:
        return Outcome(job.input, interrupted=OK, output=str(destination(job, options.in_place)))
    return Outcome(job.input, interrupted=ROLLED_BACK)


def run_jobs(
    jobs: list[Job],
    options: Options,
    *,
    workers: int = 1,
    debug: bool = False,
    on_done: Callable[[Outcome], None] | None = None,
) -> tuple[list[Outcome], signals.Interrupted | None]:
    """Fold every job, in this process or in ``workers`` processes: (outcomes in job order, the
    ``Interrupted`` that stopped the run early or None).

    Output sub-folders are created here, before any worker starts (so two workers never race
    over one), and those left empty afterwards (every file in them failed) are removed again.
    """
    created = _make_output_folders(jobs)
    outcomes: list[Outcome | None] = [None] * len(jobs)

    def finish(i: int, outcome: Outcome) -> None:
        outcomes[i] = outcome
        if on_done:
            on_done(outcome)

    try:
        for i, job in enumerate(jobs):
            if job.error is not None:
                finish(i, _fold(job, options, debug))
        runnable = [i for i, j in enumerate(jobs) if j.error is None]
        if min(workers, len(runnable)) <= 1:
            interrupted = _run_here(jobs, runnable, options, debug, finish, outcomes)
        else:
            interrupted = _run_in_workers(jobs, runnable, options, debug, finish, workers)
    finally:
        _remove_if_empty(created)
    return [o or Outcome(j.input, interrupted=NOT_STARTED) for o, j in zip(outcomes, jobs)], interrupted


def _run_here(jobs, runnable, options, debug, finish, outcomes) -> signals.Interrupted | None:
    current: int | None = None
    mark = 0  # set with current
    try:
        for i in runnable:
            current, mark = i, staging.commit_count()
            finish(i, _fold(jobs[i], options, debug))
    except signals.Interrupted as exc:
        if current is not None and outcomes[current] is None:  # cut short before its outcome was kept
            finish(current, _cut_short(jobs[current], options, mark))
        return exc
    return None


def _run_in_workers(jobs, runnable, options, debug, finish, workers) -> signals.Interrupted | None:
    from . import workers as pool

    def died(k: int, reason: str) -> None:
        job = jobs[runnable[k]]
        staging.sweep(destination(job, options.in_place).parent)  # what the dead worker left staged
        finish(runnable[k], Outcome(job.input, error=f"{job.input}: {reason} while folding it"))

    try:
        return pool.run([(jobs[i], options, debug) for i in runnable], fold_job, workers,
                        done=lambda k, outcome: finish(runnable[k], outcome), died=died)
    except signals.Interrupted as exc:  # it came while the workers were being stopped: every job is done
        return exc


def _make_output_folders(jobs: list[Job]) -> list[Path]:
    """Create the missing parent folders of every job's output; return them, deepest first."""
    created: list[Path] = []
    for job in jobs:
        if job.error is not None or job.output is None:
            continue
        missing = [p for p in Path(job.output).parents if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
    return sorted(created, key=lambda p: len(p.parts), reverse=True)


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: a result landed there


# -- reporting -------------------------------------------------------------------------------


def exit_code(outcomes: list[Outcome], interrupted: signals.Interrupted | None = None) -> int:
    if interrupted is not None:
        return interrupted.exit_code
    statuses = {o.status for o in outcomes}
    return (EXIT_USAGE if UNUSABLE in statuses else EXIT_FAILED if VALIDATION_FAILED in statuses
            else EXIT_UNPROVEN if UNPROVEN in statuses else EXIT_OK)


@dataclass(frozen=True)
class Summary:
    """The totals of a batch: files by status, folds and refusals, the signal that stopped it (its
    name, None if none). ``to_dict`` is the ``"summary"`` of ``--json``."""

    files: int
    written: int
    validation_failed: int
    unproven: int
    unusable: int
    rolled_back: int
    not_started: int
    folds: int
    refusals: int
    interrupted: str | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summary(outcomes: list[Outcome], interrupted: signals.Interrupted | None = None) -> Summary:
    reports = [o.report for o in outcomes if o.report is not None]
    counted = {status: sum(1 for o in outcomes if o.status == status)
               for status in (VALIDATION_FAILED, UNPROVEN, UNUSABLE, ROLLED_BACK, NOT_STARTED)}
    return Summary(len(outcomes), sum(1 for o in outcomes if o.written), counted[VALIDATION_FAILED],
                   counted[UNPROVEN], counted[UNUSABLE], counted[ROLLED_BACK], counted[NOT_STARTED],
                   sum(len(r.result.folds) for r in reports), sum(len(r.result.refusals) for r in reports),
                   interrupted.name if interrupted is not None else None)


def to_json(outcomes: list[Outcome], interrupted: signals.Interrupted | None = None) -> dict:
    """The ``--json`` document of a batch: ``{"files": [...], "summary": {...}}``."""
    return {"files": [o.to_dict() for o in outcomes], "summary": summary(outcomes, interrupted).to_dict()}


def interrupted_line(outcomes: list[Outcome], interrupted: signals.Interrupted) -> str:
    """``bnfold: interrupted by SIGINT: 2 written, 2 rolled back, 8 not started``."""
    s = summary(outcomes, interrupted)
    return f"bnfold: {interrupted}: {s.written} written, {s.rolled_back} rolled back, {s.not_started} not started"


def error_lines(outcomes: list[Outcome]) -> list[str]:
    """One ``bnfold: error:`` line per failed file, in input order."""
    from .validation import failure_reason

    lines = []
    for o in outcomes:
        if o.status == UNUSABLE:
            message = o.error or f"{o.input}: failed"
        elif o.status in (VALIDATION_FAILED, UNPROVEN):
            v = o.report.validation if o.report is not None else None  # (these statuses come with a report)
            what = "validation failed" if o.status == VALIDATION_FAILED else "validation could not prove the fold"
            message = f"{o.input}: {what} ({failure_reason(v.reason if v is not None else None)}); nothing written"
        else:
            continue
        lines.append(f"bnfold: error: {' '.join(message.split())}")
    return lines


def _validation_cell(report: Report, out: Out) -> str:
    if report.validation is None:
        return "not run"
    word, style = {"passed": ("passed", "green"), "failed": ("FAILED", "red")}.get(report.verdict,
                                                                                 ("unproven", "yellow"))
    return out.paint(word, style)


def render_summary(outcomes: list[Outcome], out: Out, interrupted: signals.Interrupted | None = None) -> None:
    """One row per file: folds, refusals, validation, nodes before→after, status; then the totals."""
    from .text import printable as safe

    rows = []
    for o in outcomes:
        r = o.report
        if r is None:
            status = (f"written → {safe(o.output)}" if o.written and o.output is not None
                      else out.paint(STATUS_WORDS[o.status], "red" if o.status == UNUSABLE else "yellow"))
            rows.append((safe(o.input), "-", "-", "-", "-", status))
            continue
        status = (f"written → {safe(r.output)}" if r.written else
                  out.paint("not proven", "yellow") if o.status == UNPROVEN else out.paint("validation failed", "red"))
        assert r.result.before is not None and r.result.after is not None, "fold counts both"
        rows.append((safe(o.input), str(len(r.result.folds)), str(len(r.result.refusals)), _validation_cell(r, out),
                     f"{r.result.before.nodes}→{r.result.after.nodes}", status))
    out.table(("file", "folds", "refusals", "validation", "nodes before→after", "status"), rows,
              title="bnfold optimize")
    s = summary(outcomes)
    out.line(f"{s.files} files: {s.written} written, {s.validation_failed} failed validation, "
             f"{s.unproven} not proven, {s.unusable} unusable; {s.folds} folds, {s.refusals} refusals")
    if interrupted is not None:
        out.line(f"{interrupted}: {s.rolled_back} rolled back (nothing written), {s.not_started} not started")
