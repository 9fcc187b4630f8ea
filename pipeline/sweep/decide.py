"""`make decide`: after the grid and selection on dev, fresh seeds of both selected configurations until decided.

1. Grid edges: a method whose selected learning rate (or rank) is the largest or smallest its grid tried has that
   axis extended one step past that edge and selection repeated, while the edge keeps winning, at most `extend` times
   per axis and side (`pipeline.sweep.edges`).
2. Fresh seeds: the selected adapter and the selected full fine-tune are trained at seeds the grid never used
   (`fresh_seeds`), so the run that won selection on dev never enters the verdict's difference (winner's curse).
3. Rounds (`rounds`): the planned looks of a group-sequential design (`pipeline.statistics.sequential.Design`): at
   each look both arms have the same number of fresh seeds; after each round the look's interval on the per-seed
   NanoBEIR means decides whether to stop (decided, or the budget spent). Each look is logged on the sweep's parent
   run (`verdict.look.*` at step = its index, `decide/looks.json`), and at the end its `verdict*` tags.
4. Ranks (`ranks=true`): each rank's best configuration on dev gets the same fresh seeds, so the fixed-sequence rank
   procedure of `pipeline.statistics` has fresh seeds for every rank; the rounds go on past a look that decided the
   verdict while the sequence still waits on an undecided rank (within the budget). The repeated confidence intervals
   hold simultaneously over all the looks, so reading the verdict and the ranks at a later look keeps their error
   rates (Jennison & Turnbull 2000, ch. 9).

Re-running after an interruption reruns nothing that finished (the jobs reuse their FINISHED runs) and takes the same
looks again. The sweeper (hydra_plugins/lora_vs_full_sweeper) launches each round as one batch of the launcher (local,
joblib or SLURM); this module plans (pure: no MLflow, no Hydra), `pipeline.sweep.decider` reads the runs and tags
the parent run, and neither knows the launcher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from pipeline.protocol import ADAPTER, FULL, facing_full, rank_choices
from pipeline.statistics.rank import SUFFICES, smallest_rank, unsettled
from pipeline.statistics.sequential import (
    DECIDED,
    Design,
    Estimate,
    Look,
    benchmark_difference,
    look,
    replay,
    unresolved,
    went_on,
)
from pipeline.sweep.selection import Candidate, select

Job = list[str]


@dataclass
class FreshArm:
    """A configuration trained at the fresh seeds, with its NanoBEIR mean per seed."""

    name: str  # "adapter", "full" or "r=<rank>"
    config: tuple[str, ...]  # its overrides without the seed
    scores: dict[int, float] = field(default_factory=dict)
    in_domain: dict[int, float] = field(default_factory=dict)  # {seed: its in-domain test NDCG@10} (data.test_size)
    losses: dict[int, float | None] = field(default_factory=dict)  # {seed: its run's final train loss}

    def job(self, seed: int) -> Job:
        return [*self.config, f"train.seed={seed}"]


@dataclass
class Outcome:
    looks: list[Look]
    arms: list[FreshArm]
    reason: str  # why the rounds stopped
    target: str = ""  # what the difference estimates (`Estimate.target`): "benchmark" or "queries"
    in_domain: list[Look] = field(default_factory=list)  # the in-domain verdict's looks; none without a test set


# ----------------------------------------------------------------------------------------------------- seeds, rounds


def fresh_seeds(grid_seeds: Iterable[int], listed: Sequence[int], n: int) -> list[int]:
    """`n` seeds the grid never used: the listed ones first (`hydra.sweeper.seeds` after the grid's), then counting
    up from the largest seed seen."""
    used = set(grid_seeds)
    seeds = list(dict.fromkeys(s for s in listed if s not in used))[:n]
    following = max([*used, *listed], default=0) + 1
    while len(seeds) < n:
        if following not in used and following not in seeds:
            seeds.append(following)
        following += 1
    return seeds


def rounds(design: Design, seeds: Sequence[int]) -> list[list[int]]:
    """The fresh seeds each round adds per arm: round k brings every arm to `design.looks()[k]` seeds (equal numbers
    per arm at every look, as a fixed-looks design requires)."""
    planned = design.looks()
    if len(seeds) < planned[-1]:
        raise ValueError(f"{len(seeds)} fresh seeds for a budget of {planned[-1]} per arm")
    return [list(seeds[start:end]) for start, end in zip([0, *planned], planned, strict=False)]


def by_means(adapter: FreshArm, full: FreshArm) -> Estimate:
    """The default target, this benchmark: the difference of the arms' per-seed NanoBEIR means."""
    return benchmark_difference(list(adapter.scores.values()), list(full.scores.values()))


def sequential(
    design: Design,
    arms: list[FreshArm],
    seeds: Sequence[int],
    train: Callable[[list[Job]], list[float]],
    on_look: Callable[[Look], None] | None = None,
    estimate: Callable[[FreshArm, FreshArm], Estimate] = by_means,
    goes_on: Callable[[int], str | None] | None = None,
    target: str = "benchmark",
    in_domain: Callable[[list[Job]], list[float]] | None = None,
    in_domain_design: Design | None = None,
    losses: Callable[[list[Job]], list[float | None]] | None = None,
) -> Outcome:
    """Round after round, train each arm at the round's seeds (`train`: jobs -> NanoBEIR mean per job, nan for a
    failed one), then take the look on `estimate`(adapter, full); stop when the look says so or the budget is
    spent. `goes_on`(look index): why the rounds go on past a look that decided the verdict (the rank answer not yet
    settled), or None. `target`: what `estimate` estimates, named on a no-verdict look, which takes no estimate.

    `in_domain` (jobs -> in-domain test mean per job, nan for none): the in-domain verdict beside the general one, its
    looks those the report replays on the same scores (`replay`, `in_domain_design`: its own margin); the rounds stop
    when both have stopped, or either has no verdict (a failed run, a diverged seed).

    `losses` (jobs -> each run's final train loss, None unknown): a seed whose training blew up (not finite, or over 10x
    the median) is a diverged seed too, as the report's replay takes it."""
    by_name = {arm.name: arm for arm in arms}
    looks: list[Look] = []
    in_looks: list[Look] = []  # the in-domain verdict's looks (its replay on every fresh seed so far)
    for index, new in enumerate(rounds(design, seeds)):
        jobs = list({tuple(arm.job(seed)): arm.job(seed) for arm in arms for seed in new}.values())  # an arm twice
        scores = {tuple(job): score for job, score in zip(jobs, train(jobs), strict=True)}
        lost = dict(zip(map(tuple, jobs), losses(jobs), strict=True)) if losses is not None else {}
        for arm in arms:
            arm.scores.update({seed: scores[tuple(arm.job(seed))] for seed in new})
            arm.losses.update({seed: lost.get(tuple(arm.job(seed))) for seed in new})
        adapter, full = by_name[ADAPTER], by_name[FULL]
        if in_domain is not None:
            in_looks = _in_domain_looks(in_domain_design or design, jobs, in_domain(jobs), arms, new)
        why = unresolved({arm.name: list(arm.scores.values()) for arm in (adapter, full)}, design.margin,
                         list(adapter.scores), {arm.name: list(arm.losses.values()) for arm in (adapter, full)})  # fmt: skip
        if why:  # a failed run or a diverged seed: a no-verdict look, as the report's replay takes it
            looks.append(replace(look(design, by_means(adapter, full), index + 1), label="no verdict", stop=True,
                                 reason=why))  # fmt: skip
            if on_look is not None:
                on_look(looks[-1])
            return Outcome(looks, arms, looks[-1].reason, target, in_looks)
        difference = estimate(adapter, full)
        looks.append(look(design, difference, index + 1))  # looks count from 1
        target = difference.target
        final = index + 1 == len(design.looks())
        other = in_looks[-1] if in_looks else None
        if other is not None and other.label == "no verdict":  # the in-domain half cannot decide: neither goes on
            looks[-1] = replace(looks[-1], stop=True)
            if on_look is not None:
                on_look(looks[-1])
            return Outcome(looks, arms, f"in domain: {other.reason}", target, in_looks)
        pending = None if other is None or other.stop else "the in-domain verdict is not yet decided"
        if looks[-1].stop and looks[-1].label in DECIDED and not final:
            why = pending or (goes_on(index + 1) if goes_on else None)
            if why:
                looks[-1] = went_on(looks[-1], why)
        if on_look is not None:
            on_look(looks[-1])
        if looks[-1].stop and (other is None or other.stop):
            return Outcome(looks, arms, looks[-1].reason, target, in_looks)
    return Outcome(looks, arms, "budget spent", target, in_looks)


def _in_domain_looks(design: Design, jobs: list[Job], scores: list[float], arms: list[FreshArm], new) -> list[Look]:
    """The in-domain verdict's looks on every fresh seed so far (each arm's in-domain scores updated with the round's
    `jobs`): the report's replay on the same scores, so the two agree; none where no run has an in-domain score."""
    by_job = {tuple(job): score for job, score in zip(jobs, scores, strict=True)}
    for arm in arms:
        arm.in_domain.update({seed: by_job[tuple(arm.job(seed))] for seed in new})
    adapter, full = (next(arm for arm in arms if arm.name == name) for name in (ADAPTER, FULL))
    trained = list(adapter.scores)  # the seeds in training order
    values = [[arm.in_domain[s] for s in trained] for arm in (adapter, full)]
    if not any(math.isfinite(v) for v in values[0] + values[1]):
        return []  # no in-domain test set (data.test_size=0), or every run failed: the general verdict alone
    losses = tuple([arm.losses.get(s) for s in trained] for arm in (adapter, full))
    return replay(design, *values, done=True, seeds=trained, losses=losses)


# ------------------------------------------------------------------------------------------------------------- arms


def decided_arms(
    candidates: list[Candidate], ranks: dict[tuple[str, ...], int | None], with_ranks: bool
) -> list[FreshArm]:
    """The arms trained at the fresh seeds: the adapter that faces the full fine-tune and the full fine-tune
    (`pipeline.protocol.facing_full`, as the report chooses them), and with `with_ranks` each rank's best on dev of the
    adapter's method (`rank_choices`; `ranks`: {config: its r}) at and below the selected adapter's rank: the question
    is how far down from the selection the rank can go (the ranks above it lost on dev)."""
    facing = facing_full(candidates)
    if FULL not in facing or ADAPTER not in facing:
        raise ValueError(
            f"make decide needs an adapter and the full fine-tune in its grid; it has {sorted(select(candidates))}"
        )
    adapter = facing[ADAPTER]
    arms = [FreshArm(ADAPTER, adapter), FreshArm(FULL, facing[FULL])]
    if with_ranks:
        method, top = next(c.method for c in candidates if c.config == adapter), ranks.get(adapter)
        chosen = rank_choices(candidates, ranks, method)
        arms += [FreshArm(f"r={r}", config) for r, config in sorted(chosen.items()) if top is None or r <= top]
    return arms


def rank_that_suffices(
    design: Design, outcome: Outcome, estimate: Callable[[FreshArm, FreshArm], Estimate] = by_means
) -> tuple[int | None, dict[int, str]]:
    """The smallest rank that suffices (not worse than the full fine-tune by the margin: `SUFFICES`) under
    fixed-sequence testing from the selected rank down (`pipeline.statistics.rank`), each rank's arm read at the last
    look taken; and each rank's label."""
    labels = rank_labels(design, outcome.arms, len(outcome.looks), estimate)
    return smallest_rank(labels, SUFFICES)[0], labels


def rank_labels(
    design: Design, arms: list[FreshArm], index: int, estimate: Callable[[FreshArm, FreshArm], Estimate] = by_means
) -> dict[int, str]:
    """Each rank's verdict label at look `index` (its arm's seeds so far against the full fine-tune's)."""
    full = next(arm for arm in arms if arm.name == FULL)
    return {int(arm.name.removeprefix("r=")): look(design, estimate(arm, full), index).label
            for arm in arms if arm.name.startswith("r=")}  # fmt: skip


def rank_pending(design: Design, arms: list[FreshArm], estimate: Callable[[FreshArm, FreshArm], Estimate] = by_means):
    """`sequential`'s `goes_on` for `ranks=true`: the rounds go on while the fixed sequence waits on a rank."""

    def goes_on(index: int) -> str | None:
        waiting = unsettled(rank_labels(design, arms, index, estimate), SUFFICES)
        return None if waiting is None else f"r={waiting} is not yet decided against the full fine-tune"

    return goes_on
