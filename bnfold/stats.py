"""Size figures for reports: nodes, parameters and parameter bytes of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx


@dataclass(frozen=True)
class ModelStats:
    nodes: int
    parameters: int
    parameter_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _elements(dims) -> int:
    total = 1
    for d in dims:
        total *= d
    return total


def _bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's values from its type and shape (0 for strings and unknown types)."""
    n = _elements(tensor.dims)
    if tensor.data_type in _FOUR_BIT:
        return (n + 1) // 2
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0


_FOUR_BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def _count(graph: onnx.GraphProto) -> tuple[int, int, int]:
    nodes = len(graph.node)
    params = sum(_elements(t.dims) for t in graph.initializer)
    size = sum(_bytes(t) for t in graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                params += _elements(attr.t.dims)
                size += _bytes(attr.t)
            else:
                for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    n, p, b = _count(g)
                    nodes, params, size = nodes + n, params + p, size + b
    return nodes, params, size


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Nodes (subgraphs included), parameter elements and their bytes (initializers and Constant nodes)."""
    return ModelStats(*_count(model.graph))
