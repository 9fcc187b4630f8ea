"""Per-dataset Δ beside the NanoBEIR Δ: does one dataset drive the verdict?

The verdict's default target is this benchmark (its datasets fixed); "out of domain in general" would need the
datasets as the sample. Beside the verdict, each dataset's Δ (seed-level Welch, like the verdict's), Cochran's Q,
I² and the DerSimonian-Laird tau² (statsmodels' `combine_effects`), and a flag for a dataset that drives the
result: leaving it out changes the verdict's label, or its share of the summed absolute contributions |Δ_d| / D is
over max(1/2, 2/D).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from statsmodels.stats.meta_analysis import combine_effects

from pipeline.statistics.sequential import Estimate, benchmark_difference, welch


class DatasetDelta(NamedTuple):
    name: str
    delta: float
    se: float
    df: float
    share: float  # |Δ_d| / D over the sum of those
    label_without: str  # the verdict's label with this dataset left out ("" when not judged)


class Heterogeneity(NamedTuple):
    datasets: list[DatasetDelta]
    q: float  # Cochran's Q (nan when a dataset's seed variance is 0)
    i2: float  # I², the share of the spread between datasets beyond what seeds explain
    tau2: float  # DerSimonian-Laird between-dataset variance
    drivers: list[str]  # datasets that drive the result, with why


def heterogeneity(
    adapter: Mapping[str, Sequence[float]],
    full: Mapping[str, Sequence[float]],
    judge: Callable[[Estimate], str] | None = None,
) -> Heterogeneity:
    """From each seed's mean per dataset ({dataset: [per seed]}), the per-dataset Δ and the heterogeneity measures;
    `judge` gives the verdict's label of an Estimate (to leave one dataset out), `judge(full data)` the reference."""
    names = sorted(adapter)
    a = np.array([adapter[n] for n in names], dtype=float)  # (datasets, seeds)
    f = np.array([full[n] for n in names], dtype=float)
    parts = [welch(a[i], f[i]) for i in range(len(names))]
    deltas = np.array([p[0] for p in parts])
    contributions = np.abs(deltas) / len(names)
    shares = contributions / contributions.sum() if contributions.sum() > 0 else np.zeros(len(names))
    reference = judge(benchmark_difference(a.mean(axis=0), f.mean(axis=0))) if judge else ""
    rows, drivers = [], []
    for i, name in enumerate(names):
        without = ""
        if judge and len(names) > 1:
            keep = np.arange(len(names)) != i
            without = judge(benchmark_difference(a[keep].mean(axis=0), f[keep].mean(axis=0)))
            if without != reference:
                drivers.append(f"{name}: without it the verdict would be {without}, not {reference}")
        if len(names) >= 3 and shares[i] > max(0.5, 2 / len(names)):
            drivers.append(f"{name}: {shares[i]:.0%} of the summed per-dataset differences")
        rows.append(DatasetDelta(name, float(deltas[i]), parts[i][1], parts[i][2], float(shares[i]), without))
    q = i2 = tau2 = math.nan
    variances = np.array([p[1] ** 2 for p in parts])
    if len(names) > 1 and np.all(variances > 0) and np.all(np.isfinite(variances)):
        with np.errstate(invalid="ignore"):  # statsmodels' Knapp-Hartung sd, unused here, may take sqrt(< 0)
            combined = combine_effects(deltas, variances, method_re="dl")
        q, i2, tau2 = float(combined.q), max(0.0, float(combined.i2)), max(0.0, float(combined.tau2))
    return Heterogeneity(rows, q, i2, tau2, drivers)
