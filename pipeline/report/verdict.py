"""The verdict: is the selected adapter as good as the selected full fine-tune, within a stated margin?

"p > 0.05" is no evidence of "as good as". With Δ = adapter - full (NanoBEIR mean NDCG@10, over seeds and queries,
`pipeline.statistics.seeds.difference`) and a margin m (default 0.01 NDCG@10), the verdict reads the intervals the way
two one-sided tests (TOST) at level alpha do:

- equivalent:   the (1 - 2 alpha) CI lies inside (-m, +m)   (TOST: both one-sided tests reject);
- superior:     the (1 - alpha) CI lies above 0, and the adapter is not shown equivalent;
- inferior:     the (1 - alpha) CI lies below 0, and the adapter is not shown equivalent;
- non-inferior: the (1 - 2 alpha) CI lies above -m (one-sided test at alpha), nothing stronger holds;
- inconclusive: none of these, e.g. the CI spans -m and 0. Also with one seed in either arm: seed-to-seed
  variation is then unmeasured, and often larger than the gaps claimed.

For an inconclusive verdict, `needed` says roughly how many seeds per arm (queries fixed) or queries (seeds fixed)
would shrink the interval enough to decide it, if the estimates of the variance parts hold.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from scipy import stats

from pipeline.statistics.seeds import Difference

VERDICTS = ("equivalent", "non-inferior", "superior", "inferior", "inconclusive")
MIN_SEEDS = 2


class Verdict(NamedTuple):
    label: str  # one of VERDICTS
    margin: float
    alpha: float
    delta: float
    ci90: tuple[float, float]  # the (1 - 2 alpha) CI the equivalence and non-inferiority tests read
    ci95: tuple[float, float]  # the (1 - alpha) CI the superiority and inferiority tests read
    p_tost: float  # TOST p-value for equivalence within +-margin
    p_noninferiority: float  # one-sided p-value for H0: delta <= -margin
    reason: str  # for inconclusive: why, and what would decide it


def decide(diff: Difference, margin: float = 0.01, alpha: float = 0.05) -> Verdict:
    if margin <= 0:
        raise ValueError(f"margin={margin} is not allowed: must be > 0 (NDCG@10 points, e.g. 0.01)")
    ci90, ci95 = diff.ci(1 - 2 * alpha), diff.ci(1 - alpha)
    p_lower, p_upper = _one_sided(diff, -margin, "greater"), _one_sided(diff, margin, "less")
    p_tost = max(p_lower, p_upper)
    label, reason = "inconclusive", ""
    if not diff.seeds_measured:
        reason = (
            f"{diff.seeds_a} seed(s) for the adapter and {diff.seeds_b} for the full fine-tune: seed-to-seed variation "
            f"is not measured; train at least {MIN_SEEDS} seeds per arm (the protocol's default is 3)"
        )
    elif -margin < ci90[0] and ci90[1] < margin:
        label = "equivalent"
    elif ci95[0] > 0:
        label = "superior"
    elif ci95[1] < 0:
        label = "inferior"
    elif ci90[0] > -margin:
        label = "non-inferior"
    else:
        reason = needed(diff, margin, alpha)
    return Verdict(label, margin, alpha, diff.delta, ci90, ci95, p_tost, p_lower, reason)


def _one_sided(diff: Difference, bound: float, alternative: str) -> float:
    """p-value of the one-sided t-test of delta against `bound` (alternative: delta greater / less than it)."""
    if diff.se == 0:
        holds = diff.delta > bound if alternative == "greater" else diff.delta < bound
        return 0.0 if holds else 1.0
    t = (diff.delta - bound) / diff.se
    return float(stats.t.sf(t, diff.df) if alternative == "greater" else stats.t.cdf(t, diff.df))


def needed(diff: Difference, margin: float, alpha: float = 0.05) -> str:
    """Roughly what would decide an inconclusive comparison: seeds per arm, or queries, at the current estimates."""
    z_two, z_one = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(1 - alpha)
    d = diff.delta
    targets = []  # the largest standard error at which some verdict would be reached
    if abs(d) < margin:
        targets.append((margin - abs(d)) / z_one)  # equivalence
    if d > -margin:
        targets.append((d + margin) / z_one)  # non-inferiority
    if d != 0:
        targets.append(abs(d) / z_two)  # superiority or inferiority
    if not targets or max(targets) <= 0:
        return "the estimate sits on the margin: no number of seeds or queries would decide it"
    se_target = max(targets)
    seed_part = diff.seed_var_a + diff.seed_var_b  # with k seeds in each arm: seed_part / k
    now = f"now {diff.seeds_a} and {diff.seeds_b} seeds, {diff.queries} queries"
    options = []
    room = se_target**2 - diff.query_var
    if room > 0 and seed_part > 0:
        options.append(f"about {max(MIN_SEEDS, math.ceil(seed_part / room))} seeds per arm")
    seed_now = diff.seed_var_a / diff.seeds_a + diff.seed_var_b / diff.seeds_b
    room = se_target**2 - seed_now
    if room > 0 and diff.query_var > 0:
        options.append(f"about {math.ceil(diff.queries * diff.query_var / room):,} queries")
    if not options:
        return f"the interval is {diff.se / se_target:.1f}x too wide; more seeds and more queries together ({now})"
    return f"{' or '.join(options)} would likely decide it ({now})"


def sentence(verdict: Verdict, adapter: str, full: str) -> str:
    """The report's opening sentence."""
    m, (l90, h90), (l95, h95) = verdict.margin, verdict.ci90, verdict.ci95
    ci = f"Δ = {verdict.delta:+.4f} NDCG@10, {1 - 2 * verdict.alpha:.0%} CI [{l90:+.4f}, {h90:+.4f}]"
    what = {
        "equivalent": f"is equivalent to {full} within ±{m:g} NDCG@10 (TOST p = {verdict.p_tost:.3g})",
        "non-inferior": f"is non-inferior to {full}: not worse by more than {m:g} NDCG@10 "
        f"(p = {verdict.p_noninferiority:.3g}), but not shown equivalent",
        "superior": f"is better than {full} ({1 - verdict.alpha:.0%} CI [{l95:+.4f}, {h95:+.4f}] above 0)",
        "inferior": f"is worse than {full} ({1 - verdict.alpha:.0%} CI [{l95:+.4f}, {h95:+.4f}] below 0)",
        "inconclusive": f"cannot be told apart from {full} within ±{m:g} NDCG@10",
    }[verdict.label]
    text = f"**{verdict.label.capitalize()}**: {adapter} {what}; {ci}."
    if verdict.reason:
        text += f" {verdict.reason[0].upper()}{verdict.reason[1:]}."
    return text
