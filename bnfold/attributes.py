"""Node attributes as the rules read them: typed, with the operator's default, never a reference.

Inside a model-local function an attribute may be a reference to the function's own attribute
(``ref_attr_name``): its value is known only per call site, and two calls may pass different
values. A rule that needs such a value cannot prove a fold for every call, so reading one raises
NoFold with that reason. Attributes a rule does not read may be references: they are kept as
they are.
"""

from __future__ import annotations

from typing import Any

import onnx_graphsurgeon as gs

from .errors import NoFold


def attribute(node: gs.Node, name: str, default: Any) -> Any:
    """The value of attribute ``name`` of ``node`` (``default`` when absent); NoFold for a reference."""
    value = node.attrs.get(name, default)
    if isinstance(value, gs.Node.AttributeRef):
        label = f"{node.op} '{node.name}'" if node.name else f"an unnamed {node.op}"
        raise NoFold(f"{name} of {label} comes from the function's attribute '{value.name}', "
                     "so its value is known only per call")
    return value


def int_attr(node: gs.Node, name: str, default: int) -> int:
    return int(attribute(node, name, default))


def float_attr(node: gs.Node, name: str, default: float) -> float:
    return float(attribute(node, name, default))


def ints_attr(node: gs.Node, name: str) -> list[int]:
    return [int(v) for v in attribute(node, name, [])]


def str_attr(node: gs.Node, name: str, default: str) -> str:
    value = attribute(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def is_reference(node: gs.Node, name: str) -> bool:
    """Whether attribute ``name`` of ``node`` is a reference to the function's attribute."""
    return isinstance(node.attrs.get(name), gs.Node.AttributeRef)


def has_reference(node: gs.Node) -> str | None:
    """The name of the first attribute of ``node`` that is a reference, if any."""
    return next((k for k, v in node.attrs.items() if isinstance(v, gs.Node.AttributeRef)), None)
