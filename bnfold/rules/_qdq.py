"""DequantizeLinear nodes as the quantized rules read and write them.

``read_dequantize`` reads the DequantizeLinear that produces a tensor: constant integers, scale
and zero point, its ``axis`` and ``block_size`` (opset 13 and 21), checked against the operator's
rules, as a ``Dequantized``. ``write_dequantize`` makes a consumer read new integers / scale /
zero point: in place when the DequantizeLinear and its tensors are the consumer's alone, else
through a new DequantizeLinear node and new tensors, so nothing another node reads ever changes.
The arithmetic is in ``bnfold.quantmath``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..attributes import has_reference, int_attr
from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph
from ..quantmath import Quantization, is_integer, is_packed
from .base import describe

#: Scale dtypes a fold can write (float8e8m0 scales of opset 24 hold powers of two only).
_SCALE_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Dequantized:
    """``DequantizeLinear(q, scale, zero_point)`` with constant inputs: ``node``, the integers ``q``
    and their ``quant``; ``precise_scale`` is the unrounded scale an earlier fold wrote, if any."""

    node: gs.Node
    q: np.ndarray
    quant: Quantization
    precise_scale: np.ndarray | None = None

    @property
    def output(self) -> gs.Tensor:
        return self.node.outputs[0]


def dequantize_node(tensor: gs.Tensor, graph: FoldGraph) -> gs.Node | None:
    """The ONNX DequantizeLinear that produces ``tensor``, if one does."""
    node = graph.producer(tensor)
    if node is not None and node.op == "DequantizeLinear" and node.domain in ONNX_DOMAINS:
        return node
    return None


def read_dequantize(node: gs.Node, graph: FoldGraph, what: str) -> Dequantized:
    """``node`` (a DequantizeLinear) with its constant inputs; NoFold names ``what`` it is and why not."""
    if not graph.owns(node):
        raise NoFold(f"{what} comes from {describe(node)} in an enclosing graph; bnfold does not fold across "
                     "graph scopes")
    reference = has_reference(node)
    if reference is not None:
        raise NoFold(f"{what} comes from {describe(node)}, whose {reference} comes from the function's attribute, "
                     "so its value is known only per call")
    values: list[np.ndarray | None] = []
    for label, tensor in zip(("integers are", "scale is", "zero point is"), node.inputs[:3]):
        if not tensor.name:
            values.append(None)
            continue
        try:
            values.append(np.asarray(graph.constant(tensor)))
        except NoFold as exc:
            raise NoFold(f"{what} comes from {describe(node)}, whose {label} not a constant: {exc.reason}") from None
    q, scale, zero_point = (values + [None, None])[:3]
    if q is None or scale is None:
        raise NoFold(f"{what} comes from {describe(node)} without its integers or scale")
    if not is_integer(q.dtype):
        raise NoFold(f"{what} comes from {describe(node)} of {q.dtype.name} values; bnfold folds integer-quantized "
                     "weights only")
    if scale.dtype.name not in _SCALE_DTYPES:
        raise NoFold(f"{what} comes from {describe(node)} with a {scale.dtype.name} scale; bnfold writes "
                     f"{', '.join(_SCALE_DTYPES)} scales only")
    if zero_point is not None and (zero_point.dtype != q.dtype or zero_point.shape != scale.shape):
        raise NoFold(f"{what} comes from {describe(node)} whose zero point ({zero_point.dtype.name}"
                     f"{list(zero_point.shape)}) does not match its integers and scale")
    axis = int_attr(node, "axis", 1) if graph.opset >= 13 else 1
    block_size = int_attr(node, "block_size", 0) if graph.opset >= 21 else 0
    if q.ndim and not -q.ndim <= axis < q.ndim:
        raise NoFold(f"{describe(node)} has axis {axis} for integers of rank {q.ndim}")
    quant = Quantization(scale, zero_point, axis % q.ndim if q.ndim else 0, block_size)
    _check_layout(node, q, quant, what)
    return Dequantized(node, q, quant, graph.precise(node.inputs[1]))


def _check_layout(node: gs.Node, q: np.ndarray, quant: Quantization, what: str) -> None:
    scale = quant.scale
    if quant.block_size < 0:
        raise NoFold(f"{describe(node)} has block_size {quant.block_size}")
    if quant.layout == "tensor" or quant.layout == "axis" and scale.ndim == 1 and scale.size == q.shape[quant.axis]:
        return
    if quant.layout == "blocked" and scale.ndim == q.ndim:
        blocks = [-(-n // quant.block_size) if i == quant.axis else n for i, n in enumerate(q.shape)]
        if list(scale.shape) == blocks:
            return
    raise NoFold(f"{what} comes from {describe(node)} whose scale of shape {list(scale.shape)} does not fit "
                 f"integers of shape {list(q.shape)} (axis {quant.axis}, block_size {quant.block_size})")


def refuse_packed(dq: Dequantized, integers: bool, zero_point: bool, what: str) -> None:
    """NoFold when a fold would have to write a new 4-bit or 2-bit tensor: ONNX packs them, and
    bnfold writes one element per byte."""
    dtype = dq.q.dtype
    if is_packed(dtype) and (integers or zero_point and dq.quant.zero_point is not None):
        part = "integers" if integers else "zero point"
        raise NoFold(f"{what}: the fold would write new {dtype.name} {part}, and bnfold does not write packed "
                     f"{dtype.name} tensors")


def _exclusive(node: gs.Node, consumer: gs.Node, graph: FoldGraph) -> bool:
    """Whether ``consumer`` alone reads ``node``'s output (once), which is no graph output."""
    out = node.outputs[0]
    return not graph.is_graph_output(out) and all(n is consumer for n in graph.consumers(out)) \
        and sum(t is out for t in consumer.inputs) == 1


