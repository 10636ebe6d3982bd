"""``bnfold.latency.stats``: percentiles, summaries, the speedup and its exact interval, the family.

Pure numpy, no model runs, no clock: every sample is drawn from a seeded generator. The
properties the report's honesty rests on: the interval holds the estimate and is exact at every
size (too few units: unbounded, never a verdict); identical sides give exactly 1; scaling a side
scales everything; an ABBA block cancels drift and order effects; rounds carry the spread between
sessions; on simulated A/A benches with heavy-tailed, drifting noise and per-session offsets, the
share of benches with *any* false verdict among the four stays within the stated 5 %; a real 20 %
difference is detected; the resolution means what it says.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfold.latency import ROUNDS, RUNS, stats
from bnfold.latency.runner import SETTINGS

latency = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
samples = st.lists(latency, min_size=1, max_size=30)
pairs = st.lists(st.tuples(latency, latency), min_size=2, max_size=60)


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
# the family and the order-statistic interval
# ---------------------------------------------------------------------------------------------


def test_four_verdicts_at_95_percent_together_means_98_75_each():
    assert stats.FAMILY_SIZE == 2 * len(SETTINGS)  # per run and session creation, in each setting
    assert stats.bonferroni(0.95, 4) == pytest.approx(0.9875) == stats.CONFIDENCE
    assert stats.bonferroni(0.9, 1) == pytest.approx(0.9)
    for bad in ((0.0, 4), (1.0, 4), (0.95, 0)):
        with pytest.raises(ValueError):
            stats.bonferroni(*bad)


def _binomial_cdf(m: int, k: int) -> float:
    return sum(math.comb(m, i) for i in range(k + 1)) / 2**m


@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, stats.CONFIDENCE, 0.999])
def test_order_statistic_rank_is_the_largest_with_enough_coverage(confidence):
    for m in range(1, 80):
        k = stats.order_statistic_rank(m, confidence)
        if k:
            assert 1 - 2 * _binomial_cdf(m, k - 1) >= confidence - 1e-12  # [x_(k), x_(m+1-k)] covers enough
        assert 1 - 2 * _binomial_cdf(m, k) < confidence  # and k + 1 would not
    assert stats.order_statistic_rank(200_000, confidence) > 0  # large counts stay cheap and finite


def test_at_98_75_percent_eight_units_are_the_fewest_with_an_interval():
    assert stats.min_units(stats.CONFIDENCE) == 8  # 2 / 2**8 <= 1.25 % < 2 / 2**7
    assert stats.order_statistic_rank(7, stats.CONFIDENCE) == 0
    assert stats.order_statistic_rank(8, stats.CONFIDENCE) == 1
    assert stats.order_statistic_rank(20, stats.CONFIDENCE) == 5


def test_coverage_is_at_least_the_confidence_for_a_skewed_distribution():
    """The interval's promise, checked by simulation: for m independent draws from a continuous
    distribution, [x_(k), x_(m+1-k)] holds the true median at least ``confidence`` of the time."""
    rng = np.random.default_rng(11)
    for m in (8, 25, 120):
        k = stats.order_statistic_rank(m, 0.9)
        x = np.sort(rng.lognormal(0, 1, size=(4000, m)), axis=1)  # true median: 1
        covered = np.mean((x[:, k - 1] <= 1) & (x[:, m - k] >= 1))
        exact = 1 - 2 * _binomial_cdf(m, k - 1)
        assert covered >= 0.9 - 3 * math.sqrt(0.1 * 0.9 / 4000)
        assert covered == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 4000))


# ---------------------------------------------------------------------------------------------
# the speedup
# ---------------------------------------------------------------------------------------------


def test_speedup_is_the_median_of_the_abba_block_ratios():
    original = [4.0, 1.0, 9.0, 4.0, 2.0, 2.0]
    folded = [1.0, 1.0, 1.0, 4.0, 2.0, 8.0]
    # blocks: sqrt(4*1 / (1*1)) = 2, sqrt(9*4 / (1*4)) = 3, sqrt(2*2 / (2*8)) = 0.5
    assert np.exp(stats.block_log_ratios(original, folded)) == pytest.approx([2.0, 3.0, 0.5])
    s = stats.speedup(original, folded)
    assert s.ratio == pytest.approx(2.0)
    assert (s.n, s.unit, s.confidence, s.family_confidence) == (3, stats.BLOCKS, stats.CONFIDENCE, 0.95)


def test_a_trailing_pair_completes_no_block_and_is_left_out():
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 0.2, 41), rng.lognormal(0, 0.2, 41)
    assert stats.speedup(a, b) == stats.speedup(a[:40], b[:40])
    assert stats.speedup(a, b).n == 20


def test_unequal_lengths_and_single_pairs_are_refused():
    with pytest.raises(ValueError, match="paired"):
        stats.speedup([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        stats.speedup([1.0], [1.0])


def test_too_few_units_give_an_unbounded_interval_and_never_a_verdict():
    """Five session timings (two blocks) cannot carry an interval at 98.75 %: none is invented."""
    s = stats.speedup([10.0] * 15, [1.0] * 15)  # ten times slower, but only 7 blocks
    assert s.ratio == pytest.approx(10.0)
    assert (s.low, s.high, s.bounded, s.detectable) == (0.0, math.inf, False, math.inf)
    assert s.verdict == stats.NO_DIFFERENCE
    d = s.to_dict()
    assert (d["ci_low"], d["ci_high"], d["detectable_ratio"], d["n"], d["min_n"]) == (None, None, None, 7, 8)
    assert stats.speedup([10.0] * 5, [1.0] * 5).verdict == stats.NO_DIFFERENCE
    assert stats.speedup([10.0] * 16, [1.0] * 16).verdict == stats.FASTER  # 8 blocks suffice


def test_json_form():
    s = stats.speedup([2.0] * 40, [1.0] * 40)
    assert s.to_dict() == {"ratio": pytest.approx(2.0), "ci_low": pytest.approx(2.0), "ci_high": pytest.approx(2.0),
                           "confidence": stats.CONFIDENCE, "family_confidence": 0.95, "method": stats.METHOD,
                           "unit": stats.BLOCKS, "n": 20, "min_n": 8, "detectable_ratio": 1.0,
                           "verdict": stats.FASTER}


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_interval_contains_the_estimate(data):
    original, folded = zip(*data)
    s = stats.speedup(original, folded)
    assert s.low <= s.ratio <= s.high
    assert s.detectable >= 1


@settings(max_examples=40, deadline=None)
@given(st.lists(latency, min_size=16, max_size=40))
def test_identical_sides_give_exactly_one_with_zero_width(values):
    s = stats.speedup(values, values)
    assert (s.ratio, s.low, s.high, s.detectable) == (1.0, 1.0, 1.0, 1.0)
    assert s.verdict == stats.NO_DIFFERENCE


@settings(max_examples=40, deadline=None)
@given(pairs, st.floats(min_value=0.1, max_value=10))
def test_scaling_one_side_scales_ratio_and_interval(data, k):
    original, folded = (np.array(side) for side in zip(*data))
    base = stats.speedup(original, folded)
    for got, factor in ((stats.speedup(original * k, folded), k), (stats.speedup(original, folded * k), 1 / k)):
        assert got.ratio == pytest.approx(base.ratio * factor, rel=1e-9)
        assert got.low == pytest.approx(base.low * factor, rel=1e-9)
        assert got.high == pytest.approx(base.high * factor, rel=1e-9)


def test_the_same_samples_give_the_same_interval():
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(0, 0.3, 40), rng.lognormal(0, 0.3, 40)
    assert stats.speedup(a, b) == stats.speedup(a.copy(), b.copy())  # no resampling: nothing random


def test_the_resolution_is_the_smallest_effect_detectable_on_both_sides():
    """A/A sample: no difference, resolution d. The same spread with the estimate moved just beyond
    d (or below 1/d) gives a verdict; just short of d on the side that sets d, it does not."""
    rng = np.random.default_rng(4)
    a, b = rng.lognormal(0, 0.3, 400), rng.lognormal(0, 0.3, 400)
    s = stats.speedup(a, b)
    assert s.verdict == stats.NO_DIFFERENCE and 1 < s.detectable < 1.2
    for target, expected in ((s.detectable * 1.001, stats.FASTER), (1 / (s.detectable * 1.001), stats.SLOWER)):
        moved = stats.speedup(a * target / s.ratio, b)
        assert moved.ratio == pytest.approx(target) and moved.verdict == expected
    faster_side = s.ratio / s.low >= s.high / s.ratio  # which side's reach is d
    target = s.detectable * 0.999 if faster_side else 1 / (s.detectable * 0.999)
    assert stats.speedup(a * target / s.ratio, b).verdict == stats.NO_DIFFERENCE


def test_pairing_in_blocks_cancels_drift_both_sides_share():
    """The machine slows down threefold over the run, for both models alike; the folded model is
    10 % faster throughout. Block ratios see 1.1; the two sides' medians alone could not tell."""
    rng = np.random.default_rng(0)
    drift = np.linspace(1.0, 3.0, 60)
    folded = drift * rng.lognormal(0, 0.01, 60)
    original = 1.1 * drift * rng.lognormal(0, 0.01, 60)
    s = stats.speedup(original, folded)
    assert 1.05 < s.low < s.ratio < s.high < 1.15
    assert s.verdict == stats.FASTER
    assert np.median(original) / np.median(folded) == pytest.approx(1.1, abs=0.5)  # unpaired: drift dominates


