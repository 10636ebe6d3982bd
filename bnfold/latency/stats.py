"""Pure numpy statistics of latency samples: percentiles and the speedup with its bootstrap interval.

The speedup is ``median(original) / median(folded)``: above 1 the folded model is faster. The
samples come in interleaved pairs (run i of the original and run i of the folded model were taken
back to back), so the interval is a *paired* percentile bootstrap: each resample draws pair
indices with replacement and takes both runs of each drawn pair, which keeps whatever drift the
machine had in common between the two sides. Resampling is seeded: the same samples and seed
give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Percentiles every summary reports.
PERCENTILES = (50, 90, 99)
#: Default bootstrap settings (the report records the ones used).
RESAMPLES = 2000
CONFIDENCE = 0.95
#: Resamples evaluated per numpy call: bounds memory at ``_CHUNK × pairs`` floats.
_CHUNK = 256

FASTER, SLOWER, NO_DIFFERENCE = "folded faster", "folded slower", "no measurable difference"


@dataclass(frozen=True)
class Summary:
    """Figures of one sample (same unit as the sample)."""

    n: int
    median: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Speedup:
    """``ratio = median(original) / median(folded)`` and its paired bootstrap interval ``[low, high]``."""

    ratio: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "ci_low": self.low, "ci_high": self.high, "confidence": self.confidence,
                "resamples": self.resamples, "seed": self.seed, "verdict": self.verdict}


def _sample(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("a latency sample must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError("latencies must be finite and positive")
    return x


def percentiles(values: Sequence[float] | np.ndarray, qs: Sequence[float] = PERCENTILES) -> list[float]:
    """The ``qs`` percentiles (0–100) of ``values``, linearly interpolated between order statistics
    (numpy's default, type 7 of Hyndman and Fan: rank ``q/100·(n−1)`` of the sorted values)."""
    x = np.sort(_sample(values))
    out = []
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q} is outside 0..100")
        rank = q / 100 * (x.size - 1)
        lo = int(np.floor(rank))
        hi = min(lo + 1, x.size - 1)
        out.append(float(x[lo] + (rank - lo) * (x[hi] - x[lo])))
    return out


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Median, p90, p99, mean, min and max of a sample."""
    x = _sample(values)
    median, p90, p99 = percentiles(x, (50, 90, 99))
    return Summary(int(x.size), median, p90, p99, float(x.mean()), float(x.min()), float(x.max()))


def speedup(
    original: Sequence[float] | np.ndarray,
    folded: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Speedup:
    """``median(original) / median(folded)`` with a paired percentile-bootstrap interval.

    ``original[i]`` and ``folded[i]`` must be the i-th interleaved pair, so both sequences have the
    same length. Each of ``resamples`` resamples draws ``n`` pair indices with replacement (seeded
    by ``seed``) and computes the ratio of the medians over the drawn pairs; the interval is the
    central ``confidence`` part of those ratios. Identical sides give exactly 1 with zero width;
    multiplying one side by k multiplies the ratio and both bounds by k (or 1/k).
    """
    a, b = _sample(original), _sample(folded)
    if a.size != b.size:
        raise ValueError(f"paired samples differ in length: {a.size} original, {b.size} folded")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    ratio = float(np.median(a) / np.median(b))
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        stop = min(start + _CHUNK, resamples)
        idx = rng.integers(0, a.size, size=(stop - start, a.size))
        ratios[start:stop] = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    tail = (1 - confidence) / 2
    low, high = percentiles(ratios, (100 * tail, 100 * (1 - tail)))
    return Speedup(ratio, low, high, confidence, resamples, seed)


def verdict(low: float, high: float) -> str:
    """What an interval of ``median(original) / median(folded)`` lets one say."""
    if low > 1:
        return FASTER
    if high < 1:
        return SLOWER
    return NO_DIFFERENCE
