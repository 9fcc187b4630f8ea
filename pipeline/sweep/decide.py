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
joblib or SLURM); this module plans and reads, and knows no launcher.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pipeline.statistics.rank import SUFFICES, smallest_rank, unsettled
from pipeline.statistics.sequential import (
    DECIDED,
    TARGETS,
    Design,
    Estimate,
    Look,
    benchmark_difference,
    look,
    unresolved,
    went_on,
)
from pipeline.sweep.edges import edge_jobs, extended_axes, full_rank
from pipeline.sweep.grid import configuration
from pipeline.sweep.selection import Candidate, config_name, config_rank, job_candidate, returned_dev, select

Job = list[str]
PER_QUERY = "evaluation/per_query.json"  # a run's per-query NDCG@10, what the target `queries` reads
ADAPTER, FULL = "adapter", "full"


@dataclass
class Arm:
    """A configuration trained at the fresh seeds, with its NanoBEIR mean per seed."""

    name: str  # "adapter", "full" or "r=<rank>"
    config: tuple[str, ...]  # its overrides without the seed
    scores: dict[int, float] = field(default_factory=dict)

    def job(self, seed: int) -> Job:
        return [*self.config, f"train.seed={seed}"]


@dataclass
class Outcome:
    looks: list[Look]
    arms: list[Arm]
    reason: str  # why the rounds stopped
    target: str = ""  # what the difference estimates (`Estimate.target`): "benchmark" or "queries"


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


def by_means(adapter: Arm, full: Arm) -> Estimate:
    """The default target, this benchmark: the difference of the arms' per-seed NanoBEIR means."""
    return benchmark_difference(list(adapter.scores.values()), list(full.scores.values()))


def sequential(
    design: Design,
    arms: list[Arm],
    seeds: Sequence[int],
    train: Callable[[list[Job]], list[float]],
    on_look: Callable[[Look], None] | None = None,
    estimate: Callable[[Arm, Arm], Estimate] = by_means,
    goes_on: Callable[[int], str | None] | None = None,
    target: str = "benchmark",
) -> Outcome:
    """Round after round, train each arm at the round's seeds (`train`: jobs -> NanoBEIR mean per job, nan for a
    failed one), then take the look on `estimate`(adapter, full); stop when the look says so or the budget is
    spent. `goes_on`(look index): why the rounds go on past a look that decided the verdict (the rank answer not yet
    settled), or None. `target`: what `estimate` estimates, named on a no-verdict look, which takes no estimate."""
    by_name = {arm.name: arm for arm in arms}
    looks: list[Look] = []
    for index, new in enumerate(rounds(design, seeds)):
        jobs = list({tuple(arm.job(seed)): arm.job(seed) for arm in arms for seed in new}.values())  # an arm twice
        scores = {tuple(job): score for job, score in zip(jobs, train(jobs), strict=True)}
        for arm in arms:
            arm.scores.update({seed: scores[tuple(arm.job(seed))] for seed in new})
        adapter, full = by_name[ADAPTER], by_name[FULL]
        why = unresolved({arm.name: list(arm.scores.values()) for arm in (adapter, full)}, design.margin,
                         list(adapter.scores))  # fmt: skip
        if why:  # a failed run or a diverged seed: a no-verdict look, as the report's replay takes it
            looks.append(replace(look(design, by_means(adapter, full), index + 1), label="no verdict", stop=True,
                                 reason=why))  # fmt: skip
            if on_look is not None:
                on_look(looks[-1])
            return Outcome(looks, arms, looks[-1].reason, target)
        difference = estimate(adapter, full)
        looks.append(look(design, difference, index + 1))  # looks count from 1
        target = difference.target
        final = index + 1 == len(design.looks())
        if looks[-1].stop and looks[-1].label in DECIDED and not final and goes_on and (why := goes_on(index + 1)):
            looks[-1] = went_on(looks[-1], why)
        if on_look is not None:
            on_look(looks[-1])
        if looks[-1].stop:
            return Outcome(looks, arms, looks[-1].reason, target)
    return Outcome(looks, arms, "budget spent", target)


# ------------------------------------------------------------------------------------------------------------- arms


