"""The task function behind `python -m pipeline`: validate, track, run the DAG, report."""

from __future__ import annotations

import logging
import sys
import warnings

from omegaconf import DictConfig

from pipeline.dag import run_dag, status_table
from pipeline.models import device_and_precision
from pipeline.tracking import pipeline_run, tracking_uri


def quiet_libraries() -> None:
    """Library chatter off (INFO logs, deprecation warnings, loading bars); the trainer's progress bar stays."""
    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    for name in ("sentence_transformers", "datasets", "mlflow", "alembic", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def run(cfg: DictConfig) -> float | None:
    quiet_libraries()
    device, precision = device_and_precision(cfg.train.precision.value)
    uri = tracking_uri(cfg)
    print(f"[pipeline] device {device}, precision {precision}; MLflow {uri} (make ui)", file=sys.stderr)
    with pipeline_run(cfg, tags={"device": device, "precision": precision}) as tracked:
        outputs = run_dag(cfg, callbacks=(tracked.trainer_callback,), on_stage=tracked.on_stage)
    print(status_table(outputs))
    if "evaluate" in outputs:
        score = outputs["evaluate"].result["ndcg_at_10"]
        print(f"nanobeir_mean_ndcg_at_10 = {score:.4f} (run {tracked.run_id})")
        return score
    return None
