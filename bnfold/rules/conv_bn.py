"""Conv → BatchNormalization.

    y = BN(Conv(x, W, b))  ==  Conv(x, W', b')   with  W'[m] = s[m] * W[m],  b' = s * b + t

where ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. The Conv weight is
``[M, C/group, k1, ..., kn]``: output channel m is row m whatever the group count, so the same
formula covers 1-D/2-D/3-D, grouped and depthwise convs, with any strides, dilations, pads or
auto_pad (those act on the input side; the BN acts per output channel).

Preconditions (each refusal names the node and the reason):
- BN is an inference op (no training_mode=1, no spatial=0, extra outputs unused);
- its input is produced by a Conv, and nothing else reads that Conv output (not another node,
  not the graph's outputs): they would see the folded values;
- W, b and the BN statistics are constants (not graph inputs, not overridable initializers);
- the statistics have one value per output channel;
- the folded W', b' are finite and keep their precision in the weight's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import NoFold
from ..foldmath import cast_checked, fold_affine_into_linear
from ..constants import ONNX_DOMAINS
from ..graph import FoldGraph
from .base import Fold, Rule, describe
from .batchnorm import check_inference_only, read_affine


@dataclass(frozen=True)
class ConvBN:
    conv: gs.Node
    bn: gs.Node


@dataclass(frozen=True)
class ConvBNPlan:
    match: ConvBN
    weight: np.ndarray
    bias: np.ndarray


class ConvBatchNormRule(Rule):
    name = "conv-bn"
    anchor = "BatchNormalization"
    linear_op = "Conv"
    #: Weight axis that holds the output channels.
    channel_axis = 0

    def output_channels(self, linear: gs.Node, weight: np.ndarray) -> int:
        return weight.shape[self.channel_axis]

    def match(self, bn: gs.Node, graph: FoldGraph) -> ConvBN:
        linear = graph.producer(bn.inputs[0])
        if linear is None or linear.op != self.linear_op or linear.domain not in ONNX_DOMAINS:
            raise NoFold(f"its input '{bn.inputs[0].name}' comes from {describe(linear)}, not a {self.linear_op}")
        return ConvBN(linear, bn)

    def check(self, match: ConvBN, graph: FoldGraph) -> ConvBNPlan:
        conv, bn = match.conv, match.bn
        check_inference_only(bn, graph)
        out = conv.outputs[0]
        if graph.is_graph_output(out):
            raise NoFold(f"{describe(conv)} output '{out.name}' is also a graph output")
        others = [n for n in out.outputs if n is not bn]
        if others:
            raise NoFold(f"{describe(conv)} output '{out.name}' also feeds {describe(others[0])}")
        try:
            weight = graph.constant(conv.inputs[1])
            bias = graph.constant(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2].name else None
        except NoFold as exc:
            raise NoFold(f"{describe(conv)} has a non-constant weight or bias: {exc.reason}") from None
        if weight.ndim < 3:
            raise NoFold(f"{describe(conv)} weight has rank {weight.ndim}; a Conv weight has rank >= 3")
        affine = read_affine(bn, graph, self.output_channels(conv, weight))
        w64, b64 = fold_affine_into_linear(weight, bias, affine.s, affine.t, self.channel_axis)
        new_weight = cast_checked(w64, weight.dtype, f"weight of {describe(conv)}", original=weight)
        new_bias = cast_checked(b64, weight.dtype if bias is None else bias.dtype, f"bias of {describe(conv)}")
        return ConvBNPlan(match, new_weight, new_bias)

    def rewrite(self, plan: ConvBNPlan, graph: FoldGraph) -> Fold:
        conv, bn = plan.match.conv, plan.match.bn
        label = conv.name or conv.outputs[0].name
        weight_in = conv.inputs[1]
        graph.replace_input(conv, 1, graph.replacement_constant(weight_in, plan.weight, f"{label}.weight_folded"))
        bias_in = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2].name else None
        if bias_in is None:
            graph.replace_input(conv, 2, graph.new_constant(f"{label}.bias_folded", plan.bias))
        else:
            graph.replace_input(conv, 2, graph.replacement_constant(bias_in, plan.bias, f"{label}.bias_folded"))
        y = bn.outputs[0]
        bn.outputs.clear()
        graph.replace_output(conv, 0, y)  # the conv now produces what the BN produced: name, dtype, shape kept
        graph.remove_node(bn)  # and the statistics only the BN read go with it
        return Fold(self.name, bn.name, bn.op, conv.name, conv.op)
