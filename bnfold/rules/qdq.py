"""Linear ops with quantized weights (QDQ models) → BatchNormalization or per-channel Mul/Add/Sub/Div.

Quantization-aware training exports keep the BN behind a linear op whose weight comes through
DequantizeLinear of an integer constant:

    x ──────────────────────────────┐
    DequantizeLinear(Wq, scale, zp) ┴→ Conv | ConvTranspose | Gemm | MatMul [→ bias Add] → BN | Mul/Add/Sub/Div

No float weight exists to scale, so the other rules refuse it. Here the per-channel affine map
``y -> s * y + t`` (see ``_linear.py``, ``_batchnorm.py``, ``_elementwise.py``) folds without ever
materializing one (``bnfold.quantmath`` has the math):

- **Weight**: ``s`` goes into the DequantizeLinear **scale** along the weight's output-channel
  axis; the integers stay as they are, so the fold is exact up to one rounding of the new scale
  to its dtype. Output-channel axes: Conv 0; ConvTranspose 1 (with group > 1 only factors that
  repeat in every group fit one scale along axis 1); Gemm 1, or 0 with transB; MatMul 1. A
  per-tensor scale becomes per channel (the zero point repeated; DequantizeLinear has an axis
  from opset 13); a per-channel scale must be along that axis, a blocked one (opset 21) blocked
  along another axis. A factor the same for every channel scales any layout.
- **Negative factors** never make a scale negative (valid ONNX, but some runtimes assume positive scales):
  the channel's integers are negated instead (``q' = 2 zp - q``), which is exact unless a value
  has no negation in its type (int8 -128 with zero point 0, uint8 0 with zero point 128). Then
  the fold is refused, with the channel and value in the reason.
- **Bias**: a float bias (Conv/ConvTranspose input 2, Gemm C, MatMul's bias Add) becomes
  ``s * b + t`` and is created when missing. An integer bias through DequantizeLinear is
  re-quantized: when its scale is the input's scale times the weight's per channel (the
  convention of onnxruntime's quantizer and PyTorch, checked against the DequantizeLinear that
  feeds the op's input), the new bias scale is the input scale times the new weight scale, so
  the convention still holds; otherwise the old bias scale times ``|s|``. The new integers are
  ``round((s * b + t) / new scale)``: within half a quantum of the new bias scale of the exact
  bias, per channel; the fold reports that bound (``QuantizedFold.bias_error_bound``).

Preconditions (each refusal names the node and the reason), besides those of the float rules
(inference-only BN, per-channel constants, nothing else reading the linear op's output):
- the DequantizeLinear (ONNX domain, this scope) has constant integers, scale and zero point; the
  integers are an integer type (int8, uint8, int16, uint16, int32, and int4/uint4 where nothing
  4-bit has to be written), the scale float32, float16 or bfloat16;
- the layout fits the factors (above); no factor is 0; the new scales are finite and do not
  underflow where the old ones were normal; a negative factor's channel negates exactly;
- an integer bias has one value per output channel, and its new integers fit its type (int32).
Shared tensors are safe: a DequantizeLinear, scale, zero point or integer tensor that another
node also reads is never changed (the folded op gets a new DequantizeLinear and new tensors).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx_graphsurgeon as gs

from ..attributes import int_attr
from ..errors import NoFold
from ..foldmath import cast_checked, narrow
from ..graph import FoldGraph
from ..quantmath import Quantization, ScaleFold, dequantize, fold_into_scale, product_convention, requantize
from ._batchnorm import check_inference_only, read_affine
from ._elementwise import AFFINE_OPS, Elementwise, affine_of, read_operand
from ._linear import KINDS, Linear, attach_bias, new_bias_add, other_input
from ._qdq import Dequantized, dequantize_node, dequantized_dtype, read_dequantize, refuse_packed, write_dequantize
from ._site import LinearSite, check_path, locate_affine, locate_linear, require_exclusive, require_same_scope
from .base import Fold, Rule, describe, label


@dataclass(frozen=True)
class QuantizedFold(Fold):
    """A fold into a quantized weight. ``bias_error_bound``: when an integer bias was re-quantized,
    the most its dequantized value can differ from the exact folded bias (half a quantum of its
    new scale); None for a float bias. ``negated_channels``: output channels whose integers were
    negated (negative factors)."""

    bias_error_bound: float | None = field(default=None, compare=False)
    negated_channels: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class QuantizedMatch:
    site: LinearSite
    follower: gs.Node  # the BatchNormalization or Mul/Add/Sub/Div
    element: Elementwise | None = None


@dataclass(frozen=True)
class QuantizedLinear:
    """A linear op with its weight through DequantizeLinear, read as ``y = W x + b`` per channel.

    ``linear`` carries what the float rules need (channels, output rank, bias values in float64
    and its Add), with a zero-stride stand-in for the weight; ``bias_dq`` is set when the bias
    comes through DequantizeLinear; ``input_scale`` is the per-tensor scale of the
    DequantizeLinear feeding the op's input, when there is one.
    """

    linear: Linear
    weight: Dequantized
    bias_dq: Dequantized | None
    input_scale: float | None


@dataclass(frozen=True)
class QuantizedPlan:
    ql: QuantizedLinear
    follower: gs.Node
    weight: ScaleFold
    float_bias: np.ndarray | None = None  # the new float bias (None: none to write)
    exact_bias: np.ndarray | None = None  # its float64 values, for a float16/bfloat16 bias
    int_bias: tuple[np.ndarray, Quantization] | None = None  # re-quantized integers and their quantization
    bound: float | None = None
    negated: tuple[int, ...] = ()  # output channels with a negative factor (their integers negated)


# -- reading -----------------------------------------------------------------------------------


def weight_dequantize(node: gs.Node, graph: FoldGraph) -> gs.Node:
    """The DequantizeLinear producing ``node``'s weight; NoFold (no match) when there is none."""
    dq = dequantize_node(node.inputs[1], graph) if len(node.inputs) > 1 else None
    if dq is None:
        raise NoFold(f"{describe(node)} does not take its weight from a DequantizeLinear")
    return dq


