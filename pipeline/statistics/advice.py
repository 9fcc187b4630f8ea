"""How many seeds per arm would likely decide an inconclusive verdict, at the current estimates.

A verdict is decided when the interval clears what it is tested against: for equivalence, each bound within the
margin (distance m - |Δ|); for superiority or inferiority, 0 (distance |Δ|, at the two-sided level). With n seeds
per arm the standard error shrinks as se(n)^2 = se^2 n_now / n and the Welch df grows as df (n - 1) / (n_now - 1);
n is the smallest count with

    distance >= (t_{1 - level, df(n)} + t_{power, df(n)}) se_plan(n)

for one of the verdicts, i.e. power >= `power` (default 80%) if Δ and the seed spread are as estimated (the usual
t-based sample size, e.g. Julious 2004, Stat. Med. 23:1921; for equivalence the power quantile is two-sided,
t_{(1 + power) / 2}, since both bounds must clear the margin). The seed spread estimated from a
few seeds is often too small; se_plan uses its upper `confidence` (default 80%) limit from the chi-square
distribution of the variance estimate (Browne 1995, Stat. Med. 14:1933), so following the advice decides at least
`power` of the time across the spread's uncertainty (tests/test_advice.py simulates it). Never below what was run:
the advice is at least one more seed than now.
"""

from __future__ import annotations

import math

from scipy import stats

from pipeline.statistics.sequential import Estimate

MOST = 1000  # seeds per arm beyond which the advice says "more than"


def seeds_needed(
    estimate: Estimate, margin: float, alpha: float = 0.05, power: float = 0.8, confidence: float = 0.8
) -> int | None:
    """Seeds per arm (in total, counting those run) that would likely decide it; None if over MOST or unreachable
    (Δ on the margin, se not measured)."""
    if estimate.note or not (math.isfinite(estimate.delta) and estimate.se > 0 and estimate.df > 0):
        return None
    now = 2 / (1 / estimate.seeds_adapter + 1 / estimate.seeds_full)
    spread = estimate.df / stats.chi2.ppf(1 - confidence, estimate.df)  # upper confidence limit of the variance
    d = abs(estimate.delta)
    # (distance, one-sided level, power quantile): equivalence needs both bounds in, so near Δ = 0 its power term is
    # two-sided (Chow, Shao & Wang 2008, section 3.2); superiority or inferiority one-sided
    goals = [(margin - d, alpha, (1 + power) / 2), (d, alpha / 2, power)]
    for n in range(math.floor(now) + 1, MOST + 1):
        df = estimate.df * (n - 1) / max(now - 1, 1)
        se = estimate.se * math.sqrt(spread * now / n)
        if any(
            distance >= (stats.t.isf(level, df) + stats.t.ppf(quantile, df)) * se
            for distance, level, quantile in goals
            if distance > 0
        ):
            return n
    return None


def advice(estimate: Estimate, margin: float, alpha: float = 0.05, power: float = 0.8) -> str:
    """The sentence an inconclusive verdict ends with."""
    now = f"now {estimate.seeds_adapter} and {estimate.seeds_full} seeds"
    n = seeds_needed(estimate, margin, alpha, power)
    if n is None:
        return f"more than {MOST} seeds per arm would be needed, or the spread is not measured ({now})"
    return f"about {n} seeds per arm would decide it with {power:.0%} power if Δ and the seed spread hold ({now})"
