"""Seeds that do not belong: a collapsed (diverged) run drags the mean and the interval, so it is flagged, by name,
never dropped silently (dropping it would be a choice made after seeing the scores).

- Outlier seeds: a seed whose NanoBEIR mean is far from its arm's median, robust z = (x - median) / scale above `z`
  (default 5), and further than `floor` (NDCG@10, e.g. three margins: smaller than that is seed noise, whatever
  its z). scale: 1.4826 x the median absolute residual pooled over the arms, or its arm's own spread if larger (so
  an arm noisier than the other is judged by its own spread): with five seeds or more the Rousseeuw-Croux Qn
  (statsmodels `qn_scale`, which two collapsed seeds of five cannot inflate), with fewer the arm's own MAD.
- Diverged loss: a run whose final train loss is not finite, or over `factor` (default 10) times the median final
  loss of the runs compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from statsmodels.robust.scale import qn_scale

MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample times this estimates its sd


def outlier_seeds(arms: Mapping[str, Sequence[float]], floor: float, z: float = 5.0) -> dict[str, list[int]]:
    """{arm: positions of its outlier seeds} for each seed's score by arm (e.g. {"adapter": [...], "full": [...]})."""
    residuals = {name: np.asarray(x, dtype=float) - np.median(x) for name, x in arms.items() if len(x) >= 3}
    pooled = MAD_TO_SD * _mad(np.concatenate(list(residuals.values()))) if residuals else 0.0
    flagged = {}
    for name, res in residuals.items():
        own = float(qn_scale(res)) if res.size >= 5 else MAD_TO_SD * _mad(res)
        scale = max(pooled, own)  # an arm noisier than the others is judged by its own spread
        flagged[name] = [int(i) for i in np.flatnonzero(np.abs(res) > max(floor, z * scale))]
    return {name: found for name, found in flagged.items() if found}


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
