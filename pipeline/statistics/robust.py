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
- Diverged loss (`diverged`): a run whose final train loss is not finite, or over `factor` (default 10) times the
  median final loss of the runs compared; `blew_up`: a logged loss history with a non-finite value or a final loss
  over `factor` times its minimum (the usual divergence criterion of a training run).
- Each arm's divergence rate (`divergence_rate`): k of n seeds, with its Clopper-Pearson interval (Clopper &
  Pearson 1934, Biometrika 26:404; scipy `binomtest`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from statsmodels.robust.scale import qn_scale

MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample times this estimates its sd
Z = 4.0  # robust z of a diverged seed (divergence rule)
FLOOR = 2.0  # margins from its arm's median a diverged seed must be at least (divergence rule)


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


def diverged_seeds(arms: Mapping[str, Sequence[float]], margin: float) -> dict[str, list[int]]:
    """The verdict's divergence rule: {arm: positions of its diverged seeds} (`outlier_seeds` at z > Z, further than
    FLOOR margins from its arm's median)."""
    return outlier_seeds(arms, floor=FLOOR * margin, z=Z)


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


def blew_up(history: Sequence[float], factor: float = 10.0) -> bool:
    """A logged training loss history that diverged: a value not finite, or the last over `factor` times the least."""
    x = np.asarray([v for v in history if v is not None], dtype=float)
    if x.size == 0:
        return False
    if not np.all(np.isfinite(x)):
        return True
    return bool(x.min() > 0 and x[-1] > factor * x.min())


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
