"""bnfold: fold BatchNormalization into the linear op next to it, prove nothing changed, report.

Python API::

    import bnfold
    result = bnfold.fold("model.onnx")          # or an onnx.ModelProto, or an onnx_ir.Model
    check = bnfold.validate("model.onnx", result.model)
    assert check.passed
    latency = bnfold.bench("model.onnx")         # original vs folded in memory, both ORT settings

Names are imported lazily so that ``bnfold --help`` does not pay for onnx and numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported when first used
    from .errors import BnfoldError
    from .api import fold
    from .folding import FoldResult
    from .irpass import FoldPass, FoldPassResult  # needs the ir extra: pip install 'bnfold[ir]'
    from .io import load_model
    from .latency.runner import BenchOptions, BenchResult, bench
    from .options import OptimizeOptions
    from .pipeline import Report, optimize
    from .rules.base import Fold, Refusal
    from .validation import OutputComparison, ValidationOptions, ValidationResult, validate

_EXPORTS = {
    "fold": "bnfold.api",
    "FoldResult": "bnfold.folding",
    "FoldPass": "bnfold.irpass",  # imports onnx-ir, on first use only
    "FoldPassResult": "bnfold.irpass",
    "validate": "bnfold.validation",
    "ValidationResult": "bnfold.validation",
    "OutputComparison": "bnfold.validation",
    "Fold": "bnfold.rules.base",
    "Refusal": "bnfold.rules.base",
    "BnfoldError": "bnfold.errors",
    "load_model": "bnfold.io",
    "optimize": "bnfold.pipeline",
    "Report": "bnfold.pipeline",
    "OptimizeOptions": "bnfold.options",
    "ValidationOptions": "bnfold.validation",
    "bench": "bnfold.latency.runner",
    "BenchOptions": "bnfold.latency.runner",
    "BenchResult": "bnfold.latency.runner",
}

#: Names that need an optional extra: not in ``__all__``, so ``from bnfold import *`` works without it.
_OPTIONAL = {"FoldPass", "FoldPassResult"}

__all__ = sorted(set(_EXPORTS) - _OPTIONAL) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
