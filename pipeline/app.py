"""The task function behind `python -m pipeline`: run the DAG inside one MLflow run, logged from this process, report.

The same code runs a single run, a job of a local sweep and a SLURM job (submitit runs this function there)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig

from pipeline import schema
from pipeline.config import ModelDtype, RunError
from pipeline.dag import run_dag, status_table
from pipeline.evaluation.benchmark import label
from pipeline.fingerprint import sources
from pipeline.launch.gpus import gpu_of_this_job
from pipeline.launch.process import process_tags
from pipeline.launch.slurm import requeue_when_interrupted, slurm_tags
from pipeline.models import device_and_precision
from pipeline.sweep.callbacks import sweep_of_this_job
from pipeline.sweep.scores import JobScores, from_outputs
from pipeline.tracking.identity import run_name
from pipeline.tracking.progress import MLflowTrainerCallback
from pipeline.tracking.run import pipeline_run
from pipeline.tracking.store import Store, open_store
from pipeline.tracking.uri import tracking_uri


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


def sweep_tags(sweep: dict | None) -> dict[str, str]:
    """In a job of a multirun (`sweep`: `sweep_of_this_job()`): the tags that make its run a child of the sweep's
    parent run."""
    return {} if sweep is None else {schema.SWEEP_ID: sweep["sweep_id"], schema.PARENT_RUN: sweep["parent_run_id"]}


def bad_job(cfg: DictConfig, error: Exception) -> JobScores:
    """A sweep's job whose config failed validation: a FAILED run with the one-line error (no content fingerprints:
    its inputs may not exist), so that the other jobs go on and the sweep's end names this one."""
    message = " ".join(str(error).split())
    print(f"error: job {run_name(cfg)}: {message}", file=sys.stderr)
    try:
        with pipeline_run(cfg, {}, tags=sweep_tags(sweep_of_this_job())):
            raise error
    except type(error):
        pass
    return JobScores()


def run(cfg: DictConfig, store: Store | None = None) -> JobScores:
    """Run the DAG in one MLflow run, in `store` (opened by `python -m pipeline` after validation), else the config's;
    return its scores (what a sweep's job hands the sweeper)."""
    store = store or open_store(tracking_uri(cfg), cfg.tracking.experiment)
    # A local sweep job takes its GPUs (one per process) before CUDA starts; a SLURM job sent SIGTERM is requeued, and resumes
    with (
        gpu_of_this_job(
            Path(cfg.paths.outputs) / "locks", sweep_of_this_job() is not None, cfg.launch.processes_per_job
        ),
        requeue_when_interrupted(),
    ):
        return _run(cfg, store)


def _run(cfg: DictConfig, store: Store) -> JobScores:
    quiet_libraries()
    device, precision = device_and_precision(cfg.train.precision.value)
    print(f"[pipeline] device {device}, precision {precision}; MLflow {store.uri} (make ui)", file=sys.stderr)
    if ModelDtype(cfg.model.dtype) != ModelDtype.float32:
        print(
            f"warning: model.dtype={ModelDtype(cfg.model.dtype).value}: both arms train without fp32 master weights, "
            "so the comparison is not of the methods alone (a full fine-tune's small updates round away)",
            file=sys.stderr,
        )
    if cfg.model.trust_remote_code:
        print(f"warning: model.trust_remote_code=true runs code from {cfg.model.name} on this machine", file=sys.stderr)
    sweep = sweep_of_this_job()
    tags = {"device": device, "precision": precision, **sweep_tags(sweep), **slurm_tags(), **process_tags("run")}
    found = sources(cfg)  # the content fingerprints of the data, evaluation sets and model: once per run
    try:
        with pipeline_run(cfg, found, tags, store) as tracked:
            trainer_logs = MLflowTrainerCallback(tracked.client, tracked.run_id)
            outputs = run_dag(cfg, found, callbacks=(trainer_logs,), on_stage=tracked.on_stage)
            if cfg.hub.push:  # after the card; validate() checked the repo id, the token and the network
                from pipeline.stages.push import push

                pushed = push(cfg.hub, cfg.model, outputs["finetune"].dir, outputs["model_card"].dir)
                tracked.on_pushed(pushed)
                print(f"[pipeline] pushed to {pushed['commit_url']}", file=sys.stderr)
    except Exception as error:
        if sweep is None and isinstance(error, RunError):  # no room, nothing trained: one line, no library traceback
            print(f"\nerror: {error}", file=sys.stderr)  # on a line of its own, below a progress bar
            sys.exit(1)
        if sweep is None:
            raise
        # The run is FAILED in MLflow with its error; the other jobs go on, and the sweep's end reports this one
        print(f"error: job {cfg.tracking.run_name or ''} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return JobScores()
    print(status_table(outputs))
    if "evaluate" in outputs:
        score = outputs["evaluate"].result["ndcg_at_10"]
        print(f"{schema.benchmark_mean(label(cfg.eval))} = {score:.4f} (run {tracked.run_id})")
    if "dev_evaluate" in outputs:  # what a sweeper selects on: the dev set, never the test set
        print(f"{schema.DEV} = {outputs['dev_evaluate'].result['ndcg_at_10']:.4f}")
    return from_outputs(tracked.run_id, outputs)
