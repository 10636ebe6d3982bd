"""Quantization grids of a model's outputs, read from its graph, for validation to judge in quanta.

An output a DequantizeLinear produces (directly or through ops that keep its values) can only take
values on that DequantizeLinear's grid: a fold that moves it does so by whole quanta, and
validation (``bnfold._validate_worker``, criterion in ``bnfold.tolerances``) judges it in quanta.
``unrounded`` is the same model without activation rounding, to compare what a fold changed with
no rounding boundary to cross. Pure functions of ModelProtos: nothing here runs a model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .quantmath import integer_limits, is_integer


#: Ops whose output keeps the values of their input 0, so a per-tensor quantization grid survives them.
GRID_KEEPING = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Relu", "MaxPool"})


def _graph_constants(model: onnx.ModelProto, integers: bool = False) -> dict[str, onnx.TensorProto]:
    """Main-graph float (and with ``integers``, integer) constants a grid can be read from:
    initializers no caller may override, Constant values."""
    overridable = {i.name for i in model.graph.input} if model.ir_version >= 4 else set()
    values = {t.name: t for t in model.graph.initializer if t.name not in overridable}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = next((a.t for a in node.attribute if a.name == "value" and not a.ref_attr_name), None)
            if value is not None:
                values[node.output[0]] = value
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    ints = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
            onnx.TensorProto.INT32) if integers else ()
    return {k: v for k, v in values.items() if v.data_type in floats + ints}


def quantization_grids(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, int | None]]:
    """Graph outputs whose values lie on a quantization grid read from the graph: ``{output: (scale,
    axis)}`` (axis None: per tensor). An output is on a grid when a DequantizeLinear with a constant,
    unblocked scale produces it, directly or through ``GRID_KEEPING`` ops (per-tensor scales only:
    those ops may move axes)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output if o}
    constants = None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    grids: dict[str, tuple[np.ndarray, int | None]] = {}
    for output in graph.output:
        name, moved = output.name, False
        node = producers.get(name)
        while node is not None and node.domain in ("", "ai.onnx") and node.op_type in GRID_KEEPING \
                and node.output[0] == name and node.input:
            name, moved = node.input[0], True
            node = producers.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") \
                or len(node.input) < 2:
            continue
        attrs = {a.name: a for a in node.attribute}
        if any(a.ref_attr_name for a in attrs.values()) or "block_size" in attrs and attrs["block_size"].i:
            continue
        constants = _graph_constants(model) if constants is None else constants
        if node.input[1] not in constants:
            continue
        scale = numpy_helper.to_array(constants[node.input[1]])
        if scale.size == 1:
            grids[output.name] = (scale.reshape(()), None)
        elif scale.ndim == 1 and not moved:
            grids[output.name] = (scale, attrs["axis"].i if "axis" in attrs and opset >= 13 else 1)
    return grids


def shared_grids(original: onnx.ModelProto, folded: onnx.ModelProto) -> dict[str, tuple[np.ndarray, int | None]]:
    """The grids of ``quantization_grids`` that are the same in both models."""
    theirs = quantization_grids(folded)
    return {name: grid for name, grid in quantization_grids(original).items()
            if name in theirs and grid[1] == theirs[name][1] and np.array_equal(grid[0], theirs[name][0])}


def grid_quantum(grid: tuple[np.ndarray, int | None], shape: tuple[int, ...]) -> np.ndarray | None:
    """The quantum of every element of an output of ``shape`` on ``grid`` (None if it does not fit)."""
    scale, axis = grid
    if axis is None:
        return scale
    if not -len(shape) <= axis < len(shape) or shape[axis] != scale.size:
        return None
    view = [1] * len(shape)
    view[axis] = scale.size
    return scale.reshape(view)


def unrounded(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` without activation rounding: every main-graph DequantizeLinear that reads
    a QuantizeLinear with the same constant per-tensor integer scale and zero point becomes a Clip
    to the grid's range, so values saturate as before but are not rounded. None when there is no
    such pair. What is left differs between an original and its fold only where the fold changed
    it (weights and biases), with no rounding boundary to cross and amplify (see ``tolerances``)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output if o}
    constants = _graph_constants(model, integers=True)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)

    def scalar(name: str) -> np.ndarray | None:
        tensor = constants.get(name)
        return numpy_helper.to_array(tensor).reshape(()) if tensor is not None and np.prod(tensor.dims) == 1 else None

    clips: dict[int, tuple[onnx.NodeProto, list[onnx.TensorProto]]] = {}
    for i, dq in enumerate(graph.node):
        q = producers.get(dq.input[0]) if dq.op_type == "DequantizeLinear" and dq.input else None
        if q is None or q.op_type != "QuantizeLinear" or {q.domain, dq.domain} - {"", "ai.onnx"} \
                or len(q.input) < 3 or len(dq.input) < 3:
            continue
        scale, zero, dq_scale, dq_zero = (scalar(name) for name in (*q.input[1:3], *dq.input[1:3]))
        if scale is None or zero is None or dq_scale is None or dq_zero is None or not is_integer(zero.dtype) \
                or scale != dq_scale or zero != dq_zero:
            continue
        lo, hi = integer_limits(zero.dtype)
        bounds = np.sort(np.array([lo - int(zero), hi - int(zero)]) * float(scale)).astype(scale.dtype)
        name = f"__bnfold_unrounded_{i}"
        if opset >= 11:  # min and max are inputs from opset 11, attributes before
            inits = [numpy_helper.from_array(bounds[0], f"{name}_lo"), numpy_helper.from_array(bounds[1], f"{name}_hi")]
            clip = onnx.helper.make_node("Clip", [q.input[0], f"{name}_lo", f"{name}_hi"], list(dq.output), name=name)
        else:
            inits = []
            clip = onnx.helper.make_node("Clip", [q.input[0]], list(dq.output), name=name, min=float(bounds[0]),
                                         max=float(bounds[1]))
        clips[i] = (clip, inits)
    if not clips:
        return None
    relaxed = onnx.ModelProto()
    relaxed.CopyFrom(model)
    for i, (clip, inits) in clips.items():
        relaxed.graph.node[i].CopyFrom(clip)
        relaxed.graph.initializer.extend(inits)
    return relaxed
