"""How many seeds per arm would likely decide an inconclusive verdict, as `make decide` would run them.

The advice is the smallest budget N (seeds per arm in total, counting those run; always more than were run) at which
the sequential design `make decide` runs (`pipeline.statistics.sequential.Design`: its first look, step and
spending function, the verdict's margin and alpha, budget N) stops decided (equivalent, superior or inferior) with
probability >= `power` (default 80%), if the true Δ is the observed one and both arms' seeds spread as the observed
standard error says (its point estimate, each arm alike: sd^2 = se^2 / (1/n_adapter + 1/n_full)). The probability
is computed by simulating the looks (`decide_probability`: normal seed means, each look's Welch standard error from
the simulated seeds and its critical value from the design, as `look` reads them), because the t critical values
with 2-8 df and the spending of alpha over the looks have no closed form; the draws are fixed (seeded), so the same
estimate always gets the same advice.

Why the observed Δ and the spread's point estimate: the advice is a plan at the current estimates (the usual sample
size "at the estimates", Julious 2004, Stat. Med. 23:1921). A planning value chosen to be safe (the spread's upper
80% limit, Browne 1995, as this advice used before) overshoots: after 3 seeds per arm it named a median of 14-22
seeds where 8 decide 80% of the time, and following it decided 93-100% of the time (issue 27). How uncertain N is
shows as the N at the ends of the spread's 80% chi-square interval (`seeds_range`). `python -m
pipeline.statistics.advice` measures, with NDCG-like scores (`pipeline.statistics.generator`), how often following
the advice decides and how its N compares with the smallest fixed N that decides 80% of the time
(docs/protocol.md); tests/statistics/test_advice.py checks it on a small simulation.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np
from scipy import stats

from pipeline.statistics.generator import Benchmark, Scenario
from pipeline.statistics.sequential import DECIDED, Design, Estimate, benchmark_difference, fixed, look, replay

MOST = 60  # seeds per arm beyond which the advice says "more than" (each budget tried computes its looks' boundaries: seconds)
DRAWS = 2000  # simulated replicates per budget tried (a probability of 0.8 to +-0.009)


def decided(design: Design, adapter: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Whether the design stops decided (equivalent, superior or inferior) by its budget on each column of seed
    means (shape (seeds, draws), seeds in training order, at least the budget): its looks as `look` takes them
    (the conservative df, Welch's for a one-look design), vectorised; tests/statistics/test_advice.py checks it against
    `replay`."""
    looks, m = design.looks(), design.margin
    going = np.ones(adapter.shape[1], dtype=bool)
    for k, n in enumerate(looks, start=1):
        va, vf = adapter[:n].var(axis=0, ddof=1), full[:n].var(axis=0, ddof=1)
        d, se = adapter[:n].mean(axis=0) - full[:n].mean(axis=0), np.sqrt((va + vf) / n)
        if len(looks) == 1:  # a one-look design is Welch's test: its df per draw
            df = (va + vf) ** 2 / ((va**2 + vf**2) / (n - 1))
            c1 = np.array([design.critical(k, x, design.alpha, looks[:k]) for x in df])
            c2 = np.array([design.critical(k, x, design.alpha / 2, looks[:k]) for x in df])
        else:  # the conservative df of a sequential look
            c1 = design.critical(k, n - 1, design.alpha, looks[:k])
            c2 = design.critical(k, n - 1, design.alpha / 2, looks[:k])
        # label_of's decided labels: equivalent, superior, inferior
        stop = ((d - c1 * se > -m) & (d + c1 * se < m)) | (d - c2 * se > 0) | (d + c2 * se < 0)
        going &= ~stop
    return ~going


def decide_probability(design: Design, delta: float, sd: float, draws: int = DRAWS, seed: int = 0) -> float:
    """P(`design` stops decided by its budget) when the true Δ is `delta` and each arm's seeds spread with sd `sd`:
    `draws` simulated runs of its looks (normal seed means). The draws are seed-major, so a larger budget reuses the
    same first seeds (common random numbers: the probability grows smoothly with the budget)."""
    rng = np.random.default_rng(seed)
    z = sd * rng.standard_normal((design.budget, 2, draws))
    return float(decided(design, delta + z[:, 0], z[:, 1]).mean())


