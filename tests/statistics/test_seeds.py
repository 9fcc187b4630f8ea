"""Seed-and-query intervals and the verdict, checked by simulation: coverage near nominal, error rates at the margin.

Scores are drawn from the model pipeline.statistics.seeds states: y = mu + v[q] + u[s] + e[s, q], three datasets of
different sizes, a fresh sample of queries and seeds in every replicate, so the target (mu, or a difference of two
mus) is what an interval must cover.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.protocol import VERDICTS, sentence, verdict_of
from pipeline.statistics.seeds import arm_estimate, difference, queries_difference, stack

SIZES = {"a": 30, "b": 40, "c": 50}
REPLICATES = 800


def draw(rng, mu, k, v, sd_u, sd_e):
    """k seeds of one arm: {dataset: {qid: score}} per seed, with query effects v (shared by paired arms)."""
    seeds = []
    for _ in range(k):
        u = rng.normal(0, sd_u)
        seeds.append({d: {f"q{i}": mu + v[d][i] + u + rng.normal(0, sd_e) for i in range(n)} for d, n in SIZES.items()})
    return seeds


def query_effects(rng, sd_v):
    return {d: rng.normal(0, sd_v, n) for d, n in SIZES.items()}


def coverage_of_arm(k, sd_u, sd_e, sd_v=0.2, seed=0, query_only=False):
    rng, hits = np.random.default_rng(seed), 0
    for _ in range(REPLICATES):
        seeds = draw(rng, 0.5, k, query_effects(rng, sd_v), sd_u, sd_e)
        est = arm_estimate(seeds[:1] if query_only else seeds)
        hits += est.low <= 0.5 <= est.high
    return hits / REPLICATES


@pytest.mark.parametrize(
    "k, sd_u, sd_e, sd_v",
    [(3, 0.02, 0.05, 0.2), (3, 0.0, 0.08, 0.02), (5, 0.01, 0.02, 0.2), (2, 0.015, 0.03, 0.2)],
    ids=["3 seeds, seed effects", "3 seeds, per-query seed noise only, easy queries", "5 seeds", "2 seeds"],
)
def test_arm_interval_covers_the_true_mean_at_nominal_rate(k, sd_u, sd_e, sd_v):
    assert 0.93 <= coverage_of_arm(k, sd_u, sd_e, sd_v) <= 0.975


def test_a_query_only_interval_misses_when_seeds_vary():
    """The simulation can tell: ignoring seed variation (one seed's queries only) covers far below 95%."""
    assert coverage_of_arm(3, 0.03, 0.02, query_only=True) < 0.85


def coverage_of_difference(true_delta, k, sd_u, sd_e, seed=1, sd_v=0.2, sd_pair=0.05):
    rng, hits = np.random.default_rng(seed), 0
    for _ in range(REPLICATES):
        v = query_effects(rng, sd_v)
        v_b = {d: x + rng.normal(0, sd_pair, x.size) for d, x in v.items()}  # paired: mostly the same hard queries
        a = draw(rng, 0.5 + true_delta, k, v, sd_u, sd_e)
        b = draw(rng, 0.5, k, v_b, sd_u, sd_e)
        diff = difference(a, b)
        hits += diff.low <= true_delta <= diff.high
    return hits / REPLICATES


@pytest.mark.parametrize("k", [2, 3, 5])
def test_difference_interval_covers_the_true_difference(k):
    assert 0.93 <= coverage_of_difference(-0.01, k, sd_u=0.015, sd_e=0.04) <= 0.975


def test_difference_interval_is_not_too_wide_when_queries_barely_differ():
    """Low query spread, per-query seed noise: the query part of the variance is mostly seed x query noise counted
    twice unless the interaction correction subtracts it (without it coverage goes to ~0.995)."""
    coverage = coverage_of_difference(-0.01, 3, sd_u=0.0, sd_e=0.08, sd_v=0.02, sd_pair=0.005)
    assert 0.93 <= coverage <= 0.95 + 2.33 * np.sqrt(0.05 * 0.95 / REPLICATES)


def verdict_rates(true_delta, margin=0.01, k=3, sd_u=0.004, sd_e=0.03, seed=2, replicates=REPLICATES):
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(VERDICTS, 0)
    for _ in range(replicates):
        v = query_effects(rng, 0.2)
        a = draw(rng, 0.5 + true_delta, k, v, sd_u, sd_e)
        b = draw(rng, 0.5, k, v, sd_u, sd_e)
        counts[verdict_of(queries_difference(a, b), margin).label] += 1
    return {label: n / replicates for label, n in counts.items()}


@pytest.mark.slow  # a simulation of the claim: a minute or more
def test_an_adapter_worse_by_the_margin_is_rarely_called_equivalent_or_non_inferior():
    rates = verdict_rates(-0.01)
    assert rates["equivalent"] + rates["non-inferior"] + rates["superior"] <= 0.05 + 0.02  # alpha + MC error


def test_an_adapter_better_by_the_margin_is_rarely_called_equivalent():
    assert verdict_rates(+0.01)["equivalent"] <= 0.05 + 0.02


def test_a_true_tie_is_mostly_called_equivalent_when_the_noise_allows():
    rates = verdict_rates(0.0, sd_u=0.002, sd_e=0.01, k=5, replicates=200)
    assert rates["equivalent"] >= 0.8 and rates["inferior"] + rates["superior"] <= 0.1


def test_a_clear_loss_is_inferior():
    assert verdict_rates(-0.05, replicates=100)["inferior"] >= 0.95


def test_one_seed_per_arm_is_inconclusive_and_says_why():
    rng = np.random.default_rng(3)
    v = query_effects(rng, 0.2)
    diff = queries_difference(draw(rng, 0.4, 1, v, 0.01, 0.01), draw(rng, 0.5, 1, v, 0.01, 0.01))
    verdict = verdict_of(diff, 0.01)
    assert verdict.label == "no verdict" and "seed-to-seed variation is not measured" in verdict.reason
    assert "queries only" in verdict.reason and "No verdict" in sentence(verdict, "lora-r8", "full")


def test_inconclusive_says_how_many_seeds_would_decide_it():
    rng = np.random.default_rng(4)
    v = query_effects(rng, 0.2)
    diff = queries_difference(draw(rng, 0.497, 2, v, 0.02, 0.03), draw(rng, 0.5, 2, v, 0.02, 0.03))
    verdict = verdict_of(diff, 0.01)
    assert verdict.label == "inconclusive"
    assert "seeds per arm would decide it" in verdict.reason


def test_ninety_percent_interval_is_what_tost_reads():
    rng = np.random.default_rng(5)
    v = query_effects(rng, 0.2)
    diff = queries_difference(draw(rng, 0.5, 3, v, 0.003, 0.02), draw(rng, 0.5, 3, v, 0.003, 0.02))
    verdict = verdict_of(diff, 0.01)
    low, high = verdict.ci90
    assert (verdict.p_tost < 0.05) == (-0.01 < low and high < 0.01)
    # the 90% interval, computed apart from the code under test
    t90 = stats.t.ppf(0.95, diff.df)
    assert (low, high) == pytest.approx((diff.delta - t90 * diff.se, diff.delta + t90 * diff.se))


def test_seeds_must_share_their_queries():
    one = {"a": {"q1": 0.5, "q2": 0.4}}
    with pytest.raises(ValueError, match="other datasets or queries"):
        stack([one, {"a": {"q1": 0.5, "q3": 0.4}}])
    with pytest.raises(ValueError, match="different"):
        difference([one], [{"a": {"q1": 0.5, "q9": 0.1}}])


def test_margin_must_be_positive():
    diff = queries_difference([{"a": {"q1": 0.5, "q2": 0.4}}], [{"a": {"q1": 0.5, "q2": 0.3}}])
    with pytest.raises(ValueError, match="margin=0"):
        verdict_of(diff, 0.0)


# --------------------------------------------------------------------- unequal seed counts, TOST's p, the sentence


def additive(offsets, pattern):
    """Seeds whose per-query scores are the seed's offset plus a fixed query pattern: no query-by-seed interaction,
    and (paired with another arm of the same pattern) no query variation left in the difference."""
    return [{d: {f"q{i}": o + p for i, p in enumerate(ps)} for d, ps in pattern.items()} for o in offsets]


def test_unequal_seed_counts_give_each_arm_its_own_degrees_of_freedom():
    """A failed seed leaves 5 seeds against 2: Welch-Satterthwaite's df weighs each arm's variance part by that arm's
    k - 1, as scipy's Welch test does (the two swapped gives another df)."""
    from pipeline.statistics.sequential import benchmark_difference

    adapter, full = [0.61, 0.64, 0.60, 0.66, 0.63], [0.62, 0.627]
    welch = stats.ttest_ind(adapter, full, equal_var=False)
    assert benchmark_difference(adapter, full).df == pytest.approx(welch.df)
    rng = np.random.default_rng(0)
    pattern = {d: rng.uniform(0, 0.4, n) for d, n in SIZES.items()}
    diff = difference(additive(adapter, pattern), additive(full, pattern))
    assert diff.query_var == pytest.approx(0, abs=1e-12)  # only the seeds vary: their Welch df, whatever the queries
    assert diff.df == pytest.approx(welch.df) and diff.delta == pytest.approx(np.mean(adapter) - np.mean(full))


def test_the_tost_p_value_is_the_larger_of_the_two_one_sided_ones():
    """Δ near the upper margin: the upper one-sided test decides, its p-value is TOST's (statsmodels' ttost_ind)."""
    from statsmodels.stats.weightstats import ttost_ind

    from pipeline.statistics.sequential import benchmark_difference

    adapter, full = [0.508, 0.512, 0.506, 0.511], [0.5, 0.503, 0.498]
    verdict = verdict_of(benchmark_difference(adapter, full), 0.01)
    p, lower, upper = ttost_ind(np.array(adapter), np.array(full), -0.01, 0.01, usevar="unequal")
    assert lower[1] < 0.01 < upper[1]  # the two one-sided p-values differ: min and max are told apart
    assert verdict.p_tost == pytest.approx(p) and verdict.p_noninferiority == pytest.approx(lower[1])


@pytest.mark.parametrize("alpha, level", [(0.05, "90%"), (0.025, "95%")])
def test_the_sentence_names_the_level_of_the_interval_it_prints(alpha, level):
    """The sentence prints the (1 - 2 alpha) interval that equivalence reads: at alpha 0.05 a 90% CI, not a 95% one."""
    from pipeline.statistics.sequential import benchmark_difference

    verdict = verdict_of(benchmark_difference([0.5, 0.502, 0.499], [0.5, 0.501, 0.4995]), 0.01, alpha)
    low, high = verdict.ci90
    text = sentence(verdict, "lora-r8", "full")
    assert f"{level} CI [{low:+.4f}, {high:+.4f}]" in text, text
