"""bnfold for onnx-ir: ``FoldPass`` for ``onnx_ir.passes`` pipelines, and ``bnfold.fold`` on an ``onnx_ir.Model``.

PyTorch's exporter (``torch.onnx.export(..., dynamo=True)``) hands back an ``onnx_ir.Model``
(``ONNXProgram.model``), and onnxscript's optimizer composes ``onnx_ir.passes``. ``FoldPass`` runs
bnfold's rules there, with the same report as ``bnfold.fold``::

    import onnx_ir as ir
    import onnx_ir.passes.common
    from bnfold.irpass import FoldPass

    fold_bn = FoldPass()
    result = ir.passes.PassManager([fold_bn, ir.passes.common.RemoveUnusedNodesPass()])(model)
    for r in fold_bn.reports:          # one per call; result.report too when FoldPass runs alone
        print(len(r.folds), "folded;", [x.reason for x in r.refusals])

How: the model is serialized with ``onnx_ir.serde`` into a private ModelProto, folded there in
place by the engine every other input goes through (so an ``onnx_ir.Model`` gets exactly the folds,
refusals and output a ModelProto does), and deserialized into a new ``onnx_ir.Model``. That
conversion is the one cost the ir path adds; measured on resnet50 (102 MB, a loaded 2-core
machine): serializing 20-120 ms, deserializing 4-20 ms, next to 150-500 ms for the fold itself,
which here skips the copy (13-34 ms) it makes of a ModelProto it is handed. Tensors an
``onnx_ir.Model`` keeps on disk (``ir.ExternalTensor``, from ``ir.load``) are read into the private
copy, as ``bnfold.fold`` reads a file's external data: the result holds them in memory and refers
to no file of the input.

What does not cross: ``meta`` dicts on the model, graph, nodes and values (onnx-ir's scratch
annotations, never saved to ONNX); everything ONNX saves (``metadata_props``, doc strings, value
info, functions, subgraphs) does. The result is always a new model sharing no object with the input.

This module imports onnx-ir (``pip install 'bnfold[ir]'``); nothing else in bnfold does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence

import onnx
from onnx.external_data_helper import ExternalDataInfo

try:
    import onnx_ir as ir
except ImportError:
    raise ModuleNotFoundError("bnfold's onnx-ir support needs onnx-ir: pip install 'bnfold[ir]'",
                              name="onnx_ir") from None

from .errors import BnfoldError, ModelError, UsageError
from .folding import FoldResult, fold
from .io import external_tensors
from .rules import Rule

__all__ = ["FoldPass", "FoldPassResult", "fold_ir_model"]


@dataclasses.dataclass
class FoldPassResult(ir.passes.PassResult):
    """``PassResult`` (``model``, ``modified``) plus ``report``: the FoldResult, ``report.model`` is ``model``."""

    report: FoldResult[ir.Model]


class FoldPass(ir.passes.FunctionalPass):
    """Fold every foldable BatchNormalization and per-channel affine op into its linear op.

    Functional, as onnx-ir defines it: the input model is never changed and a new model comes
    back, also when nothing folded (then ``modified`` is False and the model is an equal copy).

    Where the report lives, and why in two places: ``call`` returns a ``FoldPassResult`` whose
    ``report`` is ``bnfold.fold``'s FoldResult (folds, refusals with reasons, before/after counts).
    But ``Sequential`` and ``PassManager`` return plain ``PassResult``s, which drop it; so the pass
    also appends each call's FoldResult to ``reports``, without its model (a pass reused on many
    models would otherwise keep them all alive). A ``PassManager(steps=2)`` calls the pass twice:
    the folds are in ``reports[0]``, ``reports[1]`` holds what the second look found (usually
    nothing, and the refusals again). Several threads sharing one instance share ``reports``;
    the returned ``report`` is each call's own.

    Args:
        rules: the rules to run (default: ``bnfold.rules.DEFAULT_RULES``).
    """

    def __init__(self, rules: Sequence[Rule] | None = None):
        self.rules = rules
        self.reports: list[FoldResult[None]] = []

    def call(self, model: ir.Model) -> FoldPassResult:
        result = fold_ir_model(model, self.rules)
        self.reports.append(result.without_model())
        return FoldPassResult(result.model, result.changed, result)


def fold_ir_model(model: ir.Model, rules: Sequence[Rule] | None = None, *, in_place: bool = False,
                  base_dir: str | os.PathLike | None = None) -> FoldResult[ir.Model]:
    """``bnfold.fold`` for an ``onnx_ir.Model``: a FoldResult whose ``model`` is a new ``onnx_ir.Model``.

    The input is never changed, and never comes back as the result (unlike a ModelProto when
    nothing folded), so ``in_place`` and ``base_dir`` (an ``ir.ExternalTensor`` knows its own
    folder) have no meaning here and are refused. ``seconds`` includes the conversion both ways.
    Raises BnfoldError for something that is not an ``onnx_ir.Model``, a model onnx-ir cannot
    serialize, or external data onnx-ir cannot read.
    """
    if not isinstance(model, ir.Model):
        raise UsageError(f"expected an onnx_ir.Model, got {_type_name(model)}"
                          + (" (bnfold.fold takes a ModelProto)" if isinstance(model, onnx.ModelProto) else ""))
    if in_place or base_dir is not None:
        raise UsageError(f"{'in_place' if in_place else 'base_dir'} is not for an onnx_ir.Model: "
                          "bnfold.fold always returns a new one, and its external tensors know their folder")
    start = time.perf_counter()
    try:
        proto = ir.serde.serialize_model(model)
    except Exception as exc:  # onnx-ir wraps what failed in layers naming every enclosing object
        raise ModelError(f"the onnx_ir.Model cannot be serialized to ONNX ({_innermost_error(exc)})") from None
    _load_external_data(model, proto)
    result = fold(proto, rules, in_place=True)  # the proto is ours: no second copy
    return FoldResult(ir.serde.deserialize_model(result.model), result.folds, result.refusals, result.before,
                      result.after, time.perf_counter() - start)


def _load_external_data(model: ir.Model, proto: onnx.ModelProto) -> None:
    """Read the data of every tensor ``model`` keeps on disk into its serialized copy ``proto``.

    onnx-ir serializes an ``ir.ExternalTensor`` as a reference (location, offset, length) and
    drops its folder (``base_dir``); the folder is looked up by location, and the bytes are read
    by onnx-ir itself, as it would read them (its own checks: the span, and in onnx-ir >= 1.1 a
    location inside its folder). Reading them all costs the memory of the weights once, as
    ``bnfold.fold`` on a file with external data does; in return the result holds no reference to
    the input's files.
    """
    folders: dict[str, set[str]] = {}
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            folders.setdefault(os.fspath(tensor.location), set()).add(os.fspath(tensor.base_dir))
    if not folders:
        return
    for tensor in external_tensors(proto):
        info = ExternalDataInfo(tensor)
        candidates = folders.get(info.location, {""})
        if len(candidates) > 1:
            raise ModelError(f"tensor '{tensor.name}': external data location '{info.location}' is read "
                              f"from {len(candidates)} folders in this model; which one is meant is unknown")
        folder = next(iter(candidates))
        source = ir.ExternalTensor(info.location, info.offset, info.length, ir.DataType(tensor.data_type),
                                   shape=ir.Shape(tensor.dims), name=tensor.name, base_dir=folder)
        try:
            data = source.tobytes()
        except Exception as exc:
            raise ModelError(f"tensor '{tensor.name}': cannot read its external data '{source.path}' "
                              f"({_innermost_error(exc)})") from None
        finally:
            source.release()
        del tensor.external_data[:]
        tensor.ClearField("data_location")
        tensor.raw_data = data


def _tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Every tensor of the model: initializers of every graph, tensor attributes, in functions too."""
    yield from _initializer_tensors(model.graph)
    roots: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for root in roots:
        for node in ir.traversal.RecursiveGraphIterator(root):
            for attr in node.attributes.values():
                if attr.is_ref() or attr.value is None:
                    continue
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.value
                elif attr.type == ir.AttributeType.TENSORS:
                    yield from attr.value
                elif attr.type == ir.AttributeType.GRAPH:
                    yield from _initializer_tensors(attr.value)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for graph in attr.value:
                        yield from _initializer_tensors(graph)


def _initializer_tensors(graph: ir.Graph) -> Iterator[ir.TensorProtocol]:
    for value in graph.initializers.values():
        if value.const_value is not None:
            yield value.const_value


def _type_name(obj) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def _innermost_error(exc: BaseException) -> str:
    """What failed, on one line: the innermost error of onnx-ir's chain, and the object it was on.

    onnx-ir wraps a failure once per enclosing object (model, graph, node, tensor), each layer
    "Error calling serialize_..._into with: <object>"; the innermost layer names the culprit.
    """
    culprit = ""
    while exc.__cause__ is not None:
        _, found, where = str(exc).partition(" with: ")
        if found:
            culprit = " ".join(where.split())
        exc = exc.__cause__
    text = " ".join(str(exc).split())
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if culprit:
        message += f", in {culprit if len(culprit) <= 200 else culprit[:197] + '...'}"
    return message
