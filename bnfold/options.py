"""How ``optimize`` runs on a file: one frozen options object, checked once, passed whole.

The command line builds it once from its flags (and ``[tool.bnfold]``), batch runs hand it to
every worker, ``check --fix`` builds its own; ``pipeline.optimize`` takes it as ``options=`` or
builds it from its keywords. Validation options are a ``ValidationOptions`` inside it, latency
options a ``BenchOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .validation import ValidationOptions

if TYPE_CHECKING:
    from .latency.runner import BenchOptions
    from .rules import Rule


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
