"""``optimize``: the file-to-file step behind ``bnfold optimize``: load, fold, validate, write.

The output is written to a temporary file beside the destination, validated from there, and
renamed into place only when validation passed: after any failure no output file exists and
the input is untouched (it is only ever read, unless the destination is the input itself).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from .errors import BnfoldError, ModelError, OutputError, UsageError
from .rules import Rule
from .folding import FoldResult, fold
from .inputs import check_input_bytes, resolve_shapes
from .io import ModelFile, file_id, side_file, write_model
from .logs import logger
from .staging import staged_output
from .savings import Savings, measure
from .options import OptimizeOptions
from .limits import VALIDATE_TIMEOUT
from .options import ValidationOptions
from .text import printable

log = logger(__name__)

if TYPE_CHECKING:
    from .latency.runner import BenchOptions, BenchResult
    from .validation import ValidationResult


@dataclass
class Report:
    """What ``optimize`` did to one file; ``to_dict`` is the ``--json`` document."""

    input: str
    output: str  # where it is written, or would have been (``written`` says which)
    result: FoldResult[onnx.ModelProto] | FoldResult[None]  # None: detached
    validation: ValidationResult | None
    written: bool
    input_bytes: int
    output_bytes: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: Latency of the input against the output (``bench=``), or why it could not be measured.
    bench: BenchResult | None = None
    bench_error: str | None = None
    #: Validation could not prove the fold and it was written all the same (``accept_unproven``).
    unproven_accepted: bool = False
    #: What the folds saved per inference (``bnfold.savings``), measured on the shapes validation used.
    savings: Savings | None = None

    def detached(self) -> Report:
        """This report without the folded model (what a batch worker sends back: the figures only)."""
        return dataclasses.replace(self, result=self.result.without_model())

    @property
    def ok(self) -> bool:
        """Whether validation allowed the output (passed, not needed, or unproven and accepted)."""
        return self.validation is None or self.validation.passed or self.unproven_accepted

    @property
    def verdict(self) -> str:
        """passed / failed / unproven, or "not run" (nothing folded, or validation off)."""
        return "not run" if self.validation is None else self.validation.verdict

    def to_dict(self) -> dict:
        r = self.result
        assert r.before is not None and r.after is not None, "fold counts both"
        return {
            "input": self.input,
            "output": self.output if self.written else None,
            "written": self.written,
            "ok": self.ok,
            "verdict": self.verdict,
            "unproven_accepted": self.unproven_accepted,
            "folds": [f.to_dict() for f in r.folds],
            "refusals": [x.to_dict() for x in r.refusals],
            "validation": None if self.validation is None else self.validation.to_dict(),
            "before": {**r.before.to_dict(), "file_bytes": self.input_bytes},
            "after": {**r.after.to_dict(), "file_bytes": self.output_bytes},
            "savings": None if self.savings is None else self.savings.to_dict(),
            "seconds": self.timings,
            "bench": self.bench.to_dict() if self.bench is not None
            else {"error": self.bench_error} if self.bench_error else None,
        }


def default_output(src: str | os.PathLike) -> Path:
    """``dir/model.onnx`` → ``dir/model.folded.onnx``."""
    src = Path(src)
    return src.with_name(f"{src.stem}.folded{src.suffix or '.onnx'}")


def optimize(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    options: OptimizeOptions | None = None,
    in_place: bool = False,
    validate_output: bool = True,
    input_shapes: dict[str, list[int]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    external_data: bool = False,
    rules: Sequence[Rule] | None = None,
    bench: BenchOptions | None = None,
    validate_timeout: float | None = VALIDATE_TIMEOUT,
    validation: ValidationOptions | None = None,
) -> Report:
    """Fold ``src`` and write the result to ``dst`` (default ``<stem>.folded.onnx`` beside it).

    ``options`` (``bnfold.options.OptimizeOptions``) says how, whole; the keywords are shorthands
    for its fields (give one or the other): ``in_place``, ``validate_output``, ``external_data``,
    ``rules``, ``bench``, ``validation`` (a ``ValidationOptions``), or instead of ``validation``
    its fields ``input_shapes``, ``atol``, ``rtol``, ``seed`` and ``validate_timeout``.

    The output keeps its tensors in a side file ``<output>.data`` when the input had external
    data, when it would exceed protobuf's 2 GB, or with ``external_data=True``.
    Raises BnfoldError for unusable input or arguments (a tolerance that is not a finite number
    >= 0, an input shape that does not fit the model or memory, an output that would overwrite a
    file the input reads), before anything is written. When validation does not pass the report
    says so (``report.verdict``: failed or unproven; ``report.ok`` False) and nothing is written,
    unless it is unproven and ``validation.accept_unproven`` is set.

    With ``bench`` options, the latency of ``src`` against the staged output is measured after
    validation passed and before the output moves into place (so in place, ``src`` is still the
    original): ``report.bench``, or ``report.bench_error`` when the runtime could not measure it
    (the output is written all the same; it was validated).
    """
    shorthands = (input_shapes, atol, rtol, seed, validate_timeout) != (None, None, None, 0, VALIDATE_TIMEOUT)
    if validation is not None and shorthands:
        raise UsageError("give the validation options either as validation=ValidationOptions(...) or as keywords")
    if options is not None:
        if shorthands or validation is not None or (in_place, validate_output, external_data, rules, bench) != (
                False, True, False, None, None):
            raise UsageError("give the options either as options=OptimizeOptions(...) or as keywords")
    else:
        if validation is None:
            validation = ValidationOptions(input_shapes or {}, atol=atol, rtol=rtol, seed=seed,
                                           timeout=validate_timeout)
        options = OptimizeOptions(in_place, validate_output, validation, external_data,
                                  None if rules is None else tuple(rules), bench)
    options = options.checked()  # usage errors before any work
    try:
        return _optimize(src, dst, options)
    except _ValidationFailed as failed:
        return failed.report


def _optimize(src, dst, options: OptimizeOptions) -> Report:
    in_place, validation, bench = options.in_place, options.validation, options.bench
    validate_output = options.validate_output
    if not in_place and dst is not None and not os.fspath(dst):
        raise UsageError("the output path is empty")
    src = Path(src)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    source = ModelFile.read(src, lazy=True)  # weights stay on disk until a fold reads them
    model = source.proto
    timings["load"] = time.perf_counter() - start
    log.debug("read %s: %d bytes in %d file(s), %.3f s", printable(str(src)), source.file_bytes,
              1 + len(source.data_files), timings["load"])
    if in_place and dst is not None and Path(dst).resolve() != src.resolve():
        raise UsageError("--in-place and an output path contradict each other; give one")
    # In place through a symlink replaces the file it points to, not the link.
    dst = Path(os.path.realpath(src)) if in_place else Path(dst) if dst is not None else default_output(src)
    if not in_place:
        check_not_read(source, dst)
    if dst.is_dir():
        raise OutputError(f"{dst}: the output path is a directory")
    if not dst.parent.is_dir():
        raise OutputError(f"{dst}: the output folder {dst.parent} does not exist")
    shapes = resolve_shapes(str(src), model, dict(validation.input_shapes))  # names, ranks, static dims
    original = onnx.ModelProto()
    original.CopyFrom(model)  # for what the folds saved; cheap: the weights of a lazy model stay on disk
    try:
        result = fold(source, options.rules, in_place=True)
    except UnicodeDecodeError:
        raise ModelError(f"{src}: invalid ONNX model (a text field is not valid UTF-8)") from None
    timings["fold"] = result.seconds
    if bench is not None or (validate_output and result.changed and validation.inputs is None):
        check_input_bytes(str(src), result.model, shapes)  # inputs will be made: can they be?
    report = Report(str(src), str(dst), result, None, False, source.file_bytes)
    with staged_output(dst) as tmp:
        start = time.perf_counter()
        report.output_bytes = write_model(result.model, tmp, source=source,
                                          external_data=options.external_data or bool(source.data_files))
        timings["save"] = time.perf_counter() - start
        log.debug("wrote %d bytes to the staging file %s, %.3f s", report.output_bytes or 0, printable(str(tmp)),
                  timings["save"])
        if validate_output and result.changed:
            from .validation import may_write, validate

            start = time.perf_counter()
            report.validation = validate(src, tmp, **validation.keywords())
            timings["validate"] = time.perf_counter() - start
            log.debug("validation %s, %.3f s", report.validation.verdict, timings["validate"])
            if not may_write(report.validation, validation):
                report.output_bytes = None
                report.timings = timings
                raise _ValidationFailed(report)
            report.unproven_accepted = not report.validation.passed
        if result.changed:
            report.savings = measure(original, result.model, result.folds,
                                     _measured_shapes(report.validation, dict(validation.input_shapes)))
        if bench is not None:
            start = time.perf_counter()
            _bench(report, src, tmp, dict(validation.input_shapes), validation.seed, bench)
            timings["bench"] = time.perf_counter() - start
    report.written = True
    report.timings = timings
    log.info("%s -> %s: %d folded, %d refused, validation %s, %.3f s", printable(str(src)), printable(str(dst)),
             len(result.folds), len(result.refusals), report.validation.verdict if report.validation else "not run",
             sum(timings.values()))
    return report


def _bench(report: Report, src: Path, staged: Path, input_shapes, seed: int, options: BenchOptions) -> None:
    from .latency.runner import ModelFigures, run_bench

    r = report.result
    assert r.before is not None and r.after is not None, "fold counts both"
    assert report.output_bytes is not None, "the staged output was written"
    try:
        report.bench = run_bench(
            src, staged, before=ModelFigures.of(r.before, report.input_bytes),
            after=ModelFigures.of(r.after, report.output_bytes), folds=len(r.folds), input_shapes=input_shapes,
            seed=seed, options=options, original_label=str(src), folded_label=report.output, checked=True)
    except BnfoldError as exc:
        report.bench_error = str(exc)


def _measured_shapes(validation: ValidationResult | None, declared: dict[str, list[int]]) -> dict[str, list[int]]:
    """The input shapes savings are measured with: validation's first set's, else the given
    --input-shape ones (the declared shapes for the rest: a symbolic dimension makes it unknown)."""
    if validation is not None and validation.sets:
        return dict(validation.sets[0]["inputs"])
    return declared


def check_not_read(source: ModelFile, dst: Path) -> None:
    """BnfoldError when the output or its side file (``<output>.data``) would overwrite a file the
    input reads (``source.files``: the model itself or one of its external data files), however
    spelled (symlinks resolved, ``io.file_id``). A file must exist to be read, so only existing
    targets can clash.

    Not called in place: there the staged write has copied every byte it needs before anything is
    renamed over the input (its own side file included). The side file counts even when the
    output may not need one: whether it does is known only once it is written.
    """
    src, *data_files = source.files
    reads = {file_id(f): f"external data of the input {src}" for f in data_files}
    reads[file_id(src)] = f"the input {src}"
    for target, what in ((dst, "the output"), (side_file(dst), "the output's side file")):
        target_id = file_id(target)
        read = reads.get(target_id) if target_id is not None else None  # (a file that is not there is not read)
        if read is not None:
            raise OutputError(f"{target}: {what} would overwrite {read}; pass --in-place to replace the input, "
                              "or choose another output")


class _ValidationFailed(Exception):
    """Unwinds ``staged_output`` (removing the staged files) while carrying the report out."""

    def __init__(self, report: Report):
        super().__init__("validation failed")
        self.report = report
