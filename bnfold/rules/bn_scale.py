"""BatchNormalization → Mul / Add / Sub / Div by per-channel constants: into the BN's own parameters.

Caffe2 exports a "scale layer" after each BN as ``Mul`` and ``Add`` of per-channel constants
(the onnx package's light_densenet121 has 121 of them). With the elementwise op read as
``z = s * y + t`` (see ``_elementwise.affine_of``) and ``y = BN(x)``:

    s * (gamma * x_hat + beta) + t  =  (s * gamma) * x_hat + (s * beta + t)

so ``gamma' = s * gamma`` and ``beta' = s * beta + t``; mean, variance and epsilon stay. The
elementwise node goes, the BN produces its output. A BN that follows a Conv is folded into the
Conv by conv-bn first (it comes first in graph order), and the op after it then by
affine-linear; a BN that follows a Relu, a MaxPool or a Concat keeps its node, minus the scale
layer, and a later BN → Conv fold takes the whole chain with it.

Per channel means along axis 1 of BN's output: for a rank-4 output a scalar, ``[1]``,
``[C, 1, 1]`` or ``[1, C, 1, 1]``; ``[C]`` only for a 2-D output ``[N, C]``. The output rank comes
from declared shapes or from the producers that fix it (``_rank.rank_of``); when it is unknown,
only a scalar or ``[1]`` folds.

Preconditions (each refusal names the reason): the BN is an inference op with constant
statistics of one value per channel; its output is read by this op alone and is not a graph
output; the operand is a finite constant of the BN's dtype, per channel; the new gamma and beta
are finite and keep their precision in their dtype (gamma and beta shared with other nodes get
fresh names, the others keep theirs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .. import foldmath
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..foldmath import cast_checked
from ..graph import FoldGraph
from ._batchnorm import check_inference_only, read_affine
from ._elementwise import AFFINE_OPS, Elementwise, affine_of, elementwise_operands, read_operand
from ._rank import rank_of
from ._site import require_exclusive, require_same_scope
from .base import Fold, Rule, describe, label


@dataclass(frozen=True)
class BatchNormScale:
    element: Elementwise
    bn: gs.Node


@dataclass(frozen=True)
class BatchNormScalePlan:
    element: Elementwise
    bn: gs.Node
    scale: np.ndarray
    bias: np.ndarray
    exact_scale: np.ndarray  # the float64 values ``scale`` and ``bias`` were rounded from
    exact_bias: np.ndarray


class BatchNormScaleRule(Rule):
    """Mul/Add/Sub/Div by per-channel constants after a BatchNormalization; see the module docstring."""

    name = "bn-scale"
    anchors = AFFINE_OPS
    report_unmatched = False

    def match(self, node: gs.Node, graph: FoldGraph) -> BatchNormScale:
        for element in elementwise_operands(node, graph):
            bn = graph.producer(element.y)
            if bn is None or bn.op != "BatchNormalization" or bn.domain not in ONNX_DOMAINS:
                continue
            if bn.outputs[0] is not element.y:
                continue
            if node.op == "Div" and element.index == 1:
                raise NoFold("it divides a constant by the BatchNormalization's output, which is not affine")
            return BatchNormScale(element, bn)
        raise NoFold("it does not scale or shift a BatchNormalization's output by a constant")

    def check(self, match: BatchNormScale, graph: FoldGraph) -> BatchNormScalePlan:
        element, bn = match.element, match.bn
        require_same_scope(bn, graph)
        try:
            check_inference_only(bn, graph)
            gamma, beta = _constant_parameters(bn, graph)
            read_affine(bn, graph, gamma.size)  # mean and variance: constants of the same size, finite map
        except NoFold as exc:
            raise NoFold(f"{describe(bn)} before it: {exc.reason}") from None
        require_exclusive(bn, element.node, graph)
        y = element.y
        dtype = y.dtype if y.dtype is not None else bn.inputs[0].dtype
        if dtype is None and graph.opset < 15:  # before opset 15 the parameters have the type of X
            dtype = gamma.dtype
        c = read_operand(element, graph, dtype, rank_of(y, graph), gamma.size, 1)
        s, t = affine_of(element, c)
        target = _parameter_dtype(bn, gamma.dtype, np.asarray(graph.constant(element.operand)).dtype, graph)
        g64, b64 = (np.asarray(v if p is None else p, dtype=np.float64)
                    for v, p in ((gamma, graph.precise(bn.inputs[1])), (beta, graph.precise(bn.inputs[2]))))
        scale64, bias64 = s * g64, s * b64 + t
        scale = cast_checked(scale64, target, f"scale of {describe(bn)}", original=gamma)
        bias = cast_checked(bias64, target, f"bias of {describe(bn)}", original=beta)
        return BatchNormScalePlan(element, bn, scale, bias, scale64, bias64)

    def rewrite(self, plan: BatchNormScalePlan, graph: FoldGraph) -> Fold:
        bn, node = plan.bn, plan.element.node
        name = label(bn)
        new_scale = graph.replacement_constant(bn.inputs[1], plan.scale, f"{name}.scale_folded", plan.exact_scale)
        graph.replace_input(bn, 1, new_scale)
        new_bias = graph.replacement_constant(bn.inputs[2], plan.bias, f"{name}.bias_folded", plan.exact_bias)
        graph.replace_input(bn, 2, new_bias)
        z = graph.take_output(bn, node)  # z keeps its name, dtype and shape
        return Fold(self.name, node.name, node.op, bn.name, bn.op, output=z.name)


def _parameter_dtype(bn: gs.Node, stored: np.dtype, data: np.dtype, graph: FoldGraph) -> np.dtype:
    """The dtype the new scale and bias are stored in: as precise as the data path they affect.

    The folded constant (``data``: the Mul/Add operand's dtype, which is BN's output dtype) must
    not be rounded to a narrower parameter dtype: a float32 ``Add 1000.3`` folded into a float16
    bias moves the output by 0.25. From opset 15 BN's scale and bias (T1) may have another dtype
    than its data (T): both are widened (exactly) to a dtype that holds the data's precision.
    """
    target = foldmath.widened(stored, data)
    if target != stored and graph.opset < 15:
        raise NoFold(f"{describe(bn)} stores its scale and bias in {stored.name}, narrower than the "
                     f"{data.name} data, and before opset 15 they cannot be widened")
    return target


def _constant_parameters(bn: gs.Node, graph: FoldGraph) -> tuple[np.ndarray, np.ndarray]:
    """BN's scale (gamma) and bias (beta), constants of one shape [C]."""
    values = []
    for label, tensor in (("scale", bn.inputs[1]), ("bias", bn.inputs[2])):
        try:
            value = np.asarray(graph.constant(tensor))
        except NoFold as exc:
            raise NoFold(f"its {label} is not a constant: {exc.reason}") from None
        if value.ndim != 1:
            raise NoFold(f"its {label} '{tensor.name}' has shape {list(value.shape)}, expected [C]")
        values.append(value)
    gamma, beta = values
    if beta.shape != gamma.shape:
        raise NoFold(f"its bias has {beta.size} values, its scale {gamma.size}")
    return gamma, beta
