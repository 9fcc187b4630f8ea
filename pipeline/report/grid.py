"""The grid beside the verdict: every adapter configuration against the selected full fine-tune, and the rank that
suffices. Works on a `pipeline.report.applied.Protocol` (passed in, never imported: the protocol calls this).

- Run vs run: each adapter run against the selected full fine-tune's run at the same seed, paired by query
  (`pipeline.report.stats.paired_test`). Queries are its only randomness: it says whether these two runs differ on
  these queries, not whether the configurations do.
- Configuration vs configuration: each adapter configuration's per-seed NanoBEIR means against the full
  fine-tune's, Welch's t with seed variance (a one-seed configuration borrows its method's pooled seed variance),
  Holm over the adapter configurations the grid trained at its recorded seeds (`pipeline.statistics.family`).
- Ranks: for each rank of the selected adapter's method, its configuration with the best dev score; Δ vs full with
  the verdict's interval (fresh seeds where `make decide` trained them; the grid run alone is "queries only"); the
  smallest rank that suffices by fixed-sequence testing from the selected adapter's rank down
  (`pipeline.statistics.rank`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from pipeline.protocol import rank_choices, verdict_of
from pipeline.report.load import Arm
from pipeline.report.stats import paired_test
from pipeline.statistics.family import SPREAD_BOUND, configuration_test, holm, pooled_variance
from pipeline.statistics.rank import smallest_rank
from pipeline.statistics.seeds import nanobeir_means, queries_difference
from pipeline.statistics.sequential import Estimate, benchmark_difference, look
from pipeline.sweep.selection import Candidate, tie_key


class RankDelta(NamedTuple):
    rank: int
    configuration: str
    delta: float
    low: float  # the (1 - 2 alpha) interval, as the verdict reads it (nan when not measured)
    high: float
    label: str
    seeds: int  # the seeds in Δ
    note: str  # "queries only" when only the grid run exists


def estimate_of(adapter: list[Arm], full: list[Arm], target: str) -> Estimate:
    """Δ adapter - full on these runs for the target: "benchmark" (per-seed NanoBEIR means, Welch) or "queries"."""
    if target == "queries":
        return queries_difference([a.per_query for a in adapter], [a.per_query for a in full])
    return benchmark_difference(_means(adapter), _means(full))


def _means(runs: list[Arm]) -> list[float]:
    return [nanobeir_means([a.per_query])[0] for a in runs]


def compare_grid(protocol, margin: float, alpha: float, n_resamples: int, seed: int, level: float) -> None:
    full = protocol.full
    if full is None or not full.finished:
        return
    _run_vs_run(protocol, n_resamples, seed, level)
    _configuration_tests(protocol)
    _ranks(protocol, margin, alpha)


def _run_vs_run(protocol, n_resamples: int, seed: int, level: float) -> None:
    full = protocol.full
    full_by_seed = {a.seed: a for a in full.finished}
    for config in protocol.configurations:
        if config is full:
            continue
        for arm in config.finished:
            partner = full_by_seed.get(arm.seed)
            if partner is None:
                continue
            try:
                arm.delta = paired_test(arm.per_query, partner.per_query, n=n_resamples, seed=seed, level=level)
            except ValueError as error:
                protocol.notes.append(f"{arm.name}: no paired test against {partner.name}: {error}")


def _configuration_tests(protocol) -> None:
    full_means = _means(protocol.full.finished)
    pooled = {}
    for method in {c.method for c in protocol.configurations}:
        groups = [_means(c.finished) for c in protocol.configurations if c.method == method and len(c.finished) > 1]
        pooled[method] = pooled_variance(groups)
    family = {}
    for config in protocol.configurations:
        if config.method == "full" or not config.finished:
            continue
        config.test = configuration_test(_means(config.finished), full_means, pooled[config.method])
        if any(a.seed in protocol.grid_seeds for a in config.finished):
            family[config.key] = config.test.p_value
    if any(c.test is not None and c.test.borrowed for c in protocol.configurations):
        protocol.notes.append(
            f"p (seeds) of a one-seed configuration borrows its method's pooled seed variance x {SPREAD_BOUND**2:g}: "
            f"it holds if that configuration's seeds spread at most {SPREAD_BOUND:g}x the pooled sd"
        )
    for key, p in holm(family).items():
        next(c for c in protocol.configurations if c.key == key).p_holm = None if math.isnan(p) else p


def _ranks(protocol, margin: float, alpha: float) -> None:
    if protocol.adapter is None:
        return
    # each rank's best configuration on dev, as make decide chooses it (`rank_choices`; ties by tie_key)
    finished = [c for c in protocol.configurations if c.finished]
    candidates = [Candidate(c.method, c.key, 0, c.dev, tie_key(c.method, c.runs[0].r, c.name)) for c in finished]
    by_key = {c.key: c for c in finished}
    chosen = rank_choices(candidates, {c.key: c.runs[0].r for c in finished}, protocol.adapter.method)
    best = {r: by_key[key] for r, key in chosen.items()}
    full_fresh = protocol.full.fresh(protocol.grid_seeds, protocol.order)
    rows = []
    for r, config in sorted(best.items(), reverse=True):
        v = protocol.verdict
        if config is protocol.adapter and v is not None and v.label != "no verdict":  # the verdict itself
            rows.append(RankDelta(r, config.name, v.delta, *v.ci90, v.label, v.seeds_adapter, ""))
            continue
        fresh = config.fresh(protocol.grid_seeds, protocol.order)
        if len(fresh) > 1 and len(full_fresh) > 1 and protocol.design is not None:
            # make decide's design: the rank read at the last look taken, on that look's seeds, as its verdict.rank
            last = protocol.looks[-1]
            estimate = estimate_of(fresh[: last.seeds_adapter], full_fresh[: last.seeds_full], protocol.target)
            at = look(protocol.design, estimate, last.index)
            rows.append(RankDelta(r, config.name, at.delta, at.low, at.high, at.label, last.seeds_adapter, ""))
            continue
        if len(fresh) > 1 and len(full_fresh) > 1:
            verdict = verdict_of(estimate_of(fresh, full_fresh, protocol.target), margin, alpha)
            rows.append(RankDelta(r, config.name, verdict.delta, *verdict.ci90, verdict.label, len(fresh), ""))
            continue
        grid_full = [a for a in protocol.full.finished if a.seed in {x.seed for x in config.finished}]
        if not grid_full:
            continue
        diff = queries_difference([a.per_query for a in config.finished], [a.per_query for a in grid_full])
        low, high = verdict_of(diff._replace(note=""), margin, alpha).ci90  # the query-only interval, drawn as such
        rows.append(RankDelta(r, config.name, diff.delta, low, high, "no verdict", len(config.finished),
                              "queries only"))  # fmt: skip
    protocol.ranks = rows
    if rows:
        top = protocol.adapter.runs[0].r  # from the selected rank down, as make decide (ranks above it lost on dev)
        protocol.rank, _ = smallest_rank({row.rank: row.label for row in rows if top is None or row.rank <= top})
