"""Pure numpy statistics of latency samples: percentiles, and the speedup with an exact interval.

**ABBA blocks.** Timings come in interleaved pairs; pair i runs the original first when i is even
and the folded model first when i is odd, so pairs 2j and 2j+1 form block j: original, folded,
folded, original. Its ratio is the geometric mean of its two pair ratios::

    r_j = sqrt( (a[2j] · a[2j+1]) / (b[2j] · b[2j+1]) )      a: original, b: folded

Within a block each model runs once first and once second (an order or cache effect cancels) and
both have the same mean position in time (a drift of the machine that is linear across the block
cancels); drift shared by the block's runs cancels whatever its shape. A trailing pair that
completes no block is left out of the speedup (the latency summaries still count it).

**Rounds.** Two sessions of byte-identical models differ in run latency by a persistent 0.5–1 %
(where their buffers and threads landed; measured here), which no number of runs within them
averages away. So runs are measured in rounds, each with a fresh session of each model, and the
round is the unit of the per-run speedup: round ratio = median of the round's block ratios, and
``round_speedup`` is the median of the round ratios. Session creation gives one pair per round,
grouped into blocks like runs (``speedup``).

**Interval: exact, distribution-free** (the sign test inverted; no resampling, no large-sample
approximation). With m unit ratios sorted, ``[r_(k), r_(m+1-k)]`` holds the true median ratio
with probability at least ``1 - 2·P(B <= k-1)``, ``B ~ Binomial(m, 1/2)``, for any continuous
distribution of independent units, heavy tails and outliers included; k is the largest rank that
keeps this at least the confidence asked for. Below ``min_units(confidence)`` units no rank does:
the interval is unbounded (``low`` 0, ``high`` inf) and the verdict is "no measurable difference"
— too few samples to detect anything, said as such. Valid at every size, so also for session
creation, timed once per round.

**Family.** A bench reports four verdicts (per run and session creation, in two settings). Each
interval is taken at ``bonferroni(FAMILY_CONFIDENCE, FAMILY_SIZE)`` = 1 − 0.05/4 = 98.75 %, so
the probability that *any* of the four says "faster" or "slower" when nothing differs is at most
5 % (Bonferroni holds whatever the dependence between the four).

**Resolution.** ``Speedup.detectable`` is how far the interval reaches from its estimate, as a
ratio d ≥ 1 (the larger of ``ratio/low`` and ``high/ratio``). Multiplying every unit ratio by a
factor multiplies the estimate and both bounds by exactly that factor, so with this run's spread
an estimate beyond d (below 1/d) would have put the whole interval above (below) 1: d is the
smallest effect the run could have detected, and "no measurable difference" means none beyond
±(d − 1). Unbounded intervals have no resolution (inf).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Percentiles every summary reports.
PERCENTILES = (50, 90, 99)
#: Probability that none of a bench's verdicts is a false "faster"/"slower" (family-wise).
FAMILY_CONFIDENCE = 0.95
#: Verdicts per bench: per run and session creation, in each of the two settings.
FAMILY_SIZE = 4
METHOD = "median of unit ratios; exact order-statistic (sign-test) interval; Bonferroni over the bench's intervals"
#: Units of the two kinds of speedup.
BLOCKS, ROUNDS = "ABBA blocks", "rounds"

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


def bonferroni(family_confidence: float = FAMILY_CONFIDENCE, intervals: int = FAMILY_SIZE) -> float:
    """Confidence of each of ``intervals`` intervals so that all hold at once with ``family_confidence``."""
    if not 0 < family_confidence < 1 or intervals < 1:
        raise ValueError("family confidence must be between 0 and 1, with at least one interval")
    return 1 - (1 - family_confidence) / intervals


#: Confidence of each interval a bench reports (98.75 %).
CONFIDENCE = bonferroni()


@dataclass(frozen=True)
class Speedup:
    """``ratio``: median of the ``n`` unit ratios (original/folded; ``unit``: ABBA blocks or rounds);
    ``[low, high]``: its exact interval at ``confidence`` (``family_confidence`` for all the bench's
    intervals together). Unbounded (``low`` 0, ``high`` inf) when ``n`` is below ``min_units``."""

    ratio: float
    low: float
    high: float
    confidence: float
    family_confidence: float
    n: int
    unit: str = BLOCKS

    @property
    def bounded(self) -> bool:
        return self.low > 0 and math.isfinite(self.high)

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    @property
    def detectable(self) -> float:
        """The resolution d ≥ 1 (module docstring); inf when the interval is unbounded."""
        if not self.bounded:
            return math.inf
        return math.exp(max(math.log(self.ratio / self.low), math.log(self.high / self.ratio)))

    @property
    def min_units(self) -> int:
        return min_units(self.confidence)

    def to_dict(self) -> dict:
        """JSON form; unbounded values (inf) are null."""
        finite = lambda v: v if self.bounded else None  # noqa: E731
        return {"ratio": self.ratio, "ci_low": finite(self.low), "ci_high": finite(self.high),
                "confidence": self.confidence, "family_confidence": self.family_confidence, "method": METHOD,
                "unit": self.unit, "n": self.n, "min_n": self.min_units, "detectable_ratio": finite(self.detectable),
                "verdict": self.verdict}


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


def block_log_ratios(original: Sequence[float] | np.ndarray, folded: Sequence[float] | np.ndarray) -> np.ndarray:
    """``log r_j`` of every complete ABBA block (module docstring): pair i is ``original[i]``,
    ``folded[i]``; both sequences have the same length, at least 2."""
    a, b = _pairs(original, folded)
    if a.size < 2:
        raise ValueError("a speedup needs at least 2 pairs (one ABBA block)")
    return _blocks(np.log(a) - np.log(b))


def _pairs(original, folded) -> tuple[np.ndarray, np.ndarray]:
    a, b = _sample(original), _sample(folded)
    if a.size != b.size:
        raise ValueError(f"paired samples differ in length: {a.size} original, {b.size} folded")
    return a, b


def _blocks(log_pair_ratios: np.ndarray) -> np.ndarray:
    m = log_pair_ratios.size // 2
    return log_pair_ratios[: 2 * m].reshape(m, 2).mean(axis=1)


@functools.lru_cache(maxsize=256)
def order_statistic_rank(m: int, confidence: float) -> int:
    """The largest k with ``2·P(B <= k-1) <= 1 - confidence``, ``B ~ Binomial(m, 1/2)``: the sorted
    values k and m+1−k bound the median at that confidence. 0 when even k = 1 (min and max) fails."""
    alpha = 1 - confidence
    log_pmf_base = math.lgamma(m + 1) + m * math.log(0.5)
    cdf, k = 0.0, 0
    while k < m:
        cdf += math.exp(log_pmf_base - math.lgamma(k + 1) - math.lgamma(m - k + 1))  # now P(B <= k)
        if 2 * cdf > alpha:
            break
        k += 1
    return k


def min_units(confidence: float) -> int:
    """Fewest units whose interval at ``confidence`` is bounded (8 at 98.75 %)."""
    m = 1
    while order_statistic_rank(m, confidence) == 0:
        m += 1
    return m


def median_ratio(log_ratios: Sequence[float] | np.ndarray, *, unit: str, confidence: float = CONFIDENCE,
                 family_confidence: float = FAMILY_CONFIDENCE) -> Speedup:
    """exp(median) of ``log_ratios`` (one per independent unit) with its exact order-statistic
    interval at ``confidence`` (module docstring)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    logs = np.sort(np.asarray(log_ratios, dtype=np.float64))
    m = logs.size
    if m == 0:
        raise ValueError("a speedup needs at least one unit")
    k = order_statistic_rank(m, confidence)
    low, high = (float(np.exp(logs[k - 1])), float(np.exp(logs[m - k]))) if k else (0.0, math.inf)
    return Speedup(float(np.exp(np.median(logs))), low, high, confidence, family_confidence, m, unit)


