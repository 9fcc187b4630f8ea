"""Which configuration of each method goes on to seed replicates and to the verdict: the best on the dev set.

Never the test set: the maximum of a grid, picked on the queries it is then reported on, is biased upwards (winner's
curse). The sweeper (hydra_plugins) and the report (pipeline.report) both select with `select`, so the report names
the configurations the sweep replicated.

A configuration's dev score is its mean dev NDCG@10 over the seeds that every configuration of its method has (the
grid's seed, once fresh seeds exist); where they share none, over its own seeds. Ties (a saturated dev set ties often):
`tie_key`, which the sweeper and the report both compute from the configuration itself (neither needs a run's
parameter count, which the sweeper does not have): fewer parameters first (any adapter before the full fine-tune,
then the smaller rank), then the configuration's name in text order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import NamedTuple

from pipeline.adapter_configs import Method


class Candidate(NamedTuple):
    method: str
    config: Hashable  # identifies the configuration across seeds
    seed: int | None
    dev: float  # dev NDCG@10; nan for a failed run
    tie: tuple = ()  # tie_key(...): what breaks a dev-score tie, lowest first


def tie_key(method: str, r: int | None, name: str) -> tuple:
    """A dev-score tie goes to fewer parameters: an adapter before the full fine-tune, a smaller rank first; then to
    the configuration's name (its run name without the seed, e.g. `lora-r8-a16-lr2e-4`) in text order."""
    return (method == "full", r if r is not None else 0, name)


def config_name(cfg) -> str:
    """A configuration's name, as `tie_key` takes it: its run name without the seed (e.g. `lora-r8-a16-lr2e-4`)."""
    from pipeline.tracking.identity import run_name

    return run_name(cfg).removesuffix(f"-s{cfg.train.seed}")


def config_rank(cfg) -> int | None:
    """The rank `tie_key` counts: the method's `r`; None for the full fine-tune and the methods without one."""
    return cfg.finetune.get("r") if Method(cfg.finetune.method) is not Method.full else None


def job_candidate(config: Hashable, cfg, dev: float) -> Candidate:
    """A sweep job as a candidate, its tie broken from its composed config `cfg` as the report breaks it from the
    job's run (`tie_key(method, r, name)`): the sweeper and `make decide` both build their candidates here."""
    method = Method(cfg.finetune.method).value  # an enum in the config
    return Candidate(method, config, int(cfg.train.seed), dev, tie_key(method, config_rank(cfg), config_name(cfg)))


def dev_scores(candidates: Iterable[Candidate]) -> dict[tuple[str, Hashable], float]:
    """{(method, config): its dev score} as the module docstring defines it; failed runs left out."""
    finished = [c for c in candidates if not math.isnan(c.dev)]
    seeds: dict[tuple[str, Hashable], dict] = {}
    for c in finished:
        seeds.setdefault((c.method, c.config), {})[c.seed] = c.dev
    shared: dict[str, set] = {}
    for (method, _), by_seed in seeds.items():
        shared[method] = shared[method] & set(by_seed) if method in shared else set(by_seed)
    scores = {}
    for (method, config), by_seed in seeds.items():
        used = [by_seed[s] for s in shared[method]] or list(by_seed.values())
        scores[(method, config)] = sum(used) / len(used)
    return scores


def select(candidates: list[Candidate]) -> dict[str, Hashable]:
    """{method: the configuration with the best dev score}; ties by `tie_key`, then the order given."""
    ties = {(c.method, c.config): c.tie for c in candidates}
    order = {key: i for i, key in reversed(list(enumerate((c.method, c.config) for c in candidates)))}
    best: dict[str, tuple] = {}
    for (method, config), score in dev_scores(candidates).items():
        rank = (-score, ties[(method, config)], order[(method, config)])
        if method not in best or rank < best[method][0]:
            best[method] = (rank, config)
    return {method: config for method, (_, config) in best.items()}
