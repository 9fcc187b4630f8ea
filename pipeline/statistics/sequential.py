"""Seeds added until the verdict is decided: a group-sequential design with repeated confidence intervals.

The verdict compares Δ = adapter - full (NanoBEIR mean NDCG@10) with an equivalence margin m. Seeds are trained in
rounds; after each round the verdict looks at the data, and stops as soon as it is decided. Looking repeatedly at
the usual intervals would spend the error rate once per look; here each look reads a *repeated confidence interval*
(RCI) whose width is set so that the error rates hold over all the looks together (Jennison & Turnbull 2000, *Group
Sequential Methods with Applications to Clinical Trials*, ch. 7 (alpha spending) and ch. 9 (repeated confidence
intervals; equivalence: "the RCI lies inside (-m, m)"); Lan & DeMets 1983, Biometrika 70:659).

- Information fraction at a look: t = n / budget, n the seeds per arm (the harmonic mean when the arms differ),
  t = 1 at the final look. A failed run (nan) in a look's seeds gives "no verdict" there (`replay`, as `make decide`
  stops), never a look with one arm cut to the other's count.
- Alpha spending, Hwang-Shih-DeCani (Hwang, Shih & DeCani 1990, Stat Med 9:1439): a(t) = a (1 - exp(-gamma t)) /
  (1 - exp(-gamma)), a(1) = a; gamma = GAMMA by default (`Design.gamma`), chosen by simulation
  (`python -m pipeline.statistics.simulate --gammas ...`, docs/sequential.md). gamma = -4 is close to O'Brien-Fleming
  (almost nothing spent early), gamma = 1 close to Pocock; `gamma=None` is Lan-DeMets' O'Brien-Fleming type,
  a(t) = 2 - 2 Phi(z_{1-a/2} / sqrt(t)).
- Boundaries c_1..c_K on the z scale from the canonical joint distribution of the look statistics, corr(Z_i, Z_j) =
  sqrt(t_i / t_j): P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) = a(t_k) - a(t_{k-1}), by recursive numerical
  integration (they agree with scipy.stats.multivariate_normal's crossing probabilities to 1e-6, 100x faster).
- At each look the critical value is the Student t quantile of the same nominal tail probability as c_k, at the
  conservative df min(n_adapter, n_full) - 1 (Hsu 1938; the lower bound of the Welch-Satterthwaite df). At each
  look's *estimated* Welch df the error rates over all the looks came out too high with 3 seeds per arm
  (P(inferior | Δ = 0) 0.027-0.029 with 5x unequal spreads, for 0.025). A one-look design (`fixed`) is Welch's
  test itself and keeps the Welch df.
- Two RCIs per look: the (1 - 2 alpha) one (each bound from a one-sided alpha spending) for equivalence and
  non-inferiority, as TOST reads it; the (1 - alpha) one (alpha/2 per side) for superiority and inferiority.

Labels at a look (`label_of`): equivalent (the 1 - 2 alpha RCI inside (-m, m)), else superior / inferior (the
1 - alpha RCI above / below 0), else non-inferior (the 1 - 2 alpha RCI above -m), else inconclusive. A look stops on
equivalent, superior or inferior; non-inferior goes on (equivalence may still follow) until the budget is spent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import optimize, stats

from pipeline.statistics.robust import diverged, diverged_seeds, rate_text

LABELS = ("equivalent", "non-inferior", "superior", "inferior", "inconclusive", "no verdict")
DECIDED = ("equivalent", "superior", "inferior")  # a look with one of these stops
NOT_WORSE = ("equivalent", "non-inferior", "superior")  # the adapter not worse than full by the margin
HALVES = {  # the two verdicts of a fine-tune on the user's data: what it learned, what it kept
    "in_domain": "in domain (the held-out test set of the user's pairs)",
    "general": "in general (the general benchmark)",
}
TARGETS = {  # what a verdict claims, by target: its name and the words the report and the sweep's tag use
    "benchmark": "on this benchmark (its fixed queries, over training seeds)",
    "queries": "for queries like these (over training seeds and queries)",
}
GAMMA = -0.5  # Hwang-Shih-DeCani spending parameter of the default design (docs/sequential.md)


@dataclass(frozen=True)
class Design:
    margin: float = 0.01  # equivalence margin, NDCG@10
    alpha: float = 0.05  # per one-sided test (TOST at alpha reads the 1 - 2 alpha RCIs)
    first: int = 3  # fresh seeds per arm at the first look
    step: int = 2  # seeds added per arm per round
    budget: int = 10  # most fresh seeds per arm
    gamma: float | None = GAMMA  # Hwang-Shih-DeCani alpha spending; None: O'Brien-Fleming type (Lan-DeMets)

    def __post_init__(self) -> None:
        if not self.margin > 0:
            raise ValueError(f"margin={self.margin} is not allowed: must be > 0 (NDCG@10 points, e.g. 0.01)")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha={self.alpha} is not allowed: must be in (0, 0.5), e.g. 0.05")
        if self.gamma is not None and not -40 <= self.gamma <= 40:
            raise ValueError(
                f"gamma={self.gamma} is not allowed: must be in [-40, 40] (-4 ~ O'Brien-Fleming, 1 ~ Pocock) or None"
            )
        if self.first < 2 or self.step < 1 or self.budget < self.first:
            raise ValueError(
                f"first={self.first}, step={self.step}, budget={self.budget} are not allowed: "
                "need first >= 2 seeds (seed variance), step >= 1 and budget >= first"
            )

    def looks(self) -> list[int]:
        """Seeds per arm at each planned look, e.g. [3, 5, 7, 9, 10]."""
        return [*range(self.first, self.budget, self.step), self.budget]

    def critical(self, k: int, df: float, alpha: float | None = None, seeds: Sequence[int] | None = None) -> float:
        """The look-k (1-based) critical value at `df`: Student t at the nominal tail probability of the
        alpha-spending boundary. `alpha`: one-sided level (default the design's); `seeds`: seeds per arm at looks
        1..k as taken (default the planned looks)."""
        seeds = list(seeds if seeds is not None else self.looks()[:k])
        if len(seeds) != k or k < 1:
            raise ValueError(f"look {k} needs the seeds of looks 1..{k}, got {seeds}")
        return _critical(self, tuple(seeds), float(df), self.alpha if alpha is None else alpha)

    def fractions(self, seeds: Sequence[float]) -> tuple[float, ...]:
        """Information fractions of looks with these seeds per arm; the last is 1 when the budget is reached."""
        fractions = [min(1.0, n / self.budget) for n in seeds]
        if any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
            raise ValueError(f"seeds per look must grow: {list(seeds)}")
        return tuple(round(f, 12) for f in fractions)


@lru_cache(maxsize=4096)
def _critical(design: Design, seeds: tuple[int, ...], df: float, alpha: float) -> float:
    z = boundaries(design.fractions(seeds), alpha, design.gamma)[-1]
    return float(stats.t.isf(stats.norm.sf(z), df)) if math.isfinite(df) else float(z)


def spent(t: float, alpha: float, gamma: float | None = None) -> float:
    """The one-sided error spent by information t: Hwang-Shih-DeCani with this gamma (Hwang, Shih & DeCani 1990),
    or, when gamma is None, O'Brien-Fleming type (Lan & DeMets 1983)."""
    if t <= 0:
        return 0.0
    if gamma is None:
        return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(t)))
    if gamma == 0:
        return alpha * min(t, 1.0)
    return alpha * -math.expm1(-gamma * min(t, 1.0)) / -math.expm1(-gamma)


