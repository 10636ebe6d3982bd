"""How ``optimize`` runs on a file: one frozen options object, checked once, passed whole.

The command line builds it once from its flags (and ``[tool.bnfold]``), batch runs hand it to
every worker, ``check --fix`` builds its own; ``pipeline.optimize`` takes it as ``options=`` or
builds it from its keywords. Validation options are a ``ValidationOptions`` inside it (defined
here, so that a run without validation imports nothing of ``bnfold.validation``), latency options
a ``BenchOptions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .errors import UsageError
from .limits import VALIDATE_TIMEOUT

if TYPE_CHECKING:
    from .latency.runner import BenchOptions
    from .rules import Rule

#: What ``--reference`` may name: the original judged against itself, or the exact float64 answer.
REFERENCES = ("original", "float64")


@dataclass(frozen=True)
class ValidationOptions:
    """How a validation runs, checked once (``checked``) and passed whole (pipeline, batch, check).

    ``inputs``: ``.npz`` files or folders of them (or feed dicts, from the API) instead of random
    sets; ``accept_unproven``: write a fold that validation could not prove (a failed one never).
    """

    input_shapes: Mapping[str, list[int]] = field(default_factory=dict)
    inputs: tuple | None = None
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    reference: str = "original"
    timeout: float | None = VALIDATE_TIMEOUT
    accept_unproven: bool = False

    def checked(self) -> ValidationOptions:
        """Itself, or BnfoldError for a value no validation could use (before any work)."""
        from .tolerances import check_tolerances

        check_tolerances(self.atol, self.rtol)
        if self.reference not in REFERENCES:
            raise UsageError(f"--reference {self.reference}: expected one of {', '.join(REFERENCES)}")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--validate-timeout {self.timeout}: expected a number of seconds > 0 (0: no limit)")
        if self.inputs is not None and not isinstance(self.inputs, tuple):
            raise UsageError("inputs: expected a tuple of feed dicts or .npz paths")
        return self

    def keywords(self) -> dict:
        """These options as ``validate``'s keyword arguments."""
        return dict(input_shapes=dict(self.input_shapes) or None, inputs=self.inputs, atol=self.atol, rtol=self.rtol,
                    seed=self.seed, reference=self.reference, timeout=self.timeout)


@dataclass(frozen=True)
class OptimizeOptions:
    """``in_place``: replace the input (atomically); ``validate_output``: run validation
    (``validation`` says how); ``external_data``: keep the output's tensors in a side file;
    ``rules``: the rules to run (None: ``DEFAULT_RULES``); ``bench``: also measure latency."""

    in_place: bool = False
    validate_output: bool = True
    validation: ValidationOptions = field(default_factory=ValidationOptions)
    external_data: bool = False
    rules: tuple[Rule, ...] | None = None
    bench: BenchOptions | None = None

    def checked(self) -> OptimizeOptions:
        """Itself with its parts checked (BnfoldError for a value no run could use, before any work)."""
        return replace(self, validation=self.validation.checked(),
                       rules=None if self.rules is None else tuple(self.rules),
                       bench=None if self.bench is None else self.bench.checked())
