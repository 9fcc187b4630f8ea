"""Seeds the sequential rule spends to a decision, against a fixed design with the same error rates.

    python -m pipeline.statistics.simulate [--reps 2000] [--datasets 13] [--seed-sd 0.025] [--budget 10]
    python -m pipeline.statistics.simulate --gammas=-4,-2,-1,-0.5,0,0.5,1,obf   # choose the spending function
    python -m pipeline.statistics.simulate --collapse --reps 400   # error rates when seeds diverge
    python -m pipeline.statistics.simulate --collapse --sizes 2 --truth all   # ... against the mean over all runs
    python -m pipeline.statistics.simulate --false-splits --reps 4000   # the split rule on normal seeds

NDCG@10-like scores (`pipeline.statistics.generator`) with the true Δ on each benchmark set exactly; for each Δ the
sequential design (`pipeline.statistics.sequential`, default looks at 3, 5, 7, 9, 10 seeds per arm) runs to its
stop, and we count the seeds per arm it spent (its average sample number, ASN). The fixed design it is set against
has the same alpha and at least the same power: the smallest fixed number of seeds per arm whose one-look verdict
calls a truly equal adapter equivalent at least as often as the sequential rule does. Prints a markdown table.
With --gammas: one row per Hwang-Shih-DeCani gamma ("obf": O'Brien-Fleming type) on the same draws, at Δ = 0 and
Δ = ±margin, to choose the design's spending function.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from pipeline.statistics.generator import Benchmark, Scenario
from pipeline.statistics.robust import SPLIT_FLOOR, diverged_seeds, split_seeds
from pipeline.statistics.sequential import LABELS, Design, benchmark_difference, fixed, look, replay

DELTAS = (0.0, -0.005, 0.005, -0.01, 0.01, -0.02)


def seed_means(scenario: Scenario, delta: float, seeds: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bench = Benchmark(scenario, reps, rng)
    adapter, full = bench.shift_for(delta)
    return bench.nanobeir(bench.scores(0, adapter, seeds, rng)), bench.nanobeir(bench.scores(1, full, seeds, rng))


def sequential(design: Design, adapter: np.ndarray, full: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each replicate's final label and the seeds per arm it spent."""
    lasts = [replay(design, a, f)[-1] for a, f in zip(adapter, full, strict=True)]
    return [x.label for x in lasts], np.array([x.seeds_adapter for x in lasts])


def fixed_power(design: Design, adapter: np.ndarray, full: np.ndarray, n: int) -> float:
    """P(equivalent) of one look at n seeds per arm."""
    one = fixed(design.margin, design.alpha)
    labels = [look(one, benchmark_difference(a[:n], f[:n]), 1).label for a, f in zip(adapter, full, strict=True)]
    return labels.count("equivalent") / len(labels)


