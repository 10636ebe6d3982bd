"""Pure numpy functions for the fold math. No graph here: arrays in, arrays out.

BatchNormalization in inference computes ``y = gamma * (x - mean) / sqrt(var + eps) + beta``,
i.e. the per-channel affine map ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s``. A linear op ``x = W * u + b`` followed by it is the linear op with
``W' = s * W`` (scaled along the weight's output-channel axis) and ``b' = s * b + t``.

All math runs in float64; results are cast once to the weight's dtype by ``cast_checked``, which
refuses casts that overflow or lose precision the unfolded graph did not lose.
"""

from __future__ import annotations

import numpy as np

from .errors import NoFold


def bn_affine(gamma, beta, mean, var, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(s, t)`` in float64 with ``BN(x) = s * x + t`` per channel.

    Raises NoFold when the statistics cannot define a finite affine map (non-finite values,
    ``var + epsilon <= 0``).
    """
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64) for a in (gamma, beta, mean, var))
    for label, a in (("scale", gamma), ("bias", beta), ("mean", mean), ("variance", var)):
        if not np.all(np.isfinite(a)):
            raise NoFold(f"BatchNormalization {label} has non-finite values")
    denom = var + float(epsilon)
    if np.any(denom <= 0):
        channel = int(np.argmax(denom <= 0))
        raise NoFold(f"variance + epsilon is not positive (channel {channel}: {denom.flat[channel]:.3g})")
    s = gamma / np.sqrt(denom)
    t = beta - mean * s
    return s, t


def scale_along_axis(weight: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """``weight * scale`` with ``scale`` (1-D, length ``weight.shape[axis]``) broadcast along ``axis``, in float64."""
    shape = [1] * weight.ndim
    shape[axis] = scale.size
    return np.asarray(weight, dtype=np.float64) * scale.reshape(shape)


def fold_affine_into_linear(weight, bias, s: np.ndarray, t: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``y = s * (W u + b) + t`` into ``y = W' u + b'``; returns float64 ``(W', b')``.

    ``axis`` is the weight axis that carries the output channels (0 for Conv). ``bias`` may be
    None (no bias: b = 0).
    """
    w_new = scale_along_axis(weight, s, axis)
    b = np.zeros_like(s) if bias is None else np.asarray(bias, dtype=np.float64).reshape(s.shape)
    return w_new, b * s + t


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def _finfo(dtype: np.dtype):
    if dtype.name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


def cast_checked(values: np.ndarray, dtype, what: str, original: np.ndarray | None = None) -> np.ndarray:
    """Cast float64 ``values`` to ``dtype`` once, refusing results that are not exact up to rounding.

    Refuses (NoFold) when a value is non-finite in ``dtype`` (overflow: e.g. a float16 weight
    scaled by a BN with tiny variance exceeds 65504), and, when ``original`` is given, when a
    non-zero value falls below the smallest normal number of ``dtype`` where the original element
    did not: the folded weight would lose precision (or vanish) that the unfolded graph kept.
    """
    dtype = np.dtype(dtype)
    if not _is_float(dtype):
        raise NoFold(f"{what} has dtype {dtype.name}; only floating-point weights fold")
    info = _finfo(dtype)
    if not np.all(np.isfinite(values)):
        raise NoFold(f"folded {what} has non-finite values")
    with np.errstate(over="ignore"):  # overflow is detected and reported just below
        cast = values.astype(dtype)
    if not np.all(np.isfinite(cast)):
        peak = float(np.max(np.abs(values)))
        raise NoFold(f"folded {what} overflows {dtype.name} (max |value| {peak:.4g} > {float(info.max):.4g})")
    if original is not None:
        tiny = float(info.tiny)
        orig = np.abs(np.asarray(original, dtype=np.float64))
        lost = (values != 0) & (np.abs(values) < tiny) & (orig >= tiny)
        if np.any(lost):
            smallest = float(np.min(np.abs(values[lost])))
            raise NoFold(
                f"folded {what} underflows {dtype.name} (|value| {smallest:.3g} below the smallest normal "
                f"{tiny:.3g}); the unfolded graph keeps that precision"
            )
    return cast
