"""A pipeline run's MLflow run from start to end (`pipeline_run`): opened, or resumed after a kill; ended FINISHED,
FAILED or KILLED. What it logs per stage is `pipeline.tracking.stage_logs`'; its identity and name
`pipeline.tracking.identity`'s.

Runs go through an explicit `MlflowClient` and run id (no global active run), so parallel jobs of a sweep each log
to their own run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from filelock import FileLock
from mlflow.entities import Param, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipeline import schema
from pipeline.evaluation.benchmark import label
from pipeline.fingerprint import sources
from pipeline.signals import sigterm_as_interrupt
from pipeline.tracking.identity import (
    flat_params,
    method_params,
    method_tags,
    newest_run,
    run_key,
    run_name,
    without_secrets,
)
from pipeline.tracking.stage_logs import PipelineRun
from pipeline.tracking.store import Store, end_killed, open_store
from pipeline.tracking.system_metrics import system_metrics
from pipeline.tracking.uri import tracking_uri

PACKAGES = ("torch", "transformers", "sentence-transformers", "peft", "mteb", "datasets", "mlflow", "hydra-core")


def provenance() -> dict[str, str]:
    tags = {}
    for package in PACKAGES:
        try:
            tags[f"version.{package}"] = version(package)
        except PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True
        ).stdout.strip()
        tags["git_commit"] = commit
    except (OSError, subprocess.CalledProcessError):
        pass
    return tags


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended MLflow run `run_id` KILLED (a KeyboardInterrupt: whatever catches one still does)."""

    def __init__(self, run_id: str):
        super().__init__(run_id)
        self.run_id = run_id


@contextmanager
def pipeline_run(
    cfg: DictConfig,
    found_sources: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    store: Store | None = None,
) -> Iterator[PipelineRun]:
    """Open the MLflow run (in `store`, else the config's); end it FINISHED, FAILED (the `error` tag and `error.txt`)
    or KILLED (Ctrl-C, SIGTERM: `RunInterrupted`; a SLURM requeue).

    The same config started again after a kill (SIGKILL leaves its run RUNNING; Ctrl-C leaves it KILLED) logs into
    that same run, while training resumes from its last checkpoint. A lock per config, held for the whole run, tells
    a dead run from a live one: whoever holds it is alive.
    """
    store = store or open_store(tracking_uri(cfg), cfg.tracking.experiment)
    client = store.client
    params = flat_params(cfg)
    found = found_sources if found_sources is not None else sources(cfg)
    key = run_key(cfg, found, params)
    locks = Path(cfg.paths.outputs).resolve() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"run-{key}.lock")):
        # The newest run of this config left RUNNING (its process was killed: we hold its lock now) or KILLED
        interrupted = newest_run(client, store.experiment_id, key, ("RUNNING", "KILLED"))
        run_id = interrupted.info.run_id if interrupted else None
        if run_id is not None:
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            for key_, value in {**(tags or {}), "resumed": "true"}.items():  # e.g. the sweep it now belongs to
                client.set_tag(run_id, key_, value)
            print(f"[pipeline] resuming the interrupted MLflow run {run_id} of this config", file=sys.stderr)
        else:
            run_id = _create_run(client, store.experiment_id, cfg, key, found, params, tags)
        monitor = system_metrics(store.uri, run_id, cfg.tracking.system_metrics, resumed=interrupted is not None)
        try:
            with sigterm_as_interrupt(), monitor:
                yield PipelineRun(client, run_id, cfg, found)
        except (KeyboardInterrupt, SystemExit) as stop:  # SystemExit: submitit's requeue before a SLURM time limit
            end_killed(client, run_id, "interrupted (Ctrl-C, SIGTERM or a requeue)")
            if isinstance(stop, KeyboardInterrupt):
                raise RunInterrupted(run_id) from None
            raise
        except BaseException as error:
            client.set_tag(run_id, schema.ERROR, f"{type(error).__name__}: {error}"[:5000])
            with tempfile.TemporaryDirectory() as tmp:
                trace = Path(tmp) / "error.txt"
                trace.write_text(traceback.format_exc())
                client.log_artifact(run_id, str(trace))
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        else:
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def _create_run(
    client: MlflowClient,
    exp_id: str,
    cfg: DictConfig,
    key: str,
    found: dict[str, str],
    params: dict[str, str],
    tags: dict[str, str] | None,
) -> str:
    """A new run of this config: its tags (method, sources, provenance, `tags`), params and resolved config.yaml."""
    run_tags = {
        **method_tags(cfg),
        "base_model": cfg.model.name,
        schema.BENCHMARK: label(
            cfg.eval
        ),  # the general benchmark the nanobeir_* metrics hold: NanoBEIR or MTEB (tasks)
        schema.CONFIG_HASH: key,
        **{f"source.{group}": value for group, value in found.items()},  # content hash or Hub id@SHA
        **provenance(),
        **(tags or {}),
    }
    run_id = client.create_run(exp_id, run_name=run_name(cfg), tags=run_tags).info.run_id
    batch = [Param(k, v) for k, v in method_params(params).items()]
    for i in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[i : i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "config.yaml"
        resolved.write_text(OmegaConf.to_yaml(without_secrets(cfg)))
        client.log_artifact(run_id, str(resolved))
    return run_id
