"""Following a channel axis through a layout op: pure functions on shapes, no graph.

A tensor carries channels on ``axis``: element ``x[i_0, ..., i_{r-1}]`` belongs to channel
``i_axis``. A layout op (Transpose, Reshape, Flatten, Squeeze, Unsqueeze) moves elements without
changing them. After it the channels sit on one output axis ``b`` exactly when every output element
with coordinate ``j_b = c`` came from channel ``c``; then a per-channel affine map commutes with the
op, ``op(s * x + t) = s' * op(x) + t'`` with ``s``, ``t`` laid along ``b``, and a BN on one side
folds into a linear op on the other. Each function returns the output shape and ``b``, or None for
``b`` when the channel axis is merged with or split into other axes, or when the shape is not known
well enough to prove that it is not.

- Transpose(perm): ``b = perm.index(axis)`` (no perm: the axes reversed).
- Reshape (Flatten is the reshape to ``[prod(shape[:k]), prod(shape[k:])]``): an element keeps its
  row-major flat index ``p``. Its channel is ``(p // S) % C`` with ``S`` the product of the dims
  after the channel axis; its coordinate on output axis ``b`` is ``(p // S') % D``. For ``C >= 2``
  the two agree for every ``p`` iff ``D = C`` and ``S' = S``. Both shapes hold the same number of
  elements, so equal products of the dims *before* the axes prove ``S' = S`` as well (that is how a
  symbolic batch dim copied by Reshape's ``0`` is followed).
- Squeeze / Unsqueeze remove / insert size-1 axes: the channel axis moves by the number of axes
  removed / inserted before it; squeezing the channel axis itself loses it.

Dims are products of a known integer and unknown factors (symbols): ``Dim(6)``, ``Dim(1, ("N",))``.
Two dims are equal only when they are the same product, so a proof never rests on a guess about an
unknown size. Malformed parameters (a perm that is not a permutation, a Reshape whose element count
cannot match) raise LayoutError.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class LayoutError(ValueError):
    """The op's parameters do not fit the shape, or the shape is too unknown to apply them."""


