"""The target "queries" (queries like these): uncertainty from both training seeds and queries: a configuration trained with k seeds, scored on the same queries.

The model behind it, for arm a, seed s and query q (within dataset d):

    y[a, s, q] = mu[a] + v[a, q] + u[a, s] + e[a, s, q]

v: how hard the query is for that arm (the benchmark's queries are a sample of possible queries); u: what the seed did
to the whole run (batch order, initialisation); e: what the seed did to that query. The quantity of interest is mu[a]
(the NanoBEIR mean an arm reaches in expectation over seeds and over queries like these), estimated by the mean over
seeds of each seed's NanoBEIR mean. Its variance has three parts, each estimated from the data:

- seeds: the sample variance of the k per-seed NanoBEIR means, divided by k (this holds u and the part of e that
  averages over the queries);
- queries: the stratified variance of the seed-averaged per-query scores (for a difference of two arms: of the paired
  per-query differences), each dataset with its weight 1/D in the mean, divided by its number of queries;
- minus what the query part counted twice: e averaged over the k seeds also varies from query to query; its variance
  is estimated from the seed x query residuals (a two-way decomposition without replication, per dataset).

The interval is Student's t with Welch-Satterthwaite degrees of freedom (seed parts: k - 1 each), which keeps near
nominal coverage with 3 seeds where a bootstrap over 3 seeds would be too narrow (tests/statistics/test_seeds.py simulates it).
With one seed per arm the seed part cannot be measured: the interval then holds query variation only and says so.

The default target, "benchmark" (this benchmark's fixed queries, over training randomness), needs only each seed's
NanoBEIR mean (`seed_means`, `pipeline.statistics.sequential.benchmark_difference`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from pipeline.statistics.sequential import Estimate

PerQuery = Mapping[str, Mapping[str, float]]


class SeedQueryEstimate(NamedTuple):
    """An arm's mean over seeds of its NanoBEIR mean, with a CI from seed and query variation."""

    mean: float
    low: float
    high: float
    se: float
    df: float
    seeds: int
    seed_sd: float  # sd of the per-seed NanoBEIR means (nan with one seed)
    seed_means: tuple[float, ...]


class Difference(NamedTuple):
    """mean(a) - mean(b) over seeds, on the same queries, with its CI, a two-sided p-value and its variance parts."""

    delta: float
    low: float
    high: float
    se: float
    df: float
    p_value: float
    seeds_a: int
    seeds_b: int
    seed_var_a: float  # variance of a's per-seed means (0 with one seed: not measured)
    seed_var_b: float
    query_var: float  # the query part of se**2 (already divided by the number of queries)
    queries: int

    @property
    def seeds_measured(self) -> bool:
        return self.seeds_a > 1 and self.seeds_b > 1

    def ci(self, level: float) -> tuple[float, float]:
        t = stats.t.ppf((1 + level) / 2, self.df) if self.se > 0 else 0.0
        return self.delta - t * self.se, self.delta + t * self.se


def stack(seeds: Sequence[PerQuery]) -> dict[str, np.ndarray]:
    """{dataset: array (k seeds, n queries)} in sorted query order; every seed must hold the same queries."""
    if not seeds:
        raise ValueError("no seeds")
    names = sorted(seeds[0])
    arrays = {}
    for name in names:
        ids = sorted(seeds[0][name])
        if not ids:
            raise ValueError(f"dataset {name!r} has no queries")
        rows = []
        for i, run in enumerate(seeds):
            if set(run) != set(names) or set(run[name]) != set(ids):
                raise ValueError(f"seed {i} was scored on other datasets or queries than seed 0 (dataset {name!r})")
            rows.append([run[name][q] for q in ids])
        arrays[name] = np.asarray(rows, dtype=float)
    return arrays


