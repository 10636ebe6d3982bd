"""A positive per-channel scale after Relu / LeakyRelu / PRelu after a linear op: into the linear op.

For a scale ``s > 0`` (per channel):

    relu(s·x) = s·relu(x),   leaky_relu(s·x) = s·leaky_relu(x),   prelu(s·x, slope) = s·prelu(x, slope)

Each is elementwise and piecewise linear with a kink at 0, and ``s·x`` has the sign of ``x``; PRelu's
slope (unidirectionally broadcast to x, so the output has x's shape) may be anything. Hence, with
``L`` the linear op (TVM's FoldScaleAxis moves scales backward through activations the same way):

    act(L(u)) * s  ==  act(L'(u))     with  W' = s·W along the output channels,  b' = s·b

The scale is a Mul by a per-channel constant ``c`` (``s = c``), a Div by one (``s = 1/c``), or a
BatchNormalization whose shift ``t = beta − mean·s`` is zero (beta and mean all zero). The Mul, Div
or BN goes; the activation produces its output.

A BN with a shift is not folded here (the match fails, so the report keeps conv-bn's reason, "its
input comes from Relu, not a linear op"): moving its scale back leaves ``relu(x) + t``, an Add in
the BN's place, and that is no gain. Same node count, 3·C fewer parameters, and measured with
onnxruntime 1.32 on CPU (1 thread; Conv 3x3 → Relu → BN vs → Add at 64x56x56, 256x14x14,
32x112x112; ORT_DISABLE_ALL and ORT_ENABLE_ALL) the same time within the noise (under 1 %): the BN
kernel is one multiply-add per element, the Add one add, both bound by memory. Where every reader of
such a BN is a linear op that can take the shift exactly, bn-linear folds the whole BN forward.

Matched (and so reported when a check fails) is a Mul / Div by a constant or a shift-free BN after
an elementwise activation after a linear op with a constant weight. Preconditions:
- the activation is Relu, LeakyRelu or PRelu: Sigmoid, Tanh, Gelu, Elu, ... are not positively
  homogeneous, and ``Clip(s·x, a, b) = s·Clip(x, a/s, b/s)``: its bounds would have to scale;
- every scale is positive (and finite): for ``s <= 0`` the identity fails;
- nothing else reads the linear op's output (or its bias Add's) or the activation's, and neither
  is a graph output (both change: they are ``1/s`` of what they were);
- the constant is per output channel (see ``_elementwise.per_channel``), of the output's dtype;
  a BN's channels are on axis 1 (MatMul: only a 2-D output) and it is an inference op;
- the weight and bias are constants, and the folded ones are finite and keep their precision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph
from ._batchnorm import check_inference_only, read_affine
from ._elementwise import Elementwise, affine_of, elementwise_operands, read_operand
from ._linear import FoldedLinear, fold_affine
from ._site import LinearSite, locate_weighted_linear, read_linear, require_exclusive, require_same_scope
from .base import Fold, Rule, describe

#: Activations with f(s·x) = s·f(x) for every s > 0.
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
#: Elementwise activations a scale does not move through, with the reason when it is not just that.
NOT_HOMOGENEOUS = {
    "Clip": "Clip(s·x, a, b) = s·Clip(x, a/s, b/s): its bounds would have to scale per channel",
    "ThresholdedRelu": "ThresholdedRelu(s·x) = s·ThresholdedRelu(x) only if its threshold alpha scales per channel",
    **{op: None for op in ("Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
                           "Softplus", "Softsign", "Mish", "Erf", "Exp", "Log", "Softmax", "LogSoftmax")},
}
SCALE_OPS = ("Mul", "Div")


@dataclass(frozen=True)
class ScaleAfterActivation:
    node: gs.Node  # the Mul, Div or BatchNormalization
    element: Elementwise | None  # for Mul / Div: the operand read as the scale
    activation: gs.Node
    site: LinearSite


@dataclass(frozen=True)
class ScaleAfterActivationPlan:
    node: gs.Node
    activation: gs.Node
    folded: FoldedLinear


def _zero_shift(bn: gs.Node, graph: FoldGraph) -> bool:
    """Whether BN's bias and mean are constants that are zero everywhere (then its shift is zero)."""
    for tensor in bn.inputs[2:4]:
        try:
            value = graph.constant(tensor)
        except NoFold:
            return False
        precise = graph.precise(tensor)
        if np.any(value if precise is None else precise):
            return False
    return len(bn.inputs) >= 5


