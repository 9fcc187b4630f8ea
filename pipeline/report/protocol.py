"""The comparison protocol applied to a sweep's runs: configurations, selection on dev, seed estimates, the verdict.

1. Runs that differ only by seed are one configuration (`Arm.configuration`).
2. Each method's configuration is selected on dev NDCG@10 (`pipeline.sweep.selection`, as the sweeper did); the
   adapter that faces the full fine-tune is the selected adapter configuration with the best dev score. NanoBEIR is
   never read to select.
3. Each configuration's NanoBEIR mean over its seeds, with a CI from seed and query variation
   (`pipeline.statistics.seeds`).
4. The verdict: selected adapter vs selected full fine-tune, within a margin (`pipeline.report.verdict`).
5. Many arms: every adapter configuration vs the selected full fine-tune on a seed they share (the grid's seed),
   paired by query (sign-flip permutation test), raw and Holm-adjusted p-values (statsmodels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from statsmodels.stats.multitest import multipletests

from pipeline.report.load import Arm
from pipeline.statistics.seeds import Difference, SeedQueryEstimate, arm_estimate, difference
from pipeline.report.stats import paired_test
from pipeline.report.verdict import Verdict, decide
from pipeline.sweep.selection import Candidate, dev_scores, select, tie_key


@dataclass
class Configuration:
    """A method's hyper-parameters (and learning rate) with the runs of its seeds."""

    method: str
    key: str
    runs: list[Arm]
    dev: float = math.nan  # its dev score as selection reads it
    estimate: SeedQueryEstimate | None = None  # NanoBEIR mean over seeds, seed + query CI
    selected: bool = False

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


@dataclass
class Protocol:
    configurations: list[Configuration]
    adapter: Configuration | None = None  # the selected adapter configuration that faces the full fine-tune
    full: Configuration | None = None  # the selected full fine-tune configuration
    difference: Difference | None = None
    verdict: Verdict | None = None
    grid_seed: int | None = None  # the seed the many-arms comparison is made on
    notes: list[str] = field(default_factory=list)


def configurations(arms: list[Arm]) -> list[Configuration]:
    found: dict[str, Configuration] = {}
    for arm in arms:
        found.setdefault(arm.configuration, Configuration(arm.method, arm.configuration, [])).runs.append(arm)
    for config in found.values():
        config.runs.sort(key=lambda a: (a.seed is None, a.seed, a.start_time))
    return list(found.values())


def apply(
    arms: list[Arm], margin: float = 0.01, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Protocol:
    configs = configurations(arms)
    protocol = Protocol(configs)
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
    protocol.full = by_key.get(chosen.get("full"))
    adapters = [by_key[key] for method, key in chosen.items() if method != "full"]
    if adapters:  # the best selected adapter by dev score; ties: as the sweeper breaks them (tie_key)
        protocol.adapter = min(adapters, key=lambda c: (-c.dev, tie_key(c.method, c.runs[0].r, c.name)))
    if any(math.isnan(a.dev) for a in arms if a.status == "FINISHED"):
        protocol.notes.append("runs without dev_ndcg_at_10 (logged before the dev set existed) cannot be selected")
    _verdict(protocol, margin, level)
    _many_arms(protocol, n_resamples, seed, level)
    return protocol


def _verdict(protocol: Protocol, margin: float, level: float) -> None:
    adapter, full = protocol.adapter, protocol.full
    if adapter is None or full is None or not adapter.finished or not full.finished:
        protocol.notes.append("no verdict: it needs a finished adapter and a finished full fine-tune with dev scores")
        return
    try:
        protocol.difference = difference(
            [a.per_query for a in adapter.finished], [a.per_query for a in full.finished], level
        )
    except ValueError as error:
        protocol.notes.append(f"no verdict: {error}")
        return
    protocol.verdict = decide(protocol.difference, margin, alpha=(1 - level))


def _many_arms(protocol: Protocol, n_resamples: int, seed: int, level: float) -> None:
    """Each adapter run vs the selected full fine-tune's run at the same seed; Holm over the adapter configurations
    at the grid seed (the seed the full fine-tune's first run has)."""
    full = protocol.full
    if full is None or not full.finished:
        return
    full_by_seed = {a.seed: a for a in full.finished}
    protocol.grid_seed = full.finished[0].seed
    grid_runs = []
    for config in protocol.configurations:
        if config is full:
            continue
        for arm in config.finished:
            partner = full_by_seed.get(arm.seed)
            if partner is None:
                continue
            try:
                arm.delta = paired_test(arm.per_query, partner.per_query, n=n_resamples, seed=seed, level=level)
            except ValueError as error:
                protocol.notes.append(f"{arm.name}: no paired test against {partner.name}: {error}")
                continue
            if arm.seed == protocol.grid_seed and config.method != "full":
                grid_runs.append(arm)
    if grid_runs:
        adjusted = multipletests([a.delta.p_value for a in grid_runs], method="holm")[1]
        for arm, p in zip(grid_runs, adjusted, strict=True):
            arm.p_holm = float(p)
