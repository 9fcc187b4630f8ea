"""Seeds that do not belong: a collapsed (diverged) run drags the mean and the interval, so it is flagged, by name,
never dropped silently (dropping it would be a choice made after seeing the scores).

- Outlier seeds: a seed whose NanoBEIR mean is far from its arm's median, robust z = (x - median of its arm) /
  (1.4826 x the median absolute residual pooled over the arms) above `z` (default 5), and further than `floor`
  (NDCG@10; default three margins: smaller than that is seed noise, whatever its z) from the median.
- Diverged loss: a run whose final train loss is not finite, or over `factor` (default 10) times the median final
  loss of the runs compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample times this estimates its sd


def outlier_seeds(arms: Mapping[str, Sequence[float]], floor: float, z: float = 5.0) -> dict[str, list[int]]:
    """{arm: positions of its outlier seeds} for each seed's score by arm (e.g. {"adapter": [...], "full": [...]})."""
    residuals = {name: np.asarray(x, dtype=float) - np.median(x) for name, x in arms.items() if len(x) >= 3}
    pooled = np.abs(np.concatenate(list(residuals.values()))) if residuals else np.array([])
    scale = MAD_TO_SD * float(np.median(pooled[pooled > 0])) if np.any(pooled > 0) else 0.0
    flagged = {}
    for name, res in residuals.items():
        far = np.abs(res) > max(floor, z * scale) if scale > 0 else np.abs(res) > floor
        flagged[name] = [int(i) for i in np.flatnonzero(far)]
    return {name: found for name, found in flagged.items() if found}


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
