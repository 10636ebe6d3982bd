"""Mul / Add / Sub / Div by a per-channel constant after a linear op (Conv, ConvTranspose, Gemm, MatMul).

Each such op is a per-channel affine map ``y -> s * y + t`` of the linear op's output ``y``:

    y * c, c * y  ->  s = c,    t = 0         y + c, c + y  ->  s = 1,  t = c
    y - c         ->  s = 1,    t = -c        c - y         ->  s = -1, t = c
    y / c         ->  s = 1/c,  t = 0         c / y         ->  not affine: no match

and folds into the weight and bias the same way a BatchNormalization does (``W' = s * W`` along
the output channels, ``b' = s * b + t``; see ``_linear.py``). This is what onnxruntime's
ConvMulFusion / ConvAddFusion do, for every linear op kind and for Sub and Div too. A chain
Conv → Mul → Add → Sub folds one op per fold: each fold leaves a Conv the next op follows.

"Matched" (worth a word in the report when it then does not fold) means: one operand comes from
a linear op with a constant weight (for MatMul: directly, or through its constant bias Add) and
the other operand looks like a constant. A product of two activations, or a scaled attention
score ``MatMul(Q, K^T) / c``, is never reported. An Add of a constant right after a MatMul is not a
match either: ``_site.read_linear`` reads it as the MatMul's bias, and folding it would only put a
new bias Add in its place (an op after it folds into both, weight and bias).

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

from ..errors import NoFold
from ..graph import FoldGraph
from ._elementwise import AFFINE_OPS, Elementwise, affine_of, read_operand
from ._linear import FoldedLinear, fold_affine
from ._site import LinearSite, locate_affine, locate_weighted_linear, read_linear, require_exclusive, rewrite_affine
from .base import Fold, Rule


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
    return locate_weighted_linear(element.y, graph, "its input comes from")


class AffineAfterLinearRule(Rule):
    """Mul/Add/Sub/Div by a per-channel constant after a linear op; see the module docstring."""

    name = "affine-linear"
    anchors = AFFINE_OPS
    report_unmatched = False

    def match(self, node: gs.Node, graph: FoldGraph) -> AffineAfterLinear:
        element, site = locate_affine(node, graph, _locate)
        return AffineAfterLinear(element, site)

    def check(self, match: AffineAfterLinear, graph: FoldGraph) -> AffineAfterLinearPlan:
        element = match.element
        linear = read_linear(match.site, graph)
        require_exclusive(linear.tail, element.node, graph)
        out_dtype = linear.weight.dtype if linear.bias is None else linear.bias.dtype
        c = read_operand(element, graph, out_dtype, linear.out_rank, linear.channels, linear.channel_axis)
        s, t = affine_of(element, c)
        folded = fold_affine(linear, s, t)
        if linear.bias is None and not np.any(folded.bias):
            # scale only, into an op without bias: add no zero bias (for MatMul that would be a
            # new Add node in place of the removed Mul)
            folded = dataclasses.replace(folded, bias=None)
        return AffineAfterLinearPlan(folded, element.node)

    def rewrite(self, plan: AffineAfterLinearPlan, graph: FoldGraph) -> Fold:
        node, linear = plan.node, plan.folded.linear
        y = node.outputs[0].name
        added = rewrite_affine(plan.folded, node, graph)
        return Fold(self.name, node.name, node.op, linear.node.name, linear.node.op, output=y, added=added)
