"""Validation tolerances: the one place that defines them.

An output element passes when ``|folded - original| <= atol + rtol * |original|`` (numpy's
``allclose`` rule). Defaults depend on the output's dtype: folding changes where rounding happens
(one product per weight instead of one per activation), so lower-precision types need more slack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from .errors import BnfoldError


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


def check_tolerances(atol: float | None, rtol: float | None) -> None:
    """BnfoldError unless each tolerance given is a finite number >= 0 (a negative or NaN bound
    is no bound, and an infinite one passes any error: none of them validates anything)."""
    for option, value in (("--atol", atol), ("--rtol", rtol)):
        number = isinstance(value, Real) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value) and value >= 0):
            shown = format(value, "g") if number else repr(value)
            raise BnfoldError(f"{option} {shown}: a tolerance must be a finite number >= 0")
