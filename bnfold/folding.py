"""``fold``: the in-memory entry point. ModelProto (or path) in, folded ModelProto and report out."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

import onnx

from .errors import UsageError
from .graph import import_model, quiet_graphsurgeon
from .logs import logger
from .passes import run_rules
from .rules import DEFAULT_RULES, Fold, Refusal, Rule
from .stats import ModelStats, model_stats
from .text import printable

if TYPE_CHECKING:
    import numpy as np
    import onnx_ir

    from .constants import TensorReader

log = logger(__name__)


@contextlib.contextmanager
def _gc_paused():
    """Graph import creates many small objects and no cycles worth collecting: pause the collector
    (about 15% of fold time on node-heavy graphs)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@runtime_checkable
class ModelSource(Protocol):
    """A model read from a file, with what reads its weights still on disk (``bnfold.io.ModelFile``)."""

    @property
    def proto(self) -> onnx.ModelProto: ...

    def read_tensor(self, tensor: onnx.TensorProto, /) -> np.ndarray: ...


#: The kind of model a FoldResult holds: ``onnx.ModelProto``, ``onnx_ir.Model``, or None (``without_model``).
ModelT = TypeVar("ModelT")


@dataclass
class FoldResult(Generic[ModelT]):
    """What ``fold`` did.

    Attributes:
        model: the folded model, of the kind ``bnfold.fold`` was given (a ModelProto input itself
            comes back when nothing folded; an ``onnx_ir.Model`` never does): ``FoldResult[onnx.ModelProto]``
            or ``FoldResult[onnx_ir.Model]``; None in a result kept without it (``without_model``).
        folds: every applied rewrite, in order.
        refusals: every node a rule looked at and left, with the reason.
        before, after: node and parameter counts of the input and the result.
        seconds: time spent folding (import, rules, export).
    """

    model: ModelT
    folds: list[Fold] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    before: ModelStats | None = None
    after: ModelStats | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.folds)

    def without_model(self) -> FoldResult[None]:
        """This result with ``model`` None: the figures only (what ``FoldPass.reports`` keeps)."""
        return FoldResult(None, self.folds, self.refusals, self.before, self.after, self.seconds)


def fold(
    model: onnx.ModelProto | ModelSource,
    rules: Sequence[Rule] | None = None,
    *,
    in_place: bool = False,
) -> FoldResult[onnx.ModelProto]:
    """Fold every foldable BatchNormalization into the linear op that feeds it: the engine.

    ``bnfold.fold`` (``bnfold.api``) is the public entry point: it also takes a path or an
    ``onnx_ir.Model`` and turns it into what this function takes.

    Args:
        model: an ``onnx.ModelProto`` (not modified unless ``in_place``), or a model read from a
            file (a ``ModelSource``, e.g. ``bnfold.io.ModelFile.read(path, lazy=True)``: its weights
            still on disk are read through it when a fold needs them).
        rules: the rules to run (default: ``bnfold.rules.DEFAULT_RULES``).
        in_place: edit ``model`` itself instead of a copy (saves a copy of the weights; the
            pipeline uses it for models it loaded).

    Returns:
        A FoldResult. Every rewrite is exact up to float rounding: the fold math runs in float64
        and is cast once to the weight's dtype; folds that would overflow or lose precision are
        refused, like every other fold whose preconditions fail, with the reason in ``refusals``.
    """
    read: TensorReader | None = None
    if isinstance(model, ModelSource):
        model, read = model.proto, model.read_tensor
    if not isinstance(model, onnx.ModelProto):
        raise UsageError(f"the fold engine takes an onnx.ModelProto or a model read from a file, "
                          f"not {type(model).__name__}")
    before = model_stats(model)
    start = time.perf_counter()
    original = model
    if not in_place:  # folds write into the model as they go
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    with _gc_paused(), quiet_graphsurgeon:
        graphs = import_model(model, read)
        rules = DEFAULT_RULES if rules is None else rules
        folds: list[Fold] = []
        refusals: list[Refusal] = []
        for scope in graphs.scopes:  # main graph first, then subgraphs, then functions
            outcome = run_rules(scope, rules)
            folds += outcome.folds
            refusals += outcome.refusals
            if outcome.folds or outcome.refusals:
                log.debug("%s: %d folded, %d refused", printable(str(scope.scope)), len(outcome.folds),
                          len(outcome.refusals))
        if folds:
            graphs.export()
        else:
            model = original  # nothing changed: the input itself comes back
    seconds = time.perf_counter() - start
    log.debug("fold: %d folded, %d refused in %d scope(s), %.3f s", len(folds), len(refusals), len(graphs.scopes),
              seconds)
    return FoldResult(model, folds, refusals, before, model_stats(model), seconds)
