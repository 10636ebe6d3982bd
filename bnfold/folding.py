"""``fold``: the in-memory entry point. ModelProto (or path) in, folded ModelProto and report out."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from .graph import import_model
from .passes import run_rules
from .rules import DEFAULT_RULES, Fold, Refusal, Rule
from .stats import ModelStats, model_stats


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


@dataclass
class FoldResult:
    """What ``fold`` did.

    Attributes:
        model: the folded model (the input object itself when nothing folded).
        folds: every applied rewrite, in order.
        refusals: every node a rule looked at and left, with the reason.
        before, after: node and parameter counts of the input and the result.
        seconds: time spent folding (import, rules, export).
    """

    model: onnx.ModelProto
    folds: list[Fold] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    before: ModelStats | None = None
    after: ModelStats | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.folds)


def fold(
    model: onnx.ModelProto | str | os.PathLike,
    rules: Sequence[Rule] | None = None,
    *,
    in_place: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> FoldResult:
    """Fold every foldable BatchNormalization into the linear op that feeds it.

    Args:
        model: an ``onnx.ModelProto`` (not modified unless ``in_place``) or the path of an ONNX file.
        rules: the rules to run (default: ``bnfold.rules.DEFAULT_RULES``).
        in_place: edit ``model`` itself instead of a copy (saves a copy of the weights; the
            pipeline uses it for models it loaded).
        base_dir: for a model read with ``bnfold.io.read_model(path, lazy=True)``, the folder of
            ``path``: weights still on disk are read from there when a fold needs them.

    Returns:
        A FoldResult. Every rewrite is exact up to float rounding: the fold math runs in float64
        and is cast once to the weight's dtype; folds that would overflow or lose precision are
        refused, like every other fold whose preconditions fail, with the reason in ``refusals``.
    """
    if not isinstance(model, onnx.ModelProto):
        from .io import load_model

        model = load_model(model)
    before = model_stats(model)
    start = time.perf_counter()
    original = model
    if not in_place:  # folds write into the model as they go
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    with _gc_paused():
        graphs = import_model(model, None if base_dir is None else os.fspath(base_dir))
        rules = DEFAULT_RULES if rules is None else rules
        folds, refusals = [], []
        for scope in graphs.scopes:  # main graph first, then subgraphs, then functions
            outcome = run_rules(scope, rules)
            folds += outcome.folds
            refusals += outcome.refusals
        if folds:
            graphs.export()
        else:
            model = original  # nothing changed: the input itself comes back
    seconds = time.perf_counter() - start
    return FoldResult(model, folds, refusals, before, model_stats(model), seconds)
