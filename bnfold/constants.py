"""Evaluate the small constant subgraphs exporters put in front of BN parameters.

Exporters rarely hand a BatchNormalization its statistics as plain initializers: PyTorch's
TrainingMode.PRESERVE export routes them through Identity nodes, the onnx package's "light" model
zoo makes them with ConstantOfShape, others Cast or Reshape them. ``evaluate_node`` computes one
such node from constant inputs; ``FoldGraph.constant`` walks the producers recursively.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from . import constant_ops
from .attributes import has_reference
from .errors import NoFold

#: How graphsurgeon spells the default ONNX operator domain.
ONNX_DOMAINS = (None, "", "ai.onnx")

#: Deterministic, cheap ops that may appear between an initializer and a BN parameter. Anything
#: else (random ops, ops with subgraphs, ops from other domains) makes the value non-constant.
FOLDABLE_CONSTANT_OPS = frozenset(
    {
        "Identity", "Constant", "ConstantOfShape", "Cast", "CastLike", "Reshape", "Squeeze", "Unsqueeze",
        "Flatten", "Expand", "Concat", "Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Neg", "Abs",
        "Pow", "Transpose", "Slice", "Gather", "Shape", "Size", "Tile", "Max", "Min", "Clip",
    }
)

#: Refuse to materialize larger intermediate values than this (elements): parameters are small.
MAX_CONSTANT_ELEMENTS = 1 << 26


class TensorReader(Protocol):
    """Reads the values of a tensor whose data is not in memory (``data_location`` EXTERNAL).

    What the engine is handed for a model read lazily (``bnfold.io.ModelFile.read_tensor``): the
    I/O layer knows the model's files and checks the reads; the engine only asks for values.
    """

    def __call__(self, tensor: onnx.TensorProto, /) -> np.ndarray: ...


def tensor_value(tensor: gs.Constant, read: TensorReader | None = None) -> np.ndarray:
    """The exact values of a gs.Constant, read straight from its TensorProto when it has one.

    onnx-graphsurgeon converts dtypes NumPy lacks (bfloat16) when it loads values itself;
    ``numpy_helper.to_array`` keeps them (as ml_dtypes arrays). A tensor whose data is still on
    disk (a model read lazily) is read through ``read``; without one it is not a usable constant.
    """
    lazy = tensor._values
    if isinstance(lazy, gs.ir.tensor.SparseValues):
        return sparse_to_dense(lazy.tensor)
    if isinstance(lazy, gs.ir.tensor.LazyValues) and isinstance(lazy.tensor, onnx.TensorProto):
        proto = lazy.tensor
        if proto.data_location == onnx.TensorProto.EXTERNAL:
            if read is None:
                raise NoFold(f"'{proto.name}' keeps its data in an external file that was not loaded")
            return read(proto)
        return numpy_helper.to_array(proto)
    return np.asarray(tensor.values)


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array of a SparseTensorProto, in its values' dtype (NoFold if malformed).

    ``indices`` is either ``[NNZ]`` (positions in the flattened tensor) or ``[NNZ, rank]``
    (coordinates), as the ONNX spec allows; missing positions are zero. (graphsurgeon's own
    reader ignores raw_data and returns float64.)
    """
    name = sparse.values.name
    values = numpy_helper.to_array(sparse.values).ravel()
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    shape = tuple(int(d) for d in sparse.dims)
    size = int(np.prod(shape, dtype=np.int64))
    if size > MAX_CONSTANT_ELEMENTS:
        raise NoFold(f"sparse tensor '{name}' is too large to evaluate")
    if indices.ndim == 2 and indices.shape == (values.size, len(shape)):
        if np.any(indices < 0) or np.any(indices >= np.asarray(shape, dtype=np.int64)):
            raise NoFold(f"sparse tensor '{name}' has indices out of range")
        flat = np.ravel_multi_index(tuple(indices.T), shape) if values.size else indices[:, 0]
    elif indices.ndim == 1 and indices.size == values.size:
        flat = indices
    else:
        raise NoFold(f"sparse tensor '{name}' has indices of shape {list(indices.shape)} for {values.size} values")
    if np.any(flat < 0) or np.any(flat >= size):
        raise NoFold(f"sparse tensor '{name}' has indices out of range")
    dense = np.zeros(size, dtype=values.dtype)
    dense[flat] = values
    return dense.reshape(shape)


