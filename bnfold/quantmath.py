"""Pure numpy math of folds into quantized weights (QDQ models). No graph here: arrays in, arrays out.

A weight that comes through ``DequantizeLinear`` is ``W = (q - zp) * scale``: integers ``q``, a
float ``scale`` and an integer zero point ``zp`` (0 when absent), both broadcast over ``q`` in one
of three layouts (``Quantization``): per tensor (one value), per axis (one value per index of
``q.shape[axis]``) or blocked (opset 21: the rank of ``q``, each value covering ``block_size``
consecutive elements along ``axis``).

A per-channel factor ``s[c]`` on the weight's output-channel axis goes into the scale, exactly:

    s[c] * (q[c] - zp[c]) * scale[c]  =  (q[c] - zp[c]) * (s[c] * scale[c])

The integers do not change; the new scale is computed in float64 and rounded once to the scale's
dtype, and that rounding (2^-24 relative for float32) is the fold's only error. A per-tensor scale
becomes per-channel (the zero point is repeated to match), unless ``s`` is the same everywhere.

A negative ``s[c]`` never makes a scale negative (some runtimes assume positive scales): the
channel's integers are negated instead, ``q' = 2 zp - q`` (so ``q' - zp = -(q - zp)``), which is
exact only when every ``q'`` fits the integer type: with zero point 0 the type's minimum (-128
for int8) has no negation. Where it does not fit the fold is refused (``NoFold``).

The additive part goes into the bias. A bias stored as integers (int32 through DequantizeLinear)
is re-quantized: ``requantize`` rounds ``target / scale`` to the nearest integer, so the new bias
is within half a quantum (``scale / 2`` per channel) of the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import NoFold
from .foldmath import cast_checked, narrow

#: Integer types narrower than a byte: ONNX stores them packed, two or four to a byte.
_PACKED = ("int4", "uint4", "int2", "uint2")


def is_integer(dtype) -> bool:
    """Whether ``dtype`` is an integer type (numpy's, or ml_dtypes' 4-bit and 2-bit ones)."""
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.integer) or dtype.name in _PACKED


def is_packed(dtype) -> bool:
    """Integer types ONNX packs several to a byte (int4, uint4, int2, uint2)."""
    return np.dtype(dtype).name in _PACKED


def integer_limits(dtype) -> tuple[int, int]:
    """The smallest and largest value of integer type ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.name in _PACKED:
        import ml_dtypes

        packed = ml_dtypes.iinfo(dtype)
        return int(packed.min), int(packed.max)
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


@dataclass(frozen=True)
class Quantization:
    """How DequantizeLinear broadcasts ``scale`` and ``zero_point`` over the integers.

    ``axis`` is non-negative; it matters per axis and blocked. ``zero_point`` None: 0.
    """

    scale: np.ndarray
    zero_point: np.ndarray | None = None
    axis: int = 0
    block_size: int = 0

    @property
    def layout(self) -> str:
        """``"tensor"``, ``"axis"`` or ``"blocked"``."""
        if self.block_size:
            return "blocked"
        return "tensor" if self.scale.size == 1 and self.scale.ndim <= 1 else "axis"


def expand(param: np.ndarray, shape: tuple[int, ...], quant: Quantization) -> np.ndarray:
    """``param`` (shaped like ``quant.scale``) broadcast to the integers' ``shape`` as DequantizeLinear does."""
    param = np.asarray(param)
    layout = quant.layout
    if layout == "tensor":
        return np.broadcast_to(param.reshape(()), shape)
    if layout == "axis":
        view = [1] * len(shape)
        view[quant.axis] = param.size
        return np.broadcast_to(param.reshape(view), shape)
    repeated = np.repeat(param, quant.block_size, axis=quant.axis)
    return np.take(repeated, np.arange(shape[quant.axis]), axis=quant.axis)


