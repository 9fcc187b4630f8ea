"""Seeds that do not belong: a collapsed (diverged) run. Divergence is a finding of its own, never noise in Δ.

- Outlier seeds (`outlier_seeds`): a seed whose NanoBEIR mean is far from its arm's median (below: a collapse;
  above: the stable seeds of an arm most of whose seeds collapsed), robust z = |x - median| / scale above `z`, and further than `floor` (NDCG@10: smaller than that is seed noise, whatever its z). scale:
  1.4826 x the median absolute residual (from each arm's median) pooled over both arms, or that arm's own spread if
  larger (an arm noisier than the other is judged by its own spread): from five seeds the Rousseeuw-Croux Qn
  (statsmodels `qn_scale`), with three or four the MAD of the arm's *other* seeds (leave one out: the arm's own MAD
  of three seeds is the median of two residuals, one of them the outlier's, so a collapse inflated it and hid).
- The divergence rule of the verdict (`diverged_seeds`): an outlier seed at z > Z against that scale and further than
  FLOOR margins from its arm's median (Hampel's rule, Hampel 1974, JASA 69:383, with the pooled MAD: Rousseeuw &
  Croux 1993, JASA 88:1273; Leys et al. 2013, J Exp Soc Psychol 49:764 for the threshold). `make decide` and the
  report's replay stop on it ("no verdict: a seed diverged", `pipeline.statistics.sequential`).
- A group of seeds split off below the rest (`split_seeds`): where an arm's seeds diverge often (LoRA at too high a
  learning rate, in 3 of 9 seeds), the collapsed seeds are no outliers of one spread but a second cluster, and the
  arm's median and Qn sit between the two. The arm's sorted seeds are cut into a lower group of at least two seeds and
  an upper group no smaller (divergence is the exception: where most seeds collapsed, Hampel's rule finds the stable
  ones); the gap of a cut is judged against the within-group sd (pooled over both groups and the other arms' seeds,
  for the degrees of freedom a scale from 2-5 seeds lacks: judged by its own spread alone, the 3-margin collapses of
  20% of the full fine-tune's seeds gave P(superior | 0) 0.037; the cost is that an arm whose seeds spread a margin or
  more beside a 2-5x tighter arm splits in 1-9% of looks, docs/sequential.md). The arm splits when its largest gap
  ratio exceeds its critical value (`split_z`) and the gap is wider than SPLIT_FLOOR margins; the lower group of the
  widest such cut is flagged: a divergence lowers the score. A gap test, as Dixon's (1950, Ann Math Stat 21:488) is
  for one seed, for a group; like Dixon's table its critical value is the statistic's null quantile for n normal
  seeds, here by simulation, so that an arm of normal seeds splits at one look with probability SPLIT_LEVEL whatever
  its n and spread (the largest of several gap ratios is a maximum: a fixed critical value flags 2.3% of normal arms
  at 5 seeds and 0.1% at 10). The error rates it gives: `python -m pipeline.statistics.simulate --collapse`,
  docs/sequential.md.
- Diverged loss (`diverged`): a run whose final train loss is not finite, or over `factor` (default 10) times the
  median final loss of the runs compared (a loss that blew up mid-run and recovered left no mark on the score, and one
  that did not shows here).
- Each arm's divergence rate (`divergence_rate`): k of n seeds, with its Clopper-Pearson interval (Clopper &
  Pearson 1934, Biometrika 26:404; scipy `binomtest`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from statsmodels.robust.scale import qn_scale

MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample times this estimates its sd
Z = 4.0  # robust z of a diverged seed (divergence rule)
FLOOR = 2.0  # margins from its arm's median a diverged seed must be at least (divergence rule)
SPLIT_LEVEL = 0.01  # a group split off: P(an arm of normal seeds splits at one look) (divergence rule)
SPLIT_FLOOR = 1.5  # a group split off: its gap from the rest in margins at least (divergence rule)


def outlier_seeds(arms: Mapping[str, Sequence[float]], floor: float, z: float = 5.0) -> dict[str, list[int]]:
    """{arm: positions of its outlier seeds} for each seed's score by arm (e.g. {"adapter": [...], "full": [...]})."""
    residuals = {name: np.asarray(x, dtype=float) - np.median(x) for name, x in arms.items() if len(x) >= 3}
    pooled = MAD_TO_SD * _mad(np.concatenate(list(residuals.values()))) if residuals else 0.0
    flagged = {}
    for name, res in residuals.items():
        found = []
        qn = float(qn_scale(res)) if res.size >= 5 else None  # Qn: two collapsed seeds of five cannot inflate it
        for i in range(res.size):
            # three or four seeds: the others' MAD (the arm's own MAD would count the outlier's residual)
            own = qn if qn is not None else MAD_TO_SD * _mad(np.delete(res, i))
            scale = max(pooled, own)  # an arm noisier than the others is judged by its own spread
            if abs(res[i]) > max(floor, z * scale):  # above too: where most seeds collapsed, the stable ones
                found.append(i)
        flagged[name] = found
    return {name: found for name, found in flagged.items() if found}


