"""Layout ops in a graph: their parameters, and a channel axis followed through a chain of them.

The math is in ``_layout_axes.py``; this module reads from the graph what it needs: a Transpose's
``perm``, a Reshape's constant shape (and ``allowzero``), Flatten's ``axis``, the ``axes`` of
Squeeze / Unsqueeze (an attribute before opset 13, a constant input from 13 on), and the declared
shapes (graph inputs and outputs, value_info) of the tensors along the way. What is neither a
constant nor declared is unknown, and a fold that needs it is refused with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

import numpy as np
import onnx_graphsurgeon as gs

from ..attributes import attribute, int_attr
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph
from ._layout_axes import (
    Dim, LayoutError, Shape, format_shape, through_flatten, through_reshape, through_squeeze,
    through_transpose, through_unsqueeze,
)
from .base import describe

#: Ops that move elements without changing them, whose effect on a channel axis is followed.
LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
#: Follow at most this many layout ops in a row: real models have one or two.
MAX_LAYOUT_CHAIN = 16


def is_layout_op(node: gs.Node | None) -> TypeGuard[gs.Node]:
    """Whether ``node`` is an ONNX layout op (one data input, one output)."""
    return (node is not None and node.op in LAYOUT_OPS and node.domain in ONNX_DOMAINS
            and bool(node.inputs) and len(node.outputs) == 1)


def declared_shape(tensor: gs.Tensor) -> Shape | None:
    """``tensor``'s declared shape (None: no rank declared); a size not declared is an unknown of its own."""
    if tensor.shape is None:
        return None
    return tuple(Dim(d) if isinstance(d, int) and d >= 0 else Dim.unknown(f"{tensor.name}[{i}]")
                 for i, d in enumerate(tensor.shape))


def _merge(computed: Shape, declared: Shape | None, tensor: gs.Tensor) -> Shape:
    """``computed`` with the sizes a declaration of ``tensor`` adds; NoFold when they contradict."""
    if declared is None:
        return computed
    if len(declared) != len(computed):
        raise NoFold(f"'{tensor.name}' is declared with rank {len(declared)}, but has rank {len(computed)}")
    merged = []
    for c, d in zip(computed, declared):
        if c.value is not None and d.value is not None and c != d:
            raise NoFold(f"'{tensor.name}' is declared {format_shape(declared)}, but is {format_shape(computed)}")
        merged.append(c if d.value is None else d)
    return tuple(merged)


def linear_output_shape(node: gs.Node, rank: int | None) -> Shape | None:
    """What a linear op's output shape is, from the declared shape of its data input: the batch dim
    of a Conv / ConvTranspose, the rows of a Gemm, every axis of a MatMul's A but the last; the
    other sizes (the channels, the spatial dims) unknown. None without a declaration, or when it
    does not have ``rank`` dims (a bias Add that raises the rank)."""
    a = declared_shape(node.inputs[0])
    if a is None or not a:
        return None
    name = node.outputs[0].name
    if node.op in ("Conv", "ConvTranspose"):
        out = (a[0],) + tuple(Dim.unknown(f"{name}[{i}]") for i in range(1, len(a)))
    elif node.op == "Gemm":
        out = (a[1] if int_attr(node, "transA", 0) else a[0], Dim.unknown(f"{name}[1]"))
    else:  # MatMul
        out = a[:-1] + (Dim.unknown(f"{name}[{len(a) - 1}]"),)
    return out if rank is None or len(out) == rank else None


def channel_shape(tensor: gs.Tensor, rank: int | None, axis: int, channels: int,
                  known: Shape | None = None) -> tuple[Shape, int]:
    """The shape of ``tensor`` as far as it is known, holding ``channels`` channels on ``axis``
    (negative: from the end), and that axis made non-negative. ``rank``: the rank known from the
    producer (None: from the declaration only); ``known``: what the producer says of the shape
    (``linear_output_shape``), completed by the declaration."""
    shape = declared_shape(tensor)
    if known is not None:
        shape = known if shape is None else _merge(known, shape, tensor)
    if shape is None:
        if rank is None:
            raise NoFold(f"the rank of '{tensor.name}' is unknown, so its channel axis cannot be followed")
        shape = tuple(Dim.unknown(f"{tensor.name}[{i}]") for i in range(rank))
    if rank is not None and len(shape) != rank:
        raise NoFold(f"'{tensor.name}' is declared with rank {len(shape)}, but has rank {rank}")
    if not -len(shape) <= axis < len(shape):
        raise NoFold(f"'{tensor.name}' of rank {len(shape)} has no axis {axis}")
    axis %= len(shape)
    if shape[axis].value not in (None, channels):
        raise NoFold(f"'{tensor.name}' is declared {format_shape(shape)}: {shape[axis]} entries on axis {axis}, "
                     f"not the {channels} channels")
    return shape[:axis] + (Dim(channels),) + shape[axis + 1:], axis


