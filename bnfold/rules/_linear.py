"""Linear ops seen from their channels: where the weight keeps them, where the bias goes.

A per-channel affine map ``y = s * x + t`` (a BatchNormalization, or Mul/Add/Sub/Div by
per-channel constants) right after a linear op folds into it. What differs between linear ops is
only which weight axis carries the output channels and how the bias is stored; a ``LinearKind``
says that for one op type, and every "affine after linear" rule works through it:

- Conv: W ``[M, C/g, k...]``, channels on axis 0, bias input 2 ``[M]``.
- ConvTranspose: W ``[C, M/g, k...]``: channel ``m`` of group ``j`` is ``W[j*C/g:(j+1)*C/g, m - j*M/g]``,
  so the scale runs along axis 1 within each group; bias input 2 ``[M]``.
- Gemm: ``y = alpha * A' B' + beta * C``; channels on axis 1 of B (axis 0 with transB=1); the
  folded bias is ``s * beta * C + t`` with beta set to 1 (C broadcast as scalar, [N], [1, N], [M, N]).
- MatMul with a constant 2-D weight ``[K, N]`` (channels on axis 1), optionally followed by an Add
  of a per-channel constant (the bias); an Add is created when there is none.

An affine map right BEFORE a linear op, on its input channels, folds too (bn-linear,
bn-layout-linear); an ``InputSide`` says where Conv, Gemm and MatMul read their input channels
and does that fold (``bnfold.foldmath`` has the math). Everything a rule knows about one linear op
type is in these two classes. ``_site.py`` finds the linear op behind a tensor and checks the
path from it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from ..attributes import float_attr, int_attr, ints_attr, is_reference, str_attr
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..foldmath import (
    cast_checked,
    fold_affine_into_conv_input,
    fold_affine_into_gemm_input,
    fold_affine_into_matmul_input,
    narrow,
    scale_along_axis,
    scale_cast_checked,
)
from ..graph import FoldGraph
from ._rank import rank_of
from .base import describe, label


@dataclass(frozen=True)
class Linear:
    """A linear node (and its bias Add / the layout ops after it) read as ``y = W x + b`` per channel.

    Frozen: a reading that learns more (its bias Add, the layout ops after it) is a new Linear
    (``dataclasses.replace``), so a plan never changes after ``check`` made it.
    """

    kind: LinearKind
    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None  # as stored: Conv [M], Gemm C (any broadcastable shape), MatMul Add operand
    channels: int
    out_rank: int | None  # rank of y, when known
    channel_axis: int  # axis of y that carries the channels (negative counts from the end)
    bias_node: gs.Node | None = None  # MatMul's Add
    via: tuple[gs.Node, ...] = ()  # layout ops after the linear op, in graph order
    #: The unrounded values of a float16/bfloat16 weight or bias an earlier fold wrote (FoldGraph.precise).
    exact_weight: np.ndarray | None = None
    exact_bias: np.ndarray | None = None

    @property
    def w(self) -> np.ndarray:
        """The weight's values for fold math: unrounded when a fold wrote them, else as stored."""
        return self.weight if self.exact_weight is None else self.exact_weight

    @property
    def b(self) -> np.ndarray | None:
        """The bias's values for fold math (see ``w``)."""
        return self.bias if self.exact_bias is None else self.exact_bias

    @property
    def tail(self) -> gs.Node:
        """The node whose first output is the value the affine op reads."""
        return self.via[-1] if self.via else self.bias_node or self.node


@dataclass(frozen=True)
class FoldedLinear:
    """New weight and bias for a Linear, already cast (and checked) to their dtypes.

    ``bias`` None: the op has no bias and keeps none (a scale-only fold). ``exact_*``: the float64
    values they were rounded from, kept for float16/bfloat16 (a later fold of them starts there).
    """

    linear: Linear
    weight: np.ndarray
    bias: np.ndarray | None
    exact_weight: np.ndarray | None = None
    exact_bias: np.ndarray | None = None


# -- the output side: an affine map after the linear op ----------------------------------------------