def _plan(design: Design, n: int) -> Design:
    return replace(design, budget=n, first=min(design.first, n))


def _smallest(design: Design, delta: float, sd: float, now: float, power: float, most: int = MOST) -> int | None:
    """The smallest budget above `now` whose design decides with probability >= power: steps of 1, 2, 4, ... up to
    one that does, then bisection (the probability grows with the budget)."""
    low = math.floor(now) + 1
    if decide_probability(_plan(design, low), delta, sd) >= power:
        return low
    step, high = 1, None
    while high is None:
        n = min(low + step, most)
        if decide_probability(_plan(design, n), delta, sd) >= power:
            high = n
        elif n >= most:
            return None
        else:
            low, step = n, step * 2
    while high - low > 1:  # low fails, high decides often enough
        mid = (low + high) // 2
        low, high = (low, mid) if decide_probability(_plan(design, mid), delta, sd) >= power else (mid, high)
    return high


def _spread(estimate: Estimate) -> tuple[float, float] | None:
    """(per-seed sd of each arm, seeds per arm now), or None when the estimate cannot be planned on."""
    if estimate.note or not (math.isfinite(estimate.delta) and estimate.se > 0 and estimate.df > 0):
        return None
    now = 2 / (1 / estimate.seeds_adapter + 1 / estimate.seeds_full)
    return estimate.se / math.sqrt(2 / now), now


def seeds_needed(
    estimate: Estimate,
    margin: float,
    alpha: float = 0.05,
    power: float = 0.8,
    design: Design | None = None,
    most: int = MOST,
) -> int | None:
    """Seeds per arm (in total, counting those run) at which make decide's design (`design`, default `Design()`; its
    margin and alpha replaced by these) would likely decide it at the estimates; None if over MOST or the spread is
    not measured, or over `most`."""
    spread = _spread(estimate)
    if spread is None:
        return None
    sd, now = spread
    plan = replace(design or Design(), margin=margin, alpha=alpha)
    return _smallest(plan, estimate.delta, sd, now, power, most)


def seeds_range(
    estimate: Estimate,
    margin: float,
    alpha: float = 0.05,
    power: float = 0.8,
    design: Design | None = None,
    confidence: float = 0.8,
) -> tuple[int | None, int | None]:
    """`seeds_needed` at the ends of the seed variance's `confidence` chi-square interval (on `estimate.df`): how
    uncertain the advice is. None for an end over MOST."""
    spread = _spread(estimate)
    if spread is None:
        return None, None
    sd, now = spread
    plan = replace(design or Design(), margin=margin, alpha=alpha)
    tail = (1 - confidence) / 2
    ends = (estimate.df / stats.chi2.isf(tail, estimate.df), estimate.df / stats.chi2.ppf(tail, estimate.df))
    low, high = (_smallest(plan, estimate.delta, sd * math.sqrt(x), now, power) for x in ends)
    return low, high


def advice(estimate: Estimate, margin: float, alpha: float = 0.05, power: float = 0.8) -> str:
    """The sentence an inconclusive verdict ends with."""
    now = f"now {estimate.seeds_adapter} and {estimate.seeds_full} seeds"
    n = seeds_needed(estimate, margin, alpha, power)
    if n is None:
        return f"more than {MOST} seeds per arm would be needed, or the spread is not measured ({now})"
    low, high = seeds_range(estimate, margin, alpha, power)
    ends = f"{low}-{high if high is not None else f'over {MOST}'}"
    return (
        f"about {n} seeds per arm would decide it with {power:.0%} probability in make decide's looks "
        f"(hydra.sweeper.decide.budget={n}) if Δ and the seed spread hold; {ends} over the spread's 80% interval "
        f"({now})"
    )


class Followed(NamedTuple):
    """Following the advice on simulated benchmarks (`follow`)."""

    inconclusive: int  # replicates whose first verdict was inconclusive: the advice was given
    decided: float  # share of those that make decide, run to the advised budget, decided
    advised: np.ndarray  # the advised seeds per arm of each (capped at the seeds drawn)
    capped: int  # advice over the seeds drawn (or none): followed with the seeds drawn
    smallest: int | None  # the smallest one budget for all of them that decides >= power of the time


