"""`hydra/sweeper=lora_vs_full`: the comparison protocol as a Hydra sweeper (`make sweep`, `sweep=lora_grid`).

1. The grid: Hydra's cartesian product turned into adapter jobs plus ONE full fine-tune job per learning rate
   (`pipeline.sweep.grid`), each method with its own learning-rate axis (`lr`: {method: [rates]}), at the first
   of `seeds`.
2. Selection: each job returns its dev NDCG@10 (never NanoBEIR); the best configuration of each method is chosen
   on it (`pipeline.sweep.selection`).
3. Replicates: each method's selected configuration is trained again with the other `seeds`, so the verdict
   (`python -m pipeline.report`) sees seed-to-seed variation.

A `train.seed=...` override on the command line turns replicates off (the grid then holds the seeds you gave).
Lives in the `hydra_plugins` namespace so that Hydra discovers it. (No `from __future__ import annotations`: Hydra
loads plugin modules outside sys.modules, where string annotations of a dataclass cannot be resolved.)
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from pipeline.sweep.grid import (
    configuration,
    job_values,
    lora_vs_full_jobs,
    method_of,
    replicates,
    with_learning_rates,
    with_seed,
)
from pipeline.sweep.prefix import run_shared_prefix
from pipeline.sweep.selection import Candidate, select

log = logging.getLogger(__name__)


@dataclass
class LoraVsFullSweeperConf:
    _target_: str = "hydra_plugins.lora_vs_full_sweeper.lora_vs_full_sweeper.LoraVsFullSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 - Hydra's structured configs
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045
    lr: Dict[str, List[float]] = field(default_factory=dict)  # noqa: UP006 - {method: learning rates}
    seeds: List[int] = field(default_factory=list)  # noqa: UP006 - first: the grid; the rest: replicates


ConfigStore.instance().store(group="hydra/sweeper", name="lora_vs_full", node=LoraVsFullSweeperConf)


class LoraVsFullSweeper(BasicSweeper):
    def __init__(self, max_batch_size, params=None, lr=None, seeds=None):
        super().__init__(max_batch_size, params)
        self.lr = {k: list(v) for k, v in (lr or {}).items()}
        self.seeds = list(seeds or [])

    def grid(self, arguments: List[str]) -> List[List[str]]:  # noqa: UP006
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        jobs = lora_vs_full_jobs(BasicSweeper.split_arguments(overrides, None)[0])
        jobs = with_learning_rates(jobs, self.lr, self.config.finetune.method)
        self.seeded_by_user = any("train.seed" in job_values(job) for job in jobs)
        return with_seed(jobs, self.seeds[0]) if self.seeds else jobs

    def sweep(self, arguments: List[str]) -> Any:  # noqa: UP006
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        grid = self.grid(arguments)
        run_shared_prefix(self.config, self.hydra_context.config_loader, grid)  # before any job starts
        returns = [self.launch(grid, initial_job_idx=0)]
        if len(self.seeds) > 1 and not self.seeded_by_user:
            chosen = self.selected(grid, returns[0])
            log.info("selected on dev NDCG@10: %s", "; ".join(" ".join(job) for job in chosen))
            returns.append(self.launch(replicates(chosen, self.seeds[1:]), initial_job_idx=len(grid)))
        return returns

    def selected(self, jobs, results) -> List[List[str]]:  # noqa: UP006
        """Each method's best configuration by the dev NDCG@10 its job returned (nan for a failed job)."""
        default = self.config.finetune.method
        candidates = [
            Candidate(method_of(job, default), configuration(job), None, _dev(result))
            for job, result in zip(jobs, results, strict=True)
        ]
        return [list(config) for config in select(candidates).values()]

    def launch(self, jobs, initial_job_idx):
        results = []
        size = self.max_batch_size or len(jobs) or 1
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            self.validate_batch_is_legal(batch)
            results.extend(self.launcher.launch(batch, initial_job_idx=initial_job_idx + start))
        return results


def _dev(result) -> float:
    try:
        value = result.return_value
    except Exception:  # noqa: BLE001 - a job that raised: no score, not selectable
        return math.nan
    return math.nan if value is None else float(value)
