"""Models for the BatchNormalization → linear op tests (``test_bn_linear.py``).

A model is put together from parts: ``Parts`` holds the graph pieces, ``bn`` adds the
BatchNormalization "bn" (statistics ``bn_scale``, ``bn_bias``, ``bn_mean``, ``bn_var``, output
``bn_out``), and ``conv``, ``gemm``, ``matmul`` add a reader of a tensor. The ``*_model``
functions build the common shapes in one call. Only onnx.helper and numpy are used; every model
passes ``onnx.checker.check_model(full_check=True)`` unless its docstring says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class Parts:
    dtype: type = np.float32
    seed: int = 0
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    @property
    def elem(self) -> int:
        return helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))

    def const(self, name: str, values) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(values).astype(self.dtype), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> onnx.NodeProto:
        node = helper.make_node(op, inputs, outputs, name=name, **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return node

    def input(self, name: str, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, self.elem, shape))
        return name

    def output(self, name: str, rank: int) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, self.elem, [None] * rank))
        return name

    def model(self, opset: int = 17, check: bool = True) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "bn_linear", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        if check:
            onnx.checker.check_model(model, full_check=True)
        return model


def bn(p: Parts, x: str, channels: int, *, name: str = "bn", out: str | None = None, eps: float | None = None,
       training_mode: int | None = None, gamma=None, var=None) -> str:
    """BN ``name`` over ``channels`` with random, trained-looking statistics (|gamma| in [0.5, 1.5]),
    named ``{name}_scale`` ... ``{name}_var``; its output is ``{name}_out`` unless ``out`` says otherwise."""
    out = out or f"{name}_out"
    sign = p.rng.choice([-1.0, 1.0], channels)
    stats = {
        "scale": sign * p.rng.uniform(0.5, 1.5, channels) if gamma is None else gamma,
        "bias": p.rng.standard_normal(channels),
        "mean": p.rng.standard_normal(channels),
        "var": p.rng.uniform(0.5, 2.0, channels) if var is None else var,
    }
    names = [p.const(f"{name}_{k}", np.broadcast_to(v, (channels,))) for k, v in stats.items()]
    # training_mode=1 requires the running statistics outputs (declared, unused)
    outputs = [out] + ([f"{name}_running_mean", f"{name}_running_var"] if training_mode else [])
    p.node("BatchNormalization", [x, *names], outputs, name, epsilon=eps, training_mode=training_mode)
    return out


def conv(p: Parts, x: str, name: str, *, c_in: int, c_out: int, rank: int = 2, kernel: int = 3, group: int = 1,
         bias: bool = True, weight: str | None = None, out: str | None = None, strides=None, dilations=None,
         pads=None, auto_pad=None, weight_values=None) -> str:
    """Conv ``name`` reading ``x``; weight ``{name}_W`` (or the tensor ``weight``), bias ``{name}_B``."""
    inputs = [x]
    if weight is None:
        shape = (c_out, c_in // group) + (kernel,) * rank
        fan_in = int(np.prod(shape[1:]))
        values = p.rng.standard_normal(shape) / np.sqrt(fan_in) if weight_values is None else weight_values
        weight = p.const(f"{name}_W", values)
    inputs.append(weight)
    if bias:
        inputs.append(p.const(f"{name}_B", p.rng.standard_normal(c_out)))
    out = out or f"{name}_out"
    per_axis = lambda v, n: None if v is None else [v] * n if isinstance(v, int) else list(v)  # noqa: E731
    p.node("Conv", inputs, [out], name, kernel_shape=[kernel] * rank, group=group if group != 1 else None,
           strides=per_axis(strides, rank), dilations=per_axis(dilations, rank), pads=per_axis(pads, 2 * rank),
           auto_pad=auto_pad)
    return out


GEMM_C_SHAPES = {"none": None, "scalar": (), "one": (1,), "vector": ("n",), "row": (1, "n"), "column": ("m", 1),
                 "full": ("m", "n")}


def gemm(p: Parts, a: str, name: str, *, m: int, k: int, n: int, trans_a: int = 0, trans_b: int = 0,
         alpha: float | None = None, beta: float | None = None, c: str = "vector", out: str | None = None,
         weight: str | None = None) -> str:
    """Gemm ``name``: ``alpha * A' B' + beta * C``, B ``{name}_B``, C ``{name}_C`` shaped per ``GEMM_C_SHAPES``."""
    if weight is None:
        weight = p.const(f"{name}_B", p.rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k))
    inputs = [a, weight]
    shape = GEMM_C_SHAPES[c]
    if shape is not None:
        dims = [{"m": m, "n": n}.get(d, d) for d in shape]
        inputs.append(p.const(f"{name}_C", p.rng.standard_normal(dims)))
    out = out or f"{name}_out"
    p.node("Gemm", inputs, [out], name, transA=trans_a or None, transB=trans_b or None, alpha=alpha, beta=beta)
    return out


def matmul(p: Parts, a: str, name: str, *, k: int, n: int, bias: str | None = "vector", out: str | None = None,
           weight: str | None = None) -> str:
    """MatMul ``name`` (weight ``{name}_W`` [k, n]), then, unless ``bias`` is None, Add ``{name}_add`` of
    ``{name}_b`` shaped ``[n]`` ("vector"), ``[1, n]`` ("row"), ``[]`` ("scalar") or ``[2, n]`` ("full")."""
    if weight is None:
        weight = p.const(f"{name}_W", p.rng.standard_normal((k, n)) / np.sqrt(k))
    product = out or f"{name}_out"
    if bias is not None:
        product = f"{name}_product"
    p.node("MatMul", [a, weight], [product], name)
    if bias is None:
        return product
    shape = {"vector": (n,), "row": (1, n), "scalar": (), "full": (2, n)}[bias]
    b = p.const(f"{name}_b", p.rng.standard_normal(shape))
    out = out or f"{name}_out"
    p.node("Add", [product, b], [out], f"{name}_add")
    return out


# -- whole models ---------------------------------------------------------------------------------


def bn_conv_model(*, rank: int = 2, c_in: int = 4, c_out: int = 6, spatial: int = 7, batch: int = 2,
                  convs: int = 1, seed: int = 0, dtype=np.float32, opset: int = 17, bn_kwargs=None,
                  **conv_kwargs) -> onnx.ModelProto:
    """``X [batch, c_in, spatial...] → BN "bn" → Conv "conv" → Y`` (and ``→ Conv "conv2" → Y2`` with
    ``convs=2``, with its own weights)."""
    p = Parts(dtype, seed)
    x = p.input("X", [batch, c_in] + [spatial] * rank)
    y = bn(p, x, c_in, **(bn_kwargs or {}))
    for i in range(convs):
        name = "conv" if i == 0 else f"conv{i + 1}"
        p.output(conv(p, y, name, c_in=c_in, c_out=c_out, rank=rank, out="Y" if i == 0 else f"Y{i + 1}",
                      **conv_kwargs), rank + 2)
    return p.model(opset)


def bn_gemm_model(*, m: int = 3, k: int = 5, n: int = 4, seed: int = 0, dtype=np.float32,
                  **gemm_kwargs) -> onnx.ModelProto:
    """``X [m, k] → BN "bn" → Gemm "gemm" → Y`` (X is [k, m] with transA=1, BN then over m)."""
    p = Parts(dtype, seed)
    trans_a = gemm_kwargs.get("trans_a", 0)
    x = p.input("X", [k, m] if trans_a else [m, k])
    y = bn(p, x, m if trans_a else k)
    p.output(gemm(p, y, "gemm", m=m, k=k, n=n, out="Y", **gemm_kwargs), 2)
    return p.model()


def bn_matmul_model(*, batch: int = 3, k: int = 5, n: int = 4, seed: int = 0, dtype=np.float32,
                    x_shape=None, **matmul_kwargs) -> onnx.ModelProto:
    """``X [batch, k] → BN "bn" → MatMul "mm" (→ Add "mm_add") → Y``."""
    p = Parts(dtype, seed)
    shape = [batch, k] if x_shape is None else x_shape
    x = p.input("X", shape)
    y = bn(p, x, shape[1])
    p.output(matmul(p, y, "mm", k=k, n=n, out="Y", **matmul_kwargs), len(shape))
    return p.model()
