"""BatchNormalization → linear op(s): fold the BN into every op that reads its output.

BN(x) = s * x + t per channel on axis 1 of x. A linear op reading it sees ``L(s * x + t)``; the
scale goes into the weight along its INPUT-channel axis and the shift becomes part of the bias:

- Conv (W ``[M, C/g, k...]``): ``W'[m, i, k] = W[m, i, k] * s[c]`` with ``c = (m // (M/g)) * (C/g) + i``
  the input channel the element reads (grouped and depthwise convs), and
  ``b'[m] = b[m] + sum_{i,k} W[m, i, k] * t[c]``. Any strides and dilations.
- Gemm (transA = 0, A ``[M, K]``, BN over K): B scaled along its K axis (0, or 1 with transB),
  ``C' = beta * C + alpha * t·B'`` and beta set to 1 (C is created when absent).
- MatMul (2-D activation ``[N, K]``, constant W ``[K, N]``): ``W' = diag(s) W``; the shift ``t·W``
  is added to the bias Add that follows the MatMul (when its other operand is a per-channel
  constant), else a new Add produces the MatMul's old output.

Preconditions (each refusal names the node and the reason):
- BN is an inference op with constant statistics, and its output is not a graph output;
- EVERY reader of BN's output is a Conv, Gemm or MatMul of this scope that reads it as its data
  input (input 0) and nowhere else: one other reader (a Relu, a Conv reading it as its weight,
  a node in a subgraph) keeps the BN, since it needs BN's values;
- Conv: nothing is padded (all pads 0; auto_pad NOTSET or VALID, or SAME_* with a 1×1 kernel, which
  pads nothing): a padded border would see the shift ``t`` where the original saw zeros;
- Gemm: transA = 0 (with transA = 1 BN's axis 1 is M, not K); MatMul: the activation is known
  to be 2-D (on ``[B, T, K]`` axis 1 is T, not the K axis the weight reads);
- weights and biases are constants; each op reads as many input channels as BN has;
- the folded weights and biases are finite and keep their precision in their dtype.
Shared weights are safe: a folded op whose weight another node also reads gets new tensors.

When the BN also follows a linear op, "conv-bn" and its siblings run first (DEFAULT_RULES) and
fold it into that op instead. Where each op reads its input channels: ``_linear.InputSide``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph
from ._batchnorm import check_inference_only, read_affine
from ._linear import SIDES, FoldedLinear, fold_input, write_all
from .base import Fold, Rule, describe, distinct, label

_READERS = "Conv, Gemm or MatMul"


@dataclass(frozen=True)
class BNLinear:
    bn: gs.Node
    consumers: tuple[gs.Node, ...]


@dataclass(frozen=True)
class BNLinearPlan:
    bn: gs.Node
    folded: tuple[FoldedLinear, ...]


class BatchNormLinearRule(Rule):
    """BN whose output feeds only Conv, Gemm or MatMul data inputs; see the module docstring."""

    name = "bn-linear"
    anchors = ("BatchNormalization",)

    def match(self, bn: gs.Node, graph: FoldGraph) -> BNLinear:
        out = bn.outputs[0]
        consumers = tuple(distinct(graph.consumers(out)))
        if not any(n.op in SIDES and n.domain in ONNX_DOMAINS and n.inputs and n.inputs[0] is out for n in consumers):
            raise NoFold(f"its output '{out.name}' is not the data input of a {_READERS}")
        return BNLinear(bn, consumers)

    def check(self, match: BNLinear, graph: FoldGraph) -> BNLinearPlan:
        bn, out = match.bn, match.bn.outputs[0]
        check_inference_only(bn, graph)
        if graph.is_graph_output(out):
            raise NoFold(f"its output '{out.name}' is also a graph output, which must keep BN's values")
        for node in match.consumers:  # structure of every reader first: one that is not foldable is the reason
            self._check_reader(node, out, graph)
        linears = []
        for node in match.consumers:
            side = SIDES[node.op]
            side.check_structure(node, graph)
            linears.append(side.read(node, graph))
        channels = [SIDES[lin.node.op].in_channels(lin) for lin in linears]
        for linear, count in zip(linears[1:], channels[1:]):
            if count != channels[0]:
                raise NoFold(f"{describe(linear.node)} reads {count} input channels but "
                             f"{describe(linears[0].node)} reads {channels[0]}")
        try:
            scale_shape = list(np.shape(graph.constant(bn.inputs[1])))
        except NoFold:
            scale_shape = None  # read_affine says why
        if scale_shape is not None and scale_shape != [channels[0]]:
            raise NoFold(f"its scale has shape {scale_shape} but {describe(linears[0].node)} reads "
                         f"{channels[0]} input channels")
        affine = read_affine(bn, graph, channels[0])
        return BNLinearPlan(bn, tuple(fold_input(linear, affine.s, affine.t) for linear in linears))

    @staticmethod
    def _check_reader(node: gs.Node, out: gs.Tensor, graph: FoldGraph) -> None:
        if not graph.owns(node):
            raise NoFold(f"its output '{out.name}' is also read by {describe(node)} in another graph scope")
        if node.op not in SIDES or node.domain not in ONNX_DOMAINS:
            raise NoFold(f"its output '{out.name}' also feeds {describe(node)}, which is not a {_READERS}: "
                         "it needs BN's values")
        positions = [i for i, t in enumerate(node.inputs) if t is out]
        if positions != [0]:
            where = " and ".join(f"input {i}" for i in positions)
            raise NoFold(f"its output '{out.name}' is {where} of {describe(node)}: it folds only into a data "
                         "input (input 0), never into a weight or bias")

    def rewrite(self, plan: BNLinearPlan, graph: FoldGraph) -> Fold:
        bn = plan.bn
        x = bn.inputs[0]
        names = [label(f.linear.node) for f in plan.folded]  # before MatMul outputs are renamed
        added = write_all(plan.folded, graph)
        for folded in plan.folded:
            graph.replace_input(folded.linear.node, 0, x)
        if not graph.is_removed(bn):  # replacing its last reader already released it
            graph.remove_node(bn)
        ops = ",".join(f.linear.node.op for f in plan.folded)
        return Fold(self.name, bn.name, bn.op, ",".join(names), ops, output=x.name, added=tuple(added))
