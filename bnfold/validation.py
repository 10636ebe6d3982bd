"""Numerical validation: run the original and the folded model on the same inputs and compare.

Both models run with onnxruntime at ORT_DISABLE_ALL (its own fusions would otherwise fold the
original's BN too and hide any error), in a child process: onnxruntime can crash the whole
process on some valid models (a segmentation fault on opset-9 BN with empty optional outputs),
and a crash must become a clear report, not take bnfold down. Where onnxruntime has no kernel
for the model (float64 or bfloat16 Conv on CPU), both run with onnx's reference evaluator
instead, and the result says which backend measured it. Nothing is reported as passing that did
not run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from .errors import BnfoldError
from .limits import VALIDATE_TIMEOUT
from .tolerances import check_tolerances


DEFAULT_TIMEOUT = VALIDATE_TIMEOUT


@dataclass(frozen=True)
class OutputComparison:
    """Errors of one graph output, over the elements that are finite in the original (NaN and
    infinities must be the same in both). ``max_rel`` is taken over elements with ``|original| > atol``.

    ``max_ref`` is the largest finite ``|original|`` value (NaN: no finite element). The output is
    ``informative`` when a wrong fold could show in it: ``max_ref`` above the dtype's default atol
    (booleans: both values occur). An uninformative output passes whatever the fold did. ``nondeterministic``: a second run of the original
    did not reproduce this output (by up to ``self_diff``), so it was not held against the fold.
    """

    name: str
    dtype: str
    shape: list[int]
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool
    max_ref: float = float("nan")
    informative: bool = True
    nondeterministic: bool = False
    self_diff: float = 0.0

    @property
    def uninformative(self) -> bool:
        return not self.informative


@dataclass
class ValidationResult:
    """Outcome of ``validate``.

    ``passed`` is True only when both models ran and every output is within tolerance, apart from
    outputs the original does not reproduce itself (``nondeterministic``), and at least one of the
    compared outputs is informative (not zero or non-finite everywhere: there a wrong fold would
    pass too). Otherwise ``passed`` is False and, unless an output differed, ``error`` says why.
    """

    passed: bool
    outputs: list[OutputComparison] = field(default_factory=list)
    backend: str = ""
    inputs: dict[str, list[int]] = field(default_factory=dict)
    seed: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        """Plain data for JSON; non-finite errors as strings (``bnfold.jsonout``)."""
        from .jsonout import jsonable

        return jsonable(asdict(self))


def failure_reason(error: str | None) -> str:
    """Why a validation failed, for one-line messages: the run's error, or the outputs differed."""
    return error or "outputs differ beyond tolerance"


def parse_input_shapes(specs: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """Parse ``name=1x3x224x224`` specs (the CLI's ``--input-shape``) into a dict; ValueError if malformed."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")] if dims else []
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise ValueError(f"bad input shape '{spec}': expected NAME=DIMxDIMx... with dims >= 1, e.g. input=1x3x224x224")
        shapes[name] = shape
    return shapes


def _as_path(model: onnx.ModelProto | str | os.PathLike, workdir: str, name: str) -> str:
    """A file for the worker: a path stays itself, a ModelProto is written (with a side file if big)."""
    if isinstance(model, onnx.ModelProto):
        from .io import write_model

        path = os.path.join(workdir, name)
        write_model(model, path)
        return path
    return os.fspath(model)


def validate(
    original: onnx.ModelProto | str | os.PathLike,
    folded: onnx.ModelProto | str | os.PathLike,
    *,
    input_shapes: dict[str, list[int]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> ValidationResult:
    """Run both models on seeded random inputs and compare every output.

    Args:
        original, folded: models or paths to them.
        input_shapes: shapes for inputs with symbolic dimensions (others default to 1).
        atol, rtol: override the dtype-aware defaults of ``bnfold.tolerances``.
        seed: seed of the random inputs.
        timeout: seconds before the run is abandoned and reported as not finished (default
            ``DEFAULT_TIMEOUT``; None: no limit). A Loop with a huge trip count never ends.

    Raises BnfoldError, before anything runs, for a tolerance that is not a finite number >= 0,
    an input shape that does not fit the model or memory (``bnfold.inputs``), or a model file
    that cannot be read.
    """
    check_tolerances(atol, rtol)
    with tempfile.TemporaryDirectory(prefix="bnfold-validate-") as workdir:
        request = {
            "label": "<in-memory model>" if isinstance(original, onnx.ModelProto) else os.fspath(original),
            "original": _as_path(original, workdir, "original.onnx"),
            "folded": _as_path(folded, workdir, "folded.onnx"),
            "input_shapes": input_shapes or {},
            "seed": seed,
            "atol": atol,
            "rtol": rtol,
            "result": os.path.join(workdir, "result.json"),
            "progress": os.path.join(workdir, "progress.txt"),
        }
        request_path = os.path.join(workdir, "request.json")
        Path(request_path).write_text(json.dumps(request))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "bnfold._validate_worker", request_path],
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return ValidationResult(False, seed=seed, error=f"validation did not finish within the time limit of "
                                                            f"{timeout:g} s (--validate-timeout sets it)")
        if proc.returncode != 0 or not os.path.exists(request["result"]):
            return ValidationResult(False, seed=seed, error=_crash_message(proc, request["progress"]))
        raw = json.loads(Path(request["result"]).read_text())
    if raw.get("refused"):  # unusable input found by the worker before running anything
        raise BnfoldError(raw["refused"])
    return _judge(raw, seed)


def _crash_message(proc: subprocess.CompletedProcess, progress_path: str) -> str:
    stage = Path(progress_path).read_text().strip() if os.path.exists(progress_path) else "starting"
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        return f"the runtime crashed ({sig}) while {stage}"
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    return f"validation failed while {stage}: {last}"


def _judge(raw: dict, seed: int) -> ValidationResult:
    outputs = [OutputComparison(**out) for out in raw.get("outputs", [])]
    error = raw.get("error")
    compared = [o for o in outputs if not o.nondeterministic]
    if error is None and outputs and not compared:
        worst = max(outputs, key=lambda o: o.self_diff)
        error = (f"the original model is not deterministic: two runs of it differ (output '{worst.name}' by "
                 f"{worst.self_diff:.3g}), so its outputs cannot be compared with the folded model's")
    elif error is None and compared and all(o.uninformative for o in compared) and all(o.passed for o in compared):
        names = ", ".join(f"'{o.name}'" for o in compared)
        error = (f"nothing was proven: every output ({names}) is zero or not finite everywhere on these inputs, "
                 "where a wrong fold would look the same; try other --input-shape or --seed values")
    passed = error is None and bool(compared) and all(o.passed for o in compared)
    return ValidationResult(passed, outputs, raw.get("backend", ""), raw.get("inputs", {}), seed, error)