def dequantize(q: np.ndarray, quant: Quantization) -> np.ndarray:
    """``(q - zp) * scale`` in float64: exact for integers and scales up to 29 bits together."""
    steps = np.asarray(q).astype(np.int64)
    if quant.zero_point is not None:
        steps = steps - expand(quant.zero_point, steps.shape, quant).astype(np.int64)
    return steps * expand(quant.scale, steps.shape, quant).astype(np.float64)


def _along(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A 1-D ``values`` shaped to broadcast along ``axis`` of an array of rank ``ndim``."""
    view = [1] * ndim
    view[axis] = values.size
    return values.reshape(view)


@dataclass(frozen=True)
class ScaleFold:
    """A quantized weight after a fold: its integers (the same array unless channels were negated),
    its quantization, and which output channels had their integers negated."""

    q: np.ndarray
    quant: Quantization
    negated: np.ndarray  # bool per output channel
    exact_scale: np.ndarray | None = None  # the float64 scale, when its dtype is float16 or bfloat16

    @property
    def integers_changed(self) -> bool:
        return bool(self.negated.any())


def negate_channels(q: np.ndarray, quant: Quantization, channels: np.ndarray, axis: int,
                    factors: np.ndarray | None = None) -> np.ndarray:
    """``q`` with every channel ``c`` along ``axis`` where ``channels[c]`` replaced by ``2 zp - q``:
    its dequantized values negated, exactly. NoFold when a negated value leaves the integer type.

    ``factors`` (per channel) only words the refusal.
    """
    lo, hi = integer_limits(q.dtype)
    wide = np.asarray(q).astype(np.int64)
    zp = np.zeros((), np.int64) if quant.zero_point is None else \
        expand(quant.zero_point, wide.shape, quant).astype(np.int64)
    flipped = 2 * zp - wide
    selected = np.broadcast_to(_along(np.asarray(channels, bool), wide.ndim, axis), wide.shape)
    bad = selected & ((flipped < lo) | (flipped > hi))
    if bad.any():
        where = np.unravel_index(int(np.argmax(bad)), wide.shape)
        c = int(where[axis])
        zero = int(np.broadcast_to(zp, wide.shape)[where])
        factor = "" if factors is None else f" ({float(factors[c]):.3g})"
        raise NoFold(
            f"the factor of output channel {c} is negative{factor} and negating its integers is not exact: "
            f"{int(wide[where])} with zero point {zero} has no negation in {np.dtype(q.dtype).name} [{lo}, {hi}]; "
            "bnfold does not make a scale negative (some runtimes assume positive scales)"
        )
    return np.where(selected, flipped, wide).astype(q.dtype)


def fold_into_scale(q: np.ndarray, quant: Quantization, s: np.ndarray, axis: int, what: str = "weight scale",
                    precise_scale: np.ndarray | None = None, dtype: np.dtype | None = None) -> ScaleFold:
    """Multiply output channel ``c`` (along ``axis`` of ``q``) of a quantized weight by ``s[c]``.

    Returns the new integers, scale (rounded once to the scale's dtype, checked by
    ``foldmath.cast_checked``) and zero point: ``dequantize`` of the result equals ``s[c]`` times
    ``dequantize`` of the input, to that one rounding. ``precise_scale``: the unrounded values of a
    float16/bfloat16 scale an earlier fold wrote (the math starts there; see ``FoldGraph.precise``).
    ``dtype``: the dtype to write the new scale in (default the scale's own); a float16 scale whose
    DequantizeLinear produces float32 (``output_dtype``) is written as float32, so that the fold
    is as precise as the data it affects (widening the old scale is exact).

    Layouts: ``s`` the same for every channel scales any layout as it is. Otherwise the scale must
    carry the output channels: per tensor (it becomes per channel along ``axis``, the zero point
    repeated), per axis on ``axis``, or blocked along another axis; NoFold for per axis on another
    axis or blocked along ``axis``. NoFold too for a factor 0 (the scale would be 0), a negative
    factor whose channel cannot be negated exactly (``negate_channels``), and a scale that
    overflows or underflows its dtype.
    """
    s = np.asarray(s, dtype=np.float64).ravel()
    channels = q.shape[axis]
    if s.size != channels:
        raise ValueError(f"{s.size} factors for {channels} output channels")
    if np.any(s == 0):
        raise NoFold(f"the factor of output channel {int(np.argmax(s == 0))} is 0: {what} would be 0")
    negative = s < 0
    q_new = negate_channels(q, quant, negative, axis, s) if negative.any() else q
    magnitude = np.abs(s)
    scale = np.asarray(quant.scale if precise_scale is None else precise_scale).astype(np.float64)
    layout, new = quant.layout, quant
    if np.all(magnitude == magnitude[0]):
        scaled = scale * magnitude[0]
    elif layout == "tensor":
        scaled = np.full(channels, scale.reshape(()), dtype=np.float64) * magnitude
        zp = None if quant.zero_point is None else np.full(channels, quant.zero_point.reshape(()),
                                                               dtype=quant.zero_point.dtype)
        new = Quantization(quant.scale, zp, axis, 0)
    elif layout == "axis" and quant.axis == axis:
        scaled = scale * magnitude
    elif layout == "blocked" and quant.axis != axis:
        scaled = scale * _along(magnitude, scale.ndim, axis)
    elif layout == "axis":
        raise NoFold(f"{what} is per channel along axis {quant.axis} of the weight, not along its "
                     f"output-channel axis {axis}: a per-channel factor does not fit it")
    else:
        raise NoFold(f"{what} is blocked along the weight's output-channel axis {axis} (block_size "
                     f"{quant.block_size}): a per-channel factor does not fit it")
    original = np.broadcast_to(np.asarray(quant.scale).reshape(-1)[0] if layout == "tensor" else quant.scale,
                               scaled.shape)
    dtype = np.dtype(quant.scale.dtype if dtype is None else dtype)
    cast = cast_checked(scaled, dtype, what, original=original)
    exact = scaled if narrow(dtype) else None
    return ScaleFold(q_new, replace(new, scale=cast.reshape(scaled.shape)), negative, exact)


# -- biases -------------------------------------------------------------------------------------


def product_convention(bias_scale, input_scale: float, weight_scale) -> bool:
    """Whether ``bias_scale == input_scale * weight_scale`` (per channel, broadcast) to a float32
    rounding or two: the convention of onnxruntime's quantizer and of PyTorch, under which the
    int32 bias adds straight to the integer accumulator."""
    expected = float(input_scale) * np.asarray(weight_scale, dtype=np.float64)
    got = np.asarray(bias_scale, dtype=np.float64)
    return bool(np.all(np.abs(got - expected) <= 2.0 ** -22 * np.abs(expected)))


def requantize(target: np.ndarray, quant: Quantization, dtype, what: str = "bias") -> tuple[np.ndarray, float]:
    """Integers of ``dtype`` whose dequantization with ``quant`` is nearest to ``target`` (float64),
    rounded half to even, and the bound on the error: ``max |scale| / 2`` (half a quantum).

    NoFold when an integer leaves the range of ``dtype`` (int32: a bias too large for its scale).
    """
    target = np.asarray(target, dtype=np.float64)
    scale = expand(quant.scale, target.shape, quant).astype(np.float64)
    steps = np.rint(target / scale)
    if quant.zero_point is not None:
        steps = steps + expand(quant.zero_point, target.shape, quant).astype(np.float64)
    lo, hi = integer_limits(dtype)
    if not np.all(np.isfinite(steps)) or np.any(steps < lo) or np.any(steps > hi):
        worst = float(np.max(np.abs(np.nan_to_num(steps, nan=np.inf))))
        raise NoFold(f"re-quantized {what} overflows {np.dtype(dtype).name} (|value| {worst:.4g} outside "
                     f"[{lo}, {hi}])")
    return steps.astype(dtype), float(np.max(np.abs(scale))) / 2.0 if scale.size else 0.0
