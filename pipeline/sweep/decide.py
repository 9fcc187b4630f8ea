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
    combined,
    look,
    replay,
    unresolved,
    went_on,
)
from pipeline.sweep.edges import edge_jobs, extended_axes, full_rank
from pipeline.sweep.grid import configuration
from pipeline.sweep.selection import Candidate, config_name, config_rank, job_candidate, returned_dev, select

Job = list[str]
PER_QUERY = "evaluation/per_query.json"  # a run's per-query NDCG@10, what the target `queries` reads
LOSS_METRIC = "train_loss"  # a run's final train loss: a blow-up is a diverged seed (the divergence rule)
IN_DOMAIN_METRIC = "test_ndcg_at_10"  # a run's in-domain test NDCG@10 (data.test_size), what the in-domain half reads
ADAPTER, FULL = "adapter", "full"


@dataclass
class Arm:
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
    arms: list[Arm]
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


def _in_domain_looks(design: Design, jobs: list[Job], scores: list[float], arms: list[Arm], new) -> list[Look]:
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
            "in_domain_looks": [asdict(look) for look in outcome.in_domain],
            "arms": [
                {"name": a.name, "config": list(a.config), "scores": a.scores, "in_domain": a.in_domain}
                for a in outcome.arms
            ],  # fmt: skip
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
        self.in_domain_design = in_domain_design_of(settings, self.design)
        self.metrics: dict[tuple[str, ...], dict[str, float]] = {}  # each job's finished run's metrics ({}: failed)

    def run(self, grid: list[Job], results: list) -> Outcome:
        configs = self.compose(grid)
        grid_seeds = sorted({int(cfg.train.seed) for cfg in configs})
        self._tag("sweep.grid_seeds", ",".join(map(str, grid_seeds)))
        for key in ("first", "step", "budget", "margin", "alpha"):  # the design, for the report to replay the looks
            self._tag(f"decide.{key}", f"{getattr(self.design, key):g}")
        self._tag("decide.in_domain_margin", f"{self.in_domain_design.margin:g}")
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
        # the in-domain verdict beside the general one, on the benchmark target (with target=queries the report gives
        # it at one look)
        in_domain = self._in_domain if self.target == "benchmark" else None
        outcome = sequential(
            self.design, arms, seeds, self._scores, self._log_look, self.estimate, goes_on, self.target, in_domain,
            self.in_domain_design, self._losses,
        )  # fmt: skip
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
        self.metrics.update({tuple(job): {} if run is None else run.data.metrics for job, run in zip(jobs, runs,
                             strict=True)})  # fmt: skip
        return [self.metrics[tuple(job)].get(METRIC, math.nan) for job in jobs]

    def _in_domain(self, jobs: list[Job]) -> list[float]:
        """Each job's in-domain test NDCG@10 (`test_ndcg_at_10`, nan without a test set), from the runs `_scores` read."""
        return [self.metrics[tuple(job)].get(IN_DOMAIN_METRIC, math.nan) for job in jobs]

    def _losses(self, jobs: list[Job]) -> list[float | None]:
        """Each job's final train loss (`train_loss`; None where its run has none), from the runs `_scores` read."""
        return [self.metrics[tuple(job)].get(LOSS_METRIC) for job in jobs]

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
        if outcome.in_domain:  # each half's label; `verdict` the answer for both (`combined`)
            tags["verdict.in_domain"] = outcome.in_domain[-1].label
            tags["verdict.general"] = tags.get("verdict", "no verdict")
            tags["verdict"] = combined(tags["verdict.in_domain"], tags["verdict.general"])
            tags["verdict.in_domain.looks"] = str(len(outcome.in_domain))
            tags["verdict.in_domain.sentence"] = halves_sentence(outcome, self.in_domain_design, self.name_of)
        for key, value in tags.items():
            self._tag(key, value)
        if self.parent is not None:
            for x in outcome.in_domain:  # the in-domain verdict's looks, as verdict.look.* holds the general one's
                for name in ("delta", "low", "high"):
                    self.parent[0].log_metric(self.parent[1], f"verdict.in_domain.look.{name}", getattr(x, name),
                                              step=x.index)  # fmt: skip
            from pipeline.tracking.ui import describe_experiment

            client, run_id = self.parent
            client.log_text(run_id, looks_json(outcome), "decide/looks.json")
            describe_experiment(client, client.get_run(run_id).info.experiment_id)  # the verdict pinned in the view

    def _tag(self, key: str, value: str) -> None:
        if self.parent is not None:
            self.parent[0].set_tag(self.parent[1], key, value[:5000])


def sentence(outcome: Outcome, design: Design, names: dict[tuple[str, ...], str]) -> str:
    """The verdict in one sentence (the `verdict.sentence` tag, a column of the MLflow comparison view)."""
    if not outcome.looks or outcome.reason.startswith("no verdict") or outcome.looks[-1].label == "no verdict":
        return f"No verdict: {outcome.reason.removeprefix('no verdict: ')}."
    final = outcome.looks[-1]
    adapter, full = (names.get(arm.config, arm.name) for arm in outcome.arms[:2])
    return (
        f"{final.label.capitalize()} {TARGETS[outcome.target]}: {adapter} vs {full}, Δ = {final.delta:+.4f} NDCG@10, "
        f"{1 - 2 * design.alpha:.0%} repeated CI [{final.low:+.4f}, {final.high:+.4f}], margin ±{design.margin:g}; "
        f"{final.seeds_adapter} fresh seeds per arm, {final.reason.split(':')[0]}."
    )


def halves_sentence(outcome: Outcome, design: Design, names: dict[tuple[str, ...], str]) -> str:
    """The in-domain verdict in one sentence (the `verdict.in_domain.sentence` tag)."""
    return sentence(replace(outcome, looks=outcome.in_domain, reason=outcome.in_domain[-1].reason), design, names)


def in_domain_design_of(settings, design: Design) -> Design:
    """The in-domain verdict's design: the general one's looks and alpha, its own margin (`in_domain_margin`, null:
    the general margin)."""
    margin = settings.get("in_domain_margin")
    try:
        return design if margin is None else replace(design, margin=float(margin))
    except ValueError as error:
        raise ValueError(f"hydra.sweeper.decide.in_domain_margin: {error}") from None


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
