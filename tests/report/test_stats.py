"""pipeline.report.stats on constructed cases whose answers are known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.report.stats import bootstrap_ci, nanobeir_mean, paired_test


def scores(rng: np.random.Generator, sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    return {name: {f"q{i}": float(rng.uniform()) for i in range(k)} for name, k in sizes.items()}


def shifted(per_query, by: float):
    return {name: {q: v + by for q, v in qs.items()} for name, qs in per_query.items()}


def test_nanobeir_mean_is_unweighted_over_datasets():
    per_query = {"a": {"q1": 1.0, "q2": 1.0}, "b": {"q1": 0.0, "q2": 0.0, "q3": 0.0, "q4": 0.0}}
    assert nanobeir_mean(per_query) == 0.5  # not 2/6, the mean over pooled queries
    assert bootstrap_ci(per_query, n=200).mean == 0.5


def test_bootstrap_of_all_equal_scores_has_zero_width():
    mean, low, high = bootstrap_ci({"scifact": {f"q{i}": 0.7 for i in range(30)}}, n=2000)
    assert mean == pytest.approx(0.7)
    assert high - low == pytest.approx(0.0, abs=1e-12)
    assert low == pytest.approx(0.7)


def test_bootstrap_is_deterministic_with_the_seed():
    per_query = scores(np.random.default_rng(1), {"scifact": 40, "msmarco": 25})
    assert bootstrap_ci(per_query, n=2000, seed=3) == bootstrap_ci(per_query, n=2000, seed=3)
    assert bootstrap_ci(per_query, n=2000, seed=3) != bootstrap_ci(per_query, n=2000, seed=4)
    # and independent of the order in which datasets and queries are listed
    reordered = {name: dict(reversed(list(qs.items()))) for name, qs in reversed(list(per_query.items()))}
    assert bootstrap_ci(reordered, n=2000, seed=3) == bootstrap_ci(per_query, n=2000, seed=3)


def test_bootstrap_large_sample_covers_true_mean_with_normal_theory_width():
    # Three datasets of 2000 queries: uniform(0, 1), Beta(2, 5), Beta(5, 2); the true NanoBEIR mean is their mean
    rng = np.random.default_rng(0)
    draws = {"u": rng.uniform(size=2000), "b25": rng.beta(2, 5, size=2000), "b52": rng.beta(5, 2, size=2000)}
    true_mean = (0.5 + 2 / 7 + 5 / 7) / 3
    per_query = {name: {f"q{i}": float(v) for i, v in enumerate(x)} for name, x in draws.items()}
    mean, low, high = bootstrap_ci(per_query, n=2000)
    assert low < true_mean < high
    assert low < mean < high
    se = np.sqrt(sum(x.var() / x.size for x in draws.values())) / 3
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_coverage_is_near_nominal():
    # 100 replicate benchmarks of 2 x 40 queries; a 90% interval should cover the true mean about 90 times
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(100):
        per_query = {
            "u": {f"q{i}": float(v) for i, v in enumerate(rng.uniform(size=40))},
            "b": {f"q{i}": float(v) for i, v in enumerate(rng.beta(2, 5, size=40))},
        }
        _, low, high = bootstrap_ci(per_query, n=500, level=0.9, seed=int(rng.integers(1 << 30)))
        covered += low < (0.5 + 2 / 7) / 2 < high
    assert 80 <= covered <= 98


def test_paired_identical_runs():
    a = scores(np.random.default_rng(2), {"scifact": 8, "msmarco": 5})
    delta, low, high, p = paired_test(a, a, n=2000)
    assert (delta, low, high, p) == (0.0, 0.0, 0.0, 1.0)


def test_paired_constant_shift_gives_exact_delta_zero_width_and_exact_p():
    a = scores(np.random.default_rng(3), {"scifact": 6, "msmarco": 4})  # n = 10 queries
    b = shifted(a, 0.1)
    delta, low, high, p = paired_test(b, a, n=2000)
    assert delta == pytest.approx(0.1, abs=1e-12)
    assert low == pytest.approx(0.1, abs=1e-12) and high == pytest.approx(0.1, abs=1e-12)
    # only "all +" and "all -" of the 2^10 sign patterns reach |T_obs|: two-sided p = 2 / 2^n
    assert p == 2 / 2**10
    delta, low, high, p_reverse = paired_test(a, b, n=2000)
    assert delta == pytest.approx(-0.1, abs=1e-12) and p_reverse == p


def test_paired_exact_p_matches_brute_force_enumeration_with_dataset_weights():
    rng = np.random.default_rng(4)
    a = scores(rng, {"scifact": 3, "msmarco": 5})
    b = {name: {q: v + float(rng.normal(0.05, 0.1)) for q, v in qs.items()} for name, qs in a.items()}
    b["msmarco"]["q0"] = a["msmarco"]["q0"]  # a zero difference: flipping it changes nothing
    diffs = [(1 / 6, b["scifact"][q] - a["scifact"][q]) for q in a["scifact"]]
    diffs += [(1 / 10, b["msmarco"][q] - a["msmarco"][q]) for q in a["msmarco"]]  # weight 1 / (D * n_dataset)
    observed = abs(sum(w * d for w, d in diffs))
    stats = [abs(sum(s * w * d for s, (w, d) in zip(signs, diffs, strict=True))) for signs in _patterns(len(diffs))]
    expected = sum(t >= observed - 1e-12 for t in stats) / len(stats)
    assert paired_test(b, a, n=2000).p_value == pytest.approx(expected, abs=1e-12)


def _patterns(m: int):
    return itertools.product((1, -1), repeat=m)


def test_paired_monte_carlo_agrees_with_exact_and_is_deterministic():
    rng = np.random.default_rng(5)
    a = scores(rng, {"scifact": 7, "msmarco": 7})
    b = {name: {q: v + float(rng.normal(0.03, 0.1)) for q, v in qs.items()} for name, qs in a.items()}
    exact = paired_test(b, a, n=2000).p_value
    monte_carlo = paired_test(b, a, n=20_000, exact_max_queries=0)
    assert monte_carlo.p_value == pytest.approx(exact, abs=0.02)
    assert paired_test(b, a, n=20_000, exact_max_queries=0) == monte_carlo
    assert paired_test(b, a, n=20_000, exact_max_queries=0, seed=1).p_value != monte_carlo.p_value


def test_paired_monte_carlo_never_reports_zero():
    a = scores(np.random.default_rng(6), {"scifact": 30, "msmarco": 30})  # 60 queries: Monte Carlo
    p = paired_test(shifted(a, 0.2), a, n=2000).p_value
    assert p == 1 / 2001  # no random pattern reaches the all-positive statistic; the +1 correction


def test_paired_p_value_is_calibrated_under_the_null():
    """Over many draws where both runs come from one distribution, p < 0.05 about 5% of the time and p is about
    uniform (mean 0.5): one draw could not tell a valid test from one that always answers 1."""
    rng = np.random.default_rng(8)
    p_values = []
    for _ in range(300):
        a = scores(rng, {"scifact": 30, "msmarco": 30})
        b = {name: {q: float(rng.uniform()) for q in qs} for name, qs in a.items()}  # same distribution
        p_values.append(paired_test(a, b, n=400, seed=int(rng.integers(1 << 30))).p_value)
    p_values = np.array(p_values)
    assert 0.02 <= (p_values < 0.05).mean() <= 0.09
    assert 0.44 <= p_values.mean() <= 0.56


def test_paired_delta_is_difference_of_means():
    rng = np.random.default_rng(9)
    a, b = scores(rng, {"scifact": 20, "msmarco": 9}), scores(rng, {"scifact": 20, "msmarco": 9})
    delta, low, high, _ = paired_test(a, b, n=2000)
    assert delta == pytest.approx(nanobeir_mean(a) - nanobeir_mean(b), abs=1e-12)
    assert low < delta < high


def test_paired_requires_the_same_queries():
    a = {"scifact": {"q1": 0.1, "q2": 0.2}}
    with pytest.raises(ValueError, match="scifact.*query ids differ"):
        paired_test(a, {"scifact": {"q1": 0.1, "q3": 0.2}})
    with pytest.raises(ValueError, match="different datasets"):
        paired_test(a, {"msmarco": {"q1": 0.1, "q2": 0.2}})


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="no datasets"):
        bootstrap_ci({})
    with pytest.raises(ValueError, match="no queries"):
        bootstrap_ci({"scifact": {}})
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci({"scifact": {"q1": float("nan")}})
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci({"scifact": {"q1": 0.5}}, level=95)


def test_stratified_bootstrap_matches_scipy_on_one_dataset():
    """With one dataset, stratified = plain: the percentile interval agrees with scipy.stats.bootstrap's."""
    from scipy import stats

    values = np.random.default_rng(7).beta(2, 3, size=60)
    ours = bootstrap_ci({"only": {f"q{i}": v for i, v in enumerate(values)}}, n=20_000, seed=1)
    theirs = stats.bootstrap((values,), np.mean, n_resamples=20_000, method="percentile", random_state=2)
    assert ours.mean == pytest.approx(values.mean())
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=0.004)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=0.004)


def test_holm_as_the_report_calls_it_on_known_p_values():
    """Holm's step-down: sorted p (0.01, 0.03, 0.04) times (3, 2, 1), made monotone: 0.03, 0.06, 0.06."""
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests([0.01, 0.04, 0.03], alpha=0.05, method="holm")
    assert list(adjusted) == pytest.approx([0.03, 0.06, 0.06])
    assert list(reject) == [True, False, False]