def _bias_tensor(site: LinearSite) -> gs.Tensor | None:
    node = site.node
    if node.op == "MatMul":
        return None if site.walked is node else other_input(site.walked, node.outputs[0])
    return node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None


def _input_scale(node: gs.Node, graph: FoldGraph) -> float | None:
    """The per-tensor scale of the DequantizeLinear feeding ``node``'s input, if it is a constant."""
    dq = dequantize_node(node.inputs[0], graph)
    if dq is None:
        return None
    try:
        scale = np.asarray(graph.constant(dq.inputs[1]))
    except NoFold:
        return None
    return float(scale.reshape(-1)[0]) if scale.size == 1 else None


def read_quantized_linear(site: LinearSite, graph: FoldGraph) -> QuantizedLinear:
    """The located linear op with its DequantizeLinear weight and its bias, and the path from it to
    the affine op checked as ``_site.read_linear`` checks it (``check_path``); NoFold says why not."""
    node = site.node
    for n in (node, site.walked, *site.via):
        require_same_scope(n, graph)
    weight = read_dequantize(weight_dequantize(node, graph), graph, f"the weight of {describe(node)}")
    q = weight.q
    if node.op in ("Conv", "ConvTranspose"):
        if q.ndim < 3:
            raise NoFold(f"{describe(node)} weight has rank {q.ndim}; a {node.op} weight has rank >= 3")
    elif q.ndim != 2:
        raise NoFold(f"{describe(node)} weight has rank {q.ndim}; only a 2-D weight folds")
    kind = KINDS[node.op]
    out_rank, channel_axis = kind.output_axes(node, q, graph)
    channels = kind.channels(node, q)
    stand_in = np.broadcast_to(np.zeros((), dequantized_dtype(weight)), q.shape)
    linear = Linear(kind, node, stand_in, None, channels, out_rank, channel_axis, via=site.via)
    bias_dq = None
    tensor = _bias_tensor(site)
    if tensor is not None:
        dq = dequantize_node(tensor, graph)
        exact = None
        if dq is not None:
            bias_dq = read_dequantize(dq, graph, f"the bias of {describe(node)}")
            if bias_dq.q.ndim != 1 or bias_dq.q.size != channels or bias_dq.quant.layout == "blocked":
                raise NoFold(f"the integer bias of {describe(node)} has shape {list(bias_dq.q.shape)}"
                             f"{' (blocked)' if bias_dq.quant.layout == 'blocked' else ''}; it folds with one "
                             f"value per output channel ([{channels}])")
            bias = dequantize(bias_dq.q, bias_dq.quant)
        else:
            try:
                bias = graph.constant(tensor)
            except NoFold as exc:
                raise NoFold(f"{describe(node)} has a non-constant bias: {exc.reason}") from None
            exact = graph.precise(tensor)
        if node.op == "MatMul":
            linear = attach_bias(linear, site.walked, bias, exact)
        else:
            linear = replace(linear, bias=bias, exact_bias=exact)
    check_path(linear, site, graph)
    return QuantizedLinear(linear, weight, bias_dq, _input_scale(node, graph))


