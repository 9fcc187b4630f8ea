"""Advice on seeds, the rank that suffices and configuration-level p-values (pipeline.statistics: advice, rank,
family), checked by simulation of NDCG@10-like scores where a rate is claimed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.statistics.advice import advice, seeds_needed
from pipeline.statistics.family import configuration_test, holm, pooled_variance
from pipeline.statistics.generator import Scenario
from pipeline.statistics.rank import smallest_rank, unsettled
from pipeline.statistics.sequential import DECIDED, benchmark_difference, fixed, look

MOST = 50  # seeds drawn per arm: advice beyond it counts as followed with these many


def test_following_the_advice_decides_80_to_90_percent_of_the_time_near_the_smallest_n():
    """Three seeds per arm, inconclusive: make decide's sequential design run to the advised budget decides 0.8-0.9
    of the time (pooled over Δ = 0 and half a margin worse), and the median advice is near the smallest single
    budget that decides 80% of the same replicates: within 1.25x at half a margin, above it at Δ = 0 (1.14-1.42x
    measured: the observed |Δ| is never below the true 0), so the bound here is 1.5x (docs/protocol.md)."""
    from pipeline.statistics.advice import follow

    scenario = Scenario(datasets=13, seed_sd=(0.015, 0.015))
    runs = [follow(scenario, delta, reps=60, seed=5, run=3, most=20) for delta in (0.0, -0.005)]
    followed = sum(r.inconclusive for r in runs)
    rate = sum(r.decided * r.inconclusive for r in runs) / followed
    tolerance = 2.33 * math.sqrt(0.85 * 0.15 / followed)
    print(
        f"followed {followed}, decided {rate:.2f}, median / smallest", [np.median(r.advised) / r.smallest for r in runs]
    )
    assert followed >= 40
    assert 0.8 - tolerance <= rate <= 0.9 + tolerance
    for r in runs:
        assert r.smallest is not None and 1 / 1.25 <= np.median(r.advised) / r.smallest <= 1.5


def test_the_simulated_looks_are_make_decides_looks():
    """`decided` (the advice's vectorised looks) says decided exactly where `replay` stops on a decided label."""
    from pipeline.statistics.advice import decided
    from pipeline.statistics.sequential import Design, replay

    rng = np.random.default_rng(3)
    for budget in (3, 4, 7):
        design = Design(budget=budget)
        adapter, full = 0.5 + rng.normal(0.0, 0.004, (budget, 300)), 0.5 + rng.normal(0.004, 0.004, (budget, 300))
        replayed = [replay(design, a, f)[-1].label in DECIDED for a, f in zip(adapter.T, full.T, strict=True)]
        assert 0 < sum(replayed) < 300
        assert decided(design, adapter, full).tolist() == replayed


def test_the_advice_has_a_power_term():
    """With the spread known (df huge) and Δ = 0, following the advice gives P(equivalent) >= 0.8, by the normal
    distribution: P(|Δ^| + z_0.95 se_n < m) = 2 Phi(m / se_n - z_0.95) - 1."""
    from scipy import stats

    from pipeline.statistics.sequential import Estimate

    for sd in (0.004, 0.006, 0.01):
        known = Estimate(0.0, sd * math.sqrt(2 / 3), 1e9, 3, 3, "benchmark")
        n = seeds_needed(known, 0.01)
        se_n = sd * math.sqrt(2 / n)
        assert 2 * stats.norm.cdf(0.01 / se_n - stats.norm.isf(0.05)) - 1 >= 0.8


def test_advice_grows_with_the_spread_and_says_why_it_cannot():
    narrow = benchmark_difference([0.5, 0.504, 0.497], [0.5, 0.49, 0.51])
    wide = benchmark_difference([0.5, 0.508, 0.493], [0.5, 0.49, 0.51])
    assert 3 < seeds_needed(narrow, 0.01) < seeds_needed(wide, 0.01)
    assert "seeds per arm would decide it" in advice(narrow, 0.01)
    assert seeds_needed(benchmark_difference([0.5, 0.5, 0.5], [0.5, 0.49, 0.51]), 0.01) is None  # not measured


def test_fixed_sequence_stops_at_the_first_rank_that_fails():
    labels = {4: "equivalent", 8: "inconclusive", 16: "equivalent", 32: "equivalent"}
    assert smallest_rank(labels) == (16, [32, 16, 8])  # rank 4 passes after a failure: not claimed
    assert smallest_rank({8: "non-inferior", 16: "superior"}, claim="non-inferior") == (8, [16, 8])
    assert smallest_rank({8: "equivalent", 16: "inconclusive"}) == (None, [16])
    with pytest.raises(ValueError, match="claim='best'"):
        smallest_rank(labels, claim="best")


def test_the_sequence_waits_only_on_a_rank_more_seeds_could_decide():
    assert unsettled({4: "equivalent", 8: "inconclusive", 16: "equivalent"}) == 8  # 8 may yet hold or fail
    assert unsettled({8: "inconclusive", 16: "inferior"}) is None  # the sequence stops at 16 whatever 8 does
    assert unsettled({8: "equivalent", 16: "non-inferior"}) is None  # non-inferior suffices (the default claim)
    assert unsettled({8: "equivalent", 16: "non-inferior"}, claim="equivalent") == 16  # may yet become equivalent
    assert smallest_rank({8: "equivalent", 16: "superior"}) == (8, [16, 8])  # a better rank suffices too
    assert unsettled({8: "non-inferior", 16: "superior"}, claim="non-inferior") is None
    assert unsettled({8: "no verdict", 16: "equivalent"}) is None  # a failed run: no seed mends it


def test_fixed_sequence_holds_the_familywise_error():
    """Four ranks all exactly a margin worse than full (none truly equivalent): claiming any is an error; fixed
    sequence keeps it at alpha = 0.05, where picking the smallest rank that passes on its own does not."""
    rng = np.random.default_rng(12)
    reps, errors, naive = 400, 0, 0
    for _ in range(reps):
        labels = {}
        for r in (4, 8, 16, 32):
            a, f = rng.normal(-0.01, 0.004, 5), rng.normal(0, 0.004, 5)
            labels[r] = look(fixed(), benchmark_difference(a, f), 1).label
        errors += smallest_rank(labels)[0] is not None
        naive += any(x == "equivalent" for x in labels.values())
    assert errors / reps <= 0.05 + 2.33 * math.sqrt(0.05 * 0.95 / reps) < naive / reps


@pytest.mark.slow  # a simulation of the claim: a minute or more
def test_configuration_p_values_hold_their_level_over_seeds():
    """24 one-seed configurations all truly equal to full: with seed variance counted (pooled from the selected
    configuration's seeds) about 5% get p < 0.05, and Holm's family-wise error stays near 0.05."""
    rng = np.random.default_rng(13)
    reps, hits, family = 120, 0, 0
    for _ in range(reps):
        full = 0.5 + rng.normal(0, 0.005, 5)
        selected = 0.5 + rng.normal(0, 0.005, 5)
        pooled = pooled_variance([selected])
        p = {f"c{i}": configuration_test([0.5 + rng.normal(0, 0.005)], full, pooled).p_value for i in range(24)}
        hits += sum(v < 0.05 for v in p.values())
        family += min(holm(p).values()) < 0.05
    assert hits / (24 * reps) <= 0.05 + 0.02
    assert family / reps <= 0.05 + 2.33 * math.sqrt(0.05 * 0.95 / reps)


def test_configuration_p_values_hold_when_a_configurations_seeds_spread_twice_as_much():
    """24 one-seed configurations truly equal to full whose seeds spread 2x the selected configuration's (a higher
    learning rate): per-test false positives <= 0.05 and Holm's family-wise error <= 0.05 (borrowing the pooled
    variance as it is: 0.235 and 0.33)."""
    rng = np.random.default_rng(17)
    reps, hits, family = 300, 0, 0
    for _ in range(reps):
        full = 0.5 + rng.normal(0, 0.005, 5)
        pooled = pooled_variance([0.5 + rng.normal(0, 0.005, 5)])
        p = {f"c{i}": configuration_test([0.5 + rng.normal(0, 0.010)], full, pooled).p_value for i in range(24)}
        hits += sum(v < 0.05 for v in p.values())
        family += min(p.values()) * len(p) < 0.05  # Holm rejects any at all iff its first step does (no gc.collect)
    print(f"2x spreads: per-test false positives {hits / (24 * reps):.3f}, Holm family-wise error {family / reps:.3f}")
    assert hits / (24 * reps) <= 0.05 + 2.33 * math.sqrt(0.05 * 0.95 / (24 * reps))  # 0.053 measured
    assert family / reps <= 0.05  # 0.037 measured


def test_configuration_test_without_any_seed_variance_is_nan_not_zero():
    result = configuration_test([0.52], [0.5], pooled=(math.nan, 0))
    assert math.isnan(result.p_value) and result.borrowed
    assert math.isnan(holm({"a": math.nan, "b": 0.01})["a"]) and holm({"a": math.nan, "b": 0.01})["b"] == 0.01


@pytest.mark.parametrize("k", [2, 3, 5, 8])
@pytest.mark.slow  # a simulation of the claim: a minute or more
def test_the_advice_never_names_fewer_seeds_than_were_run(k):
    """Seeds per arm in total, counting those run: at least one more than the k run, however close the verdict is to
    being decided (a nearly decided one: exactly k + 1), and the sentence names that count beside the k run."""
    from pipeline.statistics.sequential import Estimate

    close = Estimate(0.0, 0.0005, 2 * k - 2, k, k, "benchmark")  # the interval is well inside the margin already
    assert seeds_needed(close, 0.01) == k + 1
    rng = np.random.default_rng(k)
    for delta in (0.0, 0.004, 0.008, 0.03):
        estimate = benchmark_difference(0.5 + delta + rng.normal(0, 0.003, k), 0.5 + rng.normal(0, 0.003, k))
        n = seeds_needed(estimate, 0.01)
        assert n is None or n > k
        assert f"now {k} and {k} seeds" in advice(estimate, 0.01)
        assert n is None or f"about {n} seeds per arm" in advice(estimate, 0.01)