@lru_cache(maxsize=65536)  # the advice's search meets ~1,500 designs over a simulation
def boundaries(fractions: tuple[float, ...], alpha: float, gamma: float | None = None) -> tuple[float, ...]:
    """Upper z boundaries c_1..c_K for looks at these information fractions (one-sided level alpha).

    The look statistics are Z_k = B(t_k) / sqrt(t_k), B a standard Brownian motion (corr(Z_i, Z_j) =
    sqrt(t_i / t_j)); `gamma`: the spending function (`spent`); the density of B(t_k) on the paths that crossed no
    earlier boundary is carried from look to look on a grid (Armitage, McPherson & Rowe 1969; Jennison & Turnbull
    2000, section 19.2), and c_k is the root of P(no earlier crossing, Z_k >= c_k) = a(t_k) - a(t_{k-1})."""
    return _carried(tuple(fractions), alpha, gamma)[0]


@lru_cache(maxsize=4096)  # ~10 kB each; the looks 1..k of a design share looks 1..k-1's, computed once
def _carried(fractions: tuple[float, ...], alpha: float, gamma: float | None) -> tuple[tuple[float, ...], np.ndarray]:
    """(c_1..c_K, the density of B(t_K) on the paths still going, on `_simpson`'s grid below c_K): look K's step
    from looks 1..K-1's."""
    t = fractions[-1]
    previous = fractions[-2] if len(fractions) > 1 else 0.0
    increment = spent(t, alpha, gamma) - spent(previous, alpha, gamma)
    if len(fractions) == 1:
        c = float(stats.norm.isf(increment))
        grid, _ = _simpson(-10 * math.sqrt(t), min(c, 10.0) * math.sqrt(t))
        return (c,), stats.norm.pdf(grid, scale=math.sqrt(t))
    cs, density = _carried(fractions[:-1], alpha, gamma)
    grid, weights = _simpson(-10 * math.sqrt(previous), min(cs[-1], 10.0) * math.sqrt(previous))
    mass, s = weights * density, math.sqrt(t - previous)

    def excess(c: float) -> float:
        return float(mass @ stats.norm.sf((c * math.sqrt(t) - grid) / s)) - increment

    c = float(optimize.brentq(excess, -10, 40, xtol=1e-10))
    new_grid, _ = _simpson(-10 * math.sqrt(t), min(c, 10.0) * math.sqrt(t))
    gap = (new_grid[:, None] - grid[None, :]) / s  # the normal density by hand: 5x faster than norm.pdf
    kernel = np.exp(-0.5 * gap * gap) / (s * math.sqrt(2 * math.pi))
    return (*cs, c), kernel @ mass