def write_dequantize(graph: FoldGraph, dq: Dequantized, consumer: gs.Node, index: int, q: np.ndarray,
                     quant: Quantization, label: str, exact_scale: np.ndarray | None = None) -> None:
    """Make input ``index`` of ``consumer`` (which reads ``dq``'s output there) the dequantization of
    ``q`` with ``quant``. Tensors that did not change are read as they are; the others are new
    constants (``FoldGraph.replacement_constant``: a shared one keeps its values). The node is
    edited in place only when ``consumer`` alone reads it, otherwise a new DequantizeLinear takes
    its place for ``consumer``. ``axis`` is written when the layout is per axis."""
    node, old = dq.node, dq.quant
    zp_changed = quant.zero_point is not None and (old.zero_point is None or
                                                   quant.zero_point.shape != old.zero_point.shape)
    axis = quant.axis if quant.layout != "tensor" else None
    changed_axis = axis is not None and (old.layout == "tensor" or old.axis != axis)
    if _exclusive(node, consumer, graph):
        if q is not dq.q:
            graph.replace_input(node, 0, graph.replacement_constant(node.inputs[0], q, f"{label}_quantized"))
        graph.replace_input(node, 1, graph.replacement_constant(node.inputs[1], quant.scale, f"{label}_scale",
                                                                exact_scale))
        if zp_changed and quant.zero_point is not None:  # (zp_changed says it is not None)
            graph.replace_input(node, 2, graph.replacement_constant(node.inputs[2], quant.zero_point,
                                                                    f"{label}_zero_point"))
        if changed_axis:
            graph.set_attr(node, "axis", axis)
        return
    inputs = [node.inputs[0] if q is dq.q else graph.new_constant(f"{label}_quantized", q),
              graph.new_constant(f"{label}_scale", quant.scale, exact_scale)]
    if quant.zero_point is not None:
        inputs.append(graph.new_constant(f"{label}_zero_point", quant.zero_point) if zp_changed else node.inputs[2])
    attrs = {k: v for k, v in node.attrs.items()}
    if axis is not None:
        attrs["axis"] = axis
    y = node.outputs[0]
    out = graph.new_tensor(f"{label}_dequantized", dtype=y.dtype, shape=y.shape)
    graph.add_node("DequantizeLinear", inputs, [out], after=node, name=f"{label}_dequantize", attrs=attrs)
    graph.replace_input(consumer, index, out)


def dequantized_dtype(dq: Dequantized) -> np.dtype:
    """The float dtype the DequantizeLinear produces: its ``output_dtype`` (opset 23), else the scale's."""
    code = dq.node.attrs.get("output_dtype", 0)
    if isinstance(code, int) and code:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))
    return dq.quant.scale.dtype
