"""`hydra/sweeper=lora_vs_full`: the comparison protocol as a Hydra sweeper (`make sweep`, `sweep=lora_grid`).

1. The grid: Hydra's cartesian product turned into adapter jobs plus ONE full fine-tune job per learning rate
   (`pipeline.sweep.grid`), each method with its own learning-rate axis (`lr`: {method: [rates]}), at the first
   of `seeds`.
2. Selection: each job returns its scores through Hydra's `JobReturn` (`pipeline.sweep.scores.JobScores`); the best
   configuration of each method is chosen on its dev NDCG@10 (never the benchmark's) (`pipeline.sweep.selection`).
3. Replicates: each method's selected configuration is trained again with the other `seeds`, so the verdict
   (`python -m pipeline.report`) sees seed-to-seed variation.
   Or, with `decide.enabled=true` (`make decide`): the grid's edges extended where a selection sits on one, then
   fresh seeds (never the grid's) of both selected configurations in rounds until the verdict is decided or the
   budget spent (`pipeline.sweep.decide`); each round is one batch of the launcher (local, joblib, SLURM).

A `train.seed=...` override on the command line turns replicates off (the grid then holds the seeds you gave).
Built on Hydra's public `Sweeper` interface: the cartesian product of the sweep's values is `cartesian` here.
Lives in the `hydra_plugins` namespace so that Hydra discovers it. (No `from __future__ import annotations`: Hydra
loads plugin modules outside sys.modules, where string annotations of a dataclass cannot be resolved.)
"""

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException, HydraException
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from pipeline.sweep.grid import (
    configuration,
    job_values,
    lora_vs_full_jobs,
    replicates,
    with_learning_rates,
    with_seed,
)
from pipeline.sweep.prefix import job_configs, run_shared_prefix
from pipeline.sweep.scores import returned
from pipeline.sweep.selection import job_candidate, select

log = logging.getLogger(__name__)


@dataclass
class DecideConf:  # make decide; null: pipeline.statistics.sequential.Design's default
    enabled: bool = False
    budget: Optional[int] = None  # noqa: UP045 - fresh seeds per arm at most
    first: Optional[int] = None  # noqa: UP045 - fresh seeds per arm at the first look
    step: Optional[int] = None  # noqa: UP045 - seeds added per arm at each later look
    margin: Optional[float] = None  # noqa: UP045 - NDCG@10 within which the two count as equivalent
    in_domain_margin: Optional[float] = None  # noqa: UP045 - the in-domain verdict's margin; null: margin
    alpha: Optional[float] = None  # noqa: UP045 - error rate over all the looks
    target: str = "benchmark"  # what the verdict claims: this benchmark's fixed queries, over training randomness
    ranks: bool = False  # also fresh seeds for each rank's best configuration on dev (the rank that suffices)
    extend: int = 2  # grid-edge extensions per axis and side at most


@dataclass
class LoraVsFullSweeperConf:
    _target_: str = "hydra_plugins.lora_vs_full_sweeper.lora_vs_full_sweeper.LoraVsFullSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 - Hydra's structured configs
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045
    lr: Dict[str, List[float]] = field(default_factory=dict)  # noqa: UP006 - {method: learning rates}
    seeds: List[int] = field(default_factory=list)  # noqa: UP006 - first: the grid; the rest: replicates
    decide: DecideConf = field(default_factory=DecideConf)


ConfigStore.instance().store(group="hydra/sweeper", name="lora_vs_full", node=LoraVsFullSweeperConf)


class LoraVsFullSweeper(Sweeper):
    def __init__(self, max_batch_size, params=None, lr=None, seeds=None, decide=None):
        super().__init__()
        self.max_batch_size, self.params = max_batch_size, dict(params or {})
        self.lr = {k: list(v) for k, v in (lr or {}).items()}
        self.seeds = list(seeds or [])
        self.decide = decide if decide is not None else OmegaConf.structured(DecideConf)
        self.launched = 0
        self.hydra_context = self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config):
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        if self.decide.enabled:  # a bad setting stops here, before any job; the sweep's parent run ends FAILED with it
            from pipeline.sweep.decider import design_of, fail_parent, in_domain_design_of

            try:
                in_domain_design_of(self.decide, design_of(self.decide))
            except ValueError as error:
                fail_parent(config.hydra.sweep.dir, str(error))
                raise ConfigCompositionException(str(error)) from None  # Hydra prints its message alone

    def grid(self, arguments: List[str]) -> List[List[str]]:  # noqa: UP006
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        jobs = lora_vs_full_jobs(cartesian(overrides))
        jobs = with_learning_rates(jobs, self.lr, self.config.finetune.method)
        self.seeded_by_user = any("train.seed" in job_values(job) for job in jobs)
        return with_seed(jobs, self.seeds[0]) if self.seeds else jobs

    def sweep(self, arguments: List[str]) -> Any:  # noqa: UP006
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        grid = self.grid(arguments)
        decider = self.decider() if self.decide.enabled else None
        run_shared_prefix(self.config, self.hydra_context.config_loader, grid)  # before any job starts
        returns = [self.launch(grid, initial_job_idx=0)]
        if decider is not None:
            decider.run(grid, returns[0])
        elif len(self.seeds) > 1 and not self.seeded_by_user:
            chosen = self.selected(grid, returns[0])
            log.info("selected on dev NDCG@10: %s", "; ".join(" ".join(job) for job in chosen))
            returns.append(self.launch(replicates(chosen, self.seeds[1:]), initial_job_idx=len(grid)))
        return returns

    def selected(self, jobs, results) -> List[List[str]]:  # noqa: UP006
        """Each method's best configuration by the dev NDCG@10 its job returned (nan for a failed job); a dev tie
        broken by `tie_key`, from each job's composed config, as the report and `make decide` break it."""
        candidates = [
            job_candidate(configuration(job), cfg, returned(result).dev)
            for job, cfg, result in zip(jobs, self.configs(jobs), results, strict=True)
        ]
        return [list(config) for config in select(candidates).values()]

    def decider(self):
        from pipeline.sweep.decider import Decider  # the statistics are imported by make decide only

        listed = [] if self.seeded_by_user else self.seeds[1:]  # fresh seeds: these first, then counting up
        return Decider(self.decide, self.configs, self.next_batch, self.config.hydra.sweep.dir, listed)

    def configs(self, jobs):
        return job_configs(self.config, self.hydra_context.config_loader, jobs)

    def next_batch(self, jobs):
        return self.launch(jobs, initial_job_idx=self.launched)

    def launch(self, jobs, initial_job_idx):
        self.launched = max(self.launched, initial_job_idx + len(jobs))
        results = []
        size = self.max_batch_size or len(jobs) or 1
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            self.validate_batch_is_legal(batch)
            results.extend(self.launcher.launch(batch, initial_job_idx=initial_job_idx + start))
        return results


def cartesian(overrides) -> List[List[str]]:  # noqa: UP006
    """Hydra's basic sweep: one job per combination of the overrides' values (`a=1,2 b=x,y`: 4 jobs), in the order
    Hydra's own basic sweeper gives them (the first key varies slowest)."""
    axes: Dict[str, List[str]] = {}  # noqa: UP006
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override() and not override.is_discrete_sweep():
            raise HydraException(
                f"{override.input_line}: make sweep takes lists of values (a=1,2) or range(), not intervals"
            )
        values = (
            override.sweep_string_iterator() if override.is_sweep_override() else [override.get_value_element_as_str()]
        )
        axes[key] = [f"{key}={value}" for value in values]
    return [list(job) for job in itertools.product(*axes.values())]
