"""Configuration-level p-values over the grid, Holm-adjusted: is each adapter configuration different from the
selected full fine-tune, counting seed variation?

A run-vs-run query test (`pipeline.report.stats.paired_test`) treats the queries as the only randomness: two
configurations that are truly equal differ by seed luck, and that test calls it a difference far more often than
its level. Here each configuration's per-seed NanoBEIR means face the full fine-tune's, with Welch's t (H0: Δ = 0).
A configuration the grid trained at one seed has no seed variance of its own: it borrows its method's pooled seed
variance (from that method's configurations with several seeds), with that pooled estimate's degrees of freedom
(Satterthwaite), times SPREAD_BOUND² : the p-value holds for a configuration whose seeds spread up to SPREAD_BOUND
(2) times the pooled sd (higher learning rates spread more: borrowed as it is, a 2x spread gave 0.235 false
positives per test and a Holm family-wise error of 0.33, tests/statistics/test_advice.py), and the report states that condition. Holm over the family (statsmodels `multipletests`):
the adapter configurations compared at the sweep's recorded grid seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pipeline.statistics.seeds import satterthwaite

SPREAD_BOUND = 2.0  # a one-seed configuration's seed sd, at most this many times its method's pooled sd


class ConfigurationTest(NamedTuple):
    delta: float
    se: float
    df: float
    p_value: float  # two-sided, H0: Δ = 0; nan when the seed variance is not measured
    borrowed: bool  # the configuration's seed variance came from its method's pooled estimate


def pooled_variance(groups: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(pooled sample variance, its df) of the groups with at least two finite values; (nan, 0) if none."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) > 1 and np.all(np.isfinite(g))]
    df = sum(g.size - 1 for g in groups)
    if df == 0:
        return math.nan, 0
    return float(sum(((g - g.mean()) ** 2).sum() for g in groups) / df), df


def configuration_test(
    adapter: Sequence[float], full: Sequence[float], pooled: tuple[float, float] = (math.nan, 0)
) -> ConfigurationTest:
    """Welch's t of the configuration's per-seed means vs the full fine-tune's; `pooled` (variance, df) stands in
    for a one-seed configuration's seed variance, times SPREAD_BOUND²."""
    a, f = np.asarray(adapter, dtype=float), np.asarray(full, dtype=float)
    borrowed = a.size < 2
    va, dfa = (pooled[0] * SPREAD_BOUND**2, pooled[1]) if borrowed else (float(np.var(a, ddof=1)), a.size - 1)
    vf, dff = (float(np.var(f, ddof=1)), f.size - 1) if f.size > 1 else (math.nan, 0)
    delta = float(a.mean() - f.mean())
    parts = [(va / a.size, dfa), (vf / f.size, dff)]
    se2 = sum(v for v, _ in parts)
    if not (math.isfinite(se2) and se2 > 0 and math.isfinite(delta)):
        return ConfigurationTest(delta, math.nan, math.nan, math.nan, borrowed)
    se, df = satterthwaite(parts)
    p = float(2 * stats.t.sf(abs(delta) / se, df))
    return ConfigurationTest(delta, se, df, p, borrowed)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values of the family (entries with a nan p-value are left out of it, and stay nan)."""
    measured = {k: p for k, p in p_values.items() if math.isfinite(p)}
    adjusted = (
        dict(zip(measured, multipletests(list(measured.values()), method="holm")[1], strict=True)) if measured else {}
    )
    return {k: float(adjusted.get(k, math.nan)) for k in p_values}
