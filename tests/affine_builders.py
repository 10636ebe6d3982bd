"""Models for the affine-linear and bn-scale tests: a linear op (or a BN) followed by a chain of
Mul / Add / Sub / Div by constants.

Every builder returns a model that passes ``onnx.checker.check_model(full_check=True)``. Naming
conventions the tests rely on:

* the linear op is ``"lin"`` with weight ``"W"`` and bias ``"B"`` (MatMul: bias Add ``"bias_add"``
  reading ``"B"``); its output is ``"lin_out"``;
* step ``k`` of the chain is node ``"op<k>"`` reading constant ``"c<k>"``; it writes ``"t<k>"``,
  the last one ``"Y"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class Step:
    """One elementwise op: ``y <op> c`` (or ``c <op> y`` with ``constant_first``), c of ``shape``."""

    op: str
    shape: tuple[int, ...]
    constant_first: bool = False
    value: np.ndarray | None = None  # default: random in ±[0.5, 2], never zero


def text_model(text: str, initializers: dict[str, np.ndarray], *, opset: int = 17,
               ir_version: int = 8) -> onnx.ModelProto:
    """A model from ONNX text (graph only, without header) plus initializers given as arrays."""
    model = onnx.parser.parse_model(f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>\n{text}')
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items())
    if ir_version < 4:
        model.graph.input.extend(helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                                               list(np.shape(v))) for k, v in initializers.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def _step_value(rng: np.random.Generator, step: Step, dtype) -> np.ndarray:
    if step.value is not None:
        return np.asarray(step.value, dtype=dtype).reshape(step.shape)
    magnitude = rng.uniform(0.5, 2.0, size=step.shape)
    sign = np.where(rng.random(step.shape) < 0.5, -1.0, 1.0)
    return np.asarray(magnitude * sign).astype(dtype)


def _linear(kind: str, rng: np.random.Generator, *, bias: bool, group: int, trans_b: bool, width: int, dtype):
    """Nodes, initializers, input shape and output shape of the linear op ``kind``."""
    init: dict[str, np.ndarray] = {}
    nodes = []
    if kind == "Conv":
        x_shape, out_shape = [1, 4, 6, width], [1, 8, 6, width]
        init["W"] = rng.standard_normal((8, 4 // group, 3, 3)) * 0.3
        attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)
    elif kind == "ConvTranspose":
        x_shape, out_shape = [1, 4, 5, 5], [1, 4 * group, 5, 5]
        init["W"] = rng.standard_normal((4, 4, 3, 3)) * 0.3  # [C_in, C_out / group, k, k]
        attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)
    elif kind == "Gemm":
        x_shape, out_shape = [3, 5], [3, 8]
        init["W"] = rng.standard_normal((8, 5) if trans_b else (5, 8)) * 0.5
        attrs = dict(alpha=0.75, beta=1.5, transB=int(trans_b))
    elif kind == "MatMul":
        x_shape, out_shape = [3, 5], [3, 8]
        init["W"] = rng.standard_normal((5, 8)) * 0.5
        attrs = {}
    else:
        raise ValueError(kind)
    channels = out_shape[1]
    if kind == "MatMul":
        nodes.append(helper.make_node("MatMul", ["X", "W"], ["lin_out" if not bias else "mm_out"], name="lin"))
        if bias:
            init["B"] = rng.standard_normal(channels) * 0.5
            nodes.append(helper.make_node("Add", ["mm_out", "B"], ["lin_out"], name="bias_add"))
    else:
        inputs = ["X", "W"]
        if bias:
            init["B"] = rng.standard_normal(channels) * 0.5
            inputs.append("B")
        nodes.append(helper.make_node(kind, inputs, ["lin_out"], name="lin", **attrs))
    return nodes, {k: v.astype(dtype) for k, v in init.items()}, x_shape, out_shape


def linear_chain_model(kind: str = "Conv", steps: list[Step] = (), *, bias: bool = True, group: int = 1,
                       trans_b: bool = False, width: int = 6, dtype=np.float32, seed: int = 0,
                       opset: int = 17) -> onnx.ModelProto:
    """``X → lin (kind) → op0 → op1 → ... → Y``; see the module docstring for the names.

    Conv: X ``[1, 4, 6, width]`` → ``[1, 8, 6, width]`` (3x3, pads 1); ConvTranspose: X ``[1, 4, 5, 5]``
    → ``[1, 4 * group, 5, 5]``; Gemm (alpha 0.75, beta 1.5) and MatMul: X ``[3, 5]`` → ``[3, 8]``.
    """
    rng = np.random.default_rng(seed)
    nodes, init, x_shape, out_shape = _linear(kind, rng, bias=bias, group=group, trans_b=trans_b, width=width,
                                              dtype=dtype)
    current = "lin_out"
    for k, step in enumerate(steps):
        init[f"c{k}"] = _step_value(rng, step, dtype)
        out = "Y" if k == len(steps) - 1 else f"t{k}"
        operands = [f"c{k}", current] if step.constant_first else [current, f"c{k}"]
        nodes.append(helper.make_node(step.op, operands, [out], name=f"op{k}"))
        out_shape = list(np.broadcast_shapes(tuple(out_shape), step.shape))
        current = out
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes, "affine_chain", [helper.make_tensor_value_info("X", elem, x_shape)],
        [helper.make_tensor_value_info(current, elem, out_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def bn_stats(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    return {
        "bn_scale": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        "bn_bias": rng.standard_normal(channels).astype(np.float32),
        "bn_mean": rng.standard_normal(channels).astype(np.float32),
        "bn_var": rng.uniform(0.5, 2.0, channels).astype(np.float32),
    }