# -- the fold ----------------------------------------------------------------------------------


def weight_factors(ql: QuantizedLinear, s: np.ndarray) -> tuple[np.ndarray, int]:
    """The factors along the weight's output-channel axis, and that axis (see the module docstring)."""
    linear, q = ql.linear, ql.weight.q
    axis = linear.kind.weight_axis(linear)
    if axis is not None:  # Conv, Gemm, MatMul: the axis the float weight is scaled along
        return s, axis
    node = linear.node  # ConvTranspose
    group = int_attr(node, "group", 1)
    if q.shape[0] % group:
        raise NoFold(f"{describe(node)} weight has {q.shape[0]} input channels, not divisible by group {group}")
    per_group = s.reshape(group, q.shape[1])
    if not np.all(per_group == per_group[0]):
        raise NoFold(f"{describe(node)} has group {group}: its weight [C, M/group, ...] holds output channel "
                     f"j*M/group + m at index m of axis 1 for every group j, so one scale along axis 1 fits only "
                     "factors that repeat in every group")
    return per_group[0], 1


def _per_channel_weight_scale(ql: QuantizedLinear, quant: Quantization, axis: int) -> np.ndarray | None:
    """The weight scale of each output channel ([channels]), when it has one (not blocked, not on another axis)."""
    channels = ql.linear.channels
    scale = np.asarray(quant.scale, dtype=np.float64)
    if quant.layout == "tensor":
        return np.full(channels, scale.reshape(()))
    if quant.layout == "axis" and quant.axis == axis:
        return np.tile(scale, channels // scale.size)  # ConvTranspose groups repeat axis 1
    return None


def _requantized_bias(ql: QuantizedLinear, bias_dq: Dequantized, weight: ScaleFold, axis: int, s: np.ndarray,
                      target: np.ndarray, graph: FoldGraph) -> tuple[np.ndarray, Quantization, float]:
    """New integers and quantization of ``ql``'s integer bias, ``bias_dq`` (see the module docstring), and the
    error bound."""
    node, old = ql.linear.node, bias_dq.quant
    what = f"bias scale of {describe(node)}"
    old_ws = _per_channel_weight_scale(ql, ql.weight.quant, axis)
    new_ws = _per_channel_weight_scale(ql, weight.quant, axis)  # the folded weight's
    channels = ql.linear.channels
    bias_scale = np.broadcast_to(np.asarray(old.scale, dtype=np.float64).reshape(-1), (channels,))
    scaled: np.ndarray
    if (ql.input_scale is not None and old_ws is not None and new_ws is not None
            and product_convention(bias_scale, ql.input_scale, old_ws)):
        scaled = ql.input_scale * new_ws
    else:
        scaled = bias_scale * np.abs(s)
    if old.layout == "tensor" and np.all(scaled == scaled[0]):
        new = Quantization(cast_checked(np.asarray(scaled[0]).reshape(old.scale.shape), old.scale.dtype, what,
                                        original=old.scale), old.zero_point, old.axis)
    else:
        if graph.opset < 13:
            raise NoFold(f"the {what} would become per channel, and DequantizeLinear has no axis before opset 13")
        zp = old.zero_point
        if zp is not None and zp.size == 1:
            zp = np.full(channels, zp.reshape(()), dtype=zp.dtype)
        new = Quantization(cast_checked(scaled, old.scale.dtype, what, original=bias_scale), zp, 0)
    q, bound = requantize(target, new, bias_dq.q.dtype, f"bias of {describe(node)}")
    refuse_packed(bias_dq, True, new.zero_point is not old.zero_point, f"the bias of {describe(node)}")
    return q, new, bound


def scale_dtype(w: Dequantized) -> np.dtype:
    """The dtype a folded weight scale is written in: the scale's own, or the dtype the
    DequantizeLinear produces when that is wider (a float16 scale with ``output_dtype`` float32:
    rounding the new scale to float16 would lose 2^-11 of every float32 weight)."""
    own, produced = np.dtype(w.quant.scale.dtype), np.dtype(dequantized_dtype(w))
    return produced if produced.itemsize > own.itemsize else own


def plan_fold(ql: QuantizedLinear, s: np.ndarray, t: np.ndarray, follower: gs.Node, graph: FoldGraph) -> QuantizedPlan:
    """Fold ``y -> s * y + t`` (float64, per channel) into ``ql``: new weight quantization and bias."""
    linear, node, w = ql.linear, ql.linear.node, ql.weight
    if s.size != linear.channels:
        raise NoFold(f"{s.size} scale values for the {linear.channels} output channels of {describe(node)}")
    factors, axis = weight_factors(ql, s)
    fold = fold_into_scale(w.q, w.quant, factors, axis, f"weight scale of {describe(node)}", w.precise_scale,
                           dtype=scale_dtype(w))
    if graph.opset < 13 and w.quant.layout == "tensor" and fold.quant.layout == "axis":
        raise NoFold(f"the per-tensor weight scale of {describe(node)} would become per channel, and "
                     f"DequantizeLinear has no axis before opset 13 (the model's opset is {graph.opset})")
    refuse_packed(w, fold.integers_changed, fold.quant.zero_point is not w.quant.zero_point,
                  f"the weight of {describe(node)}")
    target = linear.kind.folded_bias(linear, s, t)
    negated = tuple(int(c) for c in np.flatnonzero(s < 0))
    if ql.bias_dq is not None:
        q, quant, bound = _requantized_bias(ql, ql.bias_dq, fold, axis, s, target, graph)
        return QuantizedPlan(ql, follower, fold, int_bias=(q, quant), bound=bound, negated=negated)
    if linear.bias is None and not np.any(target):  # scale only, into an op without bias: add no zero bias
        return QuantizedPlan(ql, follower, fold, negated=negated)
    dtype = dequantized_dtype(w) if linear.bias is None else linear.bias.dtype
    bias = cast_checked(target, dtype, f"bias of {describe(node)}")
    return QuantizedPlan(ql, follower, fold, float_bias=bias, exact_bias=target if narrow(dtype) else None,
                         negated=negated)


def write_fold(plan: QuantizedPlan, graph: FoldGraph) -> tuple[str, ...]:
    """Edit the graph as ``plan`` says and remove the follower; returns the outputs of nodes added
    in its place (a MatMul's new bias Add), as ``Fold.added`` wants them."""
    ql, follower = plan.ql, plan.follower
    linear, node = ql.linear, ql.linear.node
    name = label(node)
    weight = plan.weight
    write_dequantize(graph, ql.weight, node, 1, weight.q, weight.quant, f"{name}.weight", weight.exact_scale)
    tail = linear.bias_node or node
    added: tuple[str, ...] = ()
    bias_index = 2
    if linear.bias_node is not None:
        bias_index = 0 if linear.bias_node.inputs[1] is node.outputs[0] else 1
    if plan.int_bias is not None:
        assert ql.bias_dq is not None, "plan_fold re-quantizes an integer bias only"
        q, quant = plan.int_bias
        write_dequantize(graph, ql.bias_dq, tail, bias_index, q, quant, f"{name}.bias")
    elif plan.float_bias is not None:
        if linear.bias is not None:
            new = graph.replacement_constant(tail.inputs[bias_index], plan.float_bias, f"{name}.bias_folded",
                                             plan.exact_bias)
            graph.replace_input(tail, bias_index, new)
        elif node.op == "MatMul":
            tail = new_bias_add(node, plan.float_bias, plan.exact_bias, graph)
            added = (follower.outputs[0].name,)
        else:
            graph.replace_input(node, 2, graph.new_constant(f"{name}.bias_folded", plan.float_bias, plan.exact_bias))
    if plan.int_bias is not None or plan.float_bias is not None:
        linear.kind.after_new_bias(node, graph)  # Gemm: beta is folded into the new C
    if linear.via:
        tail = linear.via[-1]
    graph.take_output(tail, follower)  # its output keeps its name, dtype and shape
    return added


def _fold(rule: Rule, plan: QuantizedPlan, graph: FoldGraph) -> QuantizedFold:
    follower, node = plan.follower, plan.ql.linear.node
    y = follower.outputs[0].name
    added = write_fold(plan, graph)
    return QuantizedFold(rule.name, follower.name, follower.op, node.name, node.op, output=y, added=added,
                         bias_error_bound=plan.bound, negated_channels=plan.negated)


# -- the rules ---------------------------------------------------------------------------------


class QuantizedBatchNormRule(Rule):
    """BN after a linear op whose weight comes through DequantizeLinear; see the module docstring."""

    name = "qdq-bn"
    anchors = ("BatchNormalization",)

    def match(self, bn: gs.Node, graph: FoldGraph) -> QuantizedMatch:
        site = locate_linear(bn.inputs[0], graph, tuple(KINDS), channel_axis_1=True, quantized=True)
        weight_dequantize(site.node, graph)
        return QuantizedMatch(site, bn)

    def check(self, match: QuantizedMatch, graph: FoldGraph) -> QuantizedPlan:
        bn = match.follower
        check_inference_only(bn, graph)
        ql = read_quantized_linear(match.site, graph)
        require_exclusive(ql.linear.tail, bn, graph)
        affine = read_affine(bn, graph, ql.linear.channels)
        return plan_fold(ql, affine.s, affine.t, bn, graph)

    def rewrite(self, plan: QuantizedPlan, graph: FoldGraph) -> Fold:
        return _fold(self, plan, graph)


def _locate(element: Elementwise, graph: FoldGraph) -> LinearSite:
    """The quantized linear op behind ``element.y``; NoFold (a non-match) otherwise."""
    site = locate_linear(element.y, graph, tuple(KINDS), quantized=True)
    if site.walked is not site.node:  # an Add after a MatMul: only its bias Add leads back to it
        others = [t for t in site.walked.inputs[:2] if graph.producer(t) is not site.node]
        if len(others) != 1 or not (graph.looks_constant(others[0]) or dequantize_node(others[0], graph)):
            raise NoFold(f"its input comes from {describe(site.walked)}, which adds an activation to "
                         f"{describe(site.node)}")
    weight_dequantize(site.node, graph)
    return site


class QuantizedAffineRule(Rule):
    """Mul/Add/Sub/Div by a per-channel constant after a linear op whose weight comes through
    DequantizeLinear; see the module docstring and ``affine_linear.py``."""

    name = "qdq-affine"
    anchors = AFFINE_OPS
    report_unmatched = False

    def match(self, node: gs.Node, graph: FoldGraph) -> QuantizedMatch:
        element, site = locate_affine(node, graph, _locate)
        return QuantizedMatch(site, node, element)

    def check(self, match: QuantizedMatch, graph: FoldGraph) -> QuantizedPlan:
        element = match.element
        assert element is not None, "this rule's match names the constant operand"
        ql = read_quantized_linear(match.site, graph)
        linear = ql.linear
        require_exclusive(linear.tail, element.node, graph)
        dtype = dequantized_dtype(ql.weight) if linear.bias is None or ql.bias_dq is not None else linear.bias.dtype
        c = read_operand(element, graph, dtype, linear.out_rank, linear.channels, linear.channel_axis)
        s, t = affine_of(element, c)
        return plan_fold(ql, s, t, element.node, graph)

    def rewrite(self, plan: QuantizedPlan, graph: FoldGraph) -> Fold:
        return _fold(self, plan, graph)
