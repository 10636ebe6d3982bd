"""Mul / Add / Sub / Div by a per-channel constant after a linear op (Conv, ConvTranspose, Gemm, MatMul).

Each such op is a per-channel affine map ``y -> s * y + t`` of the linear op's output ``y``:

    y * c, c * y  ->  s = c,    t = 0         y + c, c + y  ->  s = 1,  t = c
    y - c         ->  s = 1,    t = -c        c - y         ->  s = -1, t = c
    y / c         ->  s = 1/c,  t = 0         c / y         ->  not affine: no match

and folds into the weight and bias the same way a BatchNormalization does (``W' = s * W`` along
the output channels, ``b' = s * b + t``; see ``linear.py``). This is what onnxruntime's
ConvMulFusion / ConvAddFusion do, for every linear op kind and for Sub and Div too. A chain
Conv → Mul → Add → Sub folds one op per fold: each fold leaves a Conv the next op follows.

"Matched" (worth a word in the report when it then does not fold) means: one operand comes from
a linear op with a constant weight (for MatMul: directly, or through its constant bias Add) and
the other operand looks like a constant. A product of two activations, or a scaled attention
score ``MatMul(Q, K^T) / c``, is never reported. An Add of a constant right after a MatMul is not a
match either: linear.py reads it as the MatMul's bias, and folding it would only put a new bias
Add in its place (an op after it folds into both, weight and bias).

Preconditions (each refusal names the reason):
- the operand is a constant (not a graph input, not an overridable initializer) of the output's dtype,
  with finite values, and no zero divisor for Div;
- it broadcasts per output channel: for Conv ``[N, C, H, W]`` a scalar, ``[1]``, ``[C, 1, 1]`` or
  ``[1, C, 1, 1]`` — but not ``[C]``, which broadcasts along W — and never more dimensions than
  the output (broadcasting would change the output's shape);
- before opset 7 no legacy ``broadcast=1`` (its ``axis`` alignment is not numpy's);
- nothing else reads the linear op's output (or its bias Add's), and it is not a graph output;
- the linear op's weight and bias are constants, and the folded ones are finite and keep their
  precision in their dtype.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..attributes import int_attr
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph
from .base import Fold, Rule, describe
from .linear import (
    KINDS,
    FoldedLinear,
    LinearSite,
    fold_affine,
    locate_linear,
    per_channel,
    read_linear,
    require_exclusive,
    rewrite_affine,
)

#: The elementwise ops that can be a per-channel affine map of one operand.
AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


# -- shared with bn_scale.py ---------------------------------------------------------------------


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


def looks_constant(tensor: gs.Tensor, graph: FoldGraph) -> bool:
    """Whether ``tensor`` is (structurally) a constant: an initializer, or computed from constants.

    An initializer counts even when callers may override it: the check then refuses it with that
    reason. Cheap for activations: ``graph.constant`` stops at the first producer that is not an
    op constants are made with.
    """
    if isinstance(tensor, gs.Constant):
        return True
    try:
        graph.constant(tensor)
    except NoFold:
        return False
    return True


def elementwise_operands(node: gs.Node, graph: FoldGraph) -> list[Elementwise]:
    """The ways to read ``node`` as ``affine(y)`` with the other operand constant (structure only)."""
    if node.domain not in ONNX_DOMAINS or node.op not in AFFINE_OPS:
        return []
    if len(node.inputs) != 2 or len(node.outputs) != 1 or node.inputs[0] is node.inputs[1]:
        return []
    return [Elementwise(node, i) for i in (0, 1) if looks_constant(node.inputs[1 - i], graph)]


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


# -- the rule --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AffineAfterLinear:
    element: Elementwise
    site: LinearSite


@dataclass(frozen=True)
class AffineAfterLinearPlan:
    folded: FoldedLinear
    node: gs.Node


def _locate(element: Elementwise, graph: FoldGraph) -> LinearSite:
    """The linear op behind ``element.y``, with a constant weight; NoFold (a non-match) otherwise."""
    site = locate_linear(element.y, graph, tuple(KINDS))
    if site.walked is not site.node:  # an Add after a MatMul: only its constant bias Add leads back to it
        others = [t for t in site.walked.inputs[:2] if graph.producer(t) is not site.node]
        if len(others) != 1 or not looks_constant(others[0], graph):
            raise NoFold(f"its input comes from {describe(site.walked)}, which adds an activation to "
                         f"{describe(site.node)}")
    if len(site.node.inputs) < 2 or not looks_constant(site.node.inputs[1], graph):
        raise NoFold(f"{describe(site.node)} has no constant weight: it is not a layer to fold into")
    return site


class AffineAfterLinearRule(Rule):
    """Mul/Add/Sub/Div by a per-channel constant after a linear op; see the module docstring."""

    name = "affine-linear"
    anchors = AFFINE_OPS
    report_unmatched = False

    def match(self, node: gs.Node, graph: FoldGraph) -> AffineAfterLinear:
        candidates = elementwise_operands(node, graph)
        if not candidates:
            raise NoFold("no operand is a constant")
        reasons = []
        for element in candidates:
            try:
                site = _locate(element, graph)
            except NoFold as exc:
                reasons.append(exc.reason)
                continue
            if node.op == "Div" and element.index == 1:
                raise NoFold("it divides a constant by the linear op's output, which is not affine")
            if node.op == "Add" and site.node.op == "MatMul" and site.walked is site.node:
                # linear.py reads an Add of a constant right after a MatMul as its bias: folding it
                # would only put a new bias Add in its place
                raise NoFold(f"it is the bias of {describe(site.node)} already: nothing to fold")
            return AffineAfterLinear(element, site)
        raise NoFold(reasons[0])

    def check(self, match: AffineAfterLinear, graph: FoldGraph) -> AffineAfterLinearPlan:
        element = match.element
        linear = read_linear(match.site, graph)
        require_exclusive(linear.tail, element.node, graph)
        out_dtype = linear.weight.dtype if linear.bias is None else linear.bias.dtype
        c = read_operand(element, graph, out_dtype, linear.out_rank, linear.channels, linear.channel_axis)
        s, t = affine_of(element, c)
        return AffineAfterLinearPlan(fold_affine(linear, s, t), element.node)

    def rewrite(self, plan: AffineAfterLinearPlan, graph: FoldGraph) -> Fold:
        node, folded = plan.node, plan.folded
        linear = folded.linear
        if linear.bias is None and not np.any(folded.bias):
            # scale only, into an op without bias: add no zero bias (for MatMul that would be a
            # new Add node in place of the removed Mul)
            folded = dataclasses.replace(folded, bias=None)
        y = node.outputs[0].name
        added = rewrite_affine(folded, node, graph)
        return Fold(self.name, node.name, node.op, linear.node.name, linear.node.op, output=y, added=added)
