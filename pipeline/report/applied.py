"""The comparison protocol applied to a sweep's runs: configurations, selection on dev, fresh seeds, the verdict.

1. Runs that differ only by seed are one configuration (`Arm.configuration`).
2. Each method's configuration is selected on dev NDCG@10 (`pipeline.sweep.selection`, as the sweeper did); the
   adapter that faces the full fine-tune is the selected adapter configuration with the best dev score. NanoBEIR is
   never read to select.
3. Fresh seeds decide: the run that won selection (the selected configuration's run at a grid seed, recorded on the
   parent run as `sweep.grid_seeds`, else the seeds of the grid's other runs) never enters the verdict's Δ; it is
   shown beside, marked as the selection run.
4. The verdict on the fresh seeds, for a stated target (`pipeline.protocol`): one look, or the looks of the
   group-sequential design when `make decide` added seeds in rounds. Beside it: per-dataset Δ and heterogeneity,
   outlier seeds and diverged losses, each arm's worst seed.
5. The grid (`pipeline.report.grid`): configuration-level p-values with seed variance, Holm over the grid's adapter
   configurations; Δ vs full per rank and the smallest rank that suffices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pipeline import schema
from pipeline.protocol import ADAPTER, FULL, Verdict, facing_full, from_looks, verdict_of
from pipeline.report.grid import compare_grid, estimate_of
from pipeline.report.load import Arm
from pipeline.statistics.heterogeneity import Heterogeneity, heterogeneity
from pipeline.statistics.robust import diverged, diverged_seeds, rate_text, worst_seed
from pipeline.statistics.seeds import SeedQueryEstimate, arm_estimate, dataset_means, nanobeir_means
from pipeline.statistics.sequential import Design, Look, fixed, look, relook, replay, unresolved
from pipeline.sweep.selection import Candidate, dev_scores, select, tie_key


@dataclass
class Configuration:
    """A method's hyper-parameters (and learning rate) with the runs of its seeds."""

    method: str
    key: str
    runs: list[Arm]
    dev: float = math.nan  # its dev score as selection reads it
    estimate: SeedQueryEstimate | None = None  # NanoBEIR mean over seeds, seed + query CI (queries only: 1 seed)
    selected: bool = False
    test: object = None  # pipeline.statistics.family.ConfigurationTest vs the selected full fine-tune
    p_holm: float | None = None

    @property
    def name(self) -> str:
        """The run name without its seed suffix, e.g. `lora-r16-a32-lr2e-4`."""
        first = self.runs[0]
        return first.name.removesuffix(f"-s{first.seed}") if first.seed is not None else first.name

    @property
    def finished(self) -> list[Arm]:
        return [a for a in self.runs if a.status == "FINISHED" and a.per_query is not None]

    @property
    def trainable_params(self) -> float:
        values = [a.trainable_params for a in self.runs if a.trainable_params is not None]
        return values[0] if values else math.inf

    def fresh(self, grid_seeds: set[int], order: Sequence[int] = ()) -> list[Arm]:
        """Its finished runs at seeds the grid did not use, in the order trained (`trained_order`)."""
        return sorted((a for a in self.finished if a.seed not in grid_seeds), key=trained_order(order))

    def trained(self, grid_seeds: set[int]) -> dict[int, Arm]:
        """{fresh seed: its run}: the finished run where there is one, else the latest (failed or unfinished)."""
        found: dict[int, Arm] = {}
        for run in sorted(self.runs, key=lambda a: (a in self.finished, a.start_time)):  # finished ones win
            if run.seed is not None and run.seed not in grid_seeds:
                found[run.seed] = run
        return found

    def selection_runs(self, grid_seeds: set[int]) -> list[Arm]:
        return [a for a in self.finished if a.seed in grid_seeds]


def trained_order(order: Sequence[int] = ()):
    """Sort key of fresh runs in the order trained: by position in `order` (the parent run's `decide.seeds`, the
    order `make decide` trains them), then by start time, then by seed."""
    position = {seed: i for i, seed in enumerate(order)}
    return lambda a: (position.get(a.seed, len(position)), a.start_time, a.seed is None, a.seed)


