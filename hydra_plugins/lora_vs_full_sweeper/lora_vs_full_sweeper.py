"""`hydra/sweeper=lora_vs_full`: Hydra's basic sweeper, with the grid turned into LoRA jobs plus one full arm.

See `pipeline.launch.grid.lora_vs_full_jobs`. Lives in the `hydra_plugins` namespace so that Hydra discovers it.
(No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules, where string
annotations of a dataclass cannot be resolved.)
"""

from dataclasses import dataclass
from typing import Dict, Optional  # noqa: UP035

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore

from pipeline.launch.grid import lora_vs_full_jobs
from pipeline.launch.prefix import run_shared_prefix


@dataclass
class LoraVsFullSweeperConf:
    _target_: str = "hydra_plugins.lora_vs_full_sweeper.lora_vs_full_sweeper.LoraVsFullSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 - Hydra's structured configs
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045


ConfigStore.instance().store(group="hydra/sweeper", name="lora_vs_full", node=LoraVsFullSweeperConf)


class LoraVsFullSweeper(BasicSweeper):
    def split_arguments(self, overrides, max_batch_size):  # type: ignore[override]
        jobs = lora_vs_full_jobs(BasicSweeper.split_arguments(overrides, None)[0])
        run_shared_prefix(self.config, self.hydra_context.config_loader, jobs)  # before any job starts
        size = max_batch_size or len(jobs)
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]
