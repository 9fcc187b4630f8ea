"""The protocol, pure (no MLflow, no Hydra): which two arms face each other and which configuration each rank sends
(`facing_full`, `rank_choices`: `make decide` and the report both choose here, on the candidates of
`pipeline.sweep.selection`), the verdict (`Verdict`, `verdict_of`, `from_looks`) and its sentence (`sentence`: the
report's first line and `make decide`'s `verdict.sentence` tag).

The verdict: is the selected adapter as good as the selected full fine-tune, within a stated margin, for a stated
target?

"p > 0.05" is no evidence of "as good as". With Δ = adapter - full (NanoBEIR mean NDCG@10) on fresh seeds (never the
run that won selection) and a margin m (default 0.01 NDCG@10), the verdict reads intervals the way two one-sided
tests (TOST) at level alpha do (`pipeline.statistics.sequential.label_of`):

- equivalent:   the (1 - 2 alpha) interval lies inside (-m, +m);
- superior / inferior: the (1 - alpha) interval lies above / below 0, and the adapter is not shown equivalent;
- non-inferior: the (1 - 2 alpha) interval lies above -m, nothing stronger holds;
- inconclusive: none of these; no verdict: a score is NaN (a failed run), a seed diverged
  (`pipeline.statistics.robust.diverged_seeds`: the verdict claims Δ over runs that train stably), or seed variation
  is not measured (one seed, or seeds that score identically).

The target it claims (`TARGETS`): "benchmark" (default) - this benchmark's fixed queries, over training randomness
(Welch's interval over the per-seed NanoBEIR means); "queries" - queries like these, over seeds and queries
(`pipeline.statistics.seeds`). With fresh seeds added in rounds (`make decide`) the intervals are the repeated
confidence intervals of the group-sequential design (`pipeline.statistics.sequential`), whose error rates hold over
all the looks; with a fixed number of seeds, one look, the plain t intervals.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import NamedTuple

from scipy import stats

from pipeline.statistics.advice import advice
from pipeline.statistics.sequential import LABELS, TARGETS, Design, Estimate, Look, fixed, look
from pipeline.sweep.selection import Candidate, dev_scores, select

VERDICTS = LABELS
ADAPTER, FULL = "adapter", "full"  # the verdict's two arms


def facing_full(candidates: list[Candidate]) -> dict[str, Hashable]:
    """{ADAPTER: the adapter configuration that faces the full fine-tune, FULL: the full fine-tune's}: each method's
    selected configuration on dev (`select`), then the best of the adapter methods' on their dev scores (ties by
    `tie_key`, as `select`); an arm without a finished configuration is missing."""
    chosen = select(candidates)
    scores, ties = dev_scores(candidates), {(c.method, c.config): c.tie for c in candidates}
    adapters = [Candidate(ADAPTER, config, 0, scores[(method, config)], ties[(method, config)])
                for method, config in chosen.items() if method != FULL]  # fmt: skip
    return {**select(adapters), **({FULL: chosen[FULL]} if FULL in chosen else {})}


def rank_choices(candidates: list[Candidate], ranks: dict[Hashable, int | None], method: str) -> dict[int, Hashable]:
    """{rank: the configuration of `method` at that rank with the best dev score} (`ranks`: {config: its r}; ties by
    `tie_key`): what each rank sends against the full fine-tune in the rank procedure."""
    by_rank = [
        c._replace(method=f"r={ranks[c.config]}") for c in candidates if c.method == method and ranks.get(c.config)
    ]
    return {int(name.removeprefix("r=")): config for name, config in select(by_rank).items()}


class Verdict(NamedTuple):
    label: str  # one of VERDICTS
    margin: float
    alpha: float
    delta: float
    ci90: tuple[float, float]  # the (1 - 2 alpha) interval the equivalence and non-inferiority tests read
    ci95: tuple[float, float]  # the (1 - alpha) interval the superiority and inferiority tests read
    p_tost: float  # TOST p-value for equivalence within +-margin (one look only; nan over several)
    p_noninferiority: float  # one-sided p-value for H0: delta <= -margin (one look only)
    reason: str  # for inconclusive: what would decide it; for no verdict: why
    target: str = "benchmark"
    seeds_adapter: int = 0
    seeds_full: int = 0
    looks: int = 1
    stopped: str = ""  # why the sequential rule stopped


def verdict_of(estimate: Estimate, margin: float = 0.01, alpha: float = 0.05) -> Verdict:
    """The verdict of one look at a fixed number of seeds."""
    result = look(fixed(margin, alpha), estimate, 1)
    verdict = from_looks([result], fixed(margin, alpha), estimate)
    if result.label == "no verdict" or estimate.se <= 0:
        return verdict
    p_lower = float(stats.t.sf((estimate.delta + margin) / estimate.se, estimate.df))
    p_upper = float(stats.t.cdf((estimate.delta - margin) / estimate.se, estimate.df))
    return verdict._replace(p_tost=max(p_lower, p_upper), p_noninferiority=p_lower)


def from_looks(looks: list[Look], design: Design, estimate: Estimate | None = None) -> Verdict:
    """The verdict of the last of a sequential design's looks (`pipeline.statistics.sequential.replay`)."""
    last = looks[-1]
    reason = last.reason.removeprefix("no verdict: ") if last.label == "no verdict" else ""
    if last.label == "inconclusive" and estimate is not None and len(looks) == 1:
        reason = advice(estimate, design.margin, design.alpha)
    return Verdict(
        last.label, design.margin, design.alpha, last.delta, (last.low, last.high),
        (last.low_two_sided, last.high_two_sided), math.nan, math.nan, reason, last.target, last.seeds_adapter,
        last.seeds_full, len(looks), last.reason if len(looks) > 1 else "",
    )  # fmt: skip


def sentence(verdict: Verdict, adapter: str, full: str) -> str:
    """The report's opening sentence: the label, what it claims (its target), Δ and its interval, the seeds."""
    m, (l90, h90), (l95, h95) = verdict.margin, verdict.ci90, verdict.ci95
    if verdict.label == "no verdict":
        return f"**No verdict**: {adapter} vs {full}: {verdict.reason}."
    level = f"{1 - 2 * verdict.alpha:.0%} {'repeated ' if verdict.looks > 1 else ''}CI"
    ci = f"Δ = {verdict.delta:+.4f} NDCG@10, {level} [{l90:+.4f}, {h90:+.4f}]"
    p = "" if math.isnan(verdict.p_tost) else f" (TOST p = {verdict.p_tost:.3g})"
    what = {
        "equivalent": f"is equivalent to {full} within ±{m:g} NDCG@10{p}",
        "non-inferior": f"is non-inferior to {full}: not worse by more than {m:g} NDCG@10, but not shown equivalent",
        "superior": f"is better than {full} ({1 - verdict.alpha:.0%} CI [{l95:+.4f}, {h95:+.4f}] above 0)",
        "inferior": f"is worse than {full} ({1 - verdict.alpha:.0%} CI [{l95:+.4f}, {h95:+.4f}] below 0)",
        "inconclusive": f"cannot be told apart from {full} within ±{m:g} NDCG@10",
    }[verdict.label]
    seeds = f"{verdict.seeds_adapter} and {verdict.seeds_full} fresh seeds"
    looks = f", {verdict.looks} looks ({verdict.stopped})" if verdict.looks > 1 else ""
    text = f"**{verdict.label.capitalize()}** {TARGETS[verdict.target]}: {adapter} {what}; {ci}; {seeds}{looks}."
    if verdict.reason:
        text += f" {verdict.reason[0].upper()}{verdict.reason[1:]}."
    return text
