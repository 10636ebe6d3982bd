"""``bnfold check``: report foldable patterns in many models, like a linter; ``--fix`` folds them.

Three steps, each its own function: ``collect`` turns the command-line PATHs (files, folders
searched recursively for ``*.onnx``, glob patterns) into files, leaving out those that match an
ignore glob (``[tool.bnfold] ignore`` or ``--ignore``, see ``bnfold.config``); ``check_file`` folds one model in
memory (or, with ``fix``, rewrites it through ``pipeline.optimize``: validated, atomic) and records
what it found (nothing is read further when ``bnfold.quickscan`` proves from the file's bytes that
there is nothing to find); ``render`` formats the results as text, one JSON document, or GitHub
Actions annotations.

Exit codes (``exit_code``): 2 when a PATH matched nothing or a file could not be read; else 1 when
a finding is left (without ``fix``) or a fix failed validation (the file is untouched); else 0;
128 + the signal's number when SIGINT, SIGTERM or SIGHUP stopped the run (``run_check``: the fix
in progress is rolled back, the files after it are not started, and each says so).
A BatchNormalization with nothing to fold into is not a finding: it is a refusal, listed only
with ``verbose``.

Folder and glob searches skip bnfold's own staging folders (``bnfold.staging``): a fix that is
in progress, or one a SIGKILL cut short, is never taken for a model.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import quickscan, scan
from . import signals, staging
from .config import is_ignored
from .errors import BnfoldError
from .text import gh_data, gh_property, printable

if TYPE_CHECKING:  # imported where used: a clean file is checked without onnx (bnfold.quickscan)
    from .rules import Fold, Refusal, Rule
    from .options import ValidationOptions

FORMATS = ("text", "json", "github")
#: ``FileCheck.interrupted``: a fix in progress was undone (the file is untouched); the file was
#: never reached; a check (without ``fix``) was in progress.
ROLLED_BACK, NOT_STARTED, NOT_FINISHED = "rolled back", "not started", "not finished"


@dataclass
class FileCheck:
    """What ``check`` found in one file (or in one PATH that matched nothing).

    Attributes:
        path: the file as named on the command line (or found under a folder or by a glob).
        findings: foldable patterns; with ``fix`` and ``fixed``, the folds that were applied.
        refusals: nodes a rule looked at and left, with the reason.
        error: one-line message when the file is unusable or a fix failed validation.
        unreadable: the error is about reading the file (exit 2), not a failed validation (exit 1).
        fixed: the file was rewritten with its folds applied and validated.
        interrupted: ROLLED_BACK, NOT_STARTED or NOT_FINISHED when a signal stopped the run first.
    """

    path: str
    findings: list[Fold] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    error: str | None = None
    unreadable: bool = False
    fixed: bool = False
    interrupted: str | None = None
    unproven: bool = False  # fixed although validation could not prove it (accept_unproven)

    def to_dict(self, verbose: bool = False) -> dict:
        d: dict[str, object] = {"path": self.path, "findings": [f.to_dict() for f in self.findings]}
        if verbose:
            d["refusals"] = [r.to_dict() for r in self.refusals]
        d.update(error=self.error, fixed=self.fixed, unproven=self.unproven, interrupted=self.interrupted)
        return d


# -- collecting files ------------------------------------------------------------------------


def collect(paths: list[str] | tuple[str, ...], ignore: Sequence[tuple[Path, str]] = ()) -> list[FileCheck]:
    """One FileCheck per model file named by ``paths``, in order, each file once.

    A folder stands for every ``*.onnx`` below it (sorted); a PATH that does not exist but has
    glob characters is expanded (``**`` included), so quoted patterns work. Neither search enters
    a staging folder (``staging.is_staging``). A PATH that matches nothing becomes a FileCheck
    carrying the error. Files matching ``ignore`` ((base folder, glob) pairs, see
    ``config.is_ignored``) are left out, named ones too (pre-commit names every file): a PATH
    whose files are all ignored is not an error.
    """
    checks: list[FileCheck] = []
    seen: set[str] = set()
    for arg in paths:
        if os.path.lexists(arg):
            if not (os.path.isdir(arg) or scan.is_regular(arg)):  # named: say why it is not read
                checks.append(FileCheck(arg, error=f"{arg}: {scan.kind_of(arg)}, not a regular file: not read",
                                        unreadable=True))
                continue
            matches = [arg]
        elif glob.has_magic(arg):
            matches = scan.expand(arg)
        else:
            checks.append(FileCheck(arg, error=f"{arg}: no such file or directory", unreadable=True))
            continue
        files: list[str] = []
        for match in matches:
            if os.path.isdir(match):
                files += scan.models_in(match)
            elif scan.is_regular(match):  # a FIFO or device among the matches is not a model
                files.append(match)
        if not files:
            why = "no .onnx file in this folder" if os.path.isdir(arg) else "matches no file"
            checks.append(FileCheck(arg, error=f"{arg}: {why}", unreadable=True))
        for f in files:
            if is_ignored(f, ignore):
                continue
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                checks.append(FileCheck(f))
    return checks


# -- checking one file -----------------------------------------------------------------------


def check_file(
    item: FileCheck,
    *,
    fix: bool = False,
    rules: Sequence[Rule] | None = None,
    validation: ValidationOptions | None = None,
    disable: Collection[str] = (),
) -> FileCheck:
    """Fold ``item.path`` in memory and record folds and refusals; with ``fix``, apply them.

    ``rules`` default to every rule but those named in ``disable``. The fix only runs when there
    is something to fold (an unchanged file is not rewritten); the file is replaced atomically and
    only after validation (``validation``, default options) passed, or could not prove the fold and
    ``validation.accept_unproven`` allows it. A file ``quickscan`` proves clean (nothing to fold,
    refuse or complain about, whichever of bnfold's rules run) is not read any further.
    """
    if item.error:
        return item
    if _default_rules(rules) and quickscan.is_clean(item.path):
        return item
    from .folding import fold
    from .io import ModelFile
    from .options import ValidationOptions

    quickscan.attach_checker()
    if rules is None and disable:
        from .rules import DEFAULT_RULES

        rules = tuple(r for r in DEFAULT_RULES if r.name not in disable)
    try:
        result = fold(ModelFile.read(item.path, lazy=True), rules, in_place=True)
        item.findings, item.refusals = list(result.folds), list(result.refusals)
        if fix and item.findings:
            _fix(item, rules, validation or ValidationOptions())
    except BnfoldError as exc:
        item.error, item.unreadable = str(exc), True
    except Exception as exc:  # a model shape nobody foresaw: one line naming the file, go on
        item.error, item.unreadable = f"{item.path}: {type(exc).__name__}: {exc}", True
    return item


def _default_rules(rules: Sequence[Rule] | None) -> bool:
    """Whether ``rules`` are bnfold's own (all of them, or some): what ``quickscan`` knows about."""
    if rules is None:
        return True
    from .rules import DEFAULT_RULES  # imported already by whoever holds the rules

    return all(any(rule is own for own in DEFAULT_RULES) for rule in rules)


def _fix(item: FileCheck, rules: Sequence[Rule] | None, validation: ValidationOptions) -> None:
    """Exactly what ``bnfold optimize --in-place`` does, with the chosen rules."""
    from .io import check_names
    from .options import OptimizeOptions
    from .pipeline import optimize
    from .validation import failure_reason

    check_names(item.path, os.path.realpath(item.path))
    options = OptimizeOptions(in_place=True, validation=validation, rules=None if rules is None else tuple(rules))
    report = optimize(item.path, options=options)
    item.findings, item.refusals = list(report.result.folds), list(report.result.refusals)
    if report.ok and report.written:
        item.fixed = True
        item.unproven = report.unproven_accepted
    else:
        result = report.validation
        why = failure_reason(result.reason if result is not None else None)
        what = "validation could not prove the fold" if report.verdict == "unproven" else "validation failed"
        item.error = f"{item.path}: {what} ({why}); file left untouched"


def run_check(
    paths,
    *,
    fix: bool = False,
    rules: Sequence[Rule] | None = None,
    ignore: Sequence[tuple[Path, str]] = (),
    validation: ValidationOptions | None = None,
    disable: Collection[str] = (),
) -> tuple[list[FileCheck], signals.Interrupted | None]:
    """``collect`` then ``check_file`` on each: every file is checked whatever happened to the others.

    Returns the checks and the ``signals.Interrupted`` that stopped the run early (None if none):
    then the file in progress is rolled back (or fixed, if its output had moved into place just
    before) and those after it are not started. ``disable``: rules that do not run, by name (with
    ``rules`` None; the rules are imported only for a file ``quickscan`` does not prove clean).
    """
    checks = collect(paths, ignore)
    done, mark = 0, staging.commit_count()
    try:
        for item in checks:
            mark = staging.commit_count()
            check_file(item, fix=fix, rules=rules, validation=validation, disable=disable)
            done += 1
        return checks, None
    except signals.Interrupted as exc:
        if done < len(checks):
            current = checks[done]
            if staging.commit_count() > mark:  # its fix moved into place just before the signal took effect
                current.fixed = True
            else:
                current.interrupted = ROLLED_BACK if fix else NOT_FINISHED
            for c in checks[done + 1:]:
                c.interrupted = NOT_STARTED
        return checks, exc


def exit_code(checks: list[FileCheck], *, fix: bool = False, interrupted: signals.Interrupted | None = None) -> int:
    if interrupted is not None:
        return interrupted.exit_code
    if any(c.unreadable for c in checks):
        return 2
    if any(c.error for c in checks):  # a fix that did not validate
        return 1
    if not fix and any(c.findings for c in checks):
        return 1
    return 0


# -- formatting ------------------------------------------------------------------------------


def describe_fold(f: Fold) -> str:
    """``BatchNormalization 'bn1' can fold into Conv 'conv1' [conv-bn]`` (plus the subgraph)."""
    return f"{f.op} '{f.node}' can fold into {f.into_op} '{f.into}' [{f.rule}]{_in_graph(f.graph)}"


def describe_refusal(r: Refusal) -> str:
    return f"{r.op} '{r.node}' stays: {r.reason} [{r.rule}]{_in_graph(r.graph)}"


def describe_fixed(c: FileCheck) -> str:
    folds = ", ".join(f"{f.op} '{f.node}' into {f.into_op} '{f.into}'" for f in c.findings)
    return f"folded {len(c.findings)} ({folds})"


def _in_graph(graph: str) -> str:
    return "" if graph == "main" else f" (in {graph})"


def render(checks: list[FileCheck], fmt: str = "text", *, verbose: bool = False,
           interrupted: signals.Interrupted | None = None) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines). Every error also goes to stderr as ``bnfold: error: ...``; after
    a signal, each file it stopped says so and stderr ends with what was and was not done."""
    err = [f"bnfold: error: {printable(' '.join(c.error.split()))}" for c in checks if c.error]
    if interrupted is not None:
        err.append(f"bnfold: {interrupted}: {_interrupted_counts(checks)}")
    if fmt == "json":
        doc = {
            "files": [c.to_dict(verbose) for c in checks],
            "summary": {
                "files": sum(1 for c in checks if not c.unreadable),
                "findings": sum(len(c.findings) for c in checks),
                "errors": sum(1 for c in checks if c.error),
                "interrupted": interrupted.name if interrupted is not None else None,
            },
        }
        from . import jsonout

        return [jsonout.dumps(doc)], err
    out: list[str] = []
    for c in checks:
        if c.interrupted:
            line = f"{c.interrupted} ({interrupted}{'; file left untouched' if c.interrupted == ROLLED_BACK else ''})"
            out.append(f"::warning file={gh_property(c.path)},title=bnfold::{gh_data(line)}" if fmt == "github"
                       else printable(f"{c.path}: {line}"))
        else:
            out += _github_lines(c, verbose) if fmt == "github" else _text_lines(c, verbose)
    return out, err


def _interrupted_counts(checks: list[FileCheck]) -> str:
    """``2 checked, 1 fixed, 1 rolled back, 3 not started`` (the states that occur; not started always)."""
    counts = {"checked": sum(1 for c in checks if not c.interrupted and not c.fixed and not c.unreadable),
              "fixed": sum(1 for c in checks if c.fixed)}
    for state in (ROLLED_BACK, NOT_FINISHED, NOT_STARTED):
        counts[state] = sum(1 for c in checks if c.interrupted == state)
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n or state == NOT_STARTED)


def _text_lines(c: FileCheck, verbose: bool) -> list[str]:
    if c.unreadable:
        return []
    lines = [f"{c.path}: {describe_fixed(c)}"] if c.fixed else [f"{c.path}: {describe_fold(f)}" for f in c.findings]
    if verbose:
        lines += [f"{c.path}: {describe_refusal(r)}" for r in c.refusals]
    return [printable(line) for line in lines]  # a newline in a name must not make a line of its own


def _github_lines(c: FileCheck, verbose: bool) -> list[str]:
    """GitHub Actions workflow commands (``::warning file=...,title=...::message``)."""
    where = f"file={gh_property(c.path)},title=bnfold"
    if c.unreadable and c.error is not None:  # (an unreadable file always has its error)
        return [f"::error {where}::{gh_data(c.error)}"]
    if c.fixed:
        lines = [f"::notice {where}::{gh_data(describe_fixed(c))}"]
    else:
        lines = [f"::warning {where}::{gh_data(describe_fold(f))}" for f in c.findings]
    if c.error:  # validation of a fix failed
        lines.append(f"::error {where}::{gh_data(c.error)}")
    if verbose:
        lines += [f"::notice {where}::{gh_data(describe_refusal(r))}" for r in c.refusals]
    return lines