def _activation(tensor: gs.Tensor, graph: FoldGraph) -> gs.Node:
    node = graph.producer(tensor)
    if (node is None or node.domain not in ONNX_DOMAINS or node.outputs[0] is not tensor
            or (node.op not in HOMOGENEOUS and node.op not in NOT_HOMOGENEOUS)):
        raise NoFold(f"its input '{tensor.name}' does not come from an elementwise activation")
    return node


def _linear_behind(act: gs.Node, graph: FoldGraph) -> LinearSite:
    """The linear op with a constant weight (and, for MatMul, a constant bias Add) that ``act`` reads."""
    return locate_weighted_linear(act.inputs[0], graph, f"{describe(act)} reads")


class ScaleAfterActivationRule(Rule):
    """Mul / Div / shift-free BN after Relu, LeakyRelu or PRelu after a linear op; see the module docstring."""

    name = "activation-scale"
    anchors = (*SCALE_OPS, "BatchNormalization")
    report_unmatched = False

    def match(self, node: gs.Node, graph: FoldGraph) -> ScaleAfterActivation:
        if node.op == "BatchNormalization":
            act = _activation(node.inputs[0], graph)
            site = _linear_behind(act, graph)
            if not _zero_shift(node, graph):
                raise NoFold(f"its shift is not zero: after {describe(act)} it would stay as an Add, which costs "
                             "what the BN costs")
            return ScaleAfterActivation(node, None, act, site)
        reasons = []
        for element in elementwise_operands(node, graph):
            if node.op == "Div" and element.index == 1:
                continue  # c / y: not a scale
            try:
                act = _activation(element.y, graph)
                return ScaleAfterActivation(node, element, act, _linear_behind(act, graph))
            except NoFold as exc:
                reasons.append(exc.reason)
        raise NoFold(reasons[0] if reasons else "it does not scale an activation by a constant")

    def check(self, match: ScaleAfterActivation, graph: FoldGraph) -> ScaleAfterActivationPlan:
        node, act = match.node, match.activation
        if act.op not in HOMOGENEOUS:
            why = NOT_HOMOGENEOUS[act.op] or f"{act.op}(s·x) is not s·{act.op}(x)"
            raise NoFold(f"a scale does not move back through {describe(act)}: {why}")
        require_same_scope(act, graph)
        linear = read_linear(match.site, graph)
        require_exclusive(linear.tail, act, graph)
        require_exclusive(act, node, graph)
        if match.element is not None:
            out_dtype = linear.weight.dtype if linear.bias is None else linear.bias.dtype
            c = read_operand(match.element, graph, out_dtype, linear.out_rank, linear.channels, linear.channel_axis)
            s, _ = affine_of(match.element, c)
        else:
            check_inference_only(node, graph)
            rank = linear.out_rank
            if rank is None or linear.channel_axis % rank != 1:
                known = "unknown" if rank is None else str(rank)
                raise NoFold(f"{describe(linear.node)} puts its channels on the last axis of an output of rank "
                             f"{known}: BN's axis 1 is not the channel axis (only a 2-D output [N, C] folds)")
            affine = read_affine(node, graph, linear.channels)
            s = affine.s
            if np.any(affine.t):  # bias and mean are zero (match): so is the shift, exactly
                raise NoFold("its shift is not zero")
        if np.any(s <= 0):
            k = int(np.argmax(s <= 0))
            raise NoFold(f"its scale on channel {k} is {s[k]:.4g}, not positive: {act.op}(s·x) = s·{act.op}(x) "
                         "holds only for s > 0")
        folded = fold_affine(linear, s, np.zeros_like(s))
        if linear.bias is None:
            folded = dataclasses.replace(folded, bias=None)  # a scale needs no bias where there was none
        return ScaleAfterActivationPlan(node, act, folded)

    def rewrite(self, plan: ScaleAfterActivationPlan, graph: FoldGraph) -> Fold:
        node, linear = plan.node, plan.folded.linear
        linear.kind.write(plan.folded, graph)
        y = graph.take_output(plan.activation, node)  # y keeps its name, dtype and shape
        return Fold(self.name, node.name, node.op, linear.node.name, linear.node.op, output=y.name)
