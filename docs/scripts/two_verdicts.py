"""The two verdicts' error rates through make decide's rounds (both halves' looks, the rounds going on for the undecided
one), on the project's NDCG@10-like generator: each half's own claims, and the answer for both.

PYTHONPATH=. .venv/bin/python docs/scripts/two_verdicts.py [reps]  (output: docs/bench_runs/two_verdicts_*.log)

In domain: one set of 200 queries (the held-out test set); general: 13 datasets of 40-50 queries (NanoBEIR). Both
halves' seeds are drawn independently (an intersection-union test holds whatever their dependence).
"""

import sys

import numpy as np

from pipeline.statistics.generator import Benchmark, Scenario
from pipeline.statistics.sequential import NOT_WORSE, Design, combined
from pipeline.sweep.decide import ADAPTER, FULL, Arm, fresh_seeds, sequential
from pipeline.sweep.grid import job_values

REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
DESIGN = Design()
HALVES = {"in_domain": Scenario(datasets=1, sizes=(200, 201)), "general": Scenario(datasets=13, sizes=(40, 50))}


def means(scenario: Scenario, delta: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bench = Benchmark(scenario, REPS, rng)
    shifts = bench.shift_for(delta)
    return tuple(bench.nanobeir(bench.scores(i, shifts[i], DESIGN.budget, rng)) for i in (0, 1))


def rates(in_domain_delta: float, general_delta: float, seed: int) -> dict[str, float]:
    drawn = {"in_domain": means(HALVES["in_domain"], in_domain_delta, seed),
             "general": means(HALVES["general"], general_delta, seed + 1)}  # fmt: skip
    seeds = fresh_seeds([12], [], DESIGN.budget)
    counts = {"both not worse": 0, "both equivalent": 0, "inferior (either)": 0, "seeds": 0}
    halves = {"in_domain": [], "general": []}
    for i in range(REPS):

        def score(half, i=i):
            def train(jobs):
                return [drawn[half][0 if job_values(j)["arm"] == ADAPTER else 1][i][seeds.index(int(
                    job_values(j)["train.seed"]))] for j in jobs]  # fmt: skip

            return train

        arms = [Arm(ADAPTER, ("arm=adapter",)), Arm(FULL, ("arm=full",))]
        outcome = sequential(DESIGN, arms, seeds, score("general"), in_domain=score("in_domain"))
        labels = {"in_domain": outcome.in_domain[-1].label, "general": outcome.looks[-1].label}
        for half, label in labels.items():
            halves[half].append(label)
        answer = combined(labels["in_domain"], labels["general"])
        counts["both not worse"] += answer in NOT_WORSE
        counts["both equivalent"] += answer == "equivalent"
        counts["inferior (either)"] += answer == "inferior"
        counts["seeds"] += len(arms[0].scores)
    out = {k: v / REPS for k, v in counts.items()}
    for half, labels in halves.items():
        out[f"{half} not worse"] = sum(x in NOT_WORSE for x in labels) / REPS
        out[f"{half} inferior"] = labels.count("inferior") / REPS
    return out


m = DESIGN.margin
print(f"Two verdicts through make decide's rounds: design looks {DESIGN.looks()}, margin {m} for both, alpha "
      f"{DESIGN.alpha}; {REPS} replicates per row; in domain 200 queries, general 13 x 40-50 queries.")  # fmt: skip
print()
print("| true Δ in domain | true Δ general | P(in domain not worse) | P(general not worse) | P(both not worse) | "
      "P(both equivalent) | P(in domain inferior) | P(general inferior) | P(inferior, either) | seeds/arm |")  # fmt: skip
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for row, (d_in, d_gen) in enumerate([(-m, 0.0), (0.0, -m), (-m, -m), (0.0, 0.0), (-3 * m, 0.0)]):
    r = rates(d_in, d_gen, seed=10 * row)
    print(f"| {d_in:+.3f} | {d_gen:+.3f} | {r['in_domain not worse']:.3f} | {r['general not worse']:.3f} | "
          f"{r['both not worse']:.3f} | {r['both equivalent']:.3f} | {r['in_domain inferior']:.3f} | "
          f"{r['general inferior']:.3f} | {r['inferior (either)']:.3f} | {r['seeds']:.2f} |")  # fmt: skip