def follow(
    scenario: Scenario, delta: float, reps: int, seed: int = 0, run: int = 3, most: int = 40, power: float = 0.8
) -> Followed:
    """`reps` benchmarks with true Δ `delta`: `run` seeds per arm, the one-look verdict; where it is inconclusive, the
    advice, and make decide's sequential design (`Design()`, budget the advice) replayed on the first N seeds (those
    run and the new ones); against it, the smallest single budget that decides >= `power` of the same replicates."""
    design = Design()
    rng = np.random.default_rng(seed)
    bench = Benchmark(scenario, reps, rng)
    shift_a, shift_f = bench.shift_for(delta)
    adapter = bench.nanobeir(bench.scores(0, shift_a, most, rng))
    full = bench.nanobeir(bench.scores(1, shift_f, most, rng))
    advised, capped, kept = [], 0, []
    for i, (a, f) in enumerate(zip(adapter, full, strict=True)):
        now = benchmark_difference(a[:run], f[:run])
        if look(fixed(design.margin, design.alpha), now, 1).label != "inconclusive":
            continue
        n = seeds_needed(now, design.margin, design.alpha, power, design, most)
        capped += n is None or n > most
        advised.append(min(n or most, most))
        kept.append(i)
    if not kept:
        return Followed(0, math.nan, np.array([], dtype=int), 0, None)

    def decided_at(budget: int, i: int) -> bool:
        looks = replay(replace(design, budget=budget, first=min(design.first, budget)), adapter[i, :budget],
                       full[i, :budget])  # fmt: skip
        return looks[-1].label in DECIDED

    hits = [decided_at(n, i) for n, i in zip(advised, kept, strict=True)]
    a, f = adapter[kept].T, full[kept].T  # seeds first, as `decided` takes them
    smallest = next((b for b in range(run + 1, most + 1) if decided(_plan(design, b), a, f).mean() >= power), None)
    return Followed(len(kept), float(np.mean(hits)), np.array(advised), capped, smallest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.statistics.advice", description="How often following the advice decides."
    )
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--datasets", type=int, default=13)
    parser.add_argument("--seed-sd", type=float, nargs="+", default=[0.015, 0.025, 0.035])
    parser.add_argument("--run", type=int, nargs="+", default=[2, 3], help="seeds per arm run before the advice")
    parser.add_argument("--most", type=int, default=40, help="seeds per arm drawn: advice beyond counts as this")
    args = parser.parse_args(argv)
    if args.reps < 10 or args.most < 4 or min(args.run) < 2 or min(args.seed_sd) <= 0:
        parser.error(
            f"--reps {args.reps}, --most {args.most}, --run {args.run}, --seed-sd {args.seed_sd}: need reps >= 10, "
            "most >= 4, run >= 2 seeds and seed-sd > 0"
        )
    print("| seed sd (latent) | Δ | seeds run | inconclusive | decided following it | advised N: median (IQR) "
          "| smallest N deciding 80% | median / smallest | within 1.25× | advice over --most |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for sd in args.seed_sd:
        scenario = Scenario(datasets=args.datasets, seed_sd=(sd, sd))
        for delta in (0.0, -0.005, 0.005):
            for run in args.run:
                r = follow(scenario, delta, args.reps, seed=run, run=run, most=args.most)
                if not r.inconclusive:
                    continue
                q1, median, q3 = np.percentile(r.advised, [25, 50, 75])
                ratio = median / r.smallest if r.smallest else math.nan
                within = np.mean(np.abs(np.log(r.advised / r.smallest)) <= math.log(1.25)) if r.smallest else math.nan
                print(
                    f"| {sd} | {delta:+.3f} | {run} | {r.inconclusive} | {r.decided:.2f} | {median:g} ({q1:g}-{q3:g}) "
                    f"| {r.smallest} | {ratio:.2f} | {within:.2f} | {r.capped} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
