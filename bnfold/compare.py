"""Errors of one output against a reference, in Polygraphy's vocabulary, and the criterion that judges them.

Pure numpy: arrays in, figures out. ``errors`` measures ``got`` against ``ref`` over the
elements that are finite in ``ref`` (a NaN or an infinity there must be the same in ``got``):
max, mean, median and p99 absolute error, max relative error (over elements above the dtype's
elements at least ``RELATIVE_FROM`` of the scale), the output's scale (its largest finite ``|value|``) and ``needed``, the error in
units of the dtype's epsilon times that scale: the tolerance that would have been needed.

The criterion (``bnfold.tolerances``) is relative to each output's scale: folding moves where
rounding happens, and rounding errors follow the size of the values that flow through the
network, not the size of each output element (an elementwise rule gave correct folds of
deeplabv3 up to 6,679x its tolerance on larger inputs, where elements near zero carry the
rounding of their large neighbours).

An output whose values lie on a quantization grid (it comes out of a DequantizeLinear) is
measured in quanta instead (``quantum_errors``): how many elements moved by one step of the
grid, and how many by more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import tolerances


@dataclass(frozen=True)
class Errors:
    """``got`` against ``ref``: see the module docstring. NaN figures: nothing finite to measure."""

    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    scale: float
    needed: float  # max_abs / (eps * scale): the criterion's threshold that would just pass
    specials_kept: bool  # every NaN / infinity of ref is the same in got
    informative: bool  # a wrong fold could show here (not ~0 or non-finite everywhere)
    varies: bool  # the output is not one value everywhere (what the shape search wants)

    def to_dict(self) -> dict:
        return asdict(self)


def is_float(dtype: np.dtype) -> bool:
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def errors(ref: np.ndarray, got: np.ndarray) -> Errors:
    """The errors of ``got`` against ``ref`` (same shape; ``ref``'s dtype sets epsilon)."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:  # nothing to compare element by element: as far off as can be
        inf = float("inf")
        return Errors(inf, inf, inf, inf, inf, 1.0, inf, False, True, True)
    if not is_float(ref.dtype):  # indices, masks: exact or not at all
        same = ref.shape == got.shape and bool(np.array_equal(ref, got))
        err = 0.0 if same else float("inf")
        varies = ref.size > 1 and bool(np.any(ref != ref.flat[0]))
        return Errors(err, err, err, err, err, 1.0, 0.0 if same else float("inf"), True, varies, varies)
    r, g = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(r)
    specials_kept = bool(np.all(np.where(np.isnan(r), np.isnan(g), r == g)[~finite]))
    diff = np.abs(g[finite] - r[finite])
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN in got where ref is finite: as far off as can be
    if not diff.size:
        nan = float("nan")
        return Errors(nan, nan, nan, nan, nan, nan, nan, specials_kept, False, False)
    magnitude = np.abs(r[finite])
    scale = float(magnitude.max())
    floor = tolerances.noise_floor(ref.dtype)
    big = magnitude >= max(tolerances.RELATIVE_FROM * scale, floor)
    max_rel = float((diff[big] / magnitude[big]).max()) if np.any(big) else 0.0
    eps = tolerances.epsilon(ref.dtype)
    max_abs = float(diff.max())
    needed = max_abs / (eps * scale) if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    varies = bool(np.ptp(r[finite]) > tolerances.RELATIVE_FROM * scale) if diff.size > 1 else False
    return Errors(max_abs, float(diff.mean()), float(np.median(diff)), float(np.percentile(diff, 99)), max_rel,
                  scale, needed, specials_kept, scale > floor, varies)


def distance(values: np.ndarray, exact: np.ndarray) -> float:
    """Largest ``|values - exact|`` over the elements finite in ``exact`` (inf if ``values`` is not
    finite there, or the shapes differ; 0 when nothing is finite)."""
    values, exact = np.asarray(values), np.asarray(exact)
    if values.shape != exact.shape:
        return float("inf")
    e = exact.astype(np.float64)
    finite = np.isfinite(e)
    if not finite.any():
        return 0.0
    d = np.abs(values.astype(np.float64)[finite] - e[finite])
    return float(np.nan_to_num(d, nan=np.inf).max())


def within(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> bool:
    """numpy's elementwise rule over the finite elements of ``ref``, NaN and infinities kept
    (``--atol``/``--rtol``; bench's comparability check with ``tolerance_for``'s defaults)."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape or ref.dtype != got.dtype:
        return False
    if not is_float(ref.dtype):
        return bool(np.array_equal(ref, got))
    r, g = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(r)
    if not np.all(np.where(np.isnan(r), np.isnan(g), r == g)[~finite]):
        return False
    diff = np.nan_to_num(np.abs(g[finite] - r[finite]), nan=np.inf)
    return bool(np.all(diff <= atol + rtol * np.abs(r[finite])))


def elementwise(name: str, ref: np.ndarray, got: np.ndarray, atol: float | None = None,
                rtol: float | None = None) -> dict:
    """``got`` against ``ref`` under the elementwise rule (``tolerance_for(dtype, atol, rtol)``), as
    a plain dict: name, dtype, shape, atol, rtol, max_abs, max_rel, max_ref (the scale), passed."""
    ref, got = np.asarray(ref), np.asarray(got)
    tol = tolerances.tolerance_for(ref.dtype.name, atol, rtol)
    result = {"name": name, "dtype": ref.dtype.name, "shape": list(ref.shape), "atol": tol.atol, "rtol": tol.rtol}
    if ref.shape != got.shape or ref.dtype != got.dtype:
        return {**result, "max_abs": float("inf"), "max_rel": float("inf"), "max_ref": float("nan"), "passed": False}
    e = errors(ref, got)
    return {**result, "max_abs": e.max_abs, "max_rel": e.max_rel, "max_ref": e.scale,
            "passed": within(ref, got, tol.atol, tol.rtol)}


@dataclass(frozen=True)
class QuantumErrors:
    """``got`` against ``ref`` on a quantization grid: ``elements`` compared (finite in ``ref``),
    ``moved`` by one quantum, ``beyond`` by more than one (or not finite), ``quantum`` the largest step."""

    quantum: float
    elements: int
    moved: int
    beyond: int

    def to_dict(self) -> dict:
        return asdict(self)


def quantum_errors(ref: np.ndarray, got: np.ndarray, quantum: np.ndarray) -> QuantumErrors:
    """Count the elements of ``got`` that differ from ``ref`` by one step of the grid ``quantum``
    (broadcast against ``ref``: one step per element), and by more.

    Both outputs are whole numbers of quanta (times a float rounding of the dequantization), so
    a difference counts as one quantum from half a step to one and a half, and as more beyond.
    """
    ref, got = np.asarray(ref), np.asarray(got)
    step = np.abs(np.broadcast_to(np.asarray(quantum, dtype=np.float64), ref.shape))
    if ref.shape != got.shape:
        return QuantumErrors(float(step.max(initial=0.0)), ref.size, 0, ref.size)
    r, g = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.abs(g[finite] - r[finite]) / step[finite]
    steps = np.nan_to_num(steps, nan=np.inf)
    steps[(step[finite] == 0) & (g[finite] == r[finite])] = 0.0
    return QuantumErrors(float(step.max(initial=0.0)), int(steps.size), int(np.sum((steps > 0.5) & (steps <= 1.5))),
                         int(np.sum(steps > 1.5)))
