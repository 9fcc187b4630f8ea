"""A diverged seed is a finding, not noise: flagged from the first look (3 seeds), its rate reported with its
interval, and no verdict while it stands, so that the error rates hold for the claim over runs that train stably
(simulated with the project's generator and a collapse mixture)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.statistics.generator import Scenario
from pipeline.statistics.robust import blew_up, diverged_seeds, divergence_rate, outlier_seeds
from pipeline.statistics.sequential import Design, replay
from pipeline.statistics.simulate import collapse_means, collapse_rates

NANOBEIR = Scenario(datasets=13, sizes=(40, 50), seed_sd=(0.025, 0.025))  # per-seed sd of the mean about 0.005


def test_the_issues_collapse_is_flagged_at_three_seeds():
    arms = {"adapter": [0.630, 0.632, 0.55], "full": [0.629, 0.633, 0.627]}
    assert outlier_seeds(arms, floor=0.03) == {"adapter": [2]}  # the arm's own MAD of 3 seeds hid it
    assert diverged_seeds(arms, margin=0.01) == {"adapter": [2]}
    (only,) = replay(Design(), arms["adapter"], arms["full"], seeds=[13, 14, 15])
    assert only.label == "no verdict" and only.stop and "adapter seed 15 scores 0.5500" in only.reason
    assert "adapter diverged in 1 of 3 seeds" in only.reason and "run make decide again" in only.reason


@pytest.mark.parametrize("arm", [0, 1])
def test_a_collapse_is_flagged_at_the_first_look(arm):
    """Seeds that lose 10 margins at a 10% rate: where one of look 1's 3 seeds per arm collapsed, look 1 names it in
    >= 0.9 of the replicates, and it flags few where none did. (Where two of three collapsed, their median is a
    collapse and the stable seed stands above it: look 1 is inconclusive on that spread, and look 2's Qn names them.)"""
    adapter, full, collapsed = collapse_means(NANOBEIR, 0.0, 3, 250, seed=arm, rate=0.1, size=0.1, arm=arm)
    name = ("adapter", "full")[arm]
    flags = [diverged_seeds({"adapter": a, "full": f}, 0.01) for a, f in zip(adapter, full, strict=True)]
    one, more = collapsed.sum(axis=1) == 1, collapsed.sum(axis=1) > 1
    named = np.array([set(np.flatnonzero(c)) <= set(x.get(name, [])) for c, x in zip(collapsed, flags, strict=True)])
    stopped = np.array([bool(x) for x in flags])
    assert one.sum() >= 40 and named[one].mean() >= 0.9
    assert stopped[~(one | more)].mean() <= 0.05


def test_the_error_rates_hold_over_stable_runs_when_seeds_diverge():
    """The adapter's seeds lose 5 margins at a 10% rate; the truth is over stable runs: the error rates hold, and a
    replicate whose seeds diverged ends "no verdict" (the divergence is the finding) instead of deciding."""
    rates = collapse_rates(Design(), NANOBEIR, reps=100, rate=0.1, size=5.0, arm=0, seed=3)
    assert rates[0.01]["equivalent"] <= 0.05 and rates[-0.01]["equivalent"] <= 0.05
    assert rates[0.0]["inferior"] <= 0.025 and rates[0.0]["superior"] <= 0.025
    assert rates[0.0]["no verdict"] >= 0.2  # P(a seed of 10 collapses) = 0.65, most of them found


def test_divergence_rate_has_its_clopper_pearson_interval():
    assert divergence_rate(1, 7) == pytest.approx((1 / 7, 0.0036, 0.5787), abs=1e-4)  # Clopper & Pearson 1934
    assert divergence_rate(0, 3)[1:] == pytest.approx((0.0, 0.7076), abs=1e-4)
    with pytest.raises(ValueError, match="4 diverged of 3 seeds is not allowed"):
        divergence_rate(4, 3)


def test_a_loss_history_that_blew_up():
    assert not blew_up([2.0, 1.2, 0.8, 0.7])
    assert blew_up([2.0, 1.2, math.nan]) and blew_up([2.0, 0.1, 5.0]) and not blew_up([])
