"""Where a linear op sits behind the tensor an affine op reads, and the path from it.

``locate_linear`` walks back from the tensor the affine op reads to the linear op, through its bias
Add and, for rules that normalize axis 1 (BN), a chain of layout ops (Transpose, Reshape, Flatten,
Squeeze, Unsqueeze) that must bring the channels to axis 1 (``_layout.py`` follows them).
``read_linear`` reads the op's constants (``_linear.py``) and checks the path: one scope, nothing
else reading it, the channels where the affine op expects them. ``rewrite_affine`` writes a fold and
lets the linear op (or the last node of the path) produce what the affine op produced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import onnx_graphsurgeon as gs

from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph
from ._elementwise import Elementwise, elementwise_operands
from ._layout import MAX_LAYOUT_CHAIN, channel_shape, follow_layout, is_layout_op, linear_output_shape
from ._linear import KINDS, FoldedLinear, Linear, attach_bias, other_input
from .base import describe


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
    A weight from DequantizeLinear is no match unless ``quantized`` (rules/qdq.py folds those)."""
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


def require_exclusive(producer: gs.Node, consumer: gs.Node, graph: FoldGraph) -> None:
    """Refuse unless ``consumer`` is the only reader of ``producer``'s output (folding changes that value)."""
    out = producer.outputs[0]
    if graph.is_graph_output(out):
        raise NoFold(f"{describe(producer)} output '{out.name}' is also a graph output")
    others = [n for n in graph.consumers(out) if n is not consumer]
    if others:
        raise NoFold(f"{describe(producer)} output '{out.name}' also feeds {describe(others[0])}")


def read_linear(site: LinearSite, graph: FoldGraph) -> Linear:
    """Read the constants of the located linear op and check the path from it to the affine op
    (``check_path``)."""
    for node in (site.node, site.walked, *site.via):
        require_same_scope(node, graph)
    linear = replace(KINDS[site.node.op].read(site.node, graph), via=site.via)
    if site.walked is not linear.node:  # MatMul → Add: the Add must add a constant, its bias
        add = site.walked
        try:
            operand = other_input(add, linear.node.outputs[0])
            bias, exact = graph.constant(operand), graph.precise(operand)
        except NoFold as exc:
            raise NoFold(f"{describe(add)} after {describe(linear.node)} does not add a constant bias: {exc.reason}") from None
        linear = attach_bias(linear, add, bias, exact)
    check_path(linear, site, graph)
    return linear


def check_path(linear: Linear, site: LinearSite, graph: FoldGraph) -> None:
    """The path from the linear op to the affine op: each node read by the next one alone, and with
    ``channel_axis_1`` the channels on axis 1: without layout ops in between, for MatMul that means
    a 2-D output; layout ops in between must provably carry the channels to axis 1."""
    chain = [linear.node] + ([linear.bias_node] if linear.bias_node is not None else []) + list(linear.via)
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


def rewrite_affine(folded: FoldedLinear, affine_node: gs.Node, graph: FoldGraph) -> tuple[str, ...]:
    """Write ``folded`` and make the linear op (or its tail) produce what ``affine_node`` produced, then
    drop it. Returns the output of a node the write added in its place (a MatMul's new bias Add), if any."""
    linear = folded.linear
    tail = linear.kind.write(folded, graph)
    added = (affine_node.outputs[0].name,) if tail is not linear.node and tail is not linear.bias_node else ()
    if linear.via:
        tail = linear.via[-1]
    graph.take_output(tail, affine_node)  # its output keeps its name, dtype and shape
    return added


def locate_affine(node: gs.Node, graph: FoldGraph,
                  locate: Callable[[Elementwise, FoldGraph], LinearSite]) -> tuple[Elementwise, LinearSite]:
    """The constant operand of the Mul/Add/Sub/Div ``node`` and the linear op behind its other input
    (``locate``: the rule's own search, NoFold when the input leads nowhere foldable), trying each
    constant operand in turn; NoFold with the first reason when none leads to a linear op."""
    candidates = elementwise_operands(node, graph)
    if not candidates:
        raise NoFold("no operand is a constant")
    reasons = []
    for element in candidates:
        try:
            site = locate(element, graph)
        except NoFold as exc:
            reasons.append(exc.reason)
            continue
        if node.op == "Div" and element.index == 1:
            raise NoFold("it divides a constant by the linear op's output, which is not affine")
        if node.op == "Add" and site.node.op == "MatMul" and site.walked is site.node:
            # read_linear reads an Add of a constant right after a MatMul as its bias: folding it
            # would only put a new bias Add in its place
            raise NoFold(f"it is the bias of {describe(site.node)} already: nothing to fold")
        return element, site
    raise NoFold(reasons[0])


def locate_weighted_linear(tensor: gs.Tensor, graph: FoldGraph, reads: str) -> LinearSite:
    """The linear op behind ``tensor`` with a constant weight (and, through a MatMul's Add, a
    constant bias); NoFold (a non-match) otherwise. ``reads`` starts the reason for an Add that
    adds an activation ("its input comes from", "Relu 'r' reads")."""
    site = locate_linear(tensor, graph, tuple(KINDS))
    if site.walked is not site.node:  # an Add after a MatMul: only its constant bias Add leads back to it
        others = [t for t in site.walked.inputs[:2] if graph.producer(t) is not site.node]
        if len(others) != 1 or not graph.looks_constant(others[0]):
            raise NoFold(f"{reads} {describe(site.walked)}, which adds an activation to {describe(site.node)}")
    if len(site.node.inputs) < 2 or not graph.looks_constant(site.node.inputs[1]):
        raise NoFold(f"{describe(site.node)} has no constant weight: it is not a layer to fold into")
    return site

