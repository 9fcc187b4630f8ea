"""`python -m pipeline`: compose the config, validate it, run the DAG inside one MLflow run, return the metric.

The return value (NanoBEIR mean NDCG@10 of the fine-tuned model) is what Hydra sweepers optimise.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipeline.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from pipeline.app import run

    return run(cfg)


if __name__ == "__main__":
    main()