def decided_arms(candidates: list[Candidate], ranks: dict[tuple[str, ...], int | None], with_ranks: bool) -> list[Arm]:
    """The arms trained at the fresh seeds: the selected adapter (the best on dev of the adapter methods' selected
    configurations, ties as `select`), the selected full fine-tune, and with `with_ranks` each rank's best on dev of
    the adapter's method (`ranks`: {config: its r}) at and below the selected adapter's rank: the question is how far
    down from the selection the rank can go."""
    chosen = select(candidates)
    if FULL not in chosen or len(chosen) < 2:
        raise ValueError(f"make decide needs an adapter and the full fine-tune in its grid; it has {sorted(chosen)}")
    adapters = [Candidate(ADAPTER, config, None, _dev(candidates, config), _tie(candidates, config))
                for method, config in chosen.items() if method != FULL]  # fmt: skip
    adapter = select(adapters)[ADAPTER]
    arms = [Arm(ADAPTER, adapter), Arm(FULL, chosen[FULL])]
    if with_ranks:  # the selected rank and each smaller one: the ranks above it lost on dev
        method, top = next(c.method for c in candidates if c.config == adapter), ranks.get(adapter)
        by_rank = [
            c._replace(method=f"r={ranks[c.config]}")
            for c in candidates
            if c.method == method and ranks[c.config] and (top is None or ranks[c.config] <= top)
        ]
        if by_rank:  # one rank (the selected one): its answer is the adapter's own verdict
            arms += [Arm(name, config) for name, config in sorted(select(by_rank).items(), key=_rank_order)]
    return arms


def rank_that_suffices(
    design: Design, outcome: Outcome, estimate: Callable[[Arm, Arm], Estimate] = by_means
) -> tuple[int | None, dict[int, str]]:
    """The smallest rank that suffices (not worse than the full fine-tune by the margin: `SUFFICES`) under
    fixed-sequence testing from the selected rank down (`pipeline.statistics.rank`), each rank's arm read at the last
    look taken; and each rank's label."""
    labels = rank_labels(design, outcome.arms, len(outcome.looks), estimate)
    return smallest_rank(labels, SUFFICES)[0], labels


def rank_labels(
    design: Design, arms: list[Arm], index: int, estimate: Callable[[Arm, Arm], Estimate] = by_means
) -> dict[int, str]:
    """Each rank's verdict label at look `index` (its arm's seeds so far against the full fine-tune's)."""
    full = next(arm for arm in arms if arm.name == FULL)
    return {int(arm.name.removeprefix("r=")): look(design, estimate(arm, full), index).label
            for arm in arms if arm.name.startswith("r=")}  # fmt: skip


def rank_pending(design: Design, arms: list[Arm], estimate: Callable[[Arm, Arm], Estimate] = by_means):
    """`sequential`'s `goes_on` for `ranks=true`: the rounds go on while the fixed sequence waits on a rank."""

    def goes_on(index: int) -> str | None:
        waiting = unsettled(rank_labels(design, arms, index, estimate), SUFFICES)
        return None if waiting is None else f"r={waiting} is not yet decided against the full fine-tune"

    return goes_on


def _rank_order(item: tuple[str, tuple]) -> int:
    return int(item[0].removeprefix("r="))


def _dev(candidates: list[Candidate], config) -> float:
    return next(c.dev for c in candidates if c.config == config)


def _tie(candidates: list[Candidate], config) -> tuple:
    return next(c.tie for c in candidates if c.config == config)


def seeds_tag(arm: Arm) -> str:
    return ",".join(str(s) for s in arm.scores)


def looks_json(outcome: Outcome) -> str:
    """The `decide/looks.json` artifact: every look, each arm's configuration and per-seed NanoBEIR means."""
    return json.dumps(
        {
            "looks": [asdict(look) for look in outcome.looks],
            "arms": [{"name": a.name, "config": list(a.config), "scores": a.scores} for a in outcome.arms],
            "reason": outcome.reason,
        },
        indent=2,
        default=str,
    )


# ---------------------------------------------------------------------------------------------- the sweeper's side