def collapse_means(
    scenario: Scenario, delta: float, seeds: int, reps: int, seed: int, rate: float, size: float, arm: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-seed NanoBEIR means (adapter, full) where `arm`'s seeds collapse at `rate` by `size` NDCG@10 each, and which
    of that arm's seeds collapsed. The true Δ (`delta`) is over stable runs: the expectation without collapses."""
    rng = np.random.default_rng(seed)
    bench = Benchmark(scenario, reps, rng)
    shifts = bench.shift_for(delta)
    bench.scenario = replace(scenario, collapse=rate, collapse_arms=(arm,),
                             collapse_shift=bench.collapse_for(arm, shifts[arm], size))  # fmt: skip
    adapter, full = (bench.nanobeir(bench.scores(i, shifts[i], seeds, rng)) for i in (0, 1))
    return adapter, full, bench.collapsed[arm]


def collapse_rates(
    design: Design,
    scenario: Scenario,
    reps: int,
    rate: float,
    size: float,
    arm: int,
    seed: int = 0,
    truth: str = "stable",
):
    """One row of the collapse table: the verdict's error rates when `arm`'s seeds collapse at `rate` by `size`
    margins, the true Δ over stable runs (`truth="stable"`, the verdict's claim) or over all runs, collapses included
    (`truth="all"`: the collapsing arm's mean `rate` x `size` margins lower), and how often look 1 (3 seeds) flags a
    collapse among its seeds."""
    m, out = design.margin, {}
    lower = rate * size * m if truth == "all" else 0.0  # what the collapses take off the collapsing arm's mean
    for i, delta in enumerate((-m, 0.0, m)):
        stable = delta + (lower if arm == 0 else -lower)  # the Δ over stable runs whose Δ over the chosen runs is delta
        adapter, full, collapsed = collapse_means(scenario, stable, design.budget, reps, seed + i, rate, size * m, arm)
        labels = sequential(design, adapter, full)[0]
        out[delta] = {label: labels.count(label) / reps for label in LABELS}
        if delta == 0.0:
            first = design.looks()[0]
            hit = collapsed[:, :first].any(axis=1)
            flags = [
                diverged_seeds({"adapter": a[:first], "full": f[:first]}, m) for a, f in zip(adapter, full, strict=True)
            ]
            arm_name = ("adapter", "full")[arm]
            found = [
                bool(set(np.flatnonzero(c[:first])) & set(x.get(arm_name, [])))
                for c, x in zip(collapsed, flags, strict=True)
            ]
            out["flagged"] = float(np.mean(np.asarray(found)[hit])) if hit.any() else float("nan")
    return out


def collapse_table(args: argparse.Namespace, scenario: Scenario, design: Design) -> None:
    """The verdict's error rates under a collapse mixture, one row per arm, rate and size."""
    over = "over stable runs (without collapses)" if args.truth == "stable" else "over all runs (collapses included)"
    print(f"Collapse mixture: {args.reps} replicates per cell, design looks {design.looks()}, margin {design.margin}; "
          f"true Δ {over}; a collapse costs its seed `size` margins of NanoBEIR NDCG@10.")  # fmt: skip
    print()
    print("| arm | rate | size (margins) | P(equiv. \\| -m) | P(equiv. \\| +m) | P(inferior \\| 0) | "
          "P(superior \\| 0) | P(equiv. \\| 0) | P(no verdict \\| 0) | flagged at look 1 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cell = 0
    for arm in (0, 1):
        for rate in (0.05, 0.2):
            for size in args.sizes:
                r = collapse_rates(design, scenario, args.reps, rate, size, arm, seed=100 + 3 * cell, truth=args.truth)
                cell += 1
                m = design.margin
                print(f"| {('adapter', 'full')[arm]} | {rate:.2f} | {size:g} | {r[-m]['equivalent']:.3f} | "
                      f"{r[m]['equivalent']:.3f} | {r[0.0]['inferior']:.3f} | {r[0.0]['superior']:.3f} | "
                      f"{r[0.0]['equivalent']:.3f} | {r[0.0]['no verdict']:.3f} | {r['flagged']:.3f} |")  # fmt: skip


def false_splits(args: argparse.Namespace, design: Design) -> None:
    """How often the split rule flags an arm of normal seeds (no collapse) at one look, by its seed count, its spread
    and the other arm's: its false alarms where the spreads differ."""
    print(f"Normal seeds, no collapse: P(the split rule flags the first arm at one look), {args.reps} replicates per "
          f"cell, floor {SPLIT_FLOOR} margins of {design.margin}.")  # fmt: skip
    print()
    print("| per-seed sd (in margins) | the other arm's | 5 seeds | 7 seeds | 10 seeds |")
    print("|---:|---:|---:|---:|---:|")
    rng, floor = np.random.default_rng(0), SPLIT_FLOOR * design.margin
    for mine, other in ((0.5, 0.5), (0.66, 0.33), (1.0, 1.0), (1.0, 0.5), (1.0, 0.2), (1.5, 0.3)):
        rates = []
        for n in (5, 7, 10):
            a = rng.normal(0, mine * design.margin, (args.reps, n))
            f = rng.normal(0, other * design.margin, (args.reps, n))
            rates.append(
                np.mean([bool(split_seeds({"a": x, "f": y}, floor).get("a")) for x, y in zip(a, f, strict=True)])
            )
        print(f"| {mine:g} | {other:g} | " + " | ".join(f"{r:.4f}" for r in rates) + " |")


def sizes_of(text: str) -> list[float]:
    """--sizes: comma-separated positive numbers of margins."""
    try:
        sizes = [float(x) for x in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need comma-separated positive numbers of margins, e.g. 2,3,5,10")
    return sizes


def gamma_of(text: str) -> float | None:
    return None if text == "obf" else float(text)


def choose(args: argparse.Namespace, scenario: Scenario) -> None:
    """One row per spending function on the same draws: the error rates, P(equivalent | Δ = 0), ASN / fixed."""
    zero = seed_means(scenario, 0.0, args.most, args.reps, seed=0)
    margins = [seed_means(scenario, d, args.budget, args.reps, seed=i + 7) for i, d in enumerate((-0.01, 0.01))]
    powers = [fixed_power(Design(), *zero, n) for n in range(2, args.most + 1)]
    print(
        "| gamma | P(equiv. \\| 0) | P(inferior \\| 0) | P(equiv. \\| -m) | P(equiv. \\| +m) | ASN at 0 | fixed | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for text in args.gammas.split(","):
        design = Design(budget=args.budget, gamma=gamma_of(text))
        labels, spent = sequential(design, zero[0][:, : args.budget], zero[1][:, : args.budget])
        power, inferior = labels.count("equivalent") / args.reps, labels.count("inferior") / args.reps
        at_margin = [sequential(design, *m)[0].count("equivalent") / args.reps for m in margins]
        n_fixed = next((n for n, p in enumerate(powers, start=2) if p >= power), None)
        ratio = f"{spent.mean() / n_fixed:.2f}" if n_fixed else "n/a"
        print(f"| {text} | {power:.3f} | {inferior:.3f} | {at_margin[0]:.3f} | {at_margin[1]:.3f} | "
              f"{spent.mean():.2f} | {n_fixed} | {ratio} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.statistics.simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--datasets", type=int, default=13)
    parser.add_argument("--seed-sd", type=float, default=0.025, help="sd of a seed's latent shift (both arms)")
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--most", type=int, default=30, help="largest fixed design tried")
    parser.add_argument("--gamma", default=None, help="Hwang-Shih-DeCani gamma, or obf (default: the design's)")
    parser.add_argument("--gammas", default=None, help="comma-separated gammas to compare (e.g. -4,-1,0,1,obf)")
    parser.add_argument("--collapse", action="store_true", help="the error rates under a collapse mixture")
    parser.add_argument("--false-splits", action="store_true", help="the split rule's false alarms, unequal spreads")
    parser.add_argument(
        "--sizes", type=sizes_of, default="2,3,5,10", help="--collapse: what a collapse costs, in margins"
    )
    parser.add_argument("--truth", choices=("stable", "all"), default="stable",
                        help="--collapse: the true Δ over stable runs (the verdict's claim) or over all runs")  # fmt: skip
    args = parser.parse_args(argv)
    design = (
        Design(budget=args.budget) if args.gamma is None else Design(budget=args.budget, gamma=gamma_of(args.gamma))
    )
    scenario = Scenario(datasets=args.datasets, sizes=(40, 50), seed_sd=(args.seed_sd, args.seed_sd))
    if args.gammas:
        choose(args, scenario)
        return 0
    if args.false_splits:
        false_splits(args, design)
        return 0
    if args.collapse:
        collapse_table(args, scenario, design)
        return 0
    adapter, full = seed_means(scenario, 0.0, args.most, args.reps, seed=0)
    spread = np.concatenate([adapter, full]).std(axis=1, ddof=1).mean()
    labels, spent = sequential(design, adapter[:, : args.budget], full[:, : args.budget])
    power = labels.count("equivalent") / args.reps
    n_fixed = next((n for n in range(2, args.most + 1) if fixed_power(design, adapter, full, n) >= power), None)
    print(f"Design: looks at {design.looks()} seeds per arm, margin {design.margin}, alpha {design.alpha}, "
          f"spending {'HSD gamma ' + str(design.gamma) if design.gamma is not None else 'O-F type'}; "
          f"{args.datasets} datasets, per-seed sd of the NanoBEIR mean {spread:.4f}; {args.reps} replicates.")  # fmt: skip
    print(f"Fixed design with the same alpha and power (P(equivalent | Δ = 0) >= {power:.3f}): {n_fixed} seeds/arm.")
    print()
    print("| true Δ | equivalent | non-inferior | superior | inferior | inconclusive | ASN (seeds/arm) | ASN / fixed |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, delta in enumerate(DELTAS):
        if delta != 0.0:
            adapter, full = seed_means(scenario, delta, args.budget, args.reps, seed=i + 1)
            labels, spent = sequential(design, adapter, full)
        rates = [labels.count(x) / args.reps for x in ("equivalent", "non-inferior", "superior", "inferior")]
        rest = 1 - sum(rates)
        ratio = f"{spent.mean() / n_fixed:.2f}" if n_fixed else "n/a"
        cells = " | ".join(f"{r:.3f}" for r in [*rates, rest])
        print(f"| {delta:+.3f} | {cells} | {spent.mean():.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
