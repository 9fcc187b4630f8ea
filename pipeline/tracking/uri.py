"""Where a run's MLflow records go, without importing MLflow: the run's own process only needs the URI."""

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


def sqlite_problem(uri: str) -> str | None:
    """Why a sqlite DB at `uri` could not be created or written (its dir cannot be made, or it is not a writable
    file), or None. Makes the DB's dir, as MLflow would; whatever else stops MLflow from opening it, the tracker
    reports."""
    db = sqlite_path(uri)
    if db is None:
        return None
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"its dir cannot be made ({type(error).__name__}: {error})"
    if db.exists() and not (db.is_file() and os.access(db, os.W_OK)):
        return f"{db} is not a writable file"
    return None