def test_blocks_cancel_an_order_effect():
    """Whatever runs second in a pair is 20 % faster (a warm cache); the folded model is 5 % faster.
    Pair ratios alternate between 1.05·1.2 and 1.05/1.2; every ABBA block ratio is 1.05."""
    rng = np.random.default_rng(2)
    n = 200
    second = np.arange(n) % 2 == 1  # pairs where the original runs second
    original = 1.05 * np.where(second, 1 / 1.2, 1.0) * rng.lognormal(0, 0.005, n)
    folded = np.where(second, 1.0, 1 / 1.2) * rng.lognormal(0, 0.005, n)
    pair_ratios = original / folded
    assert np.ptp(np.log(pair_ratios)) > 0.3  # bimodal
    s = stats.speedup(original, folded)
    assert 1.04 < s.low < s.high < 1.06 and s.verdict == stats.FASTER


def test_a_round_ratio_is_the_median_of_its_blocks_and_the_speedup_their_median():
    original = [2.0, 2.0, 4.0, 4.0, 1.0, 1.0, 3.0, 3.0, 9.0]
    folded = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    rounds = [0, 0, 0, 0, 0, 0, 1, 1, 2]  # round 0: blocks 2, 4, 1 -> 2; round 1: 3; round 2: no block
    assert np.exp(stats.round_log_ratios(original, folded, rounds)) == pytest.approx([2.0, 3.0])
    s = stats.round_speedup(original, folded, rounds)
    assert (s.ratio, s.n, s.unit) == (pytest.approx(np.sqrt(6.0)), 2, stats.ROUNDS)
    assert not s.bounded
    with pytest.raises(ValueError, match="differ in length"):
        stats.round_speedup(original, folded, rounds[:-1])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        stats.round_speedup([1.0, 2.0], [1.0, 2.0], [0, 1])