class Decider:
    """What the sweeper runs after the grid: compose jobs as the launcher will, launch them (`launch`: jobs -> Hydra
    JobReturns, one launcher batch per call), read their scores from MLflow, log the looks on the parent run."""

    def __init__(self, settings, compose, launch, sweep_dir: str, listed_seeds: Sequence[int]):
        self.design = design_of(settings)
        self.ranks, self.extend = bool(settings.ranks), int(settings.extend)
        self.compose, self.launch, self.listed = compose, launch, list(listed_seeds)
        self.parent = _parent(sweep_dir)
        self.rank_of: dict[tuple[str, ...], int | None] = {}
        self.name_of: dict[tuple[str, ...], str] = {}  # a configuration's run name without the seed
        self.target = str(settings.target)
        self.estimate = by_means if self.target == "benchmark" else self._by_queries

    def run(self, grid: list[Job], results: list) -> Outcome:
        configs = self.compose(grid)
        grid_seeds = sorted({int(cfg.train.seed) for cfg in configs})
        self._tag("sweep.grid_seeds", ",".join(map(str, grid_seeds)))
        for key in ("first", "step", "budget", "margin", "alpha"):  # the design, for the report to replay the looks
            self._tag(f"decide.{key}", f"{getattr(self.design, key):g}")
        self._tag("decide.target", self.target)  # what the looks estimate
        candidates = self._candidates(grid, configs, results)
        rank_cap = full_rank(configs[0].model.name)  # a rank step stops at the model's hidden size
        candidates, extended = self._extend_edges(grid, candidates, grid_seeds, rank_cap)
        self._tag("sweep.extended", extended_axes(extended))
        arms = decided_arms(candidates, self.rank_of, self.ranks)
        seeds = fresh_seeds(grid_seeds, self.listed, self.design.looks()[-1])
        self._tag("decide.seeds", ",".join(map(str, seeds)))  # the training order, for the report's replay
        ranked = self.ranks and any(a.name.startswith("r=") for a in arms)
        goes_on = rank_pending(self.design, arms, self.estimate) if ranked else None  # a rank answer: settled too
        outcome = sequential(
            self.design, arms, seeds, self._scores, self._log_look, self.estimate, goes_on, self.target
        )
        self._finish(outcome)
        if ranked and outcome.looks:
            rank, labels = rank_that_suffices(self.design, outcome, self.estimate)
            self._tag("verdict.rank", "none" if rank is None else str(rank))
            self._tag("verdict.rank.labels", ", ".join(f"r={r}: {label}" for r, label in sorted(labels.items())))
        return outcome

    def _candidates(self, jobs: list[Job], configs, results) -> list[Candidate]:
        candidates = []
        for job, cfg, result in zip(jobs, configs, results, strict=True):
            candidates.append(job_candidate(configuration(job), cfg, returned_dev(result)))  # as the sweeper's
            self.name_of[configuration(job)] = config_name(cfg)
            self.rank_of[configuration(job)] = config_rank(cfg)
        return candidates

    def _extend_edges(
        self, grid: list[Job], candidates: list[Candidate], grid_seeds: list[int], rank_cap: int | None = None
    ):
        extended: dict = {}
        tried = list(grid)
        methods = {c.config: c.method for c in candidates}
        while True:
            chosen = select(candidates)
            new = edge_jobs(tried, chosen, lambda job: methods.get(configuration(job)), extended, self.extend,
                            rank_cap)  # fmt: skip
            if not new:
                return candidates, extended
            jobs = [[*job, f"train.seed={seed}"] for job in new for seed in grid_seeds]
            candidates = candidates + self._candidates(jobs, self.compose(jobs), self.launch(jobs))
            methods.update({c.config: c.method for c in candidates})
            tried += jobs

    def _scores(self, jobs: list[Job]) -> list[float]:
        """Launch the jobs (one batch), then each job's NanoBEIR mean from its FINISHED MLflow run (nan: failed)."""
        from pipeline.tracking.run import METRIC, finished_run

        self.launch(jobs)
        runs = [finished_run(cfg) for cfg in self.compose(jobs)]
        return [math.nan if run is None else run.data.metrics.get(METRIC, math.nan) for run in runs]

    def _by_queries(self, adapter: Arm, full: Arm) -> Estimate:
        """The target `queries`: queries like these (seed and query variation), from each seed's run's per-query
        NDCG@10 (its `evaluation/per_query.json`)."""
        from pipeline.statistics.seeds import queries_difference

        return queries_difference(self._per_query(adapter), self._per_query(full))

    def _per_query(self, arm: Arm) -> list[dict]:
        from mlflow.artifacts import download_artifacts

        from pipeline.tracking.run import finished_run
        from pipeline.tracking.uri import tracking_uri

        found = []
        for cfg in self.compose([arm.job(seed) for seed in arm.scores]):
            run = finished_run(cfg)
            path = download_artifacts(run_id=run.info.run_id, artifact_path=PER_QUERY, tracking_uri=tracking_uri(cfg))
            found.append(json.loads(Path(path).read_text()))
        return found

    def _log_look(self, result: Look) -> None:
        if self.parent is None:
            return
        client, run_id = self.parent
        for name in ("delta", "low", "high"):
            client.log_metric(run_id, f"verdict.look.{name}", getattr(result, name), step=result.index)
        client.set_tag(run_id, "verdict.looks", str(result.index))

    def _finish(self, outcome: Outcome) -> None:
        by_name = {arm.name: arm for arm in outcome.arms}
        tags = {
            "verdict.reason": outcome.reason,
            "verdict.sentence": sentence(outcome, self.design, self.name_of),
            "verdict.looks": str(len(outcome.looks)),
            "verdict.target": outcome.target,
            "verdict.seeds_adapter": seeds_tag(by_name[ADAPTER]),
            "verdict.seeds_full": seeds_tag(by_name[FULL]),
        }
        if outcome.looks:  # "no verdict" too (a failed run): the report says the same on the same runs
            tags["verdict"] = outcome.looks[-1].label
        for key, value in tags.items():
            self._tag(key, value)
        if self.parent is not None:
            from pipeline.tracking.ui import describe_experiment

            client, run_id = self.parent
            client.log_text(run_id, looks_json(outcome), "decide/looks.json")
            describe_experiment(client, client.get_run(run_id).info.experiment_id)  # the verdict pinned in the view

    def _tag(self, key: str, value: str) -> None:
        if self.parent is not None:
            self.parent[0].set_tag(self.parent[1], key, value[:5000])


