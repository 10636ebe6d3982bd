"""``bnfold.fold``: what a caller may hand over (a path, a ModelProto, a model read from a file,
an ``onnx_ir.Model``), turned into what the engine (``bnfold.folding``) folds.

The engine reads nothing from disk itself: a path is read here (``bnfold.io``), and an
``onnx_ir.Model`` goes through ``bnfold.irpass`` (onnx-ir is an optional extra, imported only
when the caller already holds such a model).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, overload

import onnx

from .errors import UsageError
from .folding import FoldResult, ModelSource
from .folding import fold as fold_model

if TYPE_CHECKING:
    import onnx_ir

    from .rules import Rule


@overload
def fold(
    model: onnx.ModelProto | ModelSource | str | os.PathLike,
    rules: Sequence[Rule] | None = None,
    *,
    in_place: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> FoldResult[onnx.ModelProto]: ...


@overload
def fold(
    model: onnx_ir.Model,
    rules: Sequence[Rule] | None = None,
    *,
    in_place: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> FoldResult[onnx_ir.Model]: ...


def fold(
    model: onnx.ModelProto | ModelSource | onnx_ir.Model | str | os.PathLike,
    rules: Sequence[Rule] | None = None,
    *,
    in_place: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> FoldResult[onnx.ModelProto] | FoldResult[onnx_ir.Model]:
    """Fold every foldable BatchNormalization into the linear op that feeds it.

    Args:
        model: an ``onnx.ModelProto`` (not modified unless ``in_place``), the path of an ONNX file,
            or a model read from one (a ``ModelSource``: ``bnfold.io.ModelFile.read(path, lazy=True)``;
            its weights still on disk are read through it when a fold needs them).
            An ``onnx_ir.Model`` (PyTorch's exporter) gives an ``onnx_ir.Model`` back, always a new one
            (see ``bnfold.irpass``; needs ``bnfold[ir]``).
        rules: the rules to run (default: ``bnfold.rules.DEFAULT_RULES``).
        in_place: edit ``model`` itself instead of a copy (saves a copy of the weights).
        base_dir: the older spelling of a ModelSource: for the ModelProto of
            ``bnfold.io.read_model(path, lazy=True)``, the folder of ``path``.

    Returns:
        A FoldResult (see ``bnfold.folding.fold``). Raises ModelError (``bnfold.errors``) for a file that
        cannot be read, UsageError for anything that is not a model.
    """
    if isinstance(model, (str, os.PathLike)) or (base_dir is not None and isinstance(model, onnx.ModelProto)):
        from .io import model_source  # a path, or (older) a lazy ModelProto and its folder

        return fold_model(model_source(model, base_dir), rules, in_place=in_place)
    if isinstance(model, (onnx.ModelProto, ModelSource)):
        if base_dir is not None:
            raise UsageError("give a model read from its file or base_dir, not both")
        return fold_model(model, rules, in_place=in_place)
    ir = sys.modules.get("onnx_ir")  # imported already by whoever holds an onnx_ir.Model
    if ir is None or not isinstance(model, ir.Model):
        raise UsageError(f"bnfold.fold takes an onnx.ModelProto, an onnx_ir.Model or a path, "
                          f"not {type(model).__name__}")
    from .irpass import fold_ir_model  # onnx-ir is an optional extra: imported only here

    return fold_ir_model(model, rules, in_place=in_place, base_dir=base_dir)