def test_rounds_carry_the_spread_between_sessions():
    """Each round's sessions are 2 % apart at random (where their buffers landed), the runs within
    a round agree to 0.1 %. Pooling all blocks sees one session pair's offset with a narrow interval;
    rounds see the spread and say nothing."""
    rng = np.random.default_rng(8)
    rounds, per_round = 30, 40
    offsets = np.repeat(np.exp(rng.normal(0, 0.02, rounds)), per_round)
    folded = rng.lognormal(0, 0.001, rounds * per_round)
    original = offsets * rng.lognormal(0, 0.001, rounds * per_round)
    r = np.repeat(np.arange(rounds), per_round)
    by_round = stats.round_speedup(original, folded, r)
    assert by_round.verdict == stats.NO_DIFFERENCE and by_round.detectable > 1.005
    first_round = stats.speedup(original[:per_round], folded[:per_round])
    assert first_round.detectable < 1.002  # within one session pair everything looks precise


@pytest.mark.parametrize(("low", "high", "expected"), [
    (1.01, 1.2, stats.FASTER), (0.8, 0.99, stats.SLOWER), (0.9, 1.1, stats.NO_DIFFERENCE),
    (1.0, 1.2, stats.NO_DIFFERENCE), (0.8, 1.0, stats.NO_DIFFERENCE), (0.0, math.inf, stats.NO_DIFFERENCE),
])
def test_verdict_says_no_difference_when_the_interval_holds_one(low, high, expected):
    assert stats.verdict(low, high) == expected


