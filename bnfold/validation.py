"""Numerical validation: run the original and the folded model on the same inputs, say what it proved.

Both models run with onnxruntime at ORT_DISABLE_ALL (its own fusions would otherwise fold the
original's BN too and hide any error), in a child process (``_validate_worker``, run by
``bnfold.child``): onnxruntime can crash the whole process on some valid models, and a crash must
become a clear report, not take bnfold down. Where onnxruntime has no kernel for the model
(float64 or bfloat16 Conv on CPU), both run with onnx's reference evaluator instead, and the
result says which backend measured it.

Inputs: the user's (``.npz`` files or feed dicts), else three random sets (``bnfold.feeds``) on
shapes chosen so that the outputs say something (``bnfold.shapes``). Every output is judged by
the criterion of ``bnfold.tolerances``: relative to its scale, with the exact float64 answer as
the arbiter where the fast pass does not decide; an output on a quantization grid (out of a
DequantizeLinear) in quanta of that grid. Three verdicts, in words and in JSON:

- **passed**: every compared output met the criterion, and at least one was informative;
- **failed**: an output did not (the worst is named, with its set), or the folded model does not
  run where the original does;
- **unproven**: nothing could be shown either way: the models could not run, the run did not
  finish in time, every output is zero or non-finite on these inputs, the original does not
  reproduce itself, or an output differs by more than the fast pass allows and no exact
  reference could decide. ``reason`` says which.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import onnx

from . import child, tolerances
from .errors import BnfoldError, ModelError, UsageError
from .limits import VALIDATE_TIMEOUT as DEFAULT_TIMEOUT
from .options import REFERENCES, ValidationOptions
from .tolerances import check_tolerances

PASSED, FAILED, UNPROVEN = "passed", "failed", "unproven"


@dataclass(frozen=True)
class OutputComparison:
    """One graph output over every input set, in Polygraphy's vocabulary (figures of the worst set).

    ``verdict``: passed, failed, unproven, uninformative (zero or non-finite everywhere: it passes
    whatever the fold did), or nondeterministic (a second run of the original did not reproduce
    it, by up to ``self_diff``). ``stage``: what decided (``fast pass``, ``exact reference``,
    ``elementwise`` with ``--atol``/``--rtol``). ``scale``: the largest finite ``|original|``;
    ``needed``: the worst error in eps of that scale, i.e. the tolerance that would have been
    needed; ``exact_original``/``exact_folded``: each model's distance from the exact float64
    answer, when it was computed. ``max_rel`` is over elements at least 1e-3 of the scale.
    ``quantum``: for an output on a quantization grid (stages ``quantum``, ``unrounded``), its
    largest step; ``moved`` the fraction of its elements that moved by one quantum, ``unrounded``
    the largest difference in quanta without activation rounding, when that was measured (worst set).
    """

    name: str
    dtype: str
    shape: list[int]
    verdict: str
    stage: str | None
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    scale: float
    needed: float
    worst_set: str
    why: str | None = None
    exact_original: float | None = None
    exact_folded: float | None = None
    atol: float | None = None
    rtol: float | None = None
    informative: bool = True
    nondeterministic: bool = False
    self_diff: float = 0.0
    quantum: float | None = None
    moved: float | None = None
    unrounded: float | None = None

    @property
    def passed(self) -> bool:
        """Within the criterion (uninformative outputs are: that is why they prove nothing)."""
        return self.verdict in (PASSED, "uninformative")

    @property
    def uninformative(self) -> bool:
        return not self.informative

    @property
    def max_ref(self) -> float:  # the name of earlier versions
        return self.scale


_QUANTIZED_KEYS = ("quantum", "moved", "unrounded")


@dataclass
class ValidationResult:
    """Outcome of ``validate``: ``verdict`` (passed / failed / unproven) and why.

    ``reason``: for failed, the worst output and where; for unproven, what kept it from proving
    anything. ``sets``: the input sets (label and shapes); ``inputs``: the shapes of the first;
    ``shapes_chosen``: how they were chosen; ``reference``: whether the exact float64 answer was
    computed (``mode``, ``ran``, ``error``).
    """

    verdict: str
    outputs: list[OutputComparison] = field(default_factory=list)
    backend: str = ""
    inputs: dict[str, list[int]] = field(default_factory=dict)
    seed: int = 0
    reason: str | None = None
    sets: list[dict] = field(default_factory=list)
    shapes_chosen: str = ""
    reference: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    @property
    def error(self) -> str | None:
        """Why the models could not be compared (unproven, or the folded model does not run); None
        when they were and an output differed (``reason`` names it)."""
        return self.reason if self.verdict == UNPROVEN or (self.verdict == FAILED and not self.outputs) else None

    def summary(self) -> str:
        """One line: the verdict and why."""
        if self.verdict == PASSED:
            exact = " (exact reference)" if any(o.stage == "exact reference" for o in self.outputs) else ""
            return f"passed{exact}"
        return f"{self.verdict}: {self.reason}"

    def to_dict(self) -> dict:
        """Plain data for JSON; non-finite errors as strings (``bnfold.jsonout``)."""
        from .jsonout import jsonable

        doc = asdict(self)
        # quantum, moved, unrounded: only for outputs on a quantization grid (float models' JSON is unchanged)
        doc["outputs"] = [{**{k: v for k, v in asdict(o).items() if v is not None or k not in _QUANTIZED_KEYS},
                           "passed": o.passed} for o in self.outputs]
        doc["passed"] = self.passed
        doc["error"] = self.error
        return jsonable(doc)


def may_write(result: ValidationResult | None, options: ValidationOptions) -> bool:
    """Whether a fold with this validation result may be written: passed (or not validated), or
    unproven with ``options.accept_unproven``; a failed fold never."""
    return result is None or result.passed or (options.accept_unproven and result.verdict == UNPROVEN)


def failure_reason(error: str | None) -> str:
    """Why a validation did not pass, for one-line messages."""
    return error or "outputs differ beyond tolerance"


def _input_files(inputs, workdir: str) -> list[str]:
    """``.npz`` paths for the worker: files and folders as given, feed dicts written to ``workdir``."""
    import numpy as np

    from .feeds import expand_paths, save_npz

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths, written = [], 0
    for item in inputs:
        if isinstance(item, Mapping):
            path = os.path.join(workdir, f"inputs-{written}.npz")
            save_npz(path, {k: np.asarray(v) for k, v in item.items()})
            paths.append(path)
            written += 1
        else:
            paths += [str(p) for p in expand_paths([item])]
    if not paths:
        raise UsageError("inputs: no input set given")
    return paths


def validate(
    original: onnx.ModelProto | str | os.PathLike,
    folded: onnx.ModelProto | str | os.PathLike,
    *,
    input_shapes: dict[str, list[int]] | None = None,
    inputs: Iterable[Mapping] | Iterable[str | os.PathLike] | str | os.PathLike | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    reference: str = "original",
    timeout: float | None = DEFAULT_TIMEOUT,
) -> ValidationResult:
    """Run both models on the same inputs and judge every output (see the module docstring).

    Args:
        original, folded: models or paths to them.
        input_shapes: shapes for inputs with symbolic dimensions (others are chosen, ``bnfold.shapes``).
        inputs: real input sets instead of random ones: feed dicts, or ``.npz`` files / folders of them.
        atol, rtol: judge elementwise with these instead (``|d| <= atol + rtol * |original|``).
        seed: seed of the random inputs.
        reference: ``"original"`` (the fast pass, the exact answer only where it does not decide)
            or ``"float64"`` (every output judged against the exact answer, distances reported).
        timeout: seconds before the run is abandoned and reported as unproven (default
            ``DEFAULT_TIMEOUT``; None: no limit). A Loop with a huge trip count never ends.

    Raises BnfoldError, before anything runs, for a tolerance that is not a finite number >= 0,
    an unknown reference, an input shape or input set that does not fit the model or memory, or
    a model file that cannot be read.
    """
    check_tolerances(atol, rtol)
    if reference not in REFERENCES:
        raise UsageError(f"--reference {reference}: expected one of {', '.join(REFERENCES)}")
    with tempfile.TemporaryDirectory(prefix="bnfold-validate-") as workdir:
        request = {
            "label": "<in-memory model>" if isinstance(original, onnx.ModelProto) else os.fspath(original),
            "original": os.fspath(child.model_file(original, workdir, "original.onnx")),
            "folded": os.fspath(child.model_file(folded, workdir, "folded.onnx")),
            "input_shapes": input_shapes or {},
            "inputs": None if inputs is None else _input_files(inputs, workdir),
            "seed": seed,
            "atol": atol,
            "rtol": rtol,
            "reference": reference,
            "timeout": timeout,
        }
        ended = child.run(child.command("bnfold._validate_worker"), request, timeout=timeout)
    if ended.timed_out:
        return ValidationResult(UNPROVEN, seed=seed, reason=f"validation did not finish within the time limit of "
                                                            f"{timeout:g} s (--validate-timeout sets it)")
    if not ended.ok or ended.result is None:  # (ok: there is a result)
        return ValidationResult(UNPROVEN, seed=seed, reason=ended.failure("validation failed"))
    raw = ended.result
    if raw.get("refused"):  # unusable input found by the worker before running anything
        kinds = {cls.__name__: cls for cls in (UsageError, ModelError)}
        raise kinds.get(raw.get("refused_kind", ""), BnfoldError)(raw["refused"])
    return _judge(raw, seed, atol, rtol)


def _set_verdict(e: dict, dtype: str, elementwise: bool, exact_only: bool = False) -> tuple[str, str | None, str | None]:
    """(verdict, stage, why) of one output on one input set, from the worker's figures
    (``exact_only``: ``reference="float64"``, the exact answer decides even what the fast pass would)."""
    if not e["specials_kept"]:
        return FAILED, None, "a NaN or infinity of the original is not the same in the folded model"
    is_float = not (dtype.startswith(("int", "uint")) or dtype == "bool")
    if not is_float:
        return (PASSED, "exact", None) if e["max_abs"] == 0 else (FAILED, "exact", "the values differ")
    if not e["informative"]:
        return "uninformative", None, None
    if elementwise:
        return (PASSED, "elementwise", None) if e["within_elementwise"] else \
            (FAILED, "elementwise", "beyond --atol/--rtol")
    if "quantum" in e:  # on a quantization grid: judged in quanta (the exact reference cannot compute it)
        if tolerances.fast_pass(e["max_abs"], e["scale"], dtype):
            return PASSED, "fast pass", None
        if tolerances.quantum_pass(e["moved"], e["beyond"], e["elements"]):
            return PASSED, "quantum", None
        moved = (f"{e['moved']} of its {e['elements']} elements moved by one quantum ({e['quantum']:.3g}; at most "
                 f"{tolerances.quantum_allowance(e['elements'])} may) and {e['beyond']} by more")
        if "unrounded" not in e:
            return FAILED, "quantum", f"{moved}, and the models could not be compared without activation rounding"
        if tolerances.unrounded_pass(e["unrounded"]):
            return PASSED, "unrounded", None
        return FAILED, "unrounded", (f"{moved}, and without activation rounding it is {e['unrounded']:.3g} quanta off "
                                     f"(at most {tolerances.UNROUNDED_QUANTA:g} may be)")
    if not (exact_only and "exact_folded" in e) and tolerances.fast_pass(e["max_abs"], e["scale"], dtype):
        return PASSED, "fast pass", None
    if "exact_folded" in e:
        if tolerances.unstable(e["exact_original"], e["scale"], dtype):
            return "unstable", "exact reference", (f"the original itself is {e['exact_original'] / e['scale']:.2g} "
                                                   "of the output's scale from the exact answer")
        if tolerances.exact_pass(e["exact_folded"], e["exact_original"], e["scale"], dtype):
            return PASSED, "exact reference", None
        return FAILED, "exact reference", (f"{e['exact_folded']:.3g} from the exact answer where the original is "
                                           f"{e['exact_original']:.3g}")
    if tolerances.clear_failure(e["max_abs"], e["scale"], dtype):
        return FAILED, "fast pass", f"{e['needed']:.0f} eps of its scale off the original"
    return UNPROVEN, "fast pass", (f"{e['needed']:.0f} eps of its scale off the original, more than the fast "
                                   f"pass allows ({tolerances.FAST_PASS_EPS:.0f}), and no exact reference decided")


def output_verdict(out: dict, elementwise: bool, exact_only: bool = False) -> tuple[str, str | None, dict, str | None]:
    """(verdict, stage, worst set's figures, why) of one output over every input set."""
    why: str | None
    if out["shape"] != out["folded_shape"] or out["dtype"] != out["folded_dtype"]:
        worst = out["sets"][0]
        why = (f"the folded model's output is {out['folded_dtype']}{out['folded_shape']}, the original's "
               f"{out['dtype']}{out['shape']}")
        return FAILED, None, worst, why
    judged = [(_set_verdict(e, out["dtype"], elementwise, exact_only), e) for e in out["sets"]]
    worst = max(out["sets"], key=lambda e: -1.0 if math.isnan(e["needed"]) else e["needed"])
    for verdict in (FAILED, UNPROVEN):
        bad = [(v, e) for v, e in judged if v[0] == verdict]
        if bad:
            (_, stage, why), e = bad[0]
            return verdict, stage, e, f"{why} ({e['set']} inputs)"
    if not any(v[0] == PASSED for v, _ in judged):
        shaky = [(v, e) for v, e in judged if v[0] == "unstable"]
        if shaky:  # numerically unstable everywhere it was informative: nothing to judge
            (_, stage, why), e = shaky[0]
            return UNPROVEN, stage, e, f"{why}: the float computation is unstable on every input set"
        return "uninformative", None, worst, None
    stages = {v[1] for v, _ in judged}
    order = ("exact reference", "unrounded", "quantum", "elementwise", "fast pass", "exact")
    stage = next((s for s in order if s in stages), None)
    return PASSED, stage, worst, None


def _comparison(out: dict, elementwise: bool, atol, rtol, exact_only: bool) -> OutputComparison:
    verdict, stage, e, why = output_verdict(out, elementwise, exact_only)
    if out.get("nondeterministic"):
        verdict, why = "nondeterministic", f"a second run of the original differs by up to {out['self_diff']:.3g}"
    informative = any(s["informative"] for s in out["sets"])
    tol = tolerances.tolerance_for(out["dtype"], atol, rtol) if elementwise else None
    return OutputComparison(
        out["name"], out["dtype"], out["shape"], verdict, stage, e["max_abs"], e["mean_abs"], e["median_abs"],
        e["p99_abs"], e["max_rel"], e["scale"], e["needed"], e["set"], why, e.get("exact_original"),
        e.get("exact_folded"), tol.atol if tol else None, tol.rtol if tol else None, informative,
        bool(out.get("nondeterministic")), float(out.get("self_diff", 0.0)), e.get("quantum"),
        e["moved"] / e["elements"] if e.get("elements") else None, e.get("unrounded"))


def _judge(raw: dict, seed: int, atol: float | None = None, rtol: float | None = None) -> ValidationResult:
    elementwise = bool(raw.get("elementwise"))
    exact_only = raw.get("reference", {}).get("mode") == "float64"
    outputs = [_comparison(out, elementwise, atol, rtol, exact_only) for out in raw.get("outputs", [])]
    sets = raw.get("sets", [])
    common = dict(outputs=outputs, backend=raw.get("backend", ""), inputs=sets[0]["inputs"] if sets else {},
                  seed=seed, sets=sets, shapes_chosen=raw.get("shapes_chosen", ""), reference=raw.get("reference", {}))
    if raw.get("failed"):
        return ValidationResult(FAILED, reason=raw["failed"], **common)
    if raw.get("error"):
        return ValidationResult(UNPROVEN, reason=raw["error"], **common)
    failed = [o for o in outputs if o.verdict == FAILED]
    if failed:
        worst = max(failed, key=lambda o: 0.0 if math.isnan(o.needed) else o.needed)
        return ValidationResult(FAILED, reason=f"output '{worst.name}': {worst.why}", **common)
    compared = [o for o in outputs if o.verdict != "nondeterministic"]
    if outputs and not compared:
        worst = max(outputs, key=lambda o: o.self_diff)
        return ValidationResult(UNPROVEN, reason=(
            f"the original model is not deterministic: two runs of it differ (output '{worst.name}' by "
            f"{worst.self_diff:.3g}), so its outputs cannot be compared with the folded model's"), **common)
    unproven = [o for o in compared if o.verdict == UNPROVEN]
    if unproven:
        return ValidationResult(UNPROVEN, reason=f"output '{unproven[0].name}': {unproven[0].why}", **common)
    if not any(o.verdict == PASSED for o in compared):
        names = ", ".join(f"'{o.name}'" for o in compared)
        return ValidationResult(UNPROVEN, reason=(
            f"nothing was proven: every output ({names}) is zero or not finite everywhere on these inputs, where a "
            "wrong fold would look the same; give real inputs (--inputs) or other --input-shape values"), **common)
    return ValidationResult(PASSED, **common)
