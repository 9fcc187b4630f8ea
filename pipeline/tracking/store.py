"""The MLflow store (a sqlite DB under the outputs, or a tracking server; which one: `pipeline.tracking.uri`): opening
it, its experiments, searches across them, and metric logging with MLflow-safe names."""

from __future__ import annotations

import re
import time
from contextlib import nullcontext
from dataclasses import dataclass

from filelock import FileLock
from mlflow.entities import Experiment, Metric, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import schema
from pipeline.config import ConfigError
from pipeline.tracking.ui import describe_experiment
from pipeline.tracking.uri import sqlite_path


@dataclass(frozen=True)
class Store:
    """An opened store: where it is, a client on it and the run's experiment (created if new)."""

    uri: str
    client: MlflowClient
    experiment_id: str


def open_store(uri: str, experiment: str) -> Store:
    """Open the store at `uri` (a fresh sqlite DB is created once) and `experiment`: a one-line `ConfigError` naming
    the URI where MLflow cannot, before any stage runs."""
    try:
        client = client_for(uri)
        return Store(uri, client, experiment_id(client, uri, experiment))
    except Exception as error:  # noqa: BLE001 - whatever stops MLflow from opening it
        raise ConfigError(f"tracking.uri={uri} cannot be opened ({type(error).__name__}: {error})") from error


def client_for(uri: str) -> MlflowClient:
    """A client whose store exists: a fresh sqlite DB is created once, under a lock (parallel creators race)."""
    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock"):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # creates and migrates the schema
    return client


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    db = sqlite_path(uri)
    lock = FileLock(str(db) + ".lock") if db else None
    with lock if lock else nullcontext():
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # Artifacts beside the DB, not in the working directory
        location = (db.parent / "mlartifacts" / name).as_uri() if db else None
        try:
            exp_id = client.create_experiment(name, artifact_location=location)
        except MlflowException as error:  # a tracking server: another job created it first (no file lock there)
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id
        describe_experiment(client, exp_id)  # the comparison (NDCG@10, method, r, alpha) as the UI's default view
        return exp_id


def all_experiments(client: MlflowClient) -> list[Experiment]:
    experiments, token = [], None
    while True:
        page = client.search_experiments(page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            return experiments


def search_all_runs(
    client: MlflowClient, filter_string: str, experiment_ids: list[str] | None = None, order_by=None
) -> list[Run]:
    """Every run matching `filter_string`, page after page, in the given experiments or in all of them."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in all_experiments(client)]
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, filter_string, order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def end_killed(client: MlflowClient, run_id: str, reason: str) -> None:
    """End a run KILLED, with why in its `error` tag (what the MLflow UI shows beside the status)."""
    client.set_tag(run_id, schema.ERROR, reason)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))


def metric_name(name: str) -> str:
    """MLflow metric names cannot contain '@'."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", name.replace("@", "_at_"))


def log_step(client: MlflowClient, run_id: str, logs: dict, step: int) -> None:
    metrics = [
        Metric(metric_name(k), float(v), _now_ms(), step)
        for k, v in logs.items()
        if isinstance(v, (int, float)) and k not in ("step", "total_flos")
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def _now_ms() -> int:
    return int(time.time() * 1000)