# ---------------------------------------------------------------------------------------------
# simulated benches: the family-wise false-verdict rate and the power
# ---------------------------------------------------------------------------------------------

#: A simulated bench has the default protocol's shape: rounds, and pairs per round.
PAIRS_PER_ROUND = 2 * math.ceil(RUNS / ROUNDS / 2)
#: Persistent latency offset of one session against another of the same model (log sd): ~0.7 %.
SESSION_SD = 0.007
#: Run-to-run jitter (log sd) of a small CNN's latency here: p90 about 10 % above the median.
RUN_SIGMA = 0.07


def simulated_pairs(rng: np.random.Generator, pairs: int, effect: float, sigma: float, spikes: float,
                    original_first: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved pairs (``original_first[i]``: the original runs first in pair i; default ABBA
    from the original) where the original is ``effect`` times slower than the folded model in
    distribution. Noise as a busy machine makes it: lognormal jitter (``sigma``), a share
    ``spikes`` of runs 2–10× slower (preemption), drift shared by neighbouring runs (a slow random
    walk and a level shift every 50 runs: another process starting or stopping), and an order
    effect (the second run of a pair 5 % slower)."""
    n = 2 * pairs
    drift = np.cumsum(rng.normal(0, 0.01, n)) + np.repeat(rng.normal(0, 0.3, n // 50 + 1), 50)[:n]
    jitter = rng.lognormal(0, sigma, n) * np.where(rng.random(n) < spikes, rng.uniform(2, 10, n), 1.0)
    t = (np.exp(drift) * jitter).reshape(pairs, 2)  # columns: first, second of each pair
    t[:, 1] *= 1.05
    first = np.arange(pairs) % 2 == 0 if original_first is None else original_first
    return effect * np.where(first, t[:, 0], t[:, 1]), np.where(first, t[:, 1], t[:, 0])


def simulated_runs(rng: np.random.Generator, effect: float, session_sd: float = SESSION_SD):
    """Per-run timings of one setting as the worker takes them: ``ROUNDS`` rounds of
    ``PAIRS_PER_ROUND`` pairs, each round with fresh sessions, each session with its own persistent
    offset (log sd ``session_sd``); the first run of a round is 30 % slower (the parent woken by the
    round's progress message), and the round's first pair starts with the original in even rounds."""
    pairs = ROUNDS * PAIRS_PER_ROUND
    index, rounds = np.arange(pairs) % PAIRS_PER_ROUND, np.repeat(np.arange(ROUNDS), PAIRS_PER_ROUND)
    original_first = (index + rounds) % 2 == 0
    original, folded = simulated_pairs(rng, pairs, effect, RUN_SIGMA, 0.02, original_first)
    opening = index == 0
    original = np.where(opening & original_first, original * 1.3, original)
    folded = np.where(opening & ~original_first, folded * 1.3, folded)
    offsets = rng.normal(0, session_sd, (2, ROUNDS))
    return original * np.exp(offsets[0][rounds]), folded * np.exp(offsets[1][rounds]), rounds


def simulated_bench(rng: np.random.Generator, effect: float, confidence: float = stats.CONFIDENCE) -> list[str]:
    """The four verdicts of one bench: per run (over rounds) and session creation (an ABBA block of
    creations per round, noisier), in two settings."""
    verdicts = []
    for _ in SETTINGS:
        verdicts.append(stats.round_speedup(*simulated_runs(rng, effect), confidence=confidence).verdict)
        sessions = simulated_pairs(rng, 2 * ROUNDS, effect, 0.1, 0.05)  # two pairs per round
        verdicts.append(stats.speedup(*sessions, confidence=confidence).verdict)
    return verdicts


def family_rate(benches: list[list[str]]) -> float:
    """Share of benches where any verdict says faster or slower."""
    return sum(any(v != stats.NO_DIFFERENCE for v in b) for b in benches) / len(benches)


BENCHES = 2000


def margin(rate: float, n: int) -> float:
    """Three binomial standard deviations."""
    return 3 * math.sqrt(rate * (1 - rate) / n)


def test_a_a_benches_give_a_false_verdict_at_most_at_the_stated_rate():
    """A model against a byte-identical copy: 2000 simulated benches, four verdicts each. The share
    of benches where any verdict says faster or slower must not exceed 5 % beyond a three-sigma
    binomial margin."""
    rng = np.random.default_rng(20261201)
    rate = family_rate([simulated_bench(rng, 1.0) for _ in range(BENCHES)])
    alpha = 1 - stats.FAMILY_CONFIDENCE
    assert rate <= alpha + margin(alpha, BENCHES), rate


def test_uncorrected_intervals_would_break_the_family_rate():
    """The same A/A benches with each interval at 95 % instead of 98.75 %: the family rate above is
    the correction's doing, not a simulation too gentle to produce false verdicts."""
    rng = np.random.default_rng(20261201)
    rate = family_rate([simulated_bench(rng, 1.0, confidence=0.95) for _ in range(BENCHES)])
    assert rate > 0.05 + margin(0.05, BENCHES), rate


def test_one_session_pair_for_all_runs_would_break_it_too():
    """All runs of a setting from a single session of each model (the protocol before rounds):
    the two sessions' offsets (0.7 % log sd each) are then a difference every interval over the
    runs sees, however many runs are taken. Per run alone, A/A benches give false verdicts often."""
    rng = np.random.default_rng(5)
    wrong = 0
    for _ in range(500):
        original, folded = simulated_pairs(rng, RUNS, 1.0, RUN_SIGMA, 0.02)
        offset = np.exp(rng.normal(0, SESSION_SD) - rng.normal(0, SESSION_SD))
        wrong += stats.speedup(original * offset, folded).verdict != stats.NO_DIFFERENCE
    assert wrong / 500 > 0.25, wrong


@pytest.mark.parametrize(("effect", "expected"), [(1.2, stats.FASTER), (1 / 1.2, stats.SLOWER)])
def test_a_real_20_percent_difference_is_detected(effect, expected):
    """500 simulated benches with the folded model 20 % faster (or slower): each of the four
    verdicts says so in at least 95 % of them, and none says the opposite."""
    rng = np.random.default_rng(7)
    verdicts = np.array([simulated_bench(rng, effect) for _ in range(500)])
    power = (verdicts == expected).mean(axis=0)
    assert np.all(power >= 0.95), power
    assert not np.any(verdicts == (stats.SLOWER if expected == stats.FASTER else stats.FASTER))