def _attr_value(attr: gs.Constant) -> np.ndarray:
    return tensor_value(attr)


def _constant_node_value(node: gs.Node) -> np.ndarray:
    attrs = node.attrs
    for key in ("value", "sparse_value"):
        if key in attrs and isinstance(attrs[key], gs.Constant):
            return _attr_value(attrs[key])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    raise NoFold(f"Constant node '{node.name}' holds a {', '.join(attrs)} value bnfold does not read")


def _to_proto_attr(value):
    if isinstance(value, gs.Constant):
        return numpy_helper.from_array(tensor_value(value), value.name)
    if isinstance(value, (gs.Graph, gs.Tensor)):
        raise NoFold("node has a graph-valued attribute")
    return value


def _label(node: gs.Node) -> str:
    return f"'{node.name}', " if node.name else ""


def check_evaluable(node: gs.Node) -> None:
    """NoFold unless ``node`` is a deterministic op ``evaluate_node`` may compute from constants."""
    if node.domain not in ONNX_DOMAINS:
        raise NoFold(f"'{node.outputs[0].name}' comes from {_label(node)}a {node.domain}::{node.op} node, not a constant")
    if node.op not in FOLDABLE_CONSTANT_OPS:
        raise NoFold(f"'{node.outputs[0].name}' comes from {_label(node)}a {node.op} node, not a constant")
    reference = has_reference(node)
    if reference is not None:
        raise NoFold(f"'{node.outputs[0].name}' comes from {_label(node)}a {node.op} node whose {reference} comes "
                     "from the function's attribute, so its value is known only per call")


def evaluate_node(node: gs.Node, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Compute the outputs of ``node`` given its constant ``inputs`` (None for omitted optionals)."""
    check_evaluable(node)
    if node.op == "Constant":
        return [_constant_node_value(node)]
    if node.op in ("Identity", "ConstantOfShape"):  # input 0 required (onnx.checker says so; fold() does not ask it)
        first = inputs[0] if inputs else None
        if first is None:
            article = "an" if node.op == "Identity" else "a"
            raise NoFold(f"'{node.outputs[0].name}' comes from {_label(node)}{article} {node.op} node without its input")
        if node.op == "Identity":
            return [first]
        shape = [int(d) for d in np.asarray(first).ravel()]
        if int(np.prod(shape, dtype=np.int64)) > MAX_CONSTANT_ELEMENTS:
            raise NoFold(f"ConstantOfShape '{node.name}' would be too large to evaluate")
        fill = _attr_value(node.attrs["value"]) if "value" in node.attrs else np.zeros(1, np.float32)
        return [np.full(shape, fill.ravel()[0], dtype=fill.dtype)]
    if node.op in constant_ops.OPS and len(node.outputs) == 1:
        value = constant_ops.evaluate(node.op, inputs, node.attrs, opset)
        if value is not None:
            return [value]
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if value is not None else "" for k, value in enumerate(inputs)]
    outputs = [f"o{k}" for k in range(len(node.outputs))]
    attrs = {k: _to_proto_attr(v) for k, v in node.attrs.items()}
    proto = onnx.helper.make_node(node.op, names, outputs, **attrs)
    feeds = {n: v for n, v in zip(names, inputs) if v is not None}  # the named ones
    # A one-node model, so that the node runs at the model's opset (a bare NodeProto runs at the
    # newest one, where e.g. Unsqueeze takes axes as an input instead of an attribute).
    graph = onnx.helper.make_graph(
        [proto], "constant",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), None) for n, v in feeds.items()],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        evaluator = ReferenceEvaluator(model)
        return list(evaluator.run(None, feeds))
    except Exception as exc:  # an evaluation failure means: not a constant we can use
        raise NoFold(f"could not evaluate {node.op} '{node.name}' on constant inputs ({exc})") from None
