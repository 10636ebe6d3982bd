"""Tiny models in ONNX text for the layout, activation and concat rules (tests/test_layout.py,
tests/test_activation_scale.py, tests/test_concat_bn.py, and bench/patterns.py).

A test writes its graph in ONNX text (``onnx.parser`` syntax, nodes named ``[name] out = Op (...)``)
and passes the constants as arrays: ``text_model`` adds them as initializers and checks the model
(``full_check``). The arrays come from the helpers here, seeded: weights with He scaling, BN
statistics that differ a lot from channel to channel (a fold that scales the wrong channel or the
wrong weight axis changes the outputs far beyond any tolerance). Only onnx and numpy are used.
"""

from __future__ import annotations

import numpy as np
import onnx
from affine_builders import text_model
from linear_builders import spread_bn_stats

__all__ = ["bn", "positive_bn", "rng_for", "text_model", "weight", "vector", "elem"]


def rng_for(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def weight(rng: np.random.Generator, shape, dtype=np.float32) -> np.ndarray:
    """He-scaled weight; fan-in: every axis but the first (Conv ``[M, C/g, k...]``) or the first
    (MatMul / Gemm ``[K, N]``, pass ``fan_in``-first shapes as they are)."""
    shape = tuple(shape)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
    return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(dtype)


def vector(rng: np.random.Generator, shape, dtype=np.float32, low: float | None = None,
           high: float | None = None) -> np.ndarray:
    """Normal values, or uniform in [low, high) when given."""
    values = rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)
    return np.asarray(values).astype(dtype)


def bn(rng: np.random.Generator, channels: int, prefix: str = "bn", dtype=np.float32) -> dict[str, np.ndarray]:
    """``{prefix}_scale``, ``_bias``, ``_mean``, ``_var``: spread statistics (gamma of both signs)."""
    stats = spread_bn_stats(rng, channels)
    return {f"{prefix}_{k}": v.astype(dtype) for k, v in stats.items()}


def positive_bn(rng: np.random.Generator, channels: int, prefix: str = "bn", dtype=np.float32, *,
                shift: bool = False, gamma=None) -> dict[str, np.ndarray]:
    """Like ``bn`` with gamma > 0 (or ``gamma``); without ``shift`` bias and mean are zero: a pure scale."""
    stats = {k[len(prefix) + 1:]: v for k, v in bn(rng, channels, prefix, np.float64).items()}
    stats["scale"] = np.abs(stats["scale"]) if gamma is None else np.broadcast_to(np.asarray(gamma, float), (channels,))
    if not shift:
        stats["bias"] = np.zeros(channels)
        stats["mean"] = np.zeros(channels)
    return {f"{prefix}_{k}": np.asarray(v).astype(dtype) for k, v in stats.items()}


def elem(dtype) -> str:
    """The ONNX text name of a numpy float dtype (``float``, ``float16``, ``double``)."""
    return {np.dtype(np.float32): "float", np.dtype(np.float16): "float16",
            np.dtype(np.float64): "double"}[np.dtype(dtype)]


def declared(model: onnx.ModelProto, name: str, shape) -> onnx.ModelProto:
    """``model`` with a value_info entry declaring tensor ``name`` (float) of ``shape`` (None: unknown dim)."""
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    onnx.checker.check_model(model, full_check=True)
    return model



def expose(model: onnx.ModelProto, name: str, how: str, shape: list[int]) -> onnx.ModelProto:
    """Let something else see the float tensor ``name``: ``how`` "output" makes it a graph output too,
    "reader" gives it a second reader (Relu "side", whose output "side_out" is a graph output).
    The model is changed in place, checked (``full_check``) and returned."""
    graph = model.graph
    if how == "output":
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    else:
        graph.node.append(onnx.helper.make_node("Relu", [name], ["side_out"], name="side"))
        graph.output.append(onnx.helper.make_tensor_value_info("side_out", onnx.TensorProto.FLOAT, shape))
    onnx.checker.check_model(model, full_check=True)
    return model


# Models of the rules' own tests that bench/patterns.py measures too.

ACTIVATIONS = {
    # name: (activation reading c, PRelu's slope: per channel, per element or none)
    "relu": ("Relu (c)", None),
    "leaky-relu": ("LeakyRelu <alpha = 0.2> (c)", None),
    "prelu-per-channel": ("PRelu (c, slope)", "per-channel"),
    "prelu-per-element": ("PRelu (c, slope)", "per-element"),
}
CONVS = {
    # name: (X shape, W shape, output shape, the per-channel constant's shape)
    "conv1d": ("2, 3, 6", (6, 3, 3), "2, 6, 4", [6, 1]),
    "conv2d": ("2, 3, 6, 6", (6, 3, 3, 3), "2, 6, 4, 4", [6, 1, 1]),
    "conv3d": ("1, 3, 4, 4, 4", (6, 3, 3, 3, 3), "1, 6, 2, 2, 2", [1, 6, 1, 1, 1]),
}


