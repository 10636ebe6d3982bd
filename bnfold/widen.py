"""The exact answer: a copy of a model that computes in float64 wherever it computed in a narrower float.

Validation's exact reference (``--reference float64``) runs the ORIGINAL model widened this way,
so that the folded model and the original can both be measured against what the graph means
rather than against each other's rounding. Widened: every float16, bfloat16 and float32 tensor
(initializers, sparse initializers, Constant values and ``value_float(s)``, ConstantOfShape
fills), every declared type (inputs, outputs, value_info), every ``to`` / ``dtype`` attribute
that names such a type (Cast, RandomNormal, EyeLike, ...), in the main graph, every subgraph and
every model-local function. Integer and boolean tensors stay as they are. An input whose type
the operator fixes (Resize's ``scales`` is float32 whatever the data) gets a Cast back to that
type. What cannot compute in float64 at all (an operator whose type constraints exclude double,
such as DequantizeLinear's output) makes the widened model invalid: the caller says the exact
reference could not run.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

NARROW = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})
DOUBLE = onnx.TensorProto.DOUBLE

#: Attributes that name an element type (Cast's ``to``, the random ops' and EyeLike's ``dtype``).
_TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")


def widen(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float64 copy of ``model`` (the input is not changed). Tensors kept in external files must
    have been loaded (``io.load_runnable``)."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    opset = next((o.version for o in wide.opset_import if o.domain in ("", "ai.onnx")), 1)
    _widen_graph(wide.graph, opset)
    for function in wide.functions:
        own = next((o.version for o in function.opset_import if o.domain in ("", "ai.onnx")), opset)
        _widen_nodes(function.node, own)
        for info in function.value_info:
            _widen_type(info.type)
    return wide


def widen_feeds(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` with every narrow float array as float64 (exactly: widening loses nothing)."""
    return {k: v.astype(np.float64) if _narrow_array(v) else v for k, v in feeds.items()}


def _narrow_array(values: np.ndarray) -> bool:
    return values.dtype in (np.float16, np.float32) or values.dtype.name == "bfloat16"


def _widen_tensor(tensor: onnx.TensorProto) -> None:
    if tensor.data_type in NARROW:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))


def _widen_type(type_proto: onnx.TypeProto) -> None:
    which = type_proto.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        typed = getattr(type_proto, which)
        if typed.elem_type in NARROW:
            typed.elem_type = DOUBLE
    elif which in ("sequence_type", "optional_type"):
        _widen_type(getattr(type_proto, which).elem_type)
    elif which == "map_type":
        _widen_type(type_proto.map_type.value_type)


def _widen_graph(graph: onnx.GraphProto, opset: int) -> None:
    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for sparse in graph.sparse_initializer:
        _widen_tensor(sparse.values)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        _widen_type(info.type)
    _widen_nodes(graph.node, opset)


_FIXED_FLOATS = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(float16)": onnx.TensorProto.FLOAT16,
                 "tensor(bfloat16)": onnx.TensorProto.BFLOAT16}


def _fixed_float_inputs(node: onnx.NodeProto, opset: int) -> dict[int, int]:
    """Inputs of ``node`` whose type the operator fixes to a narrow float: index -> that type."""
    if node.domain not in ("", "ai.onnx"):
        return {}
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return {}
    fixed: dict[int, int] = {}
    for i, name in enumerate(node.input):
        formal = schema.inputs[min(i, len(schema.inputs) - 1)] if schema.inputs else None
        if name and formal is not None and formal.type_str in _FIXED_FLOATS:
            fixed[i] = _FIXED_FLOATS[formal.type_str]
    return fixed


def _widen_nodes(nodes, opset: int) -> None:
    casts: list[tuple[int, onnx.NodeProto]] = []
    for position, node in enumerate(nodes):
        for i, to in _fixed_float_inputs(node, opset).items():
            narrowed = f"{node.input[i]}__bnfold_narrow_{position}_{i}"
            casts.append((position, onnx.helper.make_node("Cast", [node.input[i]], [narrowed], to=to)))
            node.input[i] = narrowed
        for i, attr in enumerate(node.attribute):
            if attr.ref_attr_name:
                continue
            if attr.name in _TYPE_ATTRIBUTES and attr.type == onnx.AttributeProto.INT and attr.i in NARROW:
                attr.i = DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                _widen_tensor(attr.sparse_tensor.values)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attr.g, opset)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _widen_graph(sub, opset)
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float64)
                node.attribute[i].CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(values)))
    for position, cast in reversed(casts):  # each Cast right before the node it feeds
        nodes.insert(position, cast)