def sentence(outcome: Outcome, design: Design, names: dict[tuple[str, ...], str]) -> str:
    """The verdict in one sentence (the `verdict.sentence` tag, a column of the MLflow comparison view)."""
    if not outcome.looks or outcome.reason.startswith("no verdict"):
        return f"No verdict: {outcome.reason.removeprefix('no verdict: ')}."
    final = outcome.looks[-1]
    adapter, full = (names.get(arm.config, arm.name) for arm in outcome.arms[:2])
    return (
        f"{final.label.capitalize()} {TARGETS[outcome.target]}: {adapter} vs {full}, Δ = {final.delta:+.4f} NDCG@10, "
        f"{1 - 2 * design.alpha:.0%} repeated CI [{final.low:+.4f}, {final.high:+.4f}], margin ±{design.margin:g}; "
        f"{final.seeds_adapter} fresh seeds per arm, {final.reason.split(':')[0]}."
    )


def design_of(settings) -> Design:
    """The design `hydra.sweeper.decide` asks for: its budget, first, step, margin and alpha where given (null: the
    design's default); a bad value is an error here, before any job runs."""
    if settings.target not in TARGETS:
        raise ValueError(
            f"hydra.sweeper.decide.target={settings.target}: make decide decides on {' or '.join(TARGETS)}"
        )
    given = {k: settings[k] for k in ("margin", "alpha", "first", "step", "budget") if settings.get(k) is not None}
    try:
        return Design(**given)
    except ValueError as error:
        raise ValueError(f"hydra.sweeper.decide: {error}") from None


def _parent(sweep_dir: str):
    """(client, run id) of the sweep's parent run (`pipeline.sweep.callbacks`), or None without the callback."""
    from mlflow.tracking import MlflowClient

    from pipeline.sweep.callbacks import sweep_info

    info = sweep_info(sweep_dir)
    return None if info is None else (MlflowClient(info["tracking_uri"]), info["parent_run_id"])


def fail_parent(sweep_dir: str, error: str) -> None:
    """End the sweep's parent run FAILED with `error` (a bad setting found before any job ran)."""
    parent = _parent(sweep_dir)
    if parent is not None:
        client, run_id = parent
        client.set_tag(run_id, "error", error[:5000])
        client.set_terminated(run_id, "FAILED")
