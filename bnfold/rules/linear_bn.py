"""Linear op → BatchNormalization, for every linear op kind (the shared part of four rules).

    y = BN(L(x))  ==  L'(x)   with  W' = s * W along the output channels,  b' = s * b + t

where ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s`` (see ``linear.py`` for where
each op keeps its channels). BN normalizes axis 1, so the linear op's channels must land on axis
1 of BN's input (always for Conv, ConvTranspose and Gemm; for MatMul only with a 2-D output, or
through a Reshape to ``[N, C, 1, ...]``).

Preconditions (each refusal names the node and the reason):
- BN is an inference op (no training_mode=1, no spatial=0, statistics outputs unused);
- BN's input comes from the linear op, and nothing else reads the linear op's output (or its
  bias Add's, or the Reshape's): they would see the folded values;
- the weight, bias and BN statistics are constants (not graph inputs, not overridable);
- the statistics have one value per output channel;
- the folded weight and bias are finite and keep their precision in their dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from ..errors import NoFold
from ..graph import FoldGraph
from .base import Fold, Rule
from .batchnorm import check_inference_only, read_affine
from .linear import KINDS, FoldedLinear, LinearSite, fold_affine, locate_linear, read_linear, require_exclusive, rewrite_affine


@dataclass(frozen=True)
class LinearBN:
    site: LinearSite
    bn: gs.Node


@dataclass(frozen=True)
class LinearBNPlan:
    folded: FoldedLinear
    bn: gs.Node


class LinearBatchNormRule(Rule):
    """BN after a linear op of type ``linear_op``; subclasses set ``name`` and ``linear_op``."""

    anchors = ("BatchNormalization",)
    linear_op: ClassVar[str]

    def match(self, bn: gs.Node, graph: FoldGraph) -> LinearBN:
        site = locate_linear(bn.inputs[0], graph, tuple(KINDS), channel_axis_1=True)
        if site.node.op != self.linear_op:
            raise NoFold(f"it follows a {site.node.op}, which rule '{site.node.op.lower()}-bn' handles")
        return LinearBN(site, bn)

    def check(self, match: LinearBN, graph: FoldGraph) -> LinearBNPlan:
        bn = match.bn
        check_inference_only(bn, graph)
        linear = read_linear(match.site, graph)
        require_exclusive(linear.tail, bn, graph)
        affine = read_affine(bn, graph, linear.channels)
        return LinearBNPlan(fold_affine(linear, affine.s, affine.t), bn)

    def rewrite(self, plan: LinearBNPlan, graph: FoldGraph) -> Fold:
        bn, node = plan.bn, plan.folded.linear.node
        y = bn.outputs[0].name
        added = rewrite_affine(plan.folded, bn, graph)
        return Fold(self.name, bn.name, bn.op, node.name, node.op, output=y, added=added)
