"""`make decide`'s side that touches the sweep: the `Decider` the sweeper runs after the grid (it launches the jobs,
reads the scores each job returned through Hydra's `JobReturn` and tags the parent run), the verdict's sentence and
the design read from `hydra.sweeper.decide`. What the rounds do is `pipeline.sweep.decide`'s (pure).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace

from pipeline import schema
from pipeline.protocol import from_looks
from pipeline.protocol import sentence as protocol_sentence
from pipeline.statistics.sequential import TARGETS, Design, Estimate, Look, combined
from pipeline.sweep.decide import (
    ADAPTER,
    FULL,
    FreshArm,
    Job,
    Outcome,
    by_means,
    decided_arms,
    fresh_seeds,
    rank_pending,
    rank_that_suffices,
    sequential,
)
from pipeline.sweep.edges import edge_jobs, extended_axes, full_rank
from pipeline.sweep.grid import configuration
from pipeline.sweep.scores import JobScores, returned
from pipeline.sweep.selection import Candidate, config_name, config_rank, job_candidate, select


def seeds_text(arm: FreshArm) -> str:
    """An arm's fresh seeds, comma-separated in training order (the value of its `schema.seeds_tag`)."""
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


class Decider:
    """What the sweeper runs after the grid: launch jobs (`launch`: jobs -> Hydra JobReturns, one launcher batch per
    call), read the scores they returned, log the looks on the parent run. `compose` (jobs -> their configs, as the
    launcher composes them) names and ranks the grid's configurations for selection; the rounds compose nothing."""

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
        self.returned: dict[tuple[str, ...], JobScores] = {}  # what each job of the rounds returned (empty: failed)

    def run(self, grid: list[Job], results: list) -> Outcome:
        configs = self.compose(grid)
        grid_seeds = sorted({int(cfg.train.seed) for cfg in configs})
        self._tag(schema.GRID_SEEDS, ",".join(map(str, grid_seeds)))
        for key in ("first", "step", "budget", "margin", "alpha"):  # the design, for the report to replay the looks
            self._tag(schema.DESIGN + key, f"{getattr(self.design, key):g}")
        self._tag(schema.DESIGN + "in_domain_margin", f"{self.in_domain_design.margin:g}")
        self._tag(schema.DESIGN + "target", self.target)  # what the looks estimate
        candidates = self._candidates(grid, configs, results)
        rank_cap = full_rank(configs[0].model.name)  # a rank step stops at the model's hidden size
        candidates, extended = self._extend_edges(grid, candidates, grid_seeds, rank_cap)
        self._tag(schema.EXTENDED, extended_axes(extended))
        arms = decided_arms(candidates, self.rank_of, self.ranks)
        seeds = fresh_seeds(grid_seeds, self.listed, self.design.looks()[-1])
        self._tag(schema.FRESH_SEEDS, ",".join(map(str, seeds)))  # the training order, for the report's replay
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
            self._tag(schema.VERDICT_RANK, "none" if rank is None else str(rank))
            self._tag(schema.VERDICT_RANK_LABELS, ", ".join(f"r={r}: {label}" for r, label in sorted(labels.items())))
        return outcome

    def _candidates(self, jobs: list[Job], configs, results) -> list[Candidate]:
        candidates = []
        for job, cfg, result in zip(jobs, configs, results, strict=True):
            candidates.append(job_candidate(configuration(job), cfg, returned(result).dev))  # as the sweeper's
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
        """Launch the jobs (one batch); each job's benchmark mean as it returned it (nan: failed)."""
        self.returned.update({tuple(job): returned(result) for job, result in zip(jobs, self.launch(jobs),
                              strict=True)})  # fmt: skip
        return [self.returned[tuple(job)].benchmark for job in jobs]

    def _in_domain(self, jobs: list[Job]) -> list[float]:
        """Each job's in-domain test NDCG@10 (nan without a test set), from what `_scores` received."""
        return [self.returned[tuple(job)].in_domain for job in jobs]

    def _losses(self, jobs: list[Job]) -> list[float | None]:
        """Each job's final train loss (None where it has none), from what `_scores` received."""
        return [self.returned[tuple(job)].train_loss for job in jobs]

    def _by_queries(self, adapter: FreshArm, full: FreshArm) -> Estimate:
        """The target `queries`: queries like these (seed and query variation), from each seed's run's per-query
        NDCG@10 on the benchmark, as its job returned it."""
        from pipeline.statistics.seeds import queries_difference

        return queries_difference(self._per_query(adapter), self._per_query(full))

    def _per_query(self, arm: FreshArm) -> list[dict]:
        return [self.returned[tuple(arm.job(seed))].per_query for seed in arm.scores]

    def _log_look(self, result: Look) -> None:
        if self.parent is None:
            return
        client, run_id = self.parent
        for name in ("delta", "low", "high"):
            client.log_metric(run_id, schema.LOOK_METRIC.format(name), getattr(result, name), step=result.index)
        client.set_tag(run_id, schema.VERDICT_LOOKS, str(result.index))

    def _finish(self, outcome: Outcome) -> None:
        by_name = {arm.name: arm for arm in outcome.arms}
        tags = {
            schema.VERDICT_REASON: outcome.reason,
            schema.VERDICT_SENTENCE: sentence(outcome, self.design, self.name_of),
            schema.VERDICT_LOOKS: str(len(outcome.looks)),
            schema.VERDICT_TARGET: outcome.target,
            schema.seeds_tag(ADAPTER): seeds_text(by_name[ADAPTER]),
            schema.seeds_tag(FULL): seeds_text(by_name[FULL]),
        }
        if outcome.looks:  # "no verdict" too (a failed run): the report says the same on the same runs
            tags[schema.VERDICT] = outcome.looks[-1].label
        if outcome.in_domain:  # each half's label; `verdict` the answer for both (`combined`)
            tags[schema.VERDICT_IN_DOMAIN] = outcome.in_domain[-1].label
            tags[schema.VERDICT_GENERAL] = tags.get(schema.VERDICT, "no verdict")
            tags[schema.VERDICT] = combined(tags[schema.VERDICT_IN_DOMAIN], tags[schema.VERDICT_GENERAL])
            tags[schema.VERDICT_IN_DOMAIN_LOOKS] = str(len(outcome.in_domain))
            tags[schema.VERDICT_IN_DOMAIN_SENTENCE] = halves_sentence(outcome, self.in_domain_design, self.name_of)
        for key, value in tags.items():
            self._tag(key, value)
        print("\n".join(console_lines(outcome, tags, self.design)), file=sys.stderr)
        if self.parent is not None:
            for x in outcome.in_domain:  # the in-domain verdict's looks, as verdict.look.* holds the general one's
                for name in ("delta", "low", "high"):
                    self.parent[0].log_metric(self.parent[1], schema.IN_DOMAIN_LOOK_METRIC.format(name), getattr(x, name),
                                              step=x.index)  # fmt: skip
            from pipeline.tracking.ui import describe_experiment

            client, run_id = self.parent
            client.log_text(run_id, looks_json(outcome), schema.LOOKS_FILE)
            describe_experiment(client, client.get_run(run_id).info.experiment_id)  # the verdict pinned in the view

    def _tag(self, key: str, value: str) -> None:
        if self.parent is not None:
            self.parent[0].set_tag(self.parent[1], key, value[:5000])


