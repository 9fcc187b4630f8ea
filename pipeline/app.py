"""The task function behind `python -m pipeline`: validate, track, run the DAG, report."""

from __future__ import annotations

import logging
import sys
import warnings

from omegaconf import DictConfig

from pipeline.dag import run_dag, status_table
from pipeline.fingerprint import sources
from pipeline.models import device_and_precision
from pipeline.tracking.progress import MLflowTrainerCallback
from pipeline.tracking.run import pipeline_run, tracking_uri
from pipeline.tracking.sweep import sweep_of_this_job


def quiet_libraries() -> None:
    """Library chatter off (INFO logs, deprecation warnings, loading bars); the trainer's progress bar stays."""
    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    # httpx / httpcore: the Hub client's `HTTP Request: HEAD ...` line per file it checks (70-150 per run)
    for name in (
        "sentence_transformers",
        "datasets",
        "mlflow",
        "alembic",
        "filelock",
        "httpx",
        "httpcore",
        "huggingface_hub",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def run(cfg: DictConfig) -> float | None:
    quiet_libraries()
    device, precision = device_and_precision(cfg.train.precision.value)
    uri = tracking_uri(cfg)
    print(f"[pipeline] device {device}, precision {precision}; MLflow {uri} (make ui)", file=sys.stderr)
    if cfg.model.trust_remote_code:
        print(f"warning: model.trust_remote_code=true runs code from {cfg.model.name} on this machine", file=sys.stderr)
    tags = {"device": device, "precision": precision}
    sweep = sweep_of_this_job()
    if sweep is not None:  # a job of a multirun: a child of the sweep's parent run
        tags.update({"sweep_id": sweep["sweep_id"], "mlflow.parentRunId": sweep["parent_run_id"]})
    found = sources(cfg)  # the content fingerprints of the data, evaluation sets and model: once per run
    try:
        with pipeline_run(cfg, found, tags=tags) as tracked:
            outputs = run_dag(
                cfg,
                found,
                callbacks=(MLflowTrainerCallback(tracked.client, tracked.run_id),),
                on_stage=tracked.on_stage,
            )
            if cfg.hub.push:  # after the card; validate() checked the repo id, the token and the network
                from pipeline.stages.push import push

                pushed = push(cfg.hub, cfg.model, outputs["finetune"].dir, outputs["model_card"].dir)
                tracked.on_pushed(pushed)
                print(f"[pipeline] pushed to {pushed['commit_url']}", file=sys.stderr)
    except Exception as error:
        if sweep is None:
            raise
        # The run is FAILED in MLflow with its error; the other jobs go on, and the sweep's end reports this one
        print(f"error: job {cfg.tracking.run_name or ''} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return float("nan")
    print(status_table(outputs))
    if "evaluate" in outputs:
        score = outputs["evaluate"].result["ndcg_at_10"]
        print(f"nanobeir_mean_ndcg_at_10 = {score:.4f} (run {tracked.run_id})")
        return score
    return None
