"""Mul / Add / Sub / Div by a constant, read as a per-channel affine map ``y -> s * y + t``.

    y * c, c * y  ->  s = c,    t = 0         y + c, c + y  ->  s = 1,  t = c
    y - c         ->  s = 1,    t = -c        c - y         ->  s = -1, t = c
    y / c         ->  s = 1/c,  t = 0         c / y         ->  not affine

Shared by the rules that fold such an op: into the linear op before it (affine-linear, qdq-affine),
into the BN before it (bn-scale), or through an activation (activation-scale). ``elementwise_operands``
finds the ways to read a node so (structure only), ``read_operand`` reads the constant as one value
per channel of ``y`` (``per_channel``: it must broadcast per channel and not change y's shape) and
``affine_of`` gives ``(s, t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..attributes import int_attr
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph

#: The elementwise ops that can be a per-channel affine map of one operand.
AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


@dataclass(frozen=True)
class Elementwise:
    """A Mul/Add/Sub/Div reading the activation ``y`` at input ``index`` and a constant at the other."""

    node: gs.Node
    index: int

    @property
    def y(self) -> gs.Tensor:
        return self.node.inputs[self.index]

    @property
    def operand(self) -> gs.Tensor:
        return self.node.inputs[1 - self.index]


def elementwise_operands(node: gs.Node, graph: FoldGraph) -> list[Elementwise]:
    """The ways to read ``node`` as ``affine(y)`` with the other operand constant (structure only)."""
    if node.domain not in ONNX_DOMAINS or node.op not in AFFINE_OPS:
        return []
    if len(node.inputs) != 2 or len(node.outputs) != 1 or node.inputs[0] is node.inputs[1]:
        return []
    return [Elementwise(node, i) for i in (0, 1) if graph.looks_constant(node.inputs[1 - i])]


def read_operand(element: Elementwise, graph: FoldGraph, dtype, rank: int | None, channels: int,
                 channel_axis: int) -> np.ndarray:
    """The constant operand as a float64 vector over the ``channels`` channels (NoFold if it is not).

    ``dtype`` is the type of y (None when unknown), ``rank`` the rank of y (None when unknown),
    ``channel_axis`` the axis of y that carries the channels.
    """
    node, tensor = element.node, element.operand
    try:
        value = np.asarray(graph.constant(tensor))
    except NoFold as exc:
        raise NoFold(f"its operand '{tensor.name}' is not a constant: {exc.reason}") from None
    expected = _numpy_dtype(dtype)
    if expected is not None and value.dtype != expected:
        raise NoFold(f"its operand '{tensor.name}' has dtype {value.dtype.name}, the output {expected.name}")
    if graph.opset < 7 and int_attr(node, "broadcast", 0):
        raise NoFold("it uses legacy broadcasting (broadcast=1, opset < 7), which bnfold does not fold")
    vector = per_channel(value, channels, rank, channel_axis, f"its operand '{tensor.name}'")
    if not np.all(np.isfinite(vector)):
        raise NoFold(f"its operand '{tensor.name}' has non-finite values")
    return vector


def _numpy_dtype(dtype) -> np.dtype | None:
    """``dtype`` as a numpy dtype; None when unknown (graphsurgeon leaves types numpy lacks as ONNX enums)."""
    try:
        return None if dtype is None else np.dtype(dtype)
    except TypeError:
        return None


def per_channel(value: np.ndarray, channels: int, out_rank: int | None, channel_axis: int, what: str) -> np.ndarray:
    """``value`` as a float64 vector of ``channels`` entries, if it broadcasts per output channel.

    ``value`` broadcasts against a y of rank ``out_rank`` whose channels sit on ``channel_axis``:
    it must be a scalar, or have ``channels`` entries on that axis and 1 on every other axis, and
    not more dimensions than y (broadcasting would change y's shape). NoFold otherwise.
    """
    v = np.asarray(value)
    if v.size == 1 and (out_rank is None and v.ndim <= 1 or out_rank is not None and v.ndim <= out_rank):
        return np.full(channels, float(v.reshape(-1)[0].astype(np.float64)))
    shape = list(v.shape)
    if out_rank is None:
        if channel_axis != -1 or v.ndim > 1:
            raise NoFold(f"the rank of the output is unknown, so {what} of shape {shape} cannot be proven per channel")
        out_rank = 1
    if v.ndim > out_rank:
        raise NoFold(f"{what} of shape {shape} has more dimensions than the output (rank {out_rank})")
    aligned = [1] * (out_rank - v.ndim) + shape
    axis = channel_axis % out_rank
    if aligned[axis] != channels or any(d != 1 for i, d in enumerate(aligned) if i != axis):
        raise NoFold(f"{what} of shape {shape} is not per output channel (expected {channels} entries on axis {axis})")
    return v.reshape(channels).astype(np.float64)


def affine_of(element: Elementwise, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` in float64 with ``node(y) = s * y + t``, given the operand ``c`` per channel."""
    op, first = element.node.op, element.index == 0
    ones, zeros = np.ones_like(c), np.zeros_like(c)
    if op == "Mul":
        return c, zeros
    if op == "Add":
        return ones, c
    if op == "Sub":
        return (ones, -c) if first else (-ones, c)
    if not first:  # c / y: rejected by the match already
        raise NoFold("it divides a constant by the activation, which is not affine")
    if np.any(c == 0):
        channel = int(np.argmax(c == 0))
        raise NoFold(f"it divides by zero (channel {channel} of '{element.operand.name}')")
    return 1.0 / c, zeros
