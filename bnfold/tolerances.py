"""Validation tolerances: the one place that defines them.

The criterion, per output, relative to its scale ``S`` (largest finite ``|original|``) and the
epsilon ``eps`` of its dtype (2^-23 for float32), in two stages (``bnfold.compare`` measures):

1. **Fast pass**: ``max |folded - original| <= FAST_PASS_EPS * eps * S`` (256 eps: 3.05e-5 x S
   for float32; float64 likewise in its own eps), and ``NARROW_FAST_PASS_EPS`` (2) of their own
   eps for float16 and bfloat16, which round at 2^-11 and 2^-8. Correct folds of the corpus need
   at most 183 float32 eps on normal and image-like inputs (docs/VALIDATION.md); every known
   precision loss needs more (a float32 constant rounded into a float16 bias: 1,720 eps; a
   folded bias 2^-12 off: 762).
2. **Exact reference** (when the fast pass fails, or always with ``reference="float64"``): the
   original widened to float64 (``bnfold.widen``) gives the exact answer ``E``, and the fold
   passes when ``max |folded - E| <= EXACT_FACTOR * max |original - E| + EXACT_FLOOR_EPS * eps * S``:
   the folded model is about as far from what the graph means as the original is. The factor
   is 8: another float32 evaluation order of the same graph lands up to 4.2x as far from exact
   as the original on the corpus (regnet on ten-times-larger inputs), a precision loss hundreds
   of times as far. Deep chains, where the float32 original is itself far from exact, pass. An
   input set on which the original is more than ``UNSTABLE`` (2^-10; for float16 and bfloat16 64
   of their eps) of the scale from exact is numerically unstable for the model (efficientnet on ten-times-larger inputs: 3 %): it proves
   nothing either way and does not count.

Without an exact reference (the widened model cannot run, e.g. onnx.reference's MaxPool with
ceil_mode on googlenet), an output beyond the fast pass is ``failed`` above ``CLEAR_FAIL_EPS``
float32 eps of its scale (or 64 of its own dtype's, if more) and ``unproven`` below it. Outputs that are zero or not
finite everywhere (scale below the dtype's smallest normal) are uninformative: they pass whatever
the fold did, so they prove nothing. Booleans and integers must be equal.

**Quantized outputs.** An output produced by DequantizeLinear with a constant scale (directly, or
through ops that keep its values on the grid: Identity, Reshape, Flatten, Squeeze, Unsqueeze,
Transpose, Relu, MaxPool; per-tensor scales only through those), with the same grid in both
models, holds whole numbers of quanta. A correct fold moves the value before a QuantizeLinear by a
float rounding, or by the re-quantization of an integer bias (at most half a quantum of the new
bias scale); where that crosses a rounding boundary the output moves by one quantum, which no
float tolerance accepts. Such an output is judged in quanta, in two stages (the fast pass still
passes it first when the difference is within float rounding; the exact reference is never
consulted: it cannot compute DequantizeLinear in float64, and a float64 run crosses rounding
boundaries of its own):

1. **Quantum** (``quantum_pass``): no element moved by more than one quantum, and at most
   ``QUANTUM_MOVED_FRACTION`` (1 %) of the elements, rounded up, by one. Correct folds of the
   tests' one-layer models move 0 (float bias) to 0.3 % (re-quantized int32 bias) of their
   elements, a weight scale 1 % off 17-24 %; one Conv+BN layer of 64 channels at 56x56 moves
   0.014 %, and 16 % with its scale 1 % off.
2. **Unrounded** (where the first stage fails: boundaries crossed early move later layers by
   whole quanta and cross further boundaries, so deep QDQ networks cascade: correct folds of 3
   and 8 such layers move 1.8 % and 38 % of the output's elements, 4 % by more than one
   quantum): both models run again with every activation QuantizeLinear → DequantizeLinear pair
   (same constant per-tensor scale and zero point) replaced by a Clip to its range
   (``quantgrid.unrounded``), which saturates as before but does not round. What differs
   then is only what the fold changed, with nothing to amplify it; the output passes when it
   moved by at most ``UNROUNDED_QUANTA`` (1/8) of a quantum (``unrounded_pass``). Correct folds
   of 1-8 layers: 0.0004-0.0022 quanta; a weight scale 1 % off: 1.15-1.30 (0.1 % off: 0.12-0.13,
   about what the quantized output itself can resolve).

``--atol``/``--rtol`` (``tolerance_for``) replace the criterion with numpy's elementwise rule
``|folded - original| <= atol + rtol * |original|``, for users who want exactly that; the
per-dtype defaults of that rule remain for tests and for bench's comparability check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from .errors import UsageError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


#: Defaults per dtype name. float32 has ~7 significant digits; a folded network differs from the
#: original by a few ulps per layer, so 1e-4 absolute / 1e-3 relative leaves two orders of margin.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-9, rtol=1e-7),
    "float32": Tolerance(atol=1e-4, rtol=1e-3),
    "float16": Tolerance(atol=1e-2, rtol=1e-2),
    "bfloat16": Tolerance(atol=5e-2, rtol=5e-2),
}

#: Non-float outputs (indices, masks) must match exactly.
EXACT = Tolerance(atol=0.0, rtol=0.0)


def tolerance_for(dtype: str | np.dtype, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The tolerance for an output of ``dtype``; ``atol``/``rtol`` given by the user override the default."""
    default = DEFAULT_TOLERANCES.get(np.dtype(dtype).name if not isinstance(dtype, str) else dtype, EXACT)
    return Tolerance(
        atol=default.atol if atol is None else atol,
        rtol=default.rtol if rtol is None else rtol,
    )