class LinearKind(ABC):
    """How one linear op type stores its output channels; see the module docstring."""

    op: ClassVar[str]

    @abstractmethod
    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        """The node's constant weight and bias; NoFold when they are not constants of the right form."""

    @abstractmethod
    def channels(self, node: gs.Node, weight: np.ndarray) -> int:
        """How many output channels ``node`` has with a weight of ``weight``'s shape."""

    @abstractmethod
    def output_axes(self, node: gs.Node, weight: np.ndarray, graph: FoldGraph) -> tuple[int | None, int]:
        """The rank of ``node``'s output (None when unknown) and its axis that carries the channels
        (negative: from the end), with a weight of ``weight``'s shape."""

    def _linear(self, node: gs.Node, weight: np.ndarray, bias: np.ndarray | None, graph: FoldGraph) -> Linear:
        """``node`` read with the constant ``weight`` and ``bias`` (input 2), and the unrounded values
        of either an earlier fold wrote."""
        out_rank, axis = self.output_axes(node, weight, graph)
        return Linear(self, node, weight, bias, self.channels(node, weight), out_rank, axis,
                      exact_weight=graph.precise(node.inputs[1]),
                      exact_bias=None if bias is None else graph.precise(node.inputs[2]))

    @abstractmethod
    def scale_weight(self, linear: Linear, s: np.ndarray) -> np.ndarray:
        """``W`` with output channel ``c`` multiplied by ``s[c]``, in float64."""

    def weight_axis(self, linear: Linear) -> int | None:
        """The weight axis that holds the output channels, when scaling is along one axis (None: see scale_weight)."""
        return None

    def scaled_weight(self, linear: Linear, s: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``scale_weight`` cast to the weight's dtype and checked (``foldmath.cast_checked``), and
        the float64 values it was rounded from when the dtype is narrow (float16, bfloat16)."""
        axis = self.weight_axis(linear)
        if axis is None or narrow(linear.weight.dtype) or linear.exact_weight is not None:
            exact = self.scale_weight(linear, s)
            cast = cast_checked(exact, linear.weight.dtype, what, original=linear.weight)
            return cast, exact if narrow(linear.weight.dtype) else None
        return scale_cast_checked(linear.weight, s, axis, what), None

    @abstractmethod
    def folded_bias(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The bias after folding ``y -> s * y + t``, in float64, in the op's storage layout."""

    @abstractmethod
    def write(self, folded: FoldedLinear, graph: FoldGraph) -> gs.Node:
        """Put the new weight and bias in place; returns the node whose first output carries y."""

    def after_new_bias(self, node: gs.Node, graph: FoldGraph) -> None:
        """What ``node`` needs once a folded bias is written (by ``write`` or a quantized fold): nothing
        by default (Gemm: its beta was folded into the new C)."""


def _weight_and_bias(node: gs.Node, graph: FoldGraph, bias_index: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        weight = graph.constant(node.inputs[1])
        has_bias = len(node.inputs) > bias_index and node.inputs[bias_index].name
        bias = graph.constant(node.inputs[bias_index]) if has_bias else None
    except NoFold as exc:
        raise NoFold(f"{describe(node)} has a non-constant weight or bias: {exc.reason}") from None
    return weight, bias


def _replace_weight(folded: FoldedLinear, graph: FoldGraph) -> gs.Node:
    node = folded.linear.node
    graph.replace_input(node, 1, graph.replacement_constant(node.inputs[1], folded.weight,
                                                            f"{label(node)}.weight_folded", folded.exact_weight))
    return node


def _replace_weight_and_bias(folded: FoldedLinear, graph: FoldGraph, bias_index: int = 2) -> gs.Node:
    node = _replace_weight(folded, graph)
    if folded.bias is None:
        return node
    name = f"{label(node)}.bias_folded"
    if len(node.inputs) > bias_index and node.inputs[bias_index].name:
        new_bias = graph.replacement_constant(node.inputs[bias_index], folded.bias, name, folded.exact_bias)
    else:
        new_bias = graph.new_constant(name, folded.bias, folded.exact_bias)
    graph.replace_input(node, bias_index, new_bias)
    return node


class ConvKind(LinearKind):
    op = "Conv"

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        weight, bias = _weight_and_bias(node, graph)
        if weight.ndim < 3:
            raise NoFold(f"{describe(node)} weight has rank {weight.ndim}; a {self.op} weight has rank >= 3")
        return self._linear(node, weight, bias, graph)

    def channels(self, node: gs.Node, weight: np.ndarray) -> int:
        return weight.shape[0]

    def output_axes(self, node: gs.Node, weight: np.ndarray, graph: FoldGraph) -> tuple[int | None, int]:
        return weight.ndim, 1  # [N, M, spatial...]: the weight's rank

    def weight_axis(self, linear: Linear) -> int | None:
        return 0

    def scale_weight(self, linear: Linear, s: np.ndarray) -> np.ndarray:
        return scale_along_axis(linear.w, s, 0)

    def folded_bias(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        b = 0.0 if linear.bias is None else np.asarray(linear.b, dtype=np.float64).reshape(s.shape)
        return b * s + t

    def write(self, folded: FoldedLinear, graph: FoldGraph) -> gs.Node:
        return _replace_weight_and_bias(folded, graph)


class ConvTransposeKind(ConvKind):
    op = "ConvTranspose"

    def weight_axis(self, linear: Linear) -> int | None:
        return None  # output channels are split between axes 0 and 1 by group: see scale_weight

    @staticmethod
    def group(node: gs.Node) -> int:
        return int_attr(node, "group", 1)

    def channels(self, node: gs.Node, weight: np.ndarray) -> int:
        return weight.shape[1] * self.group(node)

    def scale_weight(self, linear: Linear, s: np.ndarray) -> np.ndarray:
        w = np.asarray(linear.w, dtype=np.float64)
        g = self.group(linear.node)
        if w.shape[0] % g:
            raise NoFold(f"{describe(linear.node)} weight has {w.shape[0]} input channels, not divisible by group {g}")
        per_group = w.reshape(g, w.shape[0] // g, *w.shape[1:])
        scale = s.reshape(g, 1, w.shape[1], *([1] * (w.ndim - 2)))
        return (per_group * scale).reshape(w.shape)


class GemmKind(LinearKind):
    op = "Gemm"

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        weight, bias = _weight_and_bias(node, graph)
        if weight.ndim != 2:
            raise NoFold(f"{describe(node)} B has rank {weight.ndim}, expected 2")
        return self._linear(node, weight, bias, graph)

    @staticmethod
    def _axis(node: gs.Node) -> int:
        return 0 if int_attr(node, "transB", 0) else 1

    def channels(self, node: gs.Node, weight: np.ndarray) -> int:
        return weight.shape[self._axis(node)]

    def output_axes(self, node: gs.Node, weight: np.ndarray, graph: FoldGraph) -> tuple[int | None, int]:
        return 2, 1

    def weight_axis(self, linear: Linear) -> int | None:
        return self._axis(linear.node)

    def scale_weight(self, linear: Linear, s: np.ndarray) -> np.ndarray:
        return scale_along_axis(linear.w, s, self._axis(linear.node))

    def folded_bias(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        if linear.bias is None:
            return t.copy()
        beta = float_attr(linear.node, "beta", 1.0)
        c = np.asarray(linear.b, dtype=np.float64)
        if c.ndim == 2 and c.shape[1] not in (1, s.size) or c.ndim > 2:
            raise NoFold(f"{describe(linear.node)} C has shape {list(c.shape)}, which does not broadcast to [M, {s.size}]")
        return s * (beta * c) + t  # broadcasting keeps [M, N] and turns scalar, [N], [1, N], [M, 1] into rows

    def write(self, folded: FoldedLinear, graph: FoldGraph) -> gs.Node:
        node = _replace_weight_and_bias(folded, graph)
        if folded.bias is not None:
            self.after_new_bias(node, graph)
        return node

    def after_new_bias(self, node: gs.Node, graph: FoldGraph) -> None:
        # beta is folded into the new C. A reference to the function's beta means there was no C
        # (folded_bias reads beta otherwise, and refuses a reference): the new C needs beta = 1.
        if is_reference(node, "beta") or float_attr(node, "beta", 1.0) != 1.0:
            graph.set_attr(node, "beta", 1.0)


class MatMulKind(LinearKind):
    op = "MatMul"

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        try:
            weight = graph.constant(node.inputs[1])
        except NoFold as exc:
            raise NoFold(f"{describe(node)} has a non-constant weight: {exc.reason}") from None
        if weight.ndim != 2:
            raise NoFold(f"{describe(node)} weight has rank {weight.ndim}; only a 2-D weight [K, N] folds")
        return self._linear(node, weight, None, graph)

    def channels(self, node: gs.Node, weight: np.ndarray) -> int:
        return weight.shape[1]

    def output_axes(self, node: gs.Node, weight: np.ndarray, graph: FoldGraph) -> tuple[int | None, int]:
        # [K] @ [K, N] is [N]: a 1-D activation gives a 1-D product; otherwise the rank of A.
        return rank_of(node.inputs[0], graph), -1

    def weight_axis(self, linear: Linear) -> int | None:
        return 1

    def scale_weight(self, linear: Linear, s: np.ndarray) -> np.ndarray:
        return scale_along_axis(linear.w, s, 1)

    def folded_bias(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        b = linear.b  # None only when bias is
        if linear.bias is None or b is None:
            return t.copy()
        return keep_bias_layout(matmul_bias_vector(b, linear.channels) * s + t, linear.bias)

    def write(self, folded: FoldedLinear, graph: FoldGraph) -> gs.Node:
        linear = folded.linear
        node = _replace_weight(folded, graph)
        if folded.bias is None:
            return node
        name = label(node)
        add = linear.bias_node
        if add is not None:
            index = 0 if add.inputs[1] is node.outputs[0] else 1
            graph.replace_input(add, index, graph.replacement_constant(add.inputs[index], folded.bias,
                                                                       f"{name}.bias_folded", folded.exact_bias))
            return add
        return new_bias_add(node, folded.bias, folded.exact_bias, graph)


def new_bias_add(matmul: gs.Node, bias: np.ndarray, exact: np.ndarray | None, graph: FoldGraph) -> gs.Node:
    """A new Add of the constant ``bias`` after ``matmul``, producing what ``matmul`` produced."""
    name = label(matmul)
    constant = graph.new_constant(f"{name}.bias_folded", bias, exact)
    return graph.insert_after(matmul, "Add", [constant], name=f"{name}.bias_add", output=f"{name}.product")


KINDS: dict[str, LinearKind] = {k.op: k for k in (ConvKind(), ConvTransposeKind(), GemmKind(), MatMulKind())}


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor:
    """The input of the two-input ``node`` that is not ``tensor``."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is tensor else a


def matmul_bias_add(matmul: gs.Node, graph: FoldGraph) -> gs.Node | None:
    """The Add that alone reads ``matmul``'s output and adds a constant to it (its bias), if any."""
    out = matmul.outputs[0]
    readers = graph.consumers(out)
    if len(readers) != 1 or graph.is_graph_output(out):
        return None
    add = readers[0]
    if add.op != "Add" or add.domain not in ONNX_DOMAINS or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return None
    try:
        graph.constant(other_input(add, out))
    except NoFold:
        return None
    return add


def attach_bias(linear: Linear, add: gs.Node, bias: np.ndarray, exact: np.ndarray | None) -> Linear:
    """``linear`` with ``add`` (adding the constant ``bias``; ``exact``: its unrounded values) read as
    its bias. The Add stays in the graph with a bias of the same shape, so a bias with more
    dimensions than the product (``[1, N]`` after a 1-D ``[N]``) keeps raising the rank: the tail's
    rank is the larger one."""
    out_rank = linear.out_rank if linear.out_rank is None else max(linear.out_rank, np.ndim(bias))
    return dataclasses.replace(linear, bias_node=add, bias=bias, exact_bias=exact, out_rank=out_rank)


def matmul_bias_vector(bias: np.ndarray, channels: int) -> np.ndarray:
    """A MatMul bias as a float64 vector over the output channels (the product's last axis).

    Every axis but the last must be 1 and the last 1 or ``channels``: then the bias is the same
    for every row of the product. It may have more dimensions than the product (the Add keeps
    them, see ``keep_bias_layout``). NoFold otherwise.
    """
    b = np.asarray(bias)
    shape = list(b.shape)
    if b.ndim and (shape[-1] not in (1, channels) or any(d != 1 for d in shape[:-1])):
        raise NoFold(f"bias of shape {shape} is not per output channel (expected {channels} entries on the last axis)")
    return np.broadcast_to(b.astype(np.float64).reshape(-1), (channels,)).copy()


def keep_bias_layout(vector: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``vector`` (one value per channel) shaped like the stored ``bias``, its last axis widened to
    the channels: the Add broadcasts the new bias exactly as it broadcast the old one."""
    b = np.asarray(bias)
    return vector.reshape((1,) * (b.ndim - 1) + (vector.size,)) if b.ndim else vector


def fold_affine(linear: Linear, s: np.ndarray, t: np.ndarray) -> FoldedLinear:
    """Fold ``y -> s * y + t`` (float64, per channel) into ``linear``: new weight and bias, cast and checked.

    ``W' = s * W`` along the output channels (``LinearKind.scaled_weight``), ``b' = s * b + t`` in
    the op's bias layout (``LinearKind.folded_bias``; a missing bias is ``t``).
    """
    if s.size != linear.channels:
        raise NoFold(f"{s.size} scale values for the {linear.channels} output channels of {describe(linear.node)}")
    weight, exact_weight = linear.kind.scaled_weight(linear, s, f"weight of {describe(linear.node)}")
    bias_dtype = linear.weight.dtype if linear.bias is None else linear.bias.dtype
    bias64 = linear.kind.folded_bias(linear, s, t)
    bias = cast_checked(bias64, bias_dtype, f"bias of {describe(linear.node)}")
    return FoldedLinear(linear, weight, bias, exact_weight, bias64 if narrow(bias_dtype) else None)


# -- the input side: an affine map before the linear op ----------------------------------------------


class InputSide(ABC):
    """How one linear op type reads its input channels: where they sit in the weight, where the shift goes."""

    op: ClassVar[str]

    def check_structure(self, node: gs.Node, graph: FoldGraph) -> None:
        """Attribute and shape preconditions that do not need the constants (default: none)."""

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        """The node's constant weight and bias (see ``LinearKind.read``); NoFold when they are not constants."""
        return KINDS[self.op].read(node, graph)

    @abstractmethod
    def in_channels(self, linear: Linear) -> int:
        """How many input channels the op reads (must equal BN's channel count)."""

    @abstractmethod
    def data_axis(self, node: gs.Node) -> tuple[int, str]:
        """The axis of the data input (input 0) ``node`` reads its input channels from (negative:
        from the end), and that axis in words for messages."""

    def check_data_rank(self, linear: Linear, rank: int, where: str) -> None:
        """NoFold when a data input of rank ``rank`` is not one ``linear`` reads (``where`` starts the message)."""

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

    def data_axis(self, node: gs.Node) -> tuple[int, str]:
        return 1, "axis 1"

    def check_data_rank(self, linear: Linear, rank: int, where: str) -> None:
        if rank != linear.weight.ndim:
            raise NoFold(f"{where}, but its weight has rank {linear.weight.ndim}")

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

    def data_axis(self, node: gs.Node) -> tuple[int, str]:
        trans_a = int_attr(node, "transA", 0)
        return (0 if trans_a else 1), f"axis {0 if trans_a else 1} (transA={trans_a})"

    def check_data_rank(self, linear: Linear, rank: int, where: str) -> None:
        if rank != 2:
            raise NoFold(f"{where}; Gemm's A has rank 2")

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
        linear = super().read(node, graph)
        add = matmul_bias_add(node, graph)
        if add is None:
            return linear
        operand = other_input(add, node.outputs[0])
        bias = graph.constant(operand)
        with_add = attach_bias(linear, add, bias, graph.precise(operand))
        try:
            matmul_bias_vector(bias, with_add.channels)
        except NoFold:
            return linear  # not a per-channel bias: leave that Add alone, the shift gets an Add of its own
        return with_add

    def in_channels(self, linear: Linear) -> int:
        return linear.weight.shape[0]

    def data_axis(self, node: gs.Node) -> tuple[int, str]:
        return -1, "the last axis"  # the last axis of A, whatever its rank

    def fold(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight, shift = fold_affine_into_matmul_input(linear.w, s, t)
        b = linear.b  # None only when bias is
        if linear.bias is None or b is None:
            return weight, shift
        return weight, keep_bias_layout(matmul_bias_vector(b, linear.channels) + shift, linear.bias)


SIDES: dict[str, InputSide] = {k.op: k for k in (ConvInput(), GemmInput(), MatMulInput())}


def fold_input(linear: Linear, s: np.ndarray, t: np.ndarray) -> FoldedLinear:
    """``linear`` reading ``x`` instead of ``s * x + t`` along its input channels, cast and checked."""
    side = SIDES[linear.node.op]
    weight64, bias64 = side.fold(linear, s, t)
    what = describe(linear.node)
    weight = cast_checked(weight64, linear.weight.dtype, f"weight of {what}", original=linear.weight)
    bias = cast_checked(bias64, side.bias_dtype(linear), f"bias of {what}")
    return FoldedLinear(linear, weight, bias, weight64 if narrow(weight.dtype) else None,
                        bias64 if narrow(bias.dtype) else None)


def write_all(folded: Sequence[FoldedLinear], graph: FoldGraph) -> list[str]:
    """Write each folded linear op (``LinearKind.write``); the outputs of the bias Adds that had to
    be created (a MatMul without one), for what the fold saves (``Fold.added``)."""
    added = []
    for f in folded:
        linear = f.linear
        y = linear.node.outputs[0].name
        tail = linear.kind.write(f, graph)
        if tail is not linear.node and tail is not linear.bias_node:
            added.append(y)  # a new bias Add produces the MatMul's old output
    return added

