"""The common constant-subgraph ops in numpy, exactly as ONNX defines them at a given opset.

Exporters put Unsqueeze, Squeeze, Transpose, Reshape, Flatten and Concat in front of BN
parameters (the onnx package's light model zoo: 242 Unsqueeze nodes in light_densenet121). Running
each through ``onnx.reference`` builds a one-node model per call (≈0.17 s on that model), so
these are computed here. ``evaluate`` returns None for anything it does not handle with certainty
(an opset whose signature differs, an invalid axis, an ambiguous shape): the caller then asks
``onnx.reference``, which also produces the error message for an invalid node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Inputs = list  # list[np.ndarray | None], in the node's input order
Attrs = Mapping[str, Any]  # onnx-graphsurgeon's node.attrs: ints, floats, lists, strings, tensors


def _ints(value) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in np.asarray(value).ravel()]
    except (TypeError, ValueError):
        return None


def _axes(axes: list[int], rank: int) -> list[int] | None:
    """Axes made non-negative; None when one is out of range or repeated (invalid: let the reference say so)."""
    out = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < rank for a in out) or len(set(out)) != len(out):
        return None
    return out


def _unsqueeze(inputs: Inputs, attrs: Attrs, opset: int) -> np.ndarray | None:
    x = inputs[0]
    axes = _ints(attrs.get("axes")) if opset < 13 else _ints(inputs[1] if len(inputs) > 1 else None)
    if x is None or not axes:
        return None
    if opset < 13 and (axes != sorted(axes) or min(axes) < 0):
        return None  # the attribute form: unsorted or negative axes are read differently by implementations
    rank = x.ndim + len(axes)
    axes = _axes(axes, rank)
    if axes is None:
        return None
    shape, dims = [], iter(x.shape)
    for k in range(rank):
        shape.append(1 if k in axes else next(dims))
    return x.reshape(shape)


def _squeeze(inputs: Inputs, attrs: Attrs, opset: int) -> np.ndarray | None:
    x = inputs[0]
    if x is None:
        return None
    axes = _ints(attrs.get("axes")) if opset < 13 else _ints(inputs[1] if len(inputs) > 1 else None)
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    axes = _axes(axes, x.ndim) if axes else None  # an empty axes tensor: the reference decides
    if axes is None or any(x.shape[a] != 1 for a in axes):
        return None
    return x.reshape([d for k, d in enumerate(x.shape) if k not in axes])


def _transpose(inputs: Inputs, attrs: Attrs, opset: int) -> np.ndarray | None:
    x = inputs[0]
    if x is None:
        return None
    perm = _ints(attrs.get("perm"))
    if perm is None:
        perm = list(range(x.ndim))[::-1]
    if sorted(perm) != list(range(x.ndim)):
        return None
    return np.transpose(x, perm).copy()


def _reshape(inputs: Inputs, attrs: Attrs, opset: int) -> np.ndarray | None:
    if opset < 5 or len(inputs) < 2 or inputs[0] is None:
        return None  # opset 1-4 take the shape as an attribute
    x, shape = inputs[0], _ints(inputs[1])
    if shape is None:
        return None
    allowzero = opset >= 14 and int(attrs.get("allowzero", 0) or 0) == 1
    if allowzero and 0 in shape and -1 in shape:
        return None  # invalid per the spec
    out = []
    for k, d in enumerate(shape):
        if d == 0 and not allowzero:
            if k >= x.ndim:
                return None
            d = x.shape[k]
        if d < -1:
            return None
        out.append(d)
    if out.count(-1) > 1:
        return None
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or x.size % known:
            return None
        out[out.index(-1)] = x.size // known
    if int(np.prod(out, dtype=np.int64)) != x.size:
        return None
    return x.reshape(out)


def _flatten(inputs: Inputs, attrs: Attrs, opset: int) -> np.ndarray | None:
    x = inputs[0]
    if x is None:
        return None
    axis = int(attrs.get("axis", 1))
    if axis < 0:
        if opset < 11:
            return None
        axis += x.ndim
    if not 0 <= axis <= x.ndim:
        return None
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(outer, -1) if outer else x.reshape(0, int(np.prod(x.shape[axis:], dtype=np.int64)))


def _concat(inputs: Inputs, attrs: Attrs, opset: int) -> np.ndarray | None:
    if "axis" not in attrs or not inputs or any(v is None for v in inputs):
        return None
    if len({v.dtype for v in inputs}) != 1 or len({v.ndim for v in inputs}) != 1:
        return None
    rank, axis = inputs[0].ndim, int(attrs["axis"])
    if axis < 0:
        if opset < 11:
            return None
        axis += rank
    if not 0 <= axis < rank:
        return None
    if any(v.shape[:axis] + v.shape[axis + 1:] != inputs[0].shape[:axis] + inputs[0].shape[axis + 1:] for v in inputs):
        return None
    return np.concatenate(inputs, axis=axis)


_OPS: dict[str, Callable[[Inputs, Attrs, int], np.ndarray | None]] = {
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Transpose": _transpose, "Reshape": _reshape,
    "Flatten": _flatten, "Concat": _concat,
}

#: The ops ``evaluate`` computes (others: None).
OPS = frozenset(_OPS)


def evaluate(op: str, inputs: Inputs, attrs: Attrs, opset: int) -> np.ndarray | None:
    """The single output of ONNX op ``op`` at ``opset`` on constant ``inputs``, or None when it is
    not one of ``OPS`` or the inputs are not ones it handles with certainty."""
    fn = _OPS.get(op)
    if fn is None:
        return None
    try:
        return fn(list(inputs), attrs, opset)
    except (ValueError, TypeError, IndexError, StopIteration):
        return None