@dataclass
class Protocol:
    configurations: list[Configuration]
    adapter: Configuration | None = None  # the selected adapter configuration that faces the full fine-tune
    full: Configuration | None = None  # the selected full fine-tune configuration
    target: str = "benchmark"
    grid_seeds: set[int] = field(default_factory=set)
    order: list[int] = field(default_factory=list)  # the fresh seeds in the order make decide trains them
    verdict: Verdict | None = None
    design: Design | None = None  # the sequential design the looks replayed (make decide's); None: one fixed look
    looks: list[Look] = field(default_factory=list)
    heterogeneity: Heterogeneity | None = None
    worst: dict[str, tuple[str, float]] = field(default_factory=dict)  # arm: (run name, its NanoBEIR mean)
    in_delta: dict[str, list[Arm]] = field(default_factory=dict)  # "adapter", "full": the fresh runs in Δ
    divergence: dict[str, tuple[int, int]] = field(default_factory=dict)  # arm: (diverged seeds, seeds) in Δ
    ranks: list = field(default_factory=list)  # pipeline.report.grid.RankDelta, largest rank first
    rank: int | None = None  # the smallest rank that suffices (fixed-sequence), None if none
    notes: list[str] = field(default_factory=list)


def configurations(arms: list[Arm]) -> list[Configuration]:
    found: dict[str, Configuration] = {}
    for arm in arms:
        found.setdefault(arm.configuration, Configuration(arm.method, arm.configuration, [])).runs.append(arm)
    for config in found.values():
        config.runs.sort(key=lambda a: (a.seed is None, a.seed, a.start_time))
    return list(found.values())


def apply(
    arms: list[Arm],
    margin: float = 0.01,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    target: str = "benchmark",
    grid_seeds: set[int] | None = None,
    design: Design | None = None,
    order: Sequence[int] | None = None,
) -> Protocol:
    """The protocol on a sweep's arms. `grid_seeds`: the seeds the grid trained (the parent run's `sweep.grid_seeds`;
    None: the seeds of the runs of configurations not selected). `design`: the sequential design `make decide`
    followed (None: one look at the fresh seeds there are); `order`: the fresh seeds in the order it trained them
    (its `decide.seeds`; None: by start time)."""
    configs = configurations(arms)
    protocol = Protocol(configs, target=target, order=list(order or []))
    candidates = [
        Candidate(
            a.method, c.key, a.seed, a.dev if a.status == "FINISHED" else math.nan, tie_key(a.method, a.r, c.name)
        )
        for c in configs
        for a in c.runs
    ]
    scores = dev_scores(candidates)
    chosen = select(candidates)
    for config in configs:
        config.dev = scores.get((config.method, config.key), math.nan)
        config.selected = chosen.get(config.method) == config.key
        if config.finished:
            config.estimate = arm_estimate([a.per_query for a in config.finished], level)
    by_key = {c.key: c for c in configs}
    facing = facing_full(candidates)  # as make decide chooses them
    protocol.adapter, protocol.full = by_key.get(facing.get(ADAPTER)), by_key.get(facing.get(FULL))
    if grid_seeds is None:  # the seeds of the grid runs: those of the configurations selection passed over
        grid_seeds = {a.seed for c in configs if not c.selected for a in c.runs if a.seed is not None}
        if not grid_seeds:
            protocol.notes.append("no grid seeds recorded (sweep.grid_seeds) and no grid to infer them from")
    protocol.grid_seeds = set(grid_seeds)
    if any(math.isnan(a.dev) for a in arms if a.status == "FINISHED"):
        protocol.notes.append(f"runs without {schema.DEV} (logged before the dev set existed) cannot be selected")
    _verdict(protocol, margin, 1 - level, design)
    compare_grid(protocol, margin, 1 - level, n_resamples, seed, level)
    return protocol


