"""Validation shapes that say something: symbolic dimensions sized so that every output varies.

A dimension is symbolic when it has no ``dim_value``, a negative one (paddle2onnx writes -1), or
a ``dim_param`` (named, empty or "?"). A 1 everywhere makes a detection or segmentation export
compute on a 1x1 image, whose outputs are often zero everywhere: a comparison that proves
nothing. So:

- ``--input-shape`` always wins;
- batch-like dimensions are 1: the first axis of an input of rank 2 or more, and any dimension
  named like a batch (``N``, ``batch``, ``batch_size``, ``bs``, ``B``);
- every other symbolic dimension takes one size from ``CANDIDATES``, tried in that order (one
  size for all of them at a time: spatial sizes usually go together, and a dimension named twice
  has one value anyway), until the original model runs and every output varies; with none
  that does, the one with the most informative outputs (the first of those) is kept;
- the search is bounded: sizes whose inputs would not fit in memory are skipped, and it stops
  after ``SEARCH_SECONDS`` (or half the validation's time limit) with the best so far.

``Plan`` holds what is fixed and what is searched; ``Plan.shapes(size)`` is one candidate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx

from .inputs import is_symbolic

#: Sizes tried for non-batch symbolic dimensions, in order.
CANDIDATES = (32, 64, 128, 224, 16, 8, 4, 2, 1)
#: The search stops after this long (or half the validation time limit, if less).
SEARCH_SECONDS = 60.0

_BATCH_NAMES = re.compile(r"^(n|b|bs|batch|batch_?size|batches|num_?batch(es)?)$", re.IGNORECASE)


def _is_batch(dim: onnx.TensorShapeProto.Dimension, axis: int, rank: int) -> bool:
    return (axis == 0 and rank >= 2) or bool(dim.dim_param and _BATCH_NAMES.match(dim.dim_param.strip()))


@dataclass
class Plan:
    """Per input: a list of dims, each an int (fixed) or None (searched); and why."""

    dims: dict[str, list[int | None]] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)  # inputs whose shape --input-shape gave
    batch: dict[str, list[int]] = field(default_factory=dict)  # axes set to 1 as batch-like

    @property
    def searched(self) -> bool:
        return any(d is None for dims in self.dims.values() for d in dims)

    def shapes(self, size: int) -> dict[str, list[int]]:
        return {name: [size if d is None else d for d in dims] for name, dims in self.dims.items()}

    def describe(self, size: int | None, why: str) -> str:
        """How the shapes were chosen, in words, for the report."""
        parts = []
        if self.given:
            parts.append(f"{', '.join(sorted(self.given))} given (--input-shape)")
        batch = [f"{n}[{','.join(map(str, axes))}]" for n, axes in self.batch.items() if axes]
        if batch:
            parts.append(f"batch-like dims set to 1: {' '.join(batch)}")
        if size is not None:
            parts.append(f"other symbolic dims set to {size}: {why}")
        return "; ".join(parts) if parts else "as declared (no symbolic dimension)"


def plan(inputs: list[onnx.ValueInfoProto], given: dict[str, list[int]]) -> Plan:
    """What is fixed and what is searched (inputs without a declared shape are left out)."""
    result = Plan()
    for vi in inputs:
        if vi.name in given:
            result.dims[vi.name] = list(given[vi.name])
            result.given.add(vi.name)
            continue
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        dims = list(ttype.shape.dim)
        out: list[int | None] = []
        batch = []
        for axis, dim in enumerate(dims):
            if not is_symbolic(dim):
                out.append(dim.dim_value)
            elif _is_batch(dim, axis, len(dims)):
                out.append(1)
                batch.append(axis)
            else:
                out.append(None)
        result.dims[vi.name] = out
        result.batch[vi.name] = batch
    return result