def _axes(node: gs.Node, graph: FoldGraph) -> list[int] | None:
    """Squeeze / Unsqueeze axes: the attribute before opset 13, the optional constant input from 13 on."""
    if graph.opset < 13:
        value = attribute(node, "axes", None)
        return None if value is None else [int(a) for a in value]
    if len(node.inputs) < 2 or not node.inputs[1].name:
        return None
    try:
        return [int(a) for a in np.asarray(graph.constant(node.inputs[1])).ravel()]
    except NoFold as exc:
        raise NoFold(f"{describe(node)} has non-constant axes: {exc.reason}") from None


def _step(node: gs.Node, shape: Shape, axis: int, graph: FoldGraph) -> tuple[Shape, int | None, str]:
    """``node`` applied to channels on ``axis`` of ``shape``: (output shape, axis or None, its parameters in words)."""
    op = node.op
    b: int | None
    if op == "Transpose":
        perm = attribute(node, "perm", None)
        out, b = through_transpose(shape, axis, perm)
        return out, b, f" (perm {list(perm)})" if perm is not None else " (axes reversed)"
    if op == "Reshape":
        try:
            target = [int(v) for v in np.asarray(graph.constant(node.inputs[1])).ravel()]
        except (NoFold, IndexError) as exc:
            reason = exc.reason if isinstance(exc, NoFold) else "it has no shape input"
            raise NoFold(f"{describe(node)} has a non-constant shape: {reason}") from None
        allowzero = bool(int_attr(node, "allowzero", 0)) if graph.opset >= 14 else False
        out, b = through_reshape(shape, axis, target, allowzero, node.outputs[0].name)
        return out, b, f" to {target}"
    if op == "Flatten":
        k = int_attr(node, "axis", 1)
        out, b = through_flatten(shape, axis, k)
        return out, b, f" (axis {k})"
    axes = _axes(node, graph)
    if op == "Squeeze":
        out, b = through_squeeze(shape, axis, axes)
        return out, b, "" if axes is None else f" (axes {axes})"
    if axes is None:
        raise NoFold(f"{describe(node)} has no axes")
    out, b = through_unsqueeze(shape, axis, axes)
    return out, b, f" (axes {axes})"


def follow_layout(nodes: Sequence[gs.Node], shape: Shape, axis: int, channels_of: str,
                  graph: FoldGraph) -> tuple[Shape, int, str]:
    """Follow channels on ``axis`` of ``shape`` through the layout ops ``nodes`` (each reading the
    previous one's output). Returns the last output's shape, the axis that carries the channels
    there, and the last op's parameters in words; NoFold when an op loses the channel axis or its
    effect cannot be proven. ``channels_of`` names the channels' origin for messages."""
    params = ""
    for node in nodes:
        try:
            out, b, params = _step(node, shape, axis, graph)
        except LayoutError as exc:
            raise NoFold(f"{describe(node)}: {exc}") from None
        if b is None:
            count = shape[axis]
            if all(d.value is not None for d in shape + out):
                raise NoFold(f"{describe(node)}{params} merges the {count} channels of {channels_of} with other "
                             f"axes or splits them ({format_shape(shape)} → {format_shape(out)}, channels on axis "
                             f"{axis}): no single axis carries them")
            raise NoFold(f"{describe(node)}{params} cannot be proven to keep the {count} channels of {channels_of} "
                         f"on one axis: {format_shape(shape)} → {format_shape(out)} (channels on axis {axis}) is "
                         "not known well enough (? is a size no declaration or constant gives)")
        shape, axis = _merge(out, declared_shape(node.outputs[0]), node.outputs[0]), b
    return shape, axis, params
