"""Linear op → BatchNormalization: rules conv-bn, convtranspose-bn, gemm-bn and matmul-bn.

    y = BN(L(x))  ==  L'(x)   with  W' = s * W along the output channels,  b' = s * b + t

where ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s`` (``_linear.py`` says where each op
keeps its channels). The four rules are one rule per linear op type, so that each can be turned off
on its own and the report says which fold happened; they differ only in the op they fold into. BN
normalizes axis 1, so the linear op's channels must land on axis 1 of BN's input (always for Conv,
ConvTranspose and Gemm; for MatMul only with a 2-D output, or through layout ops that bring them
there: ``_site.read_linear``).

Preconditions (each refusal names the node and the reason):
- BN is an inference op (no training_mode=1, no spatial=0, statistics outputs unused);
- BN's input comes from the linear op, and nothing else reads the linear op's output (or its
  bias Add's, or the layout ops'): they would see the folded values;
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
from ._batchnorm import check_inference_only, read_affine
from ._linear import KINDS, FoldedLinear, fold_affine
from ._site import LinearSite, locate_linear, read_linear, require_exclusive, rewrite_affine
from .base import Fold, Rule


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


class ConvBatchNormRule(LinearBatchNormRule):
    """Conv → BatchNormalization.

    The Conv weight is ``[M, C/group, k1, ..., kn]``: output channel m is row m whatever the group
    count, so ``W'[m] = s[m] * W[m]``, ``b' = s * b + t`` covers 1-D/2-D/3-D, grouped and depthwise
    convs, with any strides, dilations, pads or auto_pad (those act on the input side; the BN acts
    per output channel). A missing bias is created.
    """

    name = "conv-bn"
    linear_op = "Conv"


class ConvTransposeBatchNormRule(LinearBatchNormRule):
    """ConvTranspose → BatchNormalization.

    The weight is ``[C_in, C_out/group, k...]``: output channel ``j * C_out/group + m`` of group j is
    column m of rows ``j * C_in/group ...``, so the scale runs along axis 1 within each group (where
    onnxoptimizer never merged and PyTorch's fx fuser broke on group > 1). Every rank, any group.
    """

    name = "convtranspose-bn"
    linear_op = "ConvTranspose"


class GemmBatchNormRule(LinearBatchNormRule):
    """Gemm → BatchNormalization (BN over [N, C]).

    ``y = alpha * A' B' + beta * C``: B's output-channel axis is 1 (0 with transB=1) and is scaled;
    the new C is ``s * beta * C + t`` with beta set to 1, so alpha, beta != 1 and C given as scalar,
    [C], [1, C] or [M, C] (or absent) all fold.
    """

    name = "gemm-bn"
    linear_op = "Gemm"


class MatMulBatchNormRule(LinearBatchNormRule):
    """MatMul (constant 2-D weight [K, C], optional bias Add) → BatchNormalization.

    The weight's columns are the output channels; the bias Add's constant becomes ``s * b + t`` (an
    Add is created when there was none). BN normalizes axis 1 while MatMul puts its channels on the
    last axis: the fold is only valid when they coincide, i.e. for a 2-D activation [N, C] (rank
    known from shapes or producers: ``_rank.rank_of``), or through layout ops that bring them to
    axis 1 (a Reshape to [N, C, 1, ...], a Transpose of [B, T, C] to [B, C, T]). On a 3-D [B, T, K]
    input straight into the BN, axis 1 is T, not C: refused, even when the sizes happen to match.
    """

    name = "matmul-bn"
    linear_op = "MatMul"