def _cuts(s: np.ndarray, others: np.ndarray, df_others: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cut of sorted seeds `s` (..., n) into a lower group of k = 2 .. n // 2 and the upper rest: its gap
    s[k] - s[k-1] and the gap over the within-group sd (both groups' sum of squares and the other arms', `others`, on
    n - 2 + df_others degrees of freedom); each (..., n // 2 - 1)."""
    n = s.shape[-1]
    k = np.arange(2, n // 2 + 1)
    s = s - s.mean(axis=-1, keepdims=True)  # centred: the running sums of squares lose no precision
    sums, squares = np.cumsum(s, axis=-1), np.cumsum(s**2, axis=-1)
    low, low2 = sums[..., k - 1], squares[..., k - 1]
    high, high2 = sums[..., -1:] - low, squares[..., -1:] - low2
    within = low2 - low**2 / k + high2 - high**2 / (n - k) + np.asarray(others)[..., None]
    gap = s[..., k] - s[..., k - 1]
    return gap, gap / np.sqrt(np.maximum(within, 0.0) / (n - 2 + df_others))


@functools.cache
def split_z(n: int, df_others: int, level: float = SPLIT_LEVEL, draws: int = 100_000) -> float:
    """The split's critical gap ratio for an arm of `n` seeds, the other arms adding `df_others` degrees of freedom to
    the within-group sd: the 1 - `level` quantile of the largest gap ratio over `n` normal seeds (`draws` seeded
    draws, as Dixon's table is the null distribution of his ratio)."""
    rng = np.random.default_rng(0)
    x = np.sort(rng.standard_normal((draws, n)), axis=1)
    others = rng.chisquare(df_others, draws) if df_others else np.zeros(draws)  # their within-group sum of squares
    return float(np.quantile(_cuts(x, others, df_others)[1].max(axis=1), 1 - level))


def split_seeds(arms: Mapping[str, Sequence[float]], floor: float, level: float = SPLIT_LEVEL) -> dict[str, list[int]]:
    """{arm: positions of its seeds in a group split off below the rest}: the widest cut of the arm's sorted seeds into
    a lower group of at least two and an upper group no smaller whose gap exceeds `floor` and the critical ratio
    (`split_z`) times the within-group sd (module docstring)."""
    scores = {name: np.asarray(x, dtype=float) for name, x in arms.items()}
    scores = {name: (x[np.isfinite(x)], np.flatnonzero(np.isfinite(x))) for name, x in scores.items()}  # failed: out
    flagged = {}
    for name, (x, at) in scores.items():
        order = np.argsort(x)
        s = x[order]
        if x.size < 4 or not np.any(s[2 : x.size // 2 + 1] - s[1 : x.size // 2] > floor):
            continue  # no gap wide enough (most arms: the ratio's critical value is not needed)
        others = [y for other, (y, _) in scores.items() if other != name and y.size >= 2]
        df_others = sum(y.size - 1 for y in others)
        gap, ratio = _cuts(s, np.array(sum(float(np.sum((y - y.mean()) ** 2)) for y in others)), df_others)
        split = (gap > floor) & (ratio > split_z(x.size, df_others, level))
        if split.any():
            k = int(np.argmax(np.where(split, gap, -np.inf))) + 2  # the widest split
            flagged[name] = sorted(at[order[:k]].tolist())
    return flagged


def diverged_seeds(arms: Mapping[str, Sequence[float]], margin: float) -> dict[str, list[int]]:
    """The verdict's divergence rule: {arm: positions of its diverged seeds}: an outlier seed (`outlier_seeds` at
    z > Z, further than FLOOR margins from its arm's median) or a group split off below the rest (`split_seeds`, a gap
    wider than SPLIT_FLOOR margins and than an arm of normal seeds shows but at SPLIT_LEVEL)."""
    outliers = outlier_seeds(arms, floor=FLOOR * margin, z=Z)
    groups = split_seeds(arms, floor=SPLIT_FLOOR * margin)
    return {
        name: sorted({*outliers.get(name, []), *groups.get(name, [])})
        for name in arms
        if name in outliers or name in groups
    }


@functools.cache  # a few counts, asked for at every look a seed diverges
def divergence_rate(diverged: int, seeds: int, level: float = 0.95) -> tuple[float, float, float]:
    """(rate, low, high): `diverged` of `seeds`, with its Clopper-Pearson interval."""
    if not 0 <= diverged <= seeds or seeds < 1:
        raise ValueError(
            f"{diverged} diverged of {seeds} seeds is not allowed: need 0 <= diverged <= seeds, seeds >= 1"
        )
    ci = stats.binomtest(diverged, seeds).proportion_ci(level, method="exact")
    return diverged / seeds, float(ci.low), float(ci.high)


def rate_text(diverged: int, seeds: int, level: float = 0.95) -> str:
    """'diverged in 1 of 7 seeds (95% CI 0.004-0.58)'."""
    _, low, high = divergence_rate(diverged, seeds, level)
    return f"diverged in {diverged} of {seeds} seeds ({level:.0%} CI {low:.3f}-{high:.3f}, Clopper-Pearson)"


def _mad(residuals: np.ndarray) -> float:
    """The median absolute residual, leaving out the median seeds themselves (their residual is 0 by construction)."""
    nonzero = np.abs(residuals[residuals != 0])
    return float(np.median(nonzero)) if nonzero.size else 0.0


def worst_seed(scores: Sequence[float]) -> tuple[int, float]:
    """The position and score of an arm's worst seed."""
    x = np.asarray(scores, dtype=float)
    i = int(np.nanargmin(x)) if np.any(np.isfinite(x)) else 0
    return i, float(x[i])


def diverged(losses: Mapping[str, float | None], factor: float = 10.0) -> list[str]:
    """The runs whose final train loss is not finite or over `factor` times the median final loss."""
    finite = [v for v in losses.values() if v is not None and math.isfinite(v)]
    median = float(np.median(finite)) if finite else math.nan
    return [
        name
        for name, v in losses.items()
        if v is not None and (not math.isfinite(v) or (median > 0 and v > factor * median))
    ]