def _verdict(protocol: Protocol, margin: float, alpha: float, design: Design | None) -> None:
    adapter, full = protocol.adapter, protocol.full
    if adapter is None or full is None or not adapter.finished or not full.finished:
        protocol.notes.append("no verdict: it needs a finished adapter and a finished full fine-tune with dev scores")
        return
    fresh_a, fresh_f = (config.fresh(protocol.grid_seeds, protocol.order) for config in (adapter, full))
    if not fresh_a or not fresh_f:
        protocol.notes.append(
            f"no verdict: no fresh seeds ({len(fresh_a)} for the adapter, {len(fresh_f)} for the full fine-tune); "
            "the run that won selection does not decide (train fresh seeds: make decide)"
        )
        return
    try:
        estimate = estimate_of(fresh_a, fresh_f, protocol.target)
    except ValueError as error:
        protocol.notes.append(f"no verdict: {error}")
        return
    if design is not None and protocol.target == "benchmark":
        # make decide's looks on the same scores: both arms at the same seeds in the order trained, a failed run nan
        trained = adapter.trained(protocol.grid_seeds), full.trained(protocol.grid_seeds)
        runs = sorted({**trained[0], **trained[1]}.values(), key=trained_order(protocol.order))
        seeds = list(dict.fromkeys(a.seed for a in runs))
        means = [[_mean(arm.get(s)) for s in seeds] for arm in trained]
        losses = tuple([_loss(arm.get(s)) for s in seeds] for arm in trained)
        protocol.design, protocol.looks = design, replay(design, *means, done=True, seeds=seeds, losses=losses)
        if not protocol.looks:
            protocol.notes.append(
                f"no verdict: {len(seeds)} fresh seeds trained, the first look needs {design.first} per arm "
                "(run the same make decide command again)"
            )
            return
        n = protocol.looks[-1].seeds_adapter
        fresh_a = [trained[0][s] for s in seeds[:n] if trained[0].get(s) in adapter.finished]
        fresh_f = [trained[1][s] for s in seeds[:n] if trained[1].get(s) in full.finished]
        looked = estimate_of(fresh_a, fresh_f, protocol.target) if fresh_a and fresh_f else None  # for the advice
        protocol.verdict = from_looks(protocol.looks, design, looked)
    else:
        protocol.looks = [look(fixed(margin, alpha), estimate, 1)]
        protocol.verdict = verdict_of(estimate, margin, alpha)
        means = {"adapter": [_mean(a) for a in fresh_a], "full": [_mean(a) for a in fresh_f]}
        losses = {"adapter": [a.train_loss for a in fresh_a], "full": [a.train_loss for a in fresh_f]}
        why = unresolved(means, margin, losses=losses) if protocol.verdict.label != "no verdict" else ""
        if why:  # a diverged seed: no verdict at one look too, as make decide's looks
            protocol.looks = [replace(protocol.looks[0], label="no verdict", stop=True, reason=why)]
            protocol.verdict = from_looks(protocol.looks, fixed(margin, alpha))
    protocol.in_delta = {"adapter": fresh_a, "full": fresh_f}  # the runs the verdict's Δ is made of
    _edges(protocol, fresh_a, fresh_f, margin)


def _mean(run: Arm | None) -> float:
    """A run's NanoBEIR mean, nan for a run without scores (failed, or not trained)."""
    finished = run is not None and run.status == "FINISHED" and run.per_query is not None
    return nanobeir_means([run.per_query])[0] if finished else math.nan


def _loss(run: Arm | None) -> float | None:
    """A finished run's final train loss (None: unknown, or no finished run)."""
    return run.train_loss if run is not None and run.status == "FINISHED" else None


def _edges(protocol: Protocol, fresh_a: list[Arm], fresh_f: list[Arm], margin: float) -> None:
    """Outlier seeds, diverged losses, the worst seed of each arm, per-dataset Δ and heterogeneity."""
    means = {arm: [nanobeir_means([a.per_query])[0] for a in runs] for arm, runs in (("adapter", fresh_a),
             ("full", fresh_f))}  # fmt: skip
    runs = {"adapter": fresh_a, "full": fresh_f}
    losses = {a.name: a.train_loss for a in fresh_a + fresh_f}
    blown = set(diverged(losses))
    for name in sorted(blown):
        protocol.notes.append(f"diverged loss: {name} ended training at loss {losses[name]}")
    flagged = diverged_seeds(means, margin)
    for arm, positions in flagged.items():
        for i in positions:
            protocol.notes.append(
                f"diverged seed: {runs[arm][i].name} scores {means[arm][i]:.4f}, far from its arm's other seeds and "
                "the other arm's spread (the divergence rule, pipeline.statistics.robust): no verdict while it stands"
            )
    for arm, arm_runs in runs.items():  # each arm's divergence rate: a result of its own
        if arm_runs:
            count = len(set(flagged.get(arm, [])) | {i for i, a in enumerate(arm_runs) if a.name in blown})
            config = protocol.adapter if arm == "adapter" else protocol.full
            protocol.divergence[arm] = (count, len(arm_runs))
            protocol.notes.append(f"divergence: {config.name} {rate_text(count, len(arm_runs))}")
    for arm, scores in means.items():
        i, value = worst_seed(scores)
        protocol.worst[arm] = (runs[arm][i].name, value)
    several = bool(fresh_a) and len(fresh_a[0].per_query) > 1  # one set (the in-domain test set): no heterogeneity
    if several and len(fresh_a) > 1 and len(fresh_f) > 1 and protocol.verdict.label != "no verdict":
        one = fixed(protocol.verdict.margin, protocol.verdict.alpha)

        def judge(e) -> str:  # the headline's rule: make decide's design at its last look, or one fixed look
            return (relook(protocol.design, protocol.looks, e) if protocol.design else look(one, e, 1)).label

        protocol.heterogeneity = heterogeneity(
            dataset_means([a.per_query for a in fresh_a]), dataset_means([a.per_query for a in fresh_f]), judge
        )
