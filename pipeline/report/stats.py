"""Statistics for comparing runs on NanoBEIR: bootstrap confidence intervals and a paired permutation test.

The unit of evidence is the query. A run's per-query scores are `{dataset: {query_id: ndcg@10}}`, and its headline
number, the NanoBEIR mean, is the unweighted mean over datasets of the per-dataset mean over queries. Every
resampling here keeps that structure: queries are resampled or sign-flipped *within* their dataset (stratified), so
each resample has the same number of queries per dataset and each dataset keeps its weight 1/D in the mean. The
datasets themselves are fixed (they are the benchmark, not a sample), so the intervals describe the uncertainty that
comes from the finite set of queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

PerQuery = Mapping[str, Mapping[str, float]]

_CHUNK_CELLS = 2_000_000  # floats materialised at once by a resampling step (about 16 MB)


class MeanCI(NamedTuple):
    mean: float
    low: float
    high: float


class PairedTest(NamedTuple):
    delta: float
    low: float
    high: float
    p_value: float


def nanobeir_mean(per_query: PerQuery) -> float:
    """The unweighted mean over datasets of the per-dataset mean over queries."""
    return float(np.mean([v.mean() for v in _arrays(per_query).values()]))


def bootstrap_ci(per_query: PerQuery, n: int = 10_000, seed: int = 0, level: float = 0.95) -> MeanCI:
    """The NanoBEIR mean with a stratified percentile-bootstrap confidence interval.

    Each of the `n` resamples draws, independently for every dataset, as many queries as the dataset has, with
    replacement, from that dataset's queries, and recomputes the NanoBEIR mean. Resampling within datasets (not from
    the pooled queries) keeps every dataset's weight fixed at 1/D, as in the metric itself; otherwise a resample
    could over-represent one dataset and the interval would mix query noise with dataset weighting. The interval is
    the (1 - level)/2 and (1 + level)/2 quantiles of the resampled means. A dataset whose queries all score the same
    contributes no width.
    """
    _check(n, level)
    arrays = _arrays(per_query)
    mean = float(np.mean([v.mean() for v in arrays.values()]))
    boot = _stratified_means(arrays, n, np.random.default_rng(seed))
    low, high = _percentiles(boot, level)
    return MeanCI(mean, low, high)


def paired_test(
    a: PerQuery,
    b: PerQuery,
    n: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    exact_max_queries: int = 20,
) -> PairedTest:
    """mean(a) - mean(b) for two runs scored on the same queries: the difference, its CI, and a two-sided p-value.

    Queries are paired by dataset and query id (a ValueError names the first dataset whose datasets or query ids
    differ). Working on per-query differences d = a - b removes the between-query variance that both runs share,
    which is most of it: a hard query is hard for both.

    - CI: paired stratified percentile bootstrap. Each resample draws queries with replacement within each dataset,
      the *same* queries for both runs, and recomputes the NanoBEIR-mean difference.
    - p-value: sign-flip permutation test of H0 "a and b are exchangeable on every query", under which each d is as
      likely to be -d. The statistic is the NanoBEIR-mean difference, a sum of d weighted by 1 / (D * n_dataset), so
      flipping a query's sign keeps it in its dataset with its dataset's weight (the test is stratified by dataset).
      p = P(|T*| >= |T_obs|). Queries with d = 0 do not change T under a flip and are left out; if at most
      `exact_max_queries` differences remain, all 2^m sign patterns are enumerated and p is exact (so its smallest
      value is 2 / 2^m); otherwise `n` random patterns from `seed` are drawn and p = (1 + hits) / (1 + n), which
      never reports 0 and keeps the test valid.
    """
    _check(n, level)
    xa, xb = _arrays(a), _arrays(b)
    if set(xa) != set(xb):
        raise ValueError(f"runs were evaluated on different datasets: {sorted(xa)} vs {sorted(xb)}")
    diffs = {}
    for name in xa:
        qa, qb = a[name], b[name]
        if set(qa) != set(qb):
            only_a, only_b = len(set(qa) - set(qb)), len(set(qb) - set(qa))
            raise ValueError(
                f"dataset {name!r}: query ids differ ({only_a} only in the first run, {only_b} only in the second)"
            )
        ids = sorted(qa)
        diffs[name] = np.array([qa[q] for q in ids], dtype=float) - np.array([qb[q] for q in ids], dtype=float)
    boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    delta = float(np.mean([d.mean() for d in diffs.values()]))
    low, high = _percentiles(_stratified_means(diffs, n, boot_rng), level)
    p_value = _sign_flip_p(diffs, n, perm_rng, exact_max_queries)
    return PairedTest(delta, low, high, p_value)


def _sign_flip_p(diffs: dict[str, np.ndarray], n: int, rng: np.random.Generator, exact_max_queries: int) -> float:
    weights = np.concatenate([np.full(d.size, 1.0 / (len(diffs) * d.size)) for d in diffs.values()])
    terms = weights * np.concatenate(list(diffs.values()))
    terms = terms[terms != 0]
    m = terms.size
    if m == 0:
        return 1.0
    observed = abs(terms.sum())
    # Sign patterns that tie with the observed statistic mathematically may differ from it by rounding
    threshold = observed - 1e-10 * np.abs(terms).sum()
    if m <= exact_max_queries:
        hits = sum(int((np.abs(signs @ terms) >= threshold).sum()) for signs in _all_sign_patterns(m))
        return hits / 2**m
    hits = 0
    for size in _chunks(n, m):
        signs = rng.integers(0, 2, size=(size, m), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ terms) >= threshold).sum())
    return (1 + hits) / (1 + n)


def _all_sign_patterns(m: int) -> Iterator[np.ndarray]:
    bits = np.arange(m, dtype=np.int64)
    for start, size in _offsets(2**m, m):
        k = np.arange(start, start + size, dtype=np.int64)[:, None]
        yield 1.0 - 2.0 * ((k >> bits) & 1)


def _stratified_means(arrays: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` bootstrap replicates of the mean over datasets of the per-dataset mean, resampling within datasets."""
    total = np.zeros(n)
    for values in arrays.values():
        k = values.size
        for start, size in _offsets(n, k):
            idx = rng.integers(0, k, size=(size, k))
            total[start : start + size] += values[idx].mean(axis=1)
    return total / len(arrays)


def _offsets(n: int, width: int) -> Iterator[tuple[int, int]]:
    step = max(1, _CHUNK_CELLS // max(1, width))
    for start in range(0, n, step):
        yield start, min(step, n - start)


def _chunks(n: int, width: int) -> Iterator[int]:
    for _, size in _offsets(n, width):
        yield size


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _arrays(per_query: PerQuery) -> dict[str, np.ndarray]:
    """Scores as arrays, datasets and queries in sorted order so results do not depend on dict order."""
    if not per_query:
        raise ValueError("no datasets in the per-query scores")
    arrays = {}
    for name in sorted(per_query):
        scores = per_query[name]
        if not scores:
            raise ValueError(f"dataset {name!r} has no queries")
        values = np.array([scores[q] for q in sorted(scores)], dtype=float)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"dataset {name!r} has non-finite scores")
        arrays[name] = values
    return arrays


def _check(n: int, level: float) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
