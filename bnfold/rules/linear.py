"""Linear ops seen from their output channels: where the weight keeps them, where the bias goes.

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

``locate_linear`` walks back from the tensor the affine op reads to the linear op, through its bias
Add and, for rules that normalize axis 1 (BN), a chain of layout ops (Transpose, Reshape, Flatten,
Squeeze, Unsqueeze) that must bring the channels to axis 1 (``_layout.py`` follows them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from ..attributes import float_attr, int_attr, is_reference
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..foldmath import cast_checked, narrow, scale_along_axis, scale_cast_checked
from ..graph import FoldGraph
from ._layout import MAX_LAYOUT_CHAIN, channel_shape, follow_layout, is_layout_op, linear_output_shape
from .base import describe


@dataclass
class Linear:
    """A linear node (and its bias Add / the layout ops after it) read as ``y = W x + b`` per channel."""

    kind: LinearKind
    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None  # as stored: Conv [M], Gemm C (any broadcastable shape), MatMul Add operand
    channels: int
    out_rank: int | None  # rank of y, when known
    channel_axis: int  # axis of y that carries the channels (negative counts from the end)
    bias_node: gs.Node | None = None  # MatMul's Add
    via: list[gs.Node] = field(default_factory=list)  # layout ops after the linear op, in graph order
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


class LinearKind(ABC):
    """How one linear op type stores its output channels; see the module docstring."""

    op: ClassVar[str]

    @abstractmethod
    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        """The node's constant weight and bias; NoFold when they are not constants of the right form."""

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


def with_precise(linear: Linear, graph: FoldGraph, bias_tensor: gs.Tensor | None = None) -> Linear:
    """``linear`` with the unrounded values of a weight or bias an earlier fold wrote (see ``Linear.w``)."""
    linear.exact_weight = graph.precise(linear.node.inputs[1])
    if bias_tensor is not None:
        linear.exact_bias = graph.precise(bias_tensor)
    return linear


