"""Concat of linear op outputs along the channel axis → BatchNormalization: one fold per producer.

``Concat(y_1, ..., y_k)`` along axis 1 puts the channels of ``y_j`` at ``[o_j, o_j + C_j)`` with
``o_j = C_1 + ... + C_{j-1}``. A BN over it is a per-channel affine map, so it splits exactly:

    BN(Concat(y_1, ..., y_k)) = Concat(s[o_1:o_2] * y_1 + t[o_1:o_2], ..., s[o_k:] * y_k + t[o_k:])

and each slice folds into its producer as conv-bn, convtranspose-bn, gemm-bn or matmul-bn would
fold a BN of that slice's statistics (``W_j' = s_j * W_j``, ``b_j' = s_j * b_j + t_j``; see
``_linear.py``). The Concat stays and produces what the BN produced; the BN goes (TensorFlow's
fold_old_batch_norms does this for Conv2D → ConcatV2 → FusedBatchNorm).

Preconditions (each refusal names the node and the reason). The BN is one node: it folds into
all of its producers or into none.
- every input of the Concat comes from a Conv, ConvTranspose, Gemm or MatMul with a constant
  weight (directly, through a MatMul's bias Add, or through layout ops that bring its channels to
  axis 1), each read only by the Concat (once) and not a graph output; a Concat input from
  anything else (a pooling, an activation, a graph input: DenseNet's running Concat) is no match;
- the Concat joins along axis 1 (a negative axis needs the rank to be known), and its output is
  read by the BN alone and is not a graph output;
- BN is an inference op whose constant statistics have one value per channel of the Concat
  (the producers' channel counts add up to BN's);
- the weights and biases are constants, and the folded ones are finite and keep their precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from ..attributes import int_attr
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph
from ._batchnorm import check_inference_only, read_affine
from ._linear import KINDS, FoldedLinear, fold_affine, write_all
from ._rank import rank_of
from ._site import LinearSite, locate_linear, read_linear, require_exclusive, require_same_scope
from .base import Fold, Rule, describe


@dataclass(frozen=True)
class ConcatBN:
    bn: gs.Node
    concat: gs.Node
    sites: tuple[LinearSite, ...]  # one per Concat input, in order


@dataclass(frozen=True)
class ConcatBNPlan:
    bn: gs.Node
    concat: gs.Node
    folded: tuple[FoldedLinear, ...]


class ConcatBatchNormRule(Rule):
    """BN over a channel Concat of linear op outputs; see the module docstring."""

    name = "concat-bn"
    anchors = ("BatchNormalization",)

    def match(self, bn: gs.Node, graph: FoldGraph) -> ConcatBN:
        concat = graph.producer(bn.inputs[0])
        if concat is None or concat.op != "Concat" or concat.domain not in ONNX_DOMAINS:
            raise NoFold(f"its input '{bn.inputs[0].name}' does not come from a Concat")
        sites = []
        for k, tensor in enumerate(concat.inputs):
            try:
                site = locate_linear(tensor, graph, tuple(KINDS), channel_axis_1=True)
            except NoFold as exc:
                raise NoFold(f"input {k} of {describe(concat)}: {exc.reason}; every input must fold, or none "
                             "can (the BN is one node)") from None
            sites.append(site)
        return ConcatBN(bn, concat, tuple(sites))

    def check(self, match: ConcatBN, graph: FoldGraph) -> ConcatBNPlan:
        bn, concat = match.bn, match.concat
        check_inference_only(bn, graph)
        require_same_scope(concat, graph)
        require_exclusive(concat, bn, graph)
        rank = rank_of(concat.outputs[0], graph)
        axis = int_attr(concat, "axis", 1)  # required from opset 4; Concat-1 defaults to 1
        if axis < 0:
            if rank is None:
                raise NoFold(f"{describe(concat)} joins along axis {axis} of an output of unknown rank: "
                             "that it is the channel axis 1 cannot be proven")
            axis += rank
        if axis != 1:
            raise NoFold(f"{describe(concat)} joins along axis {axis}, not along the channel axis 1 that BN normalizes")
        names = [t.name for t in concat.inputs]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated is not None:
            raise NoFold(f"{describe(concat)} reads '{repeated}' more than once: one producer cannot take two slices")
        linears = []
        for site in match.sites:
            linear = read_linear(site, graph)  # the channels land on axis 1; nothing else reads the chain
            require_exclusive(linear.tail, concat, graph)
            linears.append(linear)
        channels = sum(lin.channels for lin in linears)
        affine = read_affine(bn, graph, channels)
        folded, start = [], 0
        for linear in linears:
            end = start + linear.channels
            folded.append(fold_affine(linear, affine.s[start:end], affine.t[start:end]))
            start = end
        return ConcatBNPlan(bn, concat, tuple(folded))

    def rewrite(self, plan: ConcatBNPlan, graph: FoldGraph) -> Fold:
        bn, concat = plan.bn, plan.concat
        names = [f.linear.node.name for f in plan.folded]
        added = write_all(plan.folded, graph)
        y = graph.take_output(concat, bn)  # y keeps its name, dtype and shape
        ops = ",".join(f.linear.node.op for f in plan.folded)
        return Fold(self.name, bn.name, bn.op, ",".join(names), ops, output=y.name, added=tuple(added))