def _simpson(low: float, high: float, points: int = 1201) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of Simpson's rule on [low, high]."""
    nodes = np.linspace(low, high, points)
    weights = np.ones(points)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return nodes, weights * (nodes[1] - nodes[0]) / 3


class Estimate(NamedTuple):
    """A difference adapter - full with its standard error and degrees of freedom."""

    delta: float
    se: float
    df: float
    seeds_adapter: int
    seeds_full: int
    target: str  # "benchmark" (these queries, over training seeds) | "queries" (queries like these)
    note: str = ""  # why it cannot be read (NaN, seed variance not measured), empty when it can


def welch(adapter: Sequence[float], full: Sequence[float]) -> tuple[float, float, float, float, float]:
    """Δ, its standard error, Welch-Satterthwaite df, and each arm's sample variance of the given values."""
    a, b = np.asarray(adapter, dtype=float), np.asarray(full, dtype=float)
    va = float(np.var(a, ddof=1)) if a.size > 1 else math.nan
    vb = float(np.var(b, ddof=1)) if b.size > 1 else math.nan
    parts = (va / a.size, vb / b.size)
    se2 = sum(parts)
    denominator = parts[0] ** 2 / max(1, a.size - 1) + parts[1] ** 2 / max(1, b.size - 1)
    df = se2**2 / denominator if denominator > 0 else math.inf
    return float(a.mean() - b.mean()), math.sqrt(se2), float(df), va, vb