def _weight_and_bias(node: gs.Node, graph: FoldGraph, bias_index: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        weight = graph.constant(node.inputs[1])
        has_bias = len(node.inputs) > bias_index and node.inputs[bias_index].name
        bias = graph.constant(node.inputs[bias_index]) if has_bias else None
    except NoFold as exc:
        raise NoFold(f"{describe(node)} has a non-constant weight or bias: {exc.reason}") from None
    return weight, bias


def _label(node: gs.Node) -> str:
    return node.name or node.outputs[0].name


def _replace_weight_and_bias(folded: FoldedLinear, graph: FoldGraph, bias_index: int = 2) -> gs.Node:
    node = folded.linear.node
    label = _label(node)
    graph.replace_input(node, 1, graph.replacement_constant(node.inputs[1], folded.weight, f"{label}.weight_folded",
                                                            folded.exact_weight))
    if folded.bias is None:
        return node
    if len(node.inputs) > bias_index and node.inputs[bias_index].name:
        new_bias = graph.replacement_constant(node.inputs[bias_index], folded.bias, f"{label}.bias_folded",
                                              folded.exact_bias)
    else:
        new_bias = graph.new_constant(f"{label}.bias_folded", folded.bias, folded.exact_bias)
    graph.replace_input(node, bias_index, new_bias)
    return node


class ConvKind(LinearKind):
    op = "Conv"

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        weight, bias = _weight_and_bias(node, graph)
        if weight.ndim < 3:
            raise NoFold(f"{describe(node)} weight has rank {weight.ndim}; a {self.op} weight has rank >= 3")
        linear = Linear(self, node, weight, bias, self.channels(node, weight), weight.ndim, 1)
        return with_precise(linear, graph, node.inputs[2] if bias is not None else None)

    def channels(self, node: gs.Node, weight: np.ndarray) -> int:
        return weight.shape[0]

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
    def _group(node: gs.Node) -> int:
        return int_attr(node, "group", 1)

    def channels(self, node: gs.Node, weight: np.ndarray) -> int:
        return weight.shape[1] * self._group(node)

    def scale_weight(self, linear: Linear, s: np.ndarray) -> np.ndarray:
        w = np.asarray(linear.w, dtype=np.float64)
        g = self._group(linear.node)
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
        axis = 0 if int_attr(node, "transB", 0) else 1
        return with_precise(Linear(self, node, weight, bias, weight.shape[axis], 2, 1), graph,
                            node.inputs[2] if bias is not None else None)

    def weight_axis(self, linear: Linear) -> int | None:
        return 0 if int_attr(linear.node, "transB", 0) else 1

    def scale_weight(self, linear: Linear, s: np.ndarray) -> np.ndarray:
        return scale_along_axis(linear.w, s, self.weight_axis(linear))

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
        # beta is folded into the new C. A reference to the function's beta means there was no C
        # (folded_bias reads beta otherwise, and refuses a reference): the new C needs beta = 1.
        if folded.bias is not None and (is_reference(node, "beta") or float_attr(node, "beta", 1.0) != 1.0):
            graph.set_attr(node, "beta", 1.0)
        return node


class MatMulKind(LinearKind):
    op = "MatMul"

    def read(self, node: gs.Node, graph: FoldGraph) -> Linear:
        try:
            weight = graph.constant(node.inputs[1])
        except NoFold as exc:
            raise NoFold(f"{describe(node)} has a non-constant weight: {exc.reason}") from None
        if weight.ndim != 2:
            raise NoFold(f"{describe(node)} weight has rank {weight.ndim}; only a 2-D weight [K, N] folds")
        a_rank = rank_of(node.inputs[0], graph)
        # [K] @ [K, N] is [N]: a 1-D activation gives a 1-D product; otherwise the rank of A.
        return with_precise(Linear(self, node, weight, None, weight.shape[1], a_rank, -1), graph)

    def weight_axis(self, linear: Linear) -> int | None:
        return 1

    def scale_weight(self, linear: Linear, s: np.ndarray) -> np.ndarray:
        return scale_along_axis(linear.w, s, 1)

    def folded_bias(self, linear: Linear, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        if linear.bias is None:
            return t.copy()
        return keep_bias_layout(matmul_bias_vector(linear.b, linear.channels) * s + t, linear.bias)

    def write(self, folded: FoldedLinear, graph: FoldGraph) -> gs.Node:
        linear, node = folded.linear, folded.linear.node
        label = _label(node)
        graph.replace_input(node, 1, graph.replacement_constant(node.inputs[1], folded.weight, f"{label}.weight_folded",
                                                                folded.exact_weight))
        if folded.bias is None:
            return node
        add = linear.bias_node
        if add is not None:
            index = 0 if add.inputs[1] is node.outputs[0] else 1
            graph.replace_input(add, index, graph.replacement_constant(add.inputs[index], folded.bias,
                                                                       f"{label}.bias_folded", folded.exact_bias))
            return add
        y = node.outputs[0]
        product = gs.Variable(graph.fresh_name(f"{label}.product"), dtype=y.dtype)
        graph.replace_output(node, 0, product)
        bias = graph.new_constant(f"{label}.bias_folded", folded.bias, folded.exact_bias)
        return graph.add_node("Add", [product, bias], [y], after=node, name=f"{label}.bias_add")


KINDS: dict[str, LinearKind] = {k.op: k for k in (ConvKind(), ConvTransposeKind(), GemmKind(), MatMulKind())}


def _other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor:
    a, b = node.inputs[0], node.inputs[1]
    return b if a is tensor else a


def matmul_bias_add(matmul: gs.Node, graph: FoldGraph) -> gs.Node | None:
    """The Add that alone reads ``matmul``'s output and adds a constant to it (its bias), if any."""
    out = matmul.outputs[0]
    if len(out.outputs) != 1 or graph.is_graph_output(out):
        return None
    add = out.outputs[0]
    if add.op != "Add" or add.domain not in ONNX_DOMAINS or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return None
    try:
        graph.constant(_other_input(add, out))
    except NoFold:
        return None
    return add


def with_bias_add(linear: Linear, graph: FoldGraph) -> Linear:
    """``linear`` (a MatMul read on its own) with its bias Add attached, when it has one."""
    add = matmul_bias_add(linear.node, graph)
    if add is not None:
        operand = _other_input(add, linear.node.outputs[0])
        attach_bias(linear, add, graph.constant(operand))
        linear.exact_bias = graph.precise(operand)
    return linear


def attach_bias(linear: Linear, add: gs.Node, bias: np.ndarray) -> None:
    """Read ``add`` (adding the constant ``bias``) as ``linear``'s bias. The Add stays in the graph
    with a bias of the same shape, so a bias with more dimensions than the product (``[1, N]``
    after a 1-D ``[N]``) keeps raising the rank: the tail's rank is the larger one."""
    linear.bias_node, linear.bias = add, bias
    if linear.out_rank is not None:
        linear.out_rank = max(linear.out_rank, np.ndim(bias))


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


def rank_of(tensor: gs.Tensor, graph: FoldGraph, depth: int = 0) -> int | None:
    """The rank of ``tensor`` from its declared shape, or from producers that fix it; None if unknown."""
    if tensor.shape is not None:
        return len(tensor.shape)
    node = graph.producer(tensor)
    if node is None or depth > 8:
        return None
    if node.op in ("Flatten", "Gemm"):
        return 2
    if node.op == "Reshape":
        try:
            return int(np.asarray(graph.constant(node.inputs[1])).size)
        except NoFold:
            return None
    if node.op in ("Relu", "Clip", "Sigmoid", "Tanh", "Identity", "Dropout", "BatchNormalization", "Cast"):
        return rank_of(node.inputs[0], graph, depth + 1)
    return None


def per_channel(value: np.ndarray, channels: int, out_rank: int | None, channel_axis: int, what: str) -> np.ndarray:
    """``value`` as a float64 vector of ``channels`` entries, if it broadcasts per output channel.

    ``value`` broadcasts against a y of rank ``out_rank`` whose channels sit on ``channel_axis``:
    it must be a scalar, or have ``channels`` entries on that axis and 1 on every other axis, and
    not more dimensions than y (broadcasting would change y's shape). NoFold otherwise.
    """
    v = np.asarray(value)
    if v.size == 1 and (out_rank is None and v.ndim <= 1 or out_rank is not None and v.ndim <= out_rank):
        return np.full(channels, float(v.reshape(-1)[0].astype(np.float64)))
    shape = list(v.shape)
    if out_rank is None:
        if channel_axis != -1 or v.ndim > 1:
            raise NoFold(f"the rank of the output is unknown, so {what} of shape {shape} cannot be proven per channel")
        out_rank = 1
    if v.ndim > out_rank:
        raise NoFold(f"{what} of shape {shape} has more dimensions than the output (rank {out_rank})")
    aligned = [1] * (out_rank - v.ndim) + shape
    axis = channel_axis % out_rank
    if aligned[axis] != channels or any(d != 1 for i, d in enumerate(aligned) if i != axis):
        raise NoFold(f"{what} of shape {shape} is not per output channel (expected {channels} entries on axis {axis})")
    return v.reshape(channels).astype(np.float64)


@dataclass(frozen=True)
class LinearSite:
    """Where a linear op sits behind the tensor an affine op reads (structure only, nothing read yet)."""

    node: gs.Node
    walked: gs.Node  # the node producing the tensor (or the layout ops' input): the linear op or an Add
    via: tuple[gs.Node, ...]  # layout ops between it and the tensor, in graph order
    channel_axis_1: bool


def locate_linear(tensor: gs.Tensor, graph: FoldGraph, ops: tuple[str, ...], channel_axis_1: bool = False,
                  quantized: bool = False) -> LinearSite:
    """Find the linear op (one of ``ops``) behind ``tensor``, through a MatMul's Add and, with
    ``channel_axis_1`` (the affine op normalizes axis 1, as BN does), layout ops. Structure only.
    A weight from DequantizeLinear is no match unless ``quantized`` (rules/quantized.py folds those)."""
    via: list[gs.Node] = []
    node = graph.producer(tensor)
    while channel_axis_1 and is_layout_op(node) and len(via) < MAX_LAYOUT_CHAIN:
        via.insert(0, node)
        node = graph.producer(node.inputs[0])
    through = f" (through {', '.join(map(describe, via))})" if via else ""
    walked = node
    if node is not None and node.op == "Add" and "MatMul" in ops:
        matmuls = [p for p in map(graph.producer, node.inputs[:2]) if p is not None and p.op == "MatMul"]
        if len(matmuls) == 1:
            node = matmuls[0]
    if node is None:
        raise NoFold(f"its input '{tensor.name}'{through} is an input of the graph, not the output of a linear op")
    if node.op not in ops or node.domain not in ONNX_DOMAINS:
        raise NoFold(f"its input '{tensor.name}' comes from {describe(node)}{through}, not a linear op "
                     f"({', '.join(ops)})")
    dq = graph.producer(node.inputs[1]) if len(node.inputs) > 1 else None
    if not quantized and dq is not None and dq.op == "DequantizeLinear" and dq.domain in ONNX_DOMAINS:
        raise NoFold(f"{describe(node)} takes its weight from {describe(dq)}: rules 'qdq-bn' and 'qdq-affine' fold it")
    return LinearSite(node, walked, tuple(via), channel_axis_1)


def require_same_scope(node: gs.Node, graph: FoldGraph) -> None:
    """Refuse to fold into ``node`` from a subgraph when ``node`` lives in an enclosing graph: the
    edits of one scope are written back into that scope's proto only."""
    if not graph.owns(node):
        raise NoFold(f"{describe(node)} is in an enclosing graph; bnfold does not fold across graph scopes")


def read_linear(site: LinearSite, graph: FoldGraph) -> Linear:
    """Read the constants of the located linear op and check the path from it to the affine op.

    With ``channel_axis_1`` the linear op's channels must land on axis 1: without layout ops in
    between, for MatMul that means a 2-D output; layout ops in between must provably carry the
    channels to axis 1 (``_check_channel_path``).
    """
    for node in (site.node, site.walked, *site.via):
        require_same_scope(node, graph)
    linear = KINDS[site.node.op].read(site.node, graph)
    linear.via = list(site.via)
    if site.walked is not linear.node:  # MatMul → Add: the Add must add a constant, its bias
        add = site.walked
        try:
            operand = _other_input(add, linear.node.outputs[0])
            linear.bias = graph.constant(operand)
            linear.exact_bias = graph.precise(operand)
        except NoFold as exc:
            raise NoFold(f"{describe(add)} after {describe(linear.node)} does not add a constant bias: {exc.reason}") from None
        attach_bias(linear, add, linear.bias)
    chain = [linear.node] + ([linear.bias_node] if linear.bias_node is not None else []) + linear.via
    for producer, consumer in zip(chain, chain[1:]):
        require_exclusive(producer, consumer, graph)
    if linear.via:
        _check_channel_path(linear, graph)
    elif site.channel_axis_1 and linear.channel_axis != 1 and linear.out_rank != 2:
        rank = "unknown" if linear.out_rank is None else str(linear.out_rank)
        raise NoFold(
            f"{describe(linear.node)} puts its channels on the last axis, but the output rank is {rank}: "
            "axis 1 is not the channel axis (only a 2-D output [N, C] folds)"
        )
    return linear


def require_exclusive(producer: gs.Node, consumer: gs.Node, graph: FoldGraph) -> None:
    """Refuse unless ``consumer`` is the only reader of ``producer``'s output (folding changes that value)."""
    out = producer.outputs[0]
    if graph.is_graph_output(out):
        raise NoFold(f"{describe(producer)} output '{out.name}' is also a graph output")
    others = [n for n in out.outputs if n is not consumer]
    if others:
        raise NoFold(f"{describe(producer)} output '{out.name}' also feeds {describe(others[0])}")


def _check_channel_path(linear: Linear, graph: FoldGraph) -> None:
    """The layout ops after the linear op (``linear.via``) must put its channels on axis 1.

    The linear op's output has the rank and channel count the op gives and the sizes declarations
    give; ``_layout.follow_layout`` follows the channel axis op by op (a 3-D MatMul ``[B, T, C]`` →
    Transpose(0, 2, 1), or → Reshape ``[B*T, C, 1, 1]``, brings it to axis 1; a Reshape that merges C
    with T loses it).
    """
    start = linear.via[0].inputs[0]
    shape, axis = channel_shape(start, linear.out_rank, linear.channel_axis, linear.channels,
                                linear_output_shape(linear.node, linear.out_rank))
    what = f"a {len(shape)}-D {linear.node.op} output"
    shape, axis, params = follow_layout(linear.via, shape, axis, what, graph)
    if axis != 1:
        raise NoFold(f"{describe(linear.via[-1])}{params} does not keep the {linear.channels} channels of {what} "
                     f"on axis 1: they land on axis {axis} of a rank-{len(shape)} tensor")


def _check_channel_reshape(reshape: gs.Node, linear: Linear, graph: FoldGraph) -> None:
    """The former single-Reshape check, now ``_check_channel_path`` over all of ``linear.via``
    (``reshape`` is its first op); kept for the callers that name it (rules/quantized.py)."""
    _check_channel_path(linear, graph)


def fold_affine(linear: Linear, s: np.ndarray, t: np.ndarray) -> FoldedLinear:
    """Fold ``y -> s * y + t`` (float64, per channel) into ``linear``: new weight and bias, cast and checked."""
    if s.size != linear.channels:
        raise NoFold(f"{s.size} scale values for the {linear.channels} output channels of {describe(linear.node)}")
    weight, exact_weight = linear.kind.scaled_weight(linear, s, f"weight of {describe(linear.node)}")
    bias_dtype = linear.weight.dtype if linear.bias is None else linear.bias.dtype
    bias64 = linear.kind.folded_bias(linear, s, t)
    bias = cast_checked(bias64, bias_dtype, f"bias of {describe(linear.node)}")
    return FoldedLinear(linear, weight, bias, exact_weight, bias64 if narrow(bias_dtype) else None)


def rewrite_affine(folded: FoldedLinear, affine_node: gs.Node, graph: FoldGraph) -> tuple[str, ...]:
    """Write ``folded`` and make the linear op (or its tail) produce what ``affine_node`` produced, then
    drop it. Returns the output of a node the write added in its place (a MatMul's new bias Add), if any."""
    linear = folded.linear
    tail = linear.kind.write(folded, graph)
    added = (affine_node.outputs[0].name,) if tail is not linear.node and tail is not linear.bias_node else ()
    if linear.via:
        tail = linear.via[-1]
    y = affine_node.outputs[0]
    affine_node.outputs.clear()
    graph.replace_output(tail, 0, y)  # y keeps its name, dtype and shape
    graph.remove_node(affine_node)
    return added