@dataclass(frozen=True)
class Dim:
    """A dimension: ``factor`` times the unknown sizes named by ``symbols`` (sorted)."""

    factor: int
    symbols: tuple[str, ...] = ()

    @staticmethod
    def unknown(symbol: str) -> Dim:
        return Dim(1, (symbol,))

    @property
    def value(self) -> int | None:
        """The size, when it is known."""
        return self.factor if not self.symbols else None

    def __mul__(self, other: Dim) -> Dim:
        if self.factor == 0 or other.factor == 0:
            return Dim(0)
        return Dim(self.factor * other.factor, tuple(sorted(self.symbols + other.symbols)))

    def divided_by(self, other: Dim) -> Dim | None:
        """``self / other`` when it is provably a whole product of known and unknown factors."""
        if other.factor == 0 or self.factor % other.factor:
            return None
        remaining = Counter(self.symbols)
        remaining.subtract(other.symbols)
        if any(n < 0 for n in remaining.values()):
            return None
        return Dim(self.factor // other.factor, tuple(sorted(remaining.elements())))

    def __str__(self) -> str:
        return "?" if self.symbols else str(self.factor)


Shape = tuple[Dim, ...]


def dims(sizes: Iterable[int]) -> Shape:
    """A shape of known sizes."""
    return tuple(Dim(int(d)) for d in sizes)


def product(shape: Iterable[Dim]) -> Dim:
    result = Dim(1)
    for d in shape:
        result = result * d
    return result


def format_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _normalized(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise LayoutError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank


def regroup(shape: Shape, axis: int, out: Shape) -> int | None:
    """The axis of ``out`` (same elements, row-major) that carries the channels of ``shape``'s ``axis``."""
    channels = shape[axis]
    before, after = product(shape[:axis]), product(shape[axis + 1:])
    for b, d in enumerate(out):
        if d == channels and (product(out[b + 1:]) == after or product(out[:b]) == before):
            return b
    return None


def through_transpose(shape: Shape, axis: int, perm: Sequence[int] | None = None) -> tuple[Shape, int]:
    rank = len(shape)
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) != list(range(rank)):
        raise LayoutError(f"perm {perm} is not a permutation of the {rank} axes")
    return tuple(shape[p] for p in perm), perm.index(axis)


def reshape_target(shape: Shape, target: Sequence[int], allowzero: bool = False, label: str = "?") -> Shape:
    """Reshape's output shape: ``0`` copies the input dim (unless ``allowzero``), ``-1`` is inferred.

    An inferred dim that is not provably a whole product becomes an unknown named ``label[i]``.
    """
    target = [int(v) for v in target]
    if sum(v == -1 for v in target) > 1 or any(v < -1 for v in target):
        raise LayoutError(f"shape {target} has more than one -1 or a negative size")
    out: list[Dim | None] = []
    for i, v in enumerate(target):
        if v == 0 and not allowzero:
            if i >= len(shape):
                raise LayoutError(f"shape {target} copies dim {i} of a rank-{len(shape)} input")
            out.append(shape[i])
        else:
            out.append(None if v == -1 else Dim(v))
    total = product(shape)
    known = [d for d in out if d is not None]
    if len(known) < len(out):  # the one -1: inferred
        i = out.index(None)
        known.insert(i, total.divided_by(product(known)) or Dim.unknown(f"{label}[{i}]"))
    elif total.value is not None and product(known).value is not None and total != product(known):
        raise LayoutError(f"shape {target} does not hold the {total} elements of {format_shape(shape)}")
    return tuple(known)


def through_reshape(shape: Shape, axis: int, target: Sequence[int], allowzero: bool = False,
                    label: str = "?") -> tuple[Shape, int | None]:
    out = reshape_target(shape, target, allowzero, label)
    return out, regroup(shape, axis, out)


def through_flatten(shape: Shape, axis: int, k: int = 1) -> tuple[Shape, int | None]:
    rank = len(shape)
    if not -rank <= k <= rank:
        raise LayoutError(f"axis {k} is out of range for rank {rank}")
    if k < 0:
        k += rank
    out = (product(shape[:k]), product(shape[k:]))
    return out, regroup(shape, axis, out)


def through_squeeze(shape: Shape, axis: int, axes: Sequence[int] | None = None) -> tuple[Shape, int | None]:
    rank = len(shape)
    if axes is None:  # every size-1 axis: each dim must be known to tell which
        if any(d.value is None for d in shape):
            raise LayoutError(f"without axes it removes every size-1 axis, and {format_shape(shape)} "
                              "is not fully known")
        removed = {i for i, d in enumerate(shape) if d.value == 1}
    else:
        removed = {_normalized(int(a), rank, "axis") for a in axes}
        if len(removed) != len(axes):
            raise LayoutError(f"axes {list(axes)} repeat an axis")
        wrong = [i for i in sorted(removed) if shape[i].value not in (None, 1)]
        if wrong:
            raise LayoutError(f"axis {wrong[0]} of {format_shape(shape)} has size {shape[wrong[0]]}, not 1")
    out = tuple(d for i, d in enumerate(shape) if i not in removed)
    if axis in removed:
        return out, None
    return out, axis - sum(1 for i in removed if i < axis)


def through_unsqueeze(shape: Shape, axis: int, axes: Sequence[int]) -> tuple[Shape, int]:
    rank = len(shape) + len(axes)
    inserted = {_normalized(int(a), rank, "axis") for a in axes}
    if len(inserted) != len(axes):
        raise LayoutError(f"axes {list(axes)} repeat an axis")
    kept = [i for i in range(rank) if i not in inserted]  # output positions of the input's axes, in order
    source = iter(shape)
    out = tuple(Dim(1) if i in inserted else next(source) for i in range(rank))
    return out, kept[axis]
