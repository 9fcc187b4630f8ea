"""Scores like real per-query NDCG@10, to check the statistics by simulation.

A query has one relevant document; a run puts it at rank r = 1 + floor(exp(L)) and scores 1 / log2(r + 1) if
r <= 10, else 0. So scores are bounded in [0, 1], take 11 values (ties), with point masses at 1 (L < 0) and at 0
(L >= log 10). The latent L of query q (in dataset d) for arm a and training seed s:

    L = h[q] + w[a, q] + shift[a] + u[a, s] + e[a, s, q]      (+ collapse, for a diverged seed)

h: how hard the query is (N(centre_d, spread)); w: what the arm does to that query (the adapter is better on some
queries, worse on others); u: what the seed did to the whole run; e: what the seed did to that query. With the
defaults about 15% of scores are 0, 40-60% are 1, and about 60% of the differences between two runs on a query are
exactly 0, as in NanoBEIR.

The truth the intervals must cover, for this benchmark's fixed queries (the default target): the expected NanoBEIR
mean over training seeds given the queries, E_{u,e}, exact by the normal CDF (`expected`). `shift_for` sets an
arm's shift so that the true Δ is exactly a given value. Every function is vectorised over replicates (the first
axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

RANK_SCORES = 1 / np.log2(np.arange(2, 12))  # ranks 1..10
EDGES = np.log(np.arange(0, 11, dtype=float), where=np.arange(11) > 0, out=np.full(11, -np.inf))  # log(r - 1)


@dataclass(frozen=True)
class Scenario:
    datasets: int = 3  # NanoBEIR has 13
    sizes: tuple[int, int] = (20, 60)  # queries per dataset: drawn in this range, so datasets differ in size
    spread: float = 1.9  # sd of query difficulty h
    interaction: float = 0.25  # sd of w: arm x query
    seed_sd: tuple[float, float] = (0.03, 0.03)  # sd of u for (adapter, full): 5x unequal e.g. (0.15, 0.03)
    noise: float = 0.3  # sd of e: seed x query
    collapse: float = 0.0  # probability that a seed collapses (a diverged run)
    collapse_shift: float = 2.5  # what a collapse adds to L (the relevant document falls far down)
    collapse_arms: tuple[int, ...] = (0, 1)  # the arms whose seeds may collapse (0 adapter, 1 full)


class Benchmark:
    """Replicates of one benchmark: `reps` draws of the queries (their difficulties and each arm's w)."""

    def __init__(self, scenario: Scenario, reps: int, rng: np.random.Generator):
        self.scenario, self.reps = scenario, reps
        low, high = scenario.sizes
        self.sizes = rng.integers(low, high + 1, scenario.datasets)
        self.dataset = np.repeat(np.arange(scenario.datasets), self.sizes)  # the dataset of each query
        centres = rng.normal(0.1, 0.5, scenario.datasets)  # some datasets are harder than others
        self.hard = centres[self.dataset] + rng.normal(0, scenario.spread, (reps, self.dataset.size))
        self.w = rng.normal(0, scenario.interaction, (2, reps, self.dataset.size))  # adapter, full
        self.weights = 1 / (scenario.datasets * self.sizes[self.dataset])  # each dataset 1/D, queries within it
        self.collapsed: dict[int, np.ndarray] = {}  # arm: (reps, seeds) of the last scores drawn

    def scores(self, arm: int, shift: np.ndarray, seeds: int, rng: np.random.Generator) -> np.ndarray:
        """Per-query NDCG@10 of `seeds` runs of `arm` (0 adapter, 1 full), shape (reps, seeds, queries)."""
        s = self.scenario
        u = rng.normal(0, s.seed_sd[arm], (self.reps, seeds, 1))
        self.collapsed[arm] = rng.random((self.reps, seeds)) < s.collapse  # which seeds diverged, for the checks
        self.collapsed[arm] &= arm in s.collapse_arms
        u = u + s.collapse_shift * self.collapsed[arm][..., None]
        latent = (self.hard + self.w[arm] + shift[:, None])[:, None, :] + u
        latent = latent + rng.normal(0, s.noise, latent.shape)
        rank = np.floor(np.exp(np.minimum(latent, 10.0))).astype(np.int64)  # 0 is rank 1
        return np.where(rank < 10, RANK_SCORES[np.minimum(rank, 9)], 0.0)

    def nanobeir(self, scores: np.ndarray) -> np.ndarray:
        """The NanoBEIR mean of each run: the unweighted mean over datasets of the mean over queries."""
        return scores @ self.weights

    def per_dataset(self, scores: np.ndarray) -> np.ndarray:
        """Each run's mean per dataset, shape (..., datasets)."""
        ends = np.cumsum(self.sizes)
        sums = np.add.reduceat(scores, np.r_[0, ends[:-1]], axis=-1)
        return sums / self.sizes

    def expected(self, arm: int, shift: np.ndarray) -> np.ndarray:
        """The true NanoBEIR mean of `arm` on these queries: expected over training seeds (u and e)."""
        s = self.scenario
        sd = np.hypot(s.seed_sd[arm], s.noise)
        latent = self.hard + self.w[arm] + shift[:, None]
        cdf = ndtr((EDGES[None, None, :] - latent[..., None]) / sd)  # P(L < log(r - 1)), r = 1..11
        probability = np.diff(cdf, axis=-1)  # P(rank = r), r = 1..10
        return (probability @ RANK_SCORES) @ self.weights

    def collapse_for(self, arm: int, shift: np.ndarray, size: float) -> float:
        """The collapse shift (of L) by which a collapsed seed of `arm` loses `size` NDCG@10 of its true NanoBEIR mean,
        on average over the replicates (bisection: the loss grows with the shift)."""
        stable = self.expected(arm, shift).mean()
        low, high = 0.0, 20.0
        for _ in range(30):
            mid = (low + high) / 2
            low, high = (mid, high) if stable - self.expected(arm, shift + mid).mean() < size else (low, mid)
        return (low + high) / 2

    def shift_for(self, delta: float, full_shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(adapter shift, full shift) per replicate so that the true Δ (adapter - full) is exactly `delta`."""
        full = np.full(self.reps, full_shift)
        goal = self.expected(1, full) + delta
        x0, x1 = np.zeros(self.reps), np.full(self.reps, -0.1)  # a larger shift: a worse score
        f0, f1 = self.expected(0, x0) - goal, self.expected(0, x1) - goal
        for _ in range(8):  # secant steps: the mean is smooth and monotone in the shift
            if np.max(np.abs(f1)) < 1e-12:
                break
            moved = np.abs(f1 - f0) > 1e-15
            x0, x1 = x1, np.where(moved, x1 - f1 * (x1 - x0) / np.where(moved, f1 - f0, 1.0), x1)
            f0, f1 = f1, self.expected(0, x1) - goal
        if np.max(np.abs(f1)) > 1e-9:
            raise ArithmeticError(f"no shift reaches Δ = {delta}: off by {np.max(np.abs(f1)):.2g}")
        return x1, full