def benchmark_difference(adapter: Sequence[float], full: Sequence[float]) -> Estimate:
    """Δ for this benchmark's fixed queries over training randomness, from each fresh seed's NanoBEIR mean: Welch's
    interval with Welch-Satterthwaite df (it holds when the two arms' seed spreads differ)."""
    a, b = np.asarray(adapter, dtype=float), np.asarray(full, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"no seeds: {a.size} for the adapter, {b.size} for the full fine-tune")
    note = ""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        bad = int(np.sum(~np.isfinite(a)) + np.sum(~np.isfinite(b)))
        note = f"{bad} seed score(s) are not finite (NaN or inf): no verdict until that run is fixed or rerun"
        return Estimate(math.nan, math.nan, math.nan, a.size, b.size, "benchmark", note)
    if a.size < 2 or b.size < 2:
        note = f"{a.size} seed(s) for the adapter and {b.size} for the full fine-tune: seed variation not measured"
    delta, se, df, va, vb = welch(a, b)
    if not note and (va == 0 or vb == 0):
        arm = "adapter's" if va == 0 else "full fine-tune's"
        note = f"the {arm} seeds scored identically: seed variation not measured (is the seed applied?)"
    return Estimate(delta, se, df, a.size, b.size, "benchmark", note)


@dataclass(frozen=True)
class Look:
    index: int  # 1-based
    seeds_adapter: int
    seeds_full: int
    delta: float
    low: float  # the (1 - 2 alpha) RCI: equivalence and non-inferiority read it
    high: float
    df: float  # the df of its critical values: min(seeds) - 1, Welch's for a one-look design
    critical: float  # its t critical value
    low_two_sided: float  # the (1 - alpha) RCI: superiority and inferiority read it
    high_two_sided: float
    label: str  # one of LABELS
    stop: bool
    reason: str  # why it stops (decided, budget spent, no verdict) or why it goes on
    target: str = "benchmark"
    final: bool = False  # it spent all the alpha left (the budget's look, or one taken as final)


def combined(in_domain: str, general: str) -> str:
    """The answer to "is the adapter as good as the full fine-tune on both halves": an intersection-union test (Berger
    1982, Technometrics 24:295): "equivalent", "superior" or "non-inferior" on both holds where each half's verdict
    claims it at its own alpha, with no adjustment. "inferior" (worse on either half) is a claim about either one: two
    one-sided claims at alpha/2 each (the 1 - alpha interval below 0), so the family errs with probability <= alpha
    (Bonferroni), as docs/protocol.md says.
    Either half without a verdict: "no verdict"; else "inconclusive"."""
    labels = (in_domain, general)
    if "no verdict" in labels:
        return "no verdict"
    if all(label in NOT_WORSE for label in labels):
        return in_domain if in_domain == general else "non-inferior"
    return "inferior" if "inferior" in labels else "inconclusive"


def label_of(low: float, high: float, low_two_sided: float, high_two_sided: float, margin: float) -> str:
    """The verdict of a pair of intervals (see the module docstring)."""
    if -margin < low and high < margin:
        return "equivalent"
    if low_two_sided > 0:
        return "superior"
    if high_two_sided < 0:
        return "inferior"
    if low > -margin:
        return "non-inferior"
    return "inconclusive"