def seed_means(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Each seed's NanoBEIR mean: the unweighted mean over datasets of the mean over queries."""
    return np.mean([a.mean(axis=1) for a in arrays.values()], axis=0)


def _query_part(per_query: dict[str, np.ndarray]) -> float:
    """Stratified variance of the weighted mean of per-query values (datasets weighted 1/D, queries within them)."""
    d = len(per_query)
    return float(sum(np.var(x, ddof=1) / x.size for x in per_query.values() if x.size > 1) / d**2)


def _interaction_part(arrays: dict[str, np.ndarray]) -> float:
    """What the query part counts twice: Var of e averaged over the k seeds, as it enters the weighted mean."""
    d, total = len(arrays), 0.0
    for y in arrays.values():
        k, n = y.shape
        if k < 2 or n < 2:
            continue
        resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        sigma2 = float((resid**2).sum() / ((k - 1) * (n - 1)))
        total += sigma2 / (k * n)
    return total / d**2


def satterthwaite(parts: list[tuple[float, float]]) -> tuple[float, float]:
    """se and degrees of freedom of a sum of independent variance estimates [(variance, its df), ...]."""
    var = sum(v for v, _ in parts)
    denominator = sum(v**2 / nu for v, nu in parts if v > 0 and nu > 0)
    return float(np.sqrt(var)), (float(var**2 / denominator) if denominator > 0 else float("inf"))


def _query_df(arrays: dict[str, np.ndarray]) -> float:
    return float(max(1, sum(a.shape[1] - 1 for a in arrays.values())))


def arm_estimate(seeds: Sequence[PerQuery], level: float = 0.95) -> SeedQueryEstimate:
    """The arm's mean over seeds, and its CI from seed and query variation (query variation only with one seed)."""
    arrays = stack(seeds)
    means = seed_means(arrays)
    k = means.size
    averaged = {name: a.mean(axis=0) for name, a in arrays.items()}
    query = max(0.0, _query_part(averaged) - _interaction_part(arrays))
    seed_var = float(np.var(means, ddof=1)) if k > 1 else 0.0
    se, df = satterthwaite([(seed_var / k, k - 1), (query, _query_df(arrays))])
    t = stats.t.ppf((1 + level) / 2, df) if se > 0 else 0.0
    mean = float(means.mean())
    return SeedQueryEstimate(
        mean, mean - t * se, mean + t * se, se, df, k, float(np.sqrt(seed_var)) if k > 1 else float("nan"),
        tuple(float(m) for m in means),
    )  # fmt: skip


def difference(a: Sequence[PerQuery], b: Sequence[PerQuery], level: float = 0.95) -> Difference:
    """mean over seeds of a minus that of b, paired by query; seeds are not paired (a's seed 1 is not b's seed 1)."""
    xa, xb = stack(a), stack(b)
    if set(xa) != set(xb) or any(xa[n].shape[1] != xb[n].shape[1] for n in xa):
        raise ValueError("the two arms were scored on different datasets or queries")
    for name in xa:  # same query ids, in the same (sorted) order
        if sorted(a[0][name]) != sorted(b[0][name]):
            raise ValueError(f"dataset {name!r}: the two arms were scored on different query ids")
    ma, mb = seed_means(xa), seed_means(xb)
    ka, kb = ma.size, mb.size
    paired = {name: xa[name].mean(axis=0) - xb[name].mean(axis=0) for name in xa}
    query = max(0.0, _query_part(paired) - _interaction_part(xa) - _interaction_part(xb))
    var_a = float(np.var(ma, ddof=1)) if ka > 1 else 0.0
    var_b = float(np.var(mb, ddof=1)) if kb > 1 else 0.0
    se, df = satterthwaite([(var_a / ka, ka - 1), (var_b / kb, kb - 1), (query, _query_df(xa))])
    delta = float(ma.mean() - mb.mean())
    t = stats.t.ppf((1 + level) / 2, df) if se > 0 else 0.0
    p = float(2 * stats.t.sf(abs(delta) / se, df)) if se > 0 else float(delta == 0)
    queries = sum(x.shape[1] for x in xa.values())
    return Difference(delta, delta - t * se, delta + t * se, se, df, p, ka, kb, var_a, var_b, query, queries)


def nanobeir_means(seeds: Sequence[PerQuery]) -> list[float]:
    """Each seed's NanoBEIR mean (nan where a score is not finite), datasets weighted 1/D."""
    return [float(m) for m in seed_means(stack(seeds))]


def dataset_means(seeds: Sequence[PerQuery]) -> dict[str, np.ndarray]:
    """{dataset: each seed's mean over its queries}."""
    return {name: a.mean(axis=1) for name, a in stack(seeds).items()}


def queries_difference(adapter: Sequence[PerQuery], full: Sequence[PerQuery]) -> Estimate:
    """Δ for queries like these (seed and query variation, `difference`) as an Estimate the verdict reads."""
    return as_estimate(difference(adapter, full))


def as_estimate(diff: Difference) -> Estimate:
    """A `difference` as the Estimate the verdict reads, target "queries"; its note says when it cannot be read."""
    note = ""
    if not np.isfinite(diff.delta):
        note = "a score is not finite (NaN or inf): no verdict until that run is fixed or rerun"
    elif not diff.seeds_measured:
        note = (
            f"{diff.seeds_a} seed(s) for the adapter and {diff.seeds_b} for the full fine-tune: seed-to-seed "
            "variation is not measured, the interval holds queries only"
        )
    elif diff.seed_var_a == 0 or diff.seed_var_b == 0:
        note = "an arm's seeds scored identically: seed variation not measured (is the seed applied?)"
    return Estimate(diff.delta, diff.se, diff.df, diff.seeds_a, diff.seeds_b, "queries", note)
