"""Tiny models in ONNX text for the layout, activation and concat rules (tests/test_layout.py,
tests/test_activation.py, tests/test_concat.py).

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