def look(
    design: Design, estimate: Estimate, index: int, seeds: Sequence[int] | None = None, final: bool = False
) -> Look:
    """The verdict at look `index` (1-based) of `design`. `seeds`: seeds per arm at the earlier looks as taken
    (default: the planned ones); this look's own count comes from `estimate`. The look is the final one when its
    seeds reach the budget, it is the last planned look, or `final` says so (no more seeds will come, e.g. the
    budget's last round failed): it spends all the alpha that is left."""
    n = 2 / (1 / estimate.seeds_adapter + 1 / estimate.seeds_full)  # per arm, harmonic mean
    earlier = list(seeds if seeds is not None else design.looks()[: index - 1])
    if len(earlier) != index - 1:
        raise ValueError(f"look {index} needs the seeds of the {index - 1} earlier look(s), got {earlier}")
    final = final or n >= design.budget or index >= len(design.looks())
    taken = [*earlier, design.budget if final else n]
    common = (index, estimate.seeds_adapter, estimate.seeds_full, estimate.delta)
    if estimate.note or not (math.isfinite(estimate.delta) and estimate.se > 0):
        why = estimate.note or f"the standard error is {estimate.se}: nothing to read"
        nan = math.nan
        return Look(*common, nan, nan, estimate.df, nan, nan, nan, "no verdict", True, why, estimate.target, final)
    df = estimate.df if len(design.looks()) == 1 else min(estimate.seeds_adapter, estimate.seeds_full) - 1
    c1 = design.critical(index, df, design.alpha, taken)
    c2 = design.critical(index, df, design.alpha / 2, taken)
    d, se = estimate.delta, estimate.se
    bounds = (d - c1 * se, d + c1 * se, d - c2 * se, d + c2 * se)
    label = label_of(*bounds, design.margin)
    stop = label in DECIDED or final
    if label in DECIDED:
        reason = f"decided at look {index}: {label}"
    elif final and n >= design.budget:
        reason = f"budget spent ({design.budget} seeds per arm): {label}"
    elif final:
        reason = f"no more seeds ({n:g} per arm of a budget of {design.budget}): {label}"
    else:
        reason = f"{label} at look {index}: the next round adds {design.step} seeds per arm"
    return Look(*common, bounds[0], bounds[1], df, c1, bounds[2], bounds[3], label, stop, reason,
                estimate.target, final)  # fmt: skip


def relook(design: Design, looks: Sequence[Look], estimate: Estimate) -> Look:
    """The last of `looks` taken again on another estimate (e.g. one dataset left out): the same design, index,
    earlier looks and finality, so that it judges by the same rule as the headline."""
    last = looks[-1]
    return look(design, estimate, last.index, [x.seeds_adapter for x in looks[:-1]], last.final)


def fixed(margin: float = 0.01, alpha: float = 0.05) -> Design:
    """The one-look design of a fixed number of seeds: its critical values are the plain t quantiles."""
    return Design(margin=margin, alpha=alpha, first=2, step=1, budget=2)


def replay(
    design: Design,
    adapter: Sequence[float],
    full: Sequence[float],
    done: bool = False,
    seeds: Sequence[int] | None = None,
    losses: tuple[Sequence[float | None], Sequence[float | None]] | None = None,
) -> list[Look]:
    """The looks the design takes on fresh seeds' scores (per-seed NanoBEIR means) given in the order they were
    trained, both arms at the same seeds (nan for a run that failed): a look at each planned count the seeds reach,
    up to the first that stops. A failed run in a look's seeds stops there with no verdict (`failed_reason`, named by
    `seeds`, the seed at each position), as `make decide` stops; never is an arm cut to the other's count. Seeds short
    of the next planned look (a round not finished) add no look. With `done`, seeds past a stopping look (make decide
    going on until the rank answer or the other verdict is settled) are looked at too, as the rounds did. `losses`:
    each run's final train loss, (adapter, full) in the same order (None: unknown), for the divergence rule."""
    if len(adapter) != len(full):
        raise ValueError(
            f"{len(adapter)} adapter and {len(full)} full fine-tune seeds: the looks need both arms at the same "
            "seeds in training order (nan for a failed run)"
        )
    looks: list[Look] = []
    for planned in design.looks():
        if planned > len(adapter):
            break
        taken = [x.seeds_adapter for x in looks]
        looks.append(look(design, benchmark_difference(adapter[:planned], full[:planned]), len(looks) + 1, taken))
        cut = None if losses is None else {"adapter": losses[0][:planned], "full": losses[1][:planned]}
        why = unresolved({"adapter": adapter[:planned], "full": full[:planned]}, design.margin, seeds, cut)
        if why:
            looks[-1] = replace(looks[-1], label="no verdict", stop=True, reason=why)
        if looks[-1].stop and (not done or planned >= len(adapter) or looks[-1].label == "no verdict"):
            break
        if looks[-1].stop:  # seeds trained past a stopping look: make decide went on for its rank answer or other half
            looks[-1] = went_on(
                looks[-1], "more fresh seeds were trained (the rank answer or the other verdict was open)"
            )
    return looks


