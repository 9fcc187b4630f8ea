"""Where a run's MLflow records go, without importing MLflow (a sweep's finished-job check reads it before torch)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def tracking_uri(cfg: DictConfig) -> str:
    """The configured URI, or a sqlite DB under paths.outputs (MLflow >= 3.13 refuses a ./mlruns file store)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return f"sqlite:///{(Path(cfg.paths.outputs) / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