def conv_act_scale(act: str, slope: str | None, conv: str, scale: str = "Mul", dtype=np.float32, seed: int = 0,
                   values=None, bias: bool = True, more: dict | None = None) -> onnx.ModelProto:
    """``X → Conv "conv" (W [, B]) → activation "act" [(slope)] → Mul / Div "scale" (k) → Y``."""
    x, w_shape, y, k_shape = CONVS[conv]
    rng, t = rng_for(seed), elem(dtype)
    k = vector(rng, k_shape, dtype, 0.3, 3.0) if values is None else np.asarray(values, dtype).reshape(k_shape)
    arrays = {"W": weight(rng, w_shape, dtype), "B": vector(rng, [6], dtype), "k": k}
    spatial = [int(d) for d in y.split(", ")[2:]]
    if slope is not None:  # PRelu's slope broadcasts to the output: per channel [6, 1, ...] or per element
        shape = [6] + (spatial if slope == "per-element" else [1] * len(spatial))
        arrays["slope"] = vector(rng, shape, dtype, 0.05, 0.5)
    if not bias:
        del arrays["B"]
    arrays.update(more or {})
    return text_model(f"""
        g ({t}[{x}] X) => ({t}[{y}] Y) {{
            [conv] c = Conv (X, W{", B" if bias else ""})
            [act] a = {act}
            [scale] Y = {scale} (a, k)
        }}""", arrays)


def conv_concat(dtype=np.float32, *, axis: int = 1, third: bool = True, seed: int = 0) -> onnx.ModelProto:
    """``X [2, 4, 5, 5]`` → Conv "c1" (3 channels, bias) , grouped Conv "c2" (4 channels, no bias)
    [, ConvTranspose "c3" (2 channels)] → Concat "cat" (axis) → BN "bn" → Y."""
    rng, t = rng_for(seed), elem(dtype)
    arrays = {"W1": weight(rng, (3, 4, 3, 3), dtype), "B1": vector(rng, [3], dtype),
              "W2": weight(rng, (4, 2, 3, 3), dtype), "W3": weight(rng, (4, 2, 1, 1), dtype)}
    channels = 3 + 4 + (2 if third else 0)
    arrays.update(bn(rng, channels, dtype=dtype))
    third_node = "[c3] y3 = ConvTranspose <kernel_shape = [1, 1], pads = [1, 1, 1, 1]> (X, W3)" if third else ""
    inputs = "y1, y2, y3" if third else "y1, y2"
    return text_model(f"""
        g ({t}[2, 4, 5, 5] X) => ({t}[2, {channels}, 3, 3] Y) {{
            [c1] y1 = Conv (X, W1, B1)
            [c2] y2 = Conv <group = 2> (X, W2)
            {third_node}
            [cat] z = Concat <axis = {axis}> ({inputs})
            [bn] Y = BatchNormalization (z, bn_scale, bn_bias, bn_mean, bn_var)
        }}""", arrays)


def matmul_transpose_bn(*, bias: bool = True, dtype=np.float32, batch: str = "2", seed: int = 0):
    """``X [B, 5, 4] → MatMul (W [4, 6]) [→ Add B] → Transpose(0, 2, 1) → BN over the 6 channels``."""
    rng, t = rng_for(seed), elem(dtype)
    arrays = {"W": weight(rng, (4, 6), dtype), **bn(rng, 6, dtype=dtype)}
    add = ""
    if bias:
        arrays["B"] = vector(rng, [6], dtype)
        add = "[add] a = Add (m, B)"
    return text_model(f"""
        g ({t}[{batch}, 5, 4] X) => ({t}[{batch}, 6, 5] Y) {{
            [matmul] m = MatMul (X, W)
            {add}
            [tr] tr_out = Transpose <perm = [0, 2, 1]> ({"a" if bias else "m"})
            [bn] Y = BatchNormalization (tr_out, bn_scale, bn_bias, bn_mean, bn_var)
        }}""", arrays)


def bn_transpose_model(reader: str, arrays: dict, out: str = "float[2, 5, 3] Y", x: str = "float[2, 6, 5] X"):
    rng = rng_for(15)
    return text_model(f"""
        g ({x}) => ({out}) {{
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [tr] t = Transpose <perm = [0, 2, 1]> (b)
            {reader}
        }}""", {**arrays, **bn(rng, 6)})
