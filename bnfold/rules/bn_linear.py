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
fold it into that op instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from ..attributes import float_attr, int_attr, ints_attr, str_attr
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..foldmath import (
    cast_checked,
    narrow,
    fold_affine_into_conv_input,
    fold_affine_into_gemm_input,
    fold_affine_into_matmul_input,
)
from ..graph import FoldGraph
from .base import Fold, Rule, describe
from .batchnorm import check_inference_only, read_affine
from .linear import KINDS, FoldedLinear, Linear, keep_bias_layout, matmul_bias_vector, rank_of, with_bias_add


class InputSide(ABC):
    """How one linear op type reads its input channels: where they sit in the weight, where the shift goes."""

    op: ClassVar[str]

    def check_structure(self, node: gs.Node, graph: FoldGraph) -> None:
        """Attribute and shape preconditions that do not need the constants (default: none)."""

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        """The node's constant weight and bias (see ``linear.py``); NoFold when they are not constants."""
        return KINDS[self.op].read(node, graph)

    @abstractmethod
    def in_channels(self, linear: Linear) -> int:
        """How many input channels the op reads (must equal BN's channel count)."""

    @abstractmethod
    def fold(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float64 ``(weight, bias)`` of the op reading ``x`` instead of ``s * x + t``, in its storage layout."""

    def bias_dtype(self, linear: Linear) -> np.dtype:
        return linear.weight.dtype if linear.bias is None else linear.bias.dtype


class ConvInput(InputSide):
    op = "Conv"

    @staticmethod
    def group(node: gs.Node) -> int:
        return int_attr(node, "group", 1)

    @staticmethod
    def auto_pad(node: gs.Node) -> str:
        return str_attr(node, "auto_pad", "NOTSET")

    def check_structure(self, node: gs.Node, graph: FoldGraph) -> None:
        auto_pad = self.auto_pad(node)
        if auto_pad in ("NOTSET", "VALID"):
            pads = ints_attr(node, "pads") if auto_pad == "NOTSET" else []
            if any(pads):
                raise NoFold(
                    f"padding {pads} on {describe(node)} makes a preceding BN unfoldable: the padded border "
                    "would see BN's shift where the original saw zeros"
                )
        elif auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            raise NoFold(f"{describe(node)} has an unknown auto_pad '{auto_pad}'")

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        linear = super().read(node, graph)
        w = linear.weight
        g = self.group(node)
        if g < 1 or w.shape[0] % g:
            raise NoFold(f"{describe(node)} has {w.shape[0]} output channels, not divisible by group {g}")
        auto_pad = self.auto_pad(node)
        if auto_pad.startswith("SAME") and any(k != 1 for k in w.shape[2:]):
            # SAME pads max(0, (ceil(n / stride) - 1) * stride + (k - 1) * dilation + 1 - n) per axis:
            # zero for every input size n only when k = 1.
            raise NoFold(
                f"padding auto_pad={auto_pad} on {describe(node)} (kernel {list(w.shape[2:])}) makes a preceding "
                "BN unfoldable: the padded border would see BN's shift where the original saw zeros"
            )
        if linear.bias is not None and linear.bias.size != w.shape[0]:
            raise NoFold(f"{describe(node)} bias has shape {list(linear.bias.shape)}, expected [{w.shape[0]}]")
        return linear

    def in_channels(self, linear: Linear) -> int:
        return linear.weight.shape[1] * self.group(linear.node)

    def fold(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fold_affine_into_conv_input(linear.w, linear.b, s, t, self.group(linear.node))


class GemmInput(InputSide):
    op = "Gemm"

    @staticmethod
    def trans_b(node: gs.Node) -> bool:
        return bool(int_attr(node, "transB", 0))

    def check_structure(self, node: gs.Node, graph: FoldGraph) -> None:
        if int_attr(node, "transA", 0):
            raise NoFold(
                f"{describe(node)} has transA=1: BN's axis 1 is then A's M axis (rows of the output), "
                "not the K axis the weight reads"
            )

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        linear = super().read(node, graph)
        n = linear.weight.shape[0 if self.trans_b(node) else 1]
        c = linear.bias
        if c is not None and (c.ndim > 2 or c.ndim >= 1 and c.shape[-1] not in (1, n)):
            raise NoFold(f"{describe(node)} C has shape {list(c.shape)}, which does not broadcast to [M, {n}]")
        return linear

    def in_channels(self, linear: Linear) -> int:
        return linear.weight.shape[1 if self.trans_b(linear.node) else 0]

    def fold(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        node = linear.node
        # GemmKind.write sets beta to 1: the new C already carries beta (read only when there is a C).
        beta = 1.0 if linear.bias is None else float_attr(node, "beta", 1.0)
        return fold_affine_into_gemm_input(linear.w, linear.b, s, t, float_attr(node, "alpha", 1.0),
                                           beta, self.trans_b(node))


class MatMulInput(InputSide):
    op = "MatMul"

    def check_structure(self, node: gs.Node, graph: FoldGraph) -> None:
        rank = rank_of(node.inputs[0], graph)
        if rank != 2:
            known = "of unknown rank" if rank is None else f"of rank {rank}"
            raise NoFold(
                f"{describe(node)} reads an activation {known}: BN normalizes axis 1 and the MatMul "
                "weight reads the last axis, which coincide only for a 2-D activation [N, K]"
            )

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        linear = with_bias_add(super().read(node, graph), graph)
        if linear.bias_node is not None:
            try:
                matmul_bias_vector(linear.bias, linear.channels)
            except NoFold:
                # Not a per-channel bias: leave that Add alone, the shift gets an Add of its own.
                linear.bias_node, linear.bias = None, None
        return linear

    def in_channels(self, linear: Linear) -> int:
        return linear.weight.shape[0]

    def fold(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight, shift = fold_affine_into_matmul_input(linear.w, s, t)
        if linear.bias is None:
            return weight, shift
        return weight, keep_bias_layout(matmul_bias_vector(linear.b, linear.channels) + shift, linear.bias)


SIDES: dict[str, InputSide] = {k.op: k for k in (ConvInput(), GemmInput(), MatMulInput())}
_READERS = "Conv, Gemm or MatMul"


@dataclass(frozen=True)
class BNLinear:
    bn: gs.Node
    consumers: tuple[gs.Node, ...]


@dataclass(frozen=True)
class BNLinearPlan:
    bn: gs.Node
    folded: tuple[FoldedLinear, ...]


def _unique(nodes: list[gs.Node]) -> tuple[gs.Node, ...]:
    seen: dict[int, gs.Node] = {}
    for node in nodes:
        seen.setdefault(id(node), node)
    return tuple(seen.values())


def _label(node: gs.Node) -> str:
    return node.name or node.outputs[0].name


class BatchNormLinearRule(Rule):
    """BN whose output feeds only Conv, Gemm or MatMul data inputs; see the module docstring."""

    name = "bn-linear"
    anchors = ("BatchNormalization",)

    def match(self, bn: gs.Node, graph: FoldGraph) -> BNLinear:
        out = bn.outputs[0]
        consumers = _unique(graph.consumers(out))
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
        return BNLinearPlan(bn, tuple(self._fold(linear, affine.s, affine.t) for linear in linears))

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

    @staticmethod
    def _fold(linear: Linear, s: np.ndarray, t: np.ndarray) -> FoldedLinear:
        side = SIDES[linear.node.op]
        weight64, bias64 = side.fold(linear, s, t)
        what = describe(linear.node)
        weight = cast_checked(weight64, linear.weight.dtype, f"weight of {what}", original=linear.weight)
        bias = cast_checked(bias64, side.bias_dtype(linear), f"bias of {what}")
        return FoldedLinear(linear, weight, bias, weight64 if narrow(weight.dtype) else None,
                            bias64 if narrow(bias.dtype) else None)

    def rewrite(self, plan: BNLinearPlan, graph: FoldGraph) -> Fold:
        bn = plan.bn
        x = bn.inputs[0]
        names = [_label(f.linear.node) for f in plan.folded]  # before MatMul outputs are renamed
        added = []
        for folded in plan.folded:
            linear = folded.linear
            y = linear.node.outputs[0].name
            tail = linear.kind.write(folded, graph)
            if tail is not linear.node and tail is not linear.bias_node:
                added.append(y)  # a new bias Add produces the MatMul's old output
            graph.replace_input(linear.node, 0, x)
        if not graph.is_removed(bn):  # replacing its last reader already released it
            graph.remove_node(bn)
        ops = ",".join(f.linear.node.op for f in plan.folded)
        return Fold(self.name, bn.name, bn.op, ",".join(names), ops, output=x.name, added=tuple(added))
