"""BatchNormalization → layout ops → linear op(s): fold the BN into the ops behind the layout ops.

Layout ops (Transpose, Reshape, Flatten, Squeeze, Unsqueeze) move elements without changing them,
so when they carry BN's channel axis (axis 1 of its input) to one axis ``b`` of their output, the
per-channel affine map moves through them unchanged: ``layout(s * x + t) = s' * layout(x) + t'``
with ``s``, ``t`` laid along ``b`` (``_layout_axes.py`` proves where the axis goes, or that it is
lost). A BN over ``[B, C, T]`` → Transpose(0, 2, 1) → MatMul ``[B, T, C] @ W`` then folds as
bn-linear folds a BN right before a MatMul (``W' = diag(s) W``, the shift ``t W`` into the bias),
and the layout ops stay, reading BN's input.

The other direction, linear op → layout ops → BN, is folded by conv-bn, convtranspose-bn, gemm-bn
and matmul-bn themselves (``linear_bn.py``): ``_site.locate_linear`` walks back through the layout
ops and ``_site.read_linear`` proves that they bring the channels to axis 1.

Preconditions (each refusal names the node and the reason):
- every node reading BN's output, or a layout op's output after it, is a layout op (data input)
  or a Conv, Gemm or MatMul reading it as its data input (input 0), all in this scope; at least
  one layout op is on the way (BNs read directly are bn-linear's);
- BN is an inference op with constant statistics; neither its output nor a layout op's output is
  a graph output (they change: the layout ops then read BN's input);
- the shape is known well enough to prove where the channels go (declared shapes, constant
  Reshape shapes and axes; the rank of BN's input at least), and at each reader they land on the
  axis it reads its input channels from: axis 1 of a Conv input of the weight's rank, axis 1 of
  Gemm's A (axis 0 with transA=1), the last axis of MatMul's A (any rank);
- Conv: nothing is padded (a padded border would see the shift where the original saw zeros);
- the weights and biases are constants, each op reads as many input channels as BN has, and
  the folded ones are finite and keep their precision in their dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph
from ._batchnorm import check_inference_only, read_affine
from ._layout import MAX_LAYOUT_CHAIN, channel_shape, follow_layout, is_layout_op
from ._layout_axes import Shape
from ._linear import SIDES, FoldedLinear, Linear, fold_input, write_all
from ._rank import rank_of
from .base import Fold, Rule, describe, distinct, label


@dataclass(frozen=True)
class Reader:
    """A Conv, Gemm or MatMul reading BN's output through the layout ops ``path`` (BN's side first)."""

    node: gs.Node
    path: tuple[gs.Node, ...]


@dataclass(frozen=True)
class BNLayoutLinear:
    bn: gs.Node
    readers: tuple[Reader, ...]
    layout: tuple[gs.Node, ...]  # every layout op between the BN and the readers


@dataclass(frozen=True)
class BNLayoutLinearPlan:
    bn: gs.Node
    folded: tuple[FoldedLinear, ...]
    first: tuple[gs.Node, ...]  # the nodes that read BN's output (they will read its input)


def _check_reader(reader: Reader, shape: Shape, axis: int, linear: Linear, channels: int) -> None:
    """The channels reach ``reader`` on ``axis`` of an input of ``shape``: the axis it reads them from."""
    node, rank, side = reader.node, len(shape), SIDES[reader.node.op]
    where = f"{describe(node)} reads the {channels} channels on axis {axis} of a rank-{rank} input"
    side.check_data_rank(linear, rank, where)
    wanted, words = side.data_axis(node)
    if axis != wanted % rank:
        raise NoFold(f"{where}, but it reads its input channels on {words}")
    count = side.in_channels(linear)
    if count != channels:
        raise NoFold(f"{describe(node)} reads {count} input channels, BN has {channels}")


class BatchNormLayoutLinearRule(Rule):
    """BN → layout ops → Conv / Gemm / MatMul; see the module docstring."""

    name = "bn-layout-linear"
    anchors = ("BatchNormalization",)

    def match(self, bn: gs.Node, graph: FoldGraph) -> BNLayoutLinear:
        readers: list[Reader] = []
        layout: list[gs.Node] = []
        queue: list[tuple[gs.Tensor, tuple[gs.Node, ...]]] = [(bn.outputs[0], ())]
        for tensor, path in queue:  # grows while it is walked: breadth first over the layout ops
            for node in distinct(graph.consumers(tensor)):
                if is_layout_op(node) and node.inputs[0] is tensor:
                    if len(path) == MAX_LAYOUT_CHAIN:
                        raise NoFold(f"more than {MAX_LAYOUT_CHAIN} layout ops in a row follow it")
                    layout.append(node)
                    queue.append((node.outputs[0], path + (node,)))
                elif node.op in SIDES and node.domain in ONNX_DOMAINS and node.inputs[0] is tensor:
                    readers.append(Reader(node, path))
                else:
                    raise NoFold(f"'{tensor.name}' also feeds {describe(node)}, which is neither a layout op nor a "
                                 "Conv, Gemm or MatMul reading it as its data input: it needs BN's values")
        if not layout:
            raise NoFold("no layout op (Transpose, Reshape, Flatten, Squeeze, Unsqueeze) reads its output")
        if not readers:
            raise NoFold("the layout ops after it lead to no Conv, Gemm or MatMul")
        return BNLayoutLinear(bn, tuple(readers), tuple(layout))

    def check(self, match: BNLayoutLinear, graph: FoldGraph) -> BNLayoutLinearPlan:
        bn = match.bn
        check_inference_only(bn, graph)
        for tensor in (bn.outputs[0], *(n.outputs[0] for n in match.layout)):
            if graph.is_graph_output(tensor):
                raise NoFold(f"'{tensor.name}' is a graph output, which must keep BN's values")
        for node in (*match.layout, *(r.node for r in match.readers)):
            if not graph.owns(node):
                raise NoFold(f"{describe(node)} is in another graph scope")
        for reader in match.readers:
            positions = [i for i, t in enumerate(reader.node.inputs) if t is reader.node.inputs[0]]
            if positions != [0]:
                raise NoFold(f"{describe(reader.node)} reads '{reader.node.inputs[0].name}' also as input "
                             f"{positions[1]}: it folds only into a data input, never into a weight or bias")
        try:
            gamma = np.asarray(graph.constant(bn.inputs[1]))
        except NoFold as exc:
            raise NoFold(f"its scale is not a constant: {exc.reason}") from None
        channels = int(gamma.size)
        start, _ = channel_shape(bn.inputs[0], rank_of(bn.inputs[0], graph), 1, channels)
        linears = []
        for reader in match.readers:  # where the channels land first, then the reader's constants and padding
            shape, axis, _ = follow_layout(reader.path, start, 1, "BN's input", graph)
            side = SIDES[reader.node.op]
            linear = side.read(reader.node, graph)
            _check_reader(reader, shape, axis, linear, channels)
            if reader.node.op == "Conv":
                side.check_structure(reader.node, graph)  # padding; Gemm's transA and MatMul's rank are axes here
            linears.append(linear)
        affine = read_affine(bn, graph, channels)
        out = bn.outputs[0]
        first = [r.node for r in match.readers if not r.path] + [n for n in match.layout if n.inputs[0] is out]
        return BNLayoutLinearPlan(bn, tuple(fold_input(lin, affine.s, affine.t) for lin in linears), tuple(first))

    def rewrite(self, plan: BNLayoutLinearPlan, graph: FoldGraph) -> Fold:
        bn = plan.bn
        x = bn.inputs[0]
        names = [label(f.linear.node) for f in plan.folded]  # before MatMul outputs are renamed
        added = write_all(plan.folded, graph)
        for node in plan.first:
            graph.replace_input(node, 0, x)
        if not graph.is_removed(bn):  # replacing its last reader already released it
            graph.remove_node(bn)
        ops = ",".join(f.linear.node.op for f in plan.folded)
        return Fold(self.name, bn.name, bn.op, ",".join(names), ops, output=x.name, added=tuple(added))
