"""Pure numpy functions for the fold math. No graph here: arrays in, arrays out.

BatchNormalization in inference computes ``y = gamma * (x - mean) / sqrt(var + eps) + beta``,
i.e. the per-channel affine map ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s``. A linear op ``x = W * u + b`` followed by it is the linear op with
``W' = s * W`` (scaled along the weight's output-channel axis: ``scale_along_axis``,
``scale_cast_checked``) and ``b' = s * b + t``; ``rules/_linear.py`` applies that to each op type
(``fold_affine``), since where the channels sit and how the bias is stored differ per op.

All math runs in float64; results are cast once to the weight's dtype by ``cast_checked``, which
refuses casts that overflow or lose precision the unfolded graph did not lose.
"""

from __future__ import annotations

import functools

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
    weight = np.asarray(weight)
    shape = [1] * weight.ndim
    shape[axis] = scale.size
    # One float64 result, the weight converted on the fly (no float64 copy of it first): 5x faster.
    return np.multiply(weight, np.asarray(scale, dtype=np.float64).reshape(shape), dtype=np.float64)


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


@functools.lru_cache(maxsize=None)
def _finfo(dtype: np.dtype):
    """Limits of a float dtype (cached: numpy builds them anew each call, 10 us)."""
    if dtype.name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


def narrow(dtype) -> bool:
    """float16, bfloat16 and narrower floats: where a second rounding of a folded value costs
    precision worth keeping (folds remember the unrounded values, ``FoldGraph.precise``)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "fV" and dtype.itemsize <= 2


def holds(dest, data) -> bool:
    """Whether float dtype ``dest`` represents every value of float dtype ``data`` exactly
    (at least as many mantissa bits and as wide an exponent range)."""
    dest, data = np.dtype(dest), np.dtype(data)
    if not (_is_float(dest) and _is_float(data)):
        return dest == data
    a, b = _finfo(dest), _finfo(data)
    return a.nmant >= b.nmant and a.maxexp >= b.maxexp and a.minexp <= b.minexp


#: Parameter dtypes a fold may widen to, narrowest first.
_WIDENINGS = ("float16", "bfloat16", "float32", "float64")


def widened(stored, data) -> np.dtype:
    """The dtype a folded parameter needs: ``stored`` when it is at least as precise as the data
    path ``data`` it affects, else the narrowest float dtype that holds both (float16 and
    bfloat16 widen to float32). Widening is exact: every stored value is kept."""
    stored, data = np.dtype(stored), np.dtype(data)
    if holds(stored, data):
        return stored
    for name in _WIDENINGS:
        candidate = _float_dtype(name)
        if holds(candidate, stored) and holds(candidate, data):
            return candidate
    return stored


def _float_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def scale_cast_checked(weight: np.ndarray, scale: np.ndarray, axis: int, what: str) -> np.ndarray:
    """``cast_checked(scale_along_axis(weight, scale, axis), weight.dtype, what, original=weight)``
    without the float64 array in between.

    numpy multiplies in float64 and rounds each product into the weight's dtype as it goes: the
    same values as the two-step form, a third of the memory traffic and no weight-sized float64
    allocation. Any result that could be refused (non-finite, zero or subnormal) sends the whole
    weight through the two-step form, which decides and words the refusal.
    """
    weight = np.asarray(weight)
    if weight.dtype not in (np.float32, np.float16, np.float64):  # bfloat16 & co: no numpy loops
        return cast_checked(scale_along_axis(weight, scale, axis), weight.dtype, what, original=weight)
    shape = [1] * weight.ndim
    shape[axis] = scale.size
    out = np.empty(weight.shape, dtype=weight.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(weight, np.asarray(scale, dtype=np.float64).reshape(shape), out=out, dtype=np.float64,
                    casting="unsafe")
    tiny = _finfo(weight.dtype).tiny
    # max/min propagate NaN and see inf; the |x| < tiny test allocates bools only (a float |out|
    # would be one more weight-sized array).
    finite = out.size == 0 or bool(np.isfinite(out.max()) and np.isfinite(out.min()))
    if not finite or np.logical_and(out > -tiny, out < tiny).any():
        return cast_checked(scale_along_axis(weight, scale, axis), weight.dtype, what, original=weight)
    return out


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
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected and reported just below
        cast = values.astype(dtype)
    if not np.all(np.isfinite(cast)):
        if not np.all(np.isfinite(values)):
            raise NoFold(f"folded {what} has non-finite values")
        peak = float(np.max(np.abs(values)))
        raise NoFold(f"folded {what} overflows {dtype.name} (max |value| {peak:.4g} > {float(info.max):.4g})")
    if original is not None:
        tiny = float(info.tiny)
        small = np.abs(cast) < tiny  # zeros and subnormals: rare, so the exact test runs on few elements
        if np.any(small):
            folded, orig = values[small], np.abs(np.asarray(original)[small].astype(np.float64))
            lost = (folded != 0) & (orig >= tiny)
            if np.any(lost):
                smallest = float(np.min(np.abs(folded[lost])))
                raise NoFold(
                    f"folded {what} underflows {dtype.name} (|value| {smallest:.3g} below the smallest normal "
                    f"{tiny:.3g}); the unfolded graph keeps that precision"
                )
    return cast


# -- an affine map BEFORE a linear op ----------------------------------------------------------------
#
# ``L(s * x + t)`` with the affine map on the linear op's INPUT channels: the scale goes into the
# weight along its input-channel axis and the shift becomes a bias, ``L(t)`` without L's own bias:
#
#     W (s x + t) + b  =  (W diag(s)) x + (b + W t)
#
# This is exact only where every output sums over whole input positions: a padded Conv border
# sees zeros where the unfolded graph saw ``t`` (the rule refuses padded convs; these functions
# assume no padding).


def conv_input_channels(out_channels: int, in_per_group: int, group: int) -> np.ndarray:
    """``c[m, i]``: the input channel that Conv weight element ``W[m, i, ...]`` reads.

    The weight is ``[M, C/g, k...]``; output channel m belongs to group ``m // (M/g)``, whose
    input channels start at ``(m // (M/g)) * (C/g)``. Integer array of shape ``[M, C/g]``.
    """
    if group < 1 or out_channels % group:
        raise ValueError(f"{out_channels} output channels are not divisible by group {group}")
    m = np.arange(out_channels)[:, None]
    i = np.arange(in_per_group)[None, :]
    return (m // (out_channels // group)) * in_per_group + i


def fold_affine_into_conv_input(weight, bias, s: np.ndarray, t: np.ndarray,
                                group: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``Conv(s * x + t)`` (s, t over the input channels) into ``Conv'(x)``; float64 ``(W', b')``.

    ``W'[m, i, k] = W[m, i, k] * s[c(m, i)]`` and ``b'[m] = b[m] + sum_{i,k} W[m, i, k] * t[c(m, i)]``
    with ``c`` from ``conv_input_channels`` (grouped and depthwise convs). ``bias`` may be None
    (b = 0). Valid for any strides and dilations, and only without padding.
    """
    w = np.asarray(weight, dtype=np.float64)
    s, t = np.asarray(s, dtype=np.float64).ravel(), np.asarray(t, dtype=np.float64).ravel()
    channels = conv_input_channels(w.shape[0], w.shape[1], group)
    if s.size != w.shape[1] * group or t.size != s.size:
        raise ValueError(f"{s.size} scales for a weight {list(w.shape)} with group {group}")
    spread = (slice(None), slice(None)) + (None,) * (w.ndim - 2)  # [M, C/g] -> [M, C/g, 1, ...]
    w_new = w * s[channels][spread]
    shift = np.sum(w * t[channels][spread], axis=tuple(range(1, w.ndim)))
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64).reshape(w.shape[0])
    return w_new, b + shift