def failed_runs(arms: Mapping[str, Sequence[float]], seeds: Sequence[int] | None = None) -> list[str]:
    """'<arm> seed <s>' for each score that is not finite (a failed run); `seeds`: the seed at each position."""
    return [
        f"{arm} seed {seeds[i] if seeds is not None else f'#{i + 1}'}"
        for arm, scores in arms.items()
        for i, value in enumerate(scores)
        if not math.isfinite(value)
    ]


def unresolved(
    arms: Mapping[str, Sequence[float]],
    margin: float,
    seeds: Sequence[int] | None = None,
    losses: Mapping[str, Sequence[float | None]] | None = None,
) -> str:
    """Why a look cannot decide although its interval might: a failed run (`failed_reason`) or a diverged seed
    (`diverged_reason`: by its score, `diverged_seeds`, or by its training, a final train loss not finite or over 10x
    the median of the look's runs, `blown_up`; `losses` per arm as `arms`, None: unknown); empty when neither.
    `make decide` and the report's replay both stop on it."""
    failed = failed_runs(arms, seeds)
    if failed:
        return failed_reason(failed)
    by_score, by_loss = diverged_seeds(arms, margin), blown_up(losses or {})
    flagged = {arm: sorted({*by_score.get(arm, []), *by_loss.get(arm, [])}) for arm in {*by_score, *by_loss}}
    return diverged_reason(arms, flagged, seeds, losses) if flagged else ""


def blown_up(losses: Mapping[str, Sequence[float | None]]) -> dict[str, list[int]]:
    """{arm: positions of its seeds whose final train loss diverged} (`robust.diverged`, over both arms' runs)."""
    named = {(arm, i): loss for arm, values in losses.items() for i, loss in enumerate(values)}
    found: dict[str, list[int]] = {}
    for arm, i in diverged(named):
        found.setdefault(arm, []).append(i)
    return found


def diverged_reason(
    arms: Mapping[str, Sequence[float]], flagged: Mapping[str, list[int]], seeds=None, losses=None
) -> str:
    """The one reason `make decide` and the report give for a look with a diverged seed, each arm's rate with it."""
    lost = blown_up(losses or {})

    def why(arm: str, i: int) -> str:
        if i in lost.get(arm, []):
            return f"ended training at loss {losses[arm][i]:.4g}"
        return f"scores {arms[arm][i]:.4f} (its arm's median {np.median(arms[arm]):.4f})"

    named = [
        f"{arm} seed {seeds[i] if seeds is not None else f'#{i + 1}'} {why(arm, i)}"
        for arm, positions in flagged.items()
        for i in positions
    ]
    rates = "; ".join(f"{arm} {rate_text(len(flagged.get(arm, [])), len(x))}" for arm, x in arms.items())
    return (
        f"no verdict: a seed diverged: {', '.join(named)}; {rates}. The verdict is over runs that train stably and "
        "is not decided while a seed diverges: to go on, run make decide again with that arm's learning rates "
        "lowered (hydra.sweeper.lr.lora=... or hydra.sweeper.lr.full=...)"
    )


def failed_reason(failed: Sequence[str]) -> str:
    """The one reason `make decide` and the report give for a look with a failed run."""
    return (
        f"no verdict: no NanoBEIR score from {', '.join(failed)} (a failed run): run the same make decide command "
        "again (its finished runs are reused, the failed one is trained again)"
    )


def went_on(stopped: Look, why: str) -> Look:
    """A look that would stop, taken as one the rounds went on from (RCIs hold at whichever look is read last)."""
    return replace(stopped, stop=False, reason=f"{stopped.reason}; the rounds went on: {why}")