def speedup(original: Sequence[float] | np.ndarray, folded: Sequence[float] | np.ndarray, *,
            confidence: float = CONFIDENCE, family_confidence: float = FAMILY_CONFIDENCE) -> Speedup:
    """Median of the ABBA-block ratios of ``original`` against ``folded`` (interleaved pairs, each
    block an independent unit: session creation, one pair per round) with its exact interval.
    Deterministic. Identical sides give exactly 1 (zero width once bounded); multiplying one side
    by c multiplies the ratio and both bounds by c (or 1/c)."""
    return median_ratio(block_log_ratios(original, folded), unit=BLOCKS, confidence=confidence,
                        family_confidence=family_confidence)


def round_log_ratios(original: Sequence[float] | np.ndarray, folded: Sequence[float] | np.ndarray,
                     rounds: Sequence[int]) -> np.ndarray:
    """log of each round's ratio: the median of the log block ratios of that round's pairs
    (``rounds[i]``: the round of pair i; a round's pairs are consecutive and form its own blocks).
    Rounds without a complete block are left out."""
    a, b = _pairs(original, folded)
    r = np.asarray(rounds)
    if r.shape != a.shape:
        raise ValueError(f"paired samples differ in length: {a.size} pairs, {r.size} rounds")
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    out = [float(np.median(_blocks(part))) for part in np.split(np.log(a) - np.log(b), starts[1:]) if part.size >= 2]
    if not out:
        raise ValueError("a speedup needs a round with at least 2 pairs (one ABBA block)")
    return np.array(out)


def round_speedup(original: Sequence[float] | np.ndarray, folded: Sequence[float] | np.ndarray,
                  rounds: Sequence[int], *, confidence: float = CONFIDENCE,
                  family_confidence: float = FAMILY_CONFIDENCE) -> Speedup:
    """Median of the round ratios (``round_log_ratios``) with its exact interval over rounds: the
    per-run speedup, its uncertainty including the session-to-session spread."""
    return median_ratio(round_log_ratios(original, folded, rounds), unit=ROUNDS, confidence=confidence,
                        family_confidence=family_confidence)


def verdict(low: float, high: float) -> str:
    """What an interval of the speedup lets one say."""
    if low > 1:
        return FASTER
    if high < 1:
        return SLOWER
    return NO_DIFFERENCE