#: Stage 1: a fold whose outputs are within this many eps of their scale from the original passes.
FAST_PASS_EPS = 256.0
#: ... for float16 and bfloat16, in their own eps.
NARROW_FAST_PASS_EPS = 2.0
#: Stage 2: the folded model may be this many times as far from the exact answer as the original...
EXACT_FACTOR = 8.0
#: ... plus this many eps of the output's scale (a fold as exact as its dtype allows always passes).
EXACT_FLOOR_EPS = 8.0
#: Without an exact reference, a difference beyond this many eps of the scale is a failure.
CLEAR_FAIL_EPS = 4096.0
#: An input set on which the original is farther than this fraction of the scale from exact is unstable.
UNSTABLE = 2.0 ** -10
#: Relative errors are reported over elements at least this fraction of the output's scale.
RELATIVE_FROM = 1e-3
#: Quantized outputs: at most this fraction of the elements (rounded up) may move by one quantum.
QUANTUM_MOVED_FRACTION = 0.01
#: ... or, without activation rounding, the outputs may differ by at most this many quanta.
UNROUNDED_QUANTA = 1.0 / 8


def _finfo(dtype):
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16" or dtype.name.startswith("float8"):
        import ml_dtypes

        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


def epsilon(dtype) -> float:
    """The dtype's machine epsilon (float32: 2^-23)."""
    return float(_finfo(dtype).eps)


def noise_floor(dtype) -> float:
    """Below this, a value is zero for the criterion's purposes: the dtype's smallest normal number."""
    return float(_finfo(dtype).tiny)


def _fast_epsilon(dtype) -> float:
    return min(epsilon(dtype), epsilon(np.float32))


def fast_pass(max_abs: float, scale: float, dtype) -> bool:
    """Stage 1 of the criterion (see the module docstring)."""
    narrow = epsilon(dtype) > epsilon(np.float32)
    return max_abs <= (NARROW_FAST_PASS_EPS if narrow else FAST_PASS_EPS) * epsilon(dtype) * scale


def unstable(original_distance: float, scale: float, dtype) -> bool:
    """Whether the original itself is so far from the exact answer that nothing can be judged there
    (``UNSTABLE`` of the scale, or 64 of the dtype's own eps for float16 and bfloat16)."""
    return original_distance > max(UNSTABLE, FAST_PASS_EPS / 4 * epsilon(dtype)) * scale


def exact_pass(folded_distance: float, original_distance: float, scale: float, dtype) -> bool:
    """Stage 2 of the criterion: the folded model no farther from exact than the original (x factor, + floor)."""
    return folded_distance <= EXACT_FACTOR * original_distance + EXACT_FLOOR_EPS * epsilon(dtype) * scale


def quantum_allowance(elements: int) -> int:
    """How many elements of a quantized output may move by one quantum (``QUANTUM_MOVED_FRACTION``, rounded up)."""
    return math.ceil(round(QUANTUM_MOVED_FRACTION * elements, 9))  # 0.01 * 300 is 3.0000000000000004


def quantum_pass(moved: int, beyond: int, elements: int) -> bool:
    """The criterion for quantized outputs (see the module docstring): none beyond one quantum, few by one."""
    return beyond == 0 and moved <= quantum_allowance(elements)


def unrounded_pass(steps: float) -> bool:
    """The arbiter for quantized outputs: without activation rounding, within ``UNROUNDED_QUANTA``."""
    return steps <= UNROUNDED_QUANTA


def clear_failure(max_abs: float, scale: float, dtype) -> bool:
    """A difference no rounding of a correct fold comes near (decides when no exact reference can run)."""
    return max_abs > max(CLEAR_FAIL_EPS * _fast_epsilon(dtype), FAST_PASS_EPS * epsilon(dtype)) * scale


def check_tolerances(atol: float | None, rtol: float | None) -> None:
    """UsageError unless each tolerance given is a finite number >= 0 (a negative or NaN bound
    is no bound, and an infinite one passes any error: none of them validates anything)."""
    for option, value in (("--atol", atol), ("--rtol", rtol)):
        number = isinstance(value, Real) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value) and value >= 0):
            shown = format(value, "g") if number else repr(value)
            raise UsageError(f"{option} {shown}: a tolerance must be a finite number >= 0")