def sentence(outcome: Outcome, design: Design, names: dict[tuple[str, ...], str]) -> str:
    """The verdict in one sentence (the `verdict.sentence` tag, a column of the MLflow comparison view): the report's
    opening sentence (`pipeline.protocol.sentence`) on the same looks, without its markdown."""
    adapter, full = (names.get(arm.config, arm.name) for arm in outcome.arms[:2])
    if not outcome.looks:
        return f"No verdict: {adapter} vs the full fine-tune {full}: {outcome.reason.removeprefix('no verdict: ')}."
    verdict = from_looks(outcome.looks, design)
    return protocol_sentence(verdict, adapter, f"the full fine-tune {full}").replace("**", "")


def console_lines(outcome: Outcome, tags: dict[str, str], design: Design) -> list[str]:
    """What `make decide` prints when it stops: each half's looks (seeds per arm, Δ, repeated interval, label), the
    fresh seeds each arm trained, and the verdicts as tagged (the report, `make compare`, says the same at length)."""
    alpha = f"{1 - 2 * design.alpha:.0%}"
    halves = (
        [("in domain", outcome.in_domain), ("general", outcome.looks)] if outcome.in_domain else [("", outcome.looks)]
    )
    lines = []
    for half, looks in halves:
        for x in looks:
            lines.append(
                f"[pipeline] decide{' ' + half if half else ''}, look {x.index}: {x.seeds_adapter} + {x.seeds_full} "
                f"fresh seeds, Δ {x.delta:+.4f}, {alpha} repeated CI [{x.low:+.4f}, {x.high:+.4f}]: {x.label}"
            )
    seeds = f"fresh seeds: adapter {tags[schema.seeds_tag(ADAPTER)] or 'none'}; full {tags[schema.seeds_tag(FULL)] or 'none'}"
    if outcome.in_domain:
        verdict = (
            f"both halves {tags[schema.VERDICT]} (in domain {tags[schema.VERDICT_IN_DOMAIN]}, "
            f"general {tags[schema.VERDICT_GENERAL]})"
        )
    else:
        verdict = tags.get(schema.VERDICT, "no verdict")
    lines.append(f"[pipeline] decide: {verdict}; {seeds}. {tags[schema.VERDICT_SENTENCE]}")
    return lines


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
        client.set_tag(run_id, schema.ERROR, error[:5000])
        client.set_terminated(run_id, "FAILED")
