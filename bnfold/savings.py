"""What the folds bought, per inference: multiply-adds and activation traffic of the ops they removed.

A fold removes an elementwise op (a BatchNormalization: one multiply-add per element of its
output; a Mul, Add, Sub or Div: one operation per element) and the traffic it caused (its input
read and its output written, once each), and sometimes adds one (a MatMul without bias gets a new
bias Add), which counts against it. The element counts come from shape inference with the
input shapes validation used (else the declared ones): a removed op's output is measured in the
model before folding, an added op's in the model after; a fold whose tensor has no static shape
there (a symbolic dimension, a subgraph or function body) saves "unknown". Parameter bytes before and after come from ``stats.ModelStats``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .rules.base import Fold


@dataclass(frozen=True)
class FoldSaving:
    """What one fold saved per inference (None: unknown, no static shape)."""

    macs: int | None
    activation_bytes: int | None
    shape: list[int] | None


@dataclass
class Savings:
    """Per fold (in the order of ``FoldResult.folds``) and in total (over the folds whose saving is known)."""

    folds: list[FoldSaving] = field(default_factory=list)
    macs: int = 0
    activation_bytes: int = 0
    unknown: int = 0  # folds whose saving could not be measured
    shapes: dict[str, list[int]] = field(default_factory=dict)  # the input shapes it was measured with

    def to_dict(self) -> dict:
        return asdict(self)


def _shape_map(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> dict[str, tuple[int, list]]:
    """Main-graph tensor name -> (element type, dims: ints or None) after shape inference."""
    structure = onnx.ModelProto()
    structure.CopyFrom(model)  # structure only: the weights of a lazily read model stay on disk
    inits = {t.name for t in structure.graph.initializer}
    for vi in structure.graph.input:
        if vi.name in inits or not input_shapes or vi.name not in input_shapes:
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in input_shapes[vi.name]:
            shape.dim.add().dim_value = int(d)
    try:
        inferred = onnx.shape_inference.infer_shapes(structure, strict_mode=False)
    except Exception:  # shape inference cannot handle the model: every saving is unknown
        inferred = structure
    known = {}
    graph = inferred.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in t.shape.dim]
            known[vi.name] = (t.elem_type, dims)
    return known


def _cost(name: str, shapes: dict) -> tuple[int, int, list[int]] | None:
    """(elements, bytes of one read and one write, shape) of tensor ``name``, if its shape is static."""
    if name not in shapes:
        return None
    elem, dims = shapes[name]
    if any(d is None for d in dims):
        return None
    elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    return elements, 2 * elements * itemsize, dims


def measure(original: onnx.ModelProto, folded: onnx.ModelProto, folds: list[Fold],
            input_shapes: dict[str, list[int]] | None = None) -> Savings:
    """What ``folds`` (which turned ``original`` into ``folded``) saved per inference, measured with
    ``input_shapes`` (else the declared ones)."""
    result = Savings(shapes=dict(input_shapes or {}))
    if not folds:
        return result
    before = _shape_map(original, input_shapes)
    after = _shape_map(folded, input_shapes) if any(f.added for f in folds) else {}
    for fold in folds:
        removed = _cost(fold.output, before) if fold.graph == "main" and fold.output else None
        added = [cost for name in fold.added if (cost := _cost(name, after)) is not None]
        if removed is None or len(added) < len(fold.added):
            result.folds.append(FoldSaving(None, None, None if removed is None else removed[2]))
            result.unknown += 1
            continue
        macs = removed[0] - sum(a[0] for a in added)
        traffic = removed[1] - sum(a[1] for a in added)
        result.folds.append(FoldSaving(macs, traffic, removed[2]))
        result.macs += macs
        result.activation_bytes += traffic
    return result