def fold_affine_into_gemm_input(b_matrix, c, s: np.ndarray, t: np.ndarray, alpha: float, beta: float,
                                trans_b: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``Gemm(s * A + t, B, C)`` (transA = 0; s, t over A's columns, the K axis) into ``Gemm'(A)``.

    ``alpha (s A + t) B' + beta C = alpha A (diag(s) B') + (beta C + alpha t B')`` with ``B' = B``
    (``[K, N]``) or ``B^T`` with ``trans_b``. Returns float64 ``(B'', C'')``: B scaled along its K
    axis (0, or 1 with ``trans_b``), and the new C for ``beta = 1``: ``beta C + alpha t B'``,
    broadcast (C scalar, [N], [1, N] give [N] or [1, N]; [M, 1] and [M, N] give [M, N]). ``c`` may
    be None (no C).
    """
    b = np.asarray(b_matrix, dtype=np.float64)
    s, t = np.asarray(s, dtype=np.float64).ravel(), np.asarray(t, dtype=np.float64).ravel()
    k_axis = 1 if trans_b else 0
    if b.ndim != 2 or b.shape[k_axis] != s.size or t.size != s.size:
        raise ValueError(f"{s.size} scales for B {list(b.shape)} with transB={int(bool(trans_b))}")
    b_eff = b.T if trans_b else b  # [K, N]
    shift = float(alpha) * (t @ b_eff)  # [N]
    if c is None:
        return scale_along_axis(b, s, k_axis), shift
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > 2 or c.ndim >= 1 and c.shape[-1] not in (1, shift.size):
        raise ValueError(f"C of shape {list(c.shape)} does not broadcast to [M, {shift.size}]")
    return scale_along_axis(b, s, k_axis), float(beta) * c + shift


def fold_affine_into_matmul_input(weight, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``MatMul(s * A + t, W)`` (W ``[K, N]``; s, t over A's last axis K) into ``MatMul(A, W') + shift``.

    Returns float64 ``(W', shift)``: ``W' = diag(s) W`` and ``shift = t W`` (``[N]``), the bias the
    folded MatMul needs added to reproduce the original product.
    """
    w = np.asarray(weight, dtype=np.float64)
    s, t = np.asarray(s, dtype=np.float64).ravel(), np.asarray(t, dtype=np.float64).ravel()
    if w.ndim != 2 or w.shape[0] != s.size or t.size != s.size:
        raise ValueError(f"{s.size} scales for a MatMul weight {list(w.shape)}")
    return scale_along_axis(w, s, 0), t @ w
