"""``bnfold.latency.stats``: percentiles, summaries, the speedup and its paired bootstrap interval.

Pure numpy, no model runs. The properties the report's honesty rests on: the interval holds the
point estimate, identical sides give exactly 1, scaling a side scales the ratio, pairing removes
drift the two sides share, and a 95 % interval covers a true ratio of 1 about 95 % of the time.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfold.latency import stats

latency = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
samples = st.lists(latency, min_size=1, max_size=30)
pairs = st.lists(st.tuples(latency, latency), min_size=1, max_size=30)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


# ---------------------------------------------------------------------------------------------
# percentiles and summaries
# ---------------------------------------------------------------------------------------------


def test_percentiles_interpolate_between_order_statistics():
    # sorted: 1 2 3 4 5; rank q/100*(n-1): p50 -> 2 (value 3), p90 -> 3.6, p99 -> 3.96
    assert stats.percentiles([5.0, 1.0, 4.0, 2.0, 3.0]) == pytest.approx([3.0, 4.6, 4.96], abs=1e-12)
    assert stats.percentiles([2.0, 8.0], (0, 25, 100)) == pytest.approx([2.0, 3.5, 8.0], abs=1e-12)
    assert stats.percentiles([7.0], (50, 90, 99)) == [7.0, 7.0, 7.0]


@given(samples, st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=5))
def test_percentiles_agree_with_numpy(values, qs):
    assert stats.percentiles(values, qs) == pytest.approx(np.percentile(values, qs), rel=1e-12, abs=1e-12)


def test_summary_figures():
    s = stats.summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    assert (s.n, s.median, s.mean, s.min, s.max) == (5, 3.0, 4.0, 1.0, 10.0)
    assert s.p90 == pytest.approx(4 + 0.6 * 6)  # rank 3.6 between 4 and 10
    assert s.p99 == pytest.approx(4 + 0.96 * 6)
    assert set(s.to_dict()) == {"n", "median", "p90", "p99", "mean", "min", "max"}


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, 0.0], [-1.0], [float("inf")], [[1.0, 2.0]]])
def test_bad_samples_are_refused(bad):
    with pytest.raises(ValueError):
        stats.summarize(bad)


def test_percentile_outside_0_100_is_refused():
    with pytest.raises(ValueError, match="outside"):
        stats.percentiles([1.0, 2.0], (101,))


# ---------------------------------------------------------------------------------------------
# the speedup and its interval
# ---------------------------------------------------------------------------------------------


def test_speedup_is_ratio_of_medians():
    s = stats.speedup([4.0, 2.0, 3.0], [1.0, 2.0, 1.5])
    assert s.ratio == pytest.approx(3.0 / 1.5)
    assert (s.confidence, s.resamples, s.seed) == (0.95, 2000, 0)
    assert s.to_dict()["verdict"] == s.verdict


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="paired"):
        stats.speedup([1.0, 2.0], [1.0])


@settings(max_examples=60, deadline=None)
@given(pairs, seeds)
def test_interval_contains_the_point_estimate(data, seed):
    original, folded = zip(*data)
    s = stats.speedup(original, folded, seed=seed)
    assert s.low <= s.ratio <= s.high


@settings(max_examples=40, deadline=None)
@given(samples, seeds)
def test_identical_sides_give_exactly_one_with_zero_width(values, seed):
    s = stats.speedup(values, values, seed=seed)
    assert (s.ratio, s.low, s.high) == (1.0, 1.0, 1.0)
    assert s.verdict == stats.NO_DIFFERENCE


@settings(max_examples=40, deadline=None)
@given(pairs, st.floats(min_value=0.1, max_value=10), seeds)
def test_scaling_one_side_scales_ratio_and_interval(data, k, seed):
    original, folded = (np.array(side) for side in zip(*data))
    base = stats.speedup(original, folded, seed=seed)
    slower_original = stats.speedup(original * k, folded, seed=seed)
    slower_folded = stats.speedup(original, folded * k, seed=seed)
    for got, factor in ((slower_original, k), (slower_folded, 1 / k)):
        assert got.ratio == pytest.approx(base.ratio * factor, rel=1e-9)
        assert got.low == pytest.approx(base.low * factor, rel=1e-9)
        assert got.high == pytest.approx(base.high * factor, rel=1e-9)


def test_same_seed_same_interval_and_the_seed_matters():
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(0, 0.3, 40), rng.lognormal(0, 0.3, 40)
    first, again = stats.speedup(a, b, seed=3), stats.speedup(a, b, seed=3)
    assert (first.low, first.high) == (again.low, again.high)
    other = stats.speedup(a, b, seed=4)
    assert (other.low, other.high) != (first.low, first.high)


def test_pairing_cancels_drift_both_sides_share():
    """The machine slows down threefold over the run, for both models alike; the folded model is
    10 % faster throughout. Resampling pairs keeps that; resampling each side on its own would not."""
    rng = np.random.default_rng(0)
    drift = np.linspace(1.0, 3.0, 60)
    folded = drift * rng.lognormal(0, 0.01, 60)
    original = 1.1 * drift * rng.lognormal(0, 0.01, 60)
    s = stats.speedup(original, folded)
    assert s.low > 1.05 and s.high < 1.15
    assert s.verdict == stats.FASTER

    idx_a, idx_b = rng.integers(0, 60, (2000, 60)), rng.integers(0, 60, (2000, 60))
    unpaired = np.median(original[idx_a], axis=1) / np.median(folded[idx_b], axis=1)
    low, high = np.percentile(unpaired, [2.5, 97.5])
    assert low < 1 < high, "the unpaired interval should be too wide to tell (else this test proves nothing)"


def test_clear_differences_get_a_verdict():
    rng = np.random.default_rng(2)
    base = rng.lognormal(0, 0.2, 100)
    assert stats.speedup(base * 1.5, base * rng.lognormal(0, 0.05, 100)).verdict == stats.FASTER
    assert stats.speedup(base * rng.lognormal(0, 0.05, 100), base * 1.5).verdict == stats.SLOWER


def test_95_percent_interval_covers_a_true_ratio_of_one_most_of_the_time():
    """Both sides from the same distribution: the true ratio is 1. An interval that is too narrow
    (wrong resampling, a standard error of the mean) would miss it far more often than 5 %."""
    rng = np.random.default_rng(5)
    trials, covered = 200, 0
    for trial in range(trials):
        a, b = rng.lognormal(0, 0.3, 40), rng.lognormal(0, 0.3, 40)
        s = stats.speedup(a, b, resamples=400, seed=trial)
        covered += s.verdict == stats.NO_DIFFERENCE
    assert covered / trials >= 0.88, covered


@pytest.mark.parametrize(("low", "high", "expected"), [
    (1.01, 1.2, stats.FASTER), (0.8, 0.99, stats.SLOWER), (0.9, 1.1, stats.NO_DIFFERENCE),
    (1.0, 1.2, stats.NO_DIFFERENCE), (0.8, 1.0, stats.NO_DIFFERENCE),
])
def test_verdict_says_no_difference_when_the_interval_holds_one(low, high, expected):
    assert stats.verdict(low, high) == expected
