"""Where a run's MLflow records go, without importing MLflow (a sweep's finished-job check reads it before torch)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig


def tracking_uri(cfg: DictConfig) -> str:
    """The configured URI, or a sqlite DB under paths.outputs (MLflow >= 3.13 refuses a ./mlruns file store)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return f"sqlite:///{(Path(cfg.paths.outputs) / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def default_outputs() -> Path:
    """Where the pipeline writes by default: PIPELINE_OUTPUTS, else ./outputs (the config's paths.outputs)."""
    return Path(os.environ.get("PIPELINE_OUTPUTS") or "outputs").resolve()


def default_db_uri() -> str:
    """The pipeline's default MLflow DB, sqlite:///<PIPELINE_OUTPUTS or outputs>/mlflow.db."""
    return f"sqlite:///{default_outputs() / 'mlflow.db'}"
