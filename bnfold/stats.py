"""Size figures for reports: nodes and parameters of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx


@dataclass(frozen=True)
class ModelStats:
    nodes: int
    parameters: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _count(graph: onnx.GraphProto) -> tuple[int, int]:
    nodes = len(graph.node)
    params = sum(_elements(t.dims) for t in graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                params += _elements(attr.t.dims)
            elif attr.type == onnx.AttributeProto.GRAPH:
                n, p = _count(attr.g)
                nodes, params = nodes + n, params + p
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    n, p = _count(g)
                    nodes, params = nodes + n, params + p
    return nodes, params


def _elements(dims) -> int:
    total = 1
    for d in dims:
        total *= d
    return total


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Nodes (subgraphs included) and parameter elements (initializers and Constant nodes)."""
    return ModelStats(*_count(model.graph))
