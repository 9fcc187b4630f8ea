"""Sweeps: the LoRA grid plus the full fine-tune arm, one MLflow parent run per sweep, and failed jobs reported.

- `MLflowSweepCallback` (a Hydra callback) opens the sweep's parent run before any job starts, creating the sqlite DB
  once, and at the end closes it: FAILED, with the names of the failed jobs, if any job failed (and the sweep exits
  non-zero), FINISHED otherwise. Ctrl-C or SIGTERM of the sweeping process ends it KILLED (`end_interrupted_sweep`);
  a parent left RUNNING by a sweep process that is gone (SIGKILL) is marked KILLED by the next sweep or report
  (`end_gone_sweeps`), from the host and pid tagged on it.
- `finished_job`: a job whose config already has a FINISHED run (same config, same data and model content) reuses
  that run instead of running again, so re-running a sweep (a grid grown by r=128, a failed job fixed) runs only what
  is missing. Light on purpose: it runs before torch is imported.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline import schema
from pipeline.launch.process import process_gone, process_tags
from pipeline.sweep.grid import is_relative_alpha

if TYPE_CHECKING:  # MLflow is imported where it is used: the finished-job check stays fast
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

SWEEP_FILE = "sweep.json"
_open_sweep: dict[str, Any] | None = None  # the sweep whose parent run this process opened, until it ends


def sweep_info(sweep_dir: str | Path) -> dict[str, Any] | None:
    """What a job of a sweep needs to log under the sweep's parent run (written by the callback)."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def sweep_of_this_job() -> dict[str, Any] | None:
    """The sweep this process runs a job of (`sweep_info`), or None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return sweep_info(HydraConfig.get().sweep.dir)


def finished_job(cfg: DictConfig) -> Run | None:
    """In a sweep, the FINISHED run of this job's exact config, tagged as reused by the sweep; None: run the job."""
    sweep = sweep_of_this_job()
    if sweep is None or not cfg.run.skip_finished or cfg.run.get("force"):
        return None
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.identity import finished_run
    from pipeline.tracking.uri import tracking_uri

    run = finished_run(cfg)
    if run is None:
        return None
    MlflowClient(tracking_uri(cfg)).set_tag(run.info.run_id, schema.REUSED.format(**sweep), sweep["sweep_id"])
    print(
        f"[pipeline] {run.info.run_name}: this config already finished as MLflow run {run.info.run_id}; "
        "reused (run.skip_finished=false runs it again)",
        file=sys.stderr,
    )
    return run


def sweep_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """A sweep's runs: its jobs (children of its parent run, in any experiment) and the finished runs it reused."""
    from pipeline.tracking.store import search_all_runs

    jobs = search_all_runs(client, f"tags.`{schema.PARENT_RUN}` = '{parent_run_id}'")
    reused = search_all_runs(client, f"tags.`{schema.REUSED.format(parent_run_id=parent_run_id)}` != ''")
    job_ids = {job.info.run_id for job in jobs}
    return jobs + [run for run in reused if run.info.run_id not in job_ids]


def _first_job_experiment(config: DictConfig) -> str:
    """The experiment of the sweep's first job (`experiment=...` overrides may set it), where the parent run goes."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    first = {}
    for override in overrides:
        value = next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else None
        line = f"{override.get_key_element()}={value}" if value is not None else override.input_line
        if not is_relative_alpha(line):
            first[override.get_key_element()] = line
    try:
        return compose(config_name=config.hydra.job.config_name, overrides=list(first.values())).tracking.experiment
    except (HydraException, OmegaConfBaseException):  # a first job that does not compose reports it itself
        return config.tracking.experiment


class MLflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.tracking.store import client_for, experiment_id
        from pipeline.tracking.uri import tracking_uri

        global _open_sweep
        uri = tracking_uri(config)
        client = client_for(uri)  # the DB is created here, once, before parallel jobs race to create it
        for gone in end_gone_sweeps(client).values():
            print(f"[pipeline] {gone}", file=sys.stderr)
        sweep_id = f"{Path(config.hydra.sweep.dir).name}-{uuid.uuid4().hex[:6]}"
        overrides = " ".join(config.hydra.overrides.task)
        tags = {schema.SWEEP_ID: sweep_id, schema.ROLE: "sweep", schema.SWEEP_OVERRIDES: overrides[:5000]}
        tags.update(process_tags("sweep"))  # host and pid: to tell when it is gone
        parent = client.create_run(
            experiment_id(client, uri, _first_job_experiment(config)), run_name=f"sweep-{sweep_id}", tags=tags
        )
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        info = {"sweep_id": sweep_id, "parent_run_id": parent.info.run_id, "tracking_uri": uri}
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(info, indent=2))
        _open_sweep = info
        print(f"[pipeline] sweep {sweep_id}: MLflow parent run {parent.info.run_id} in {uri}", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.entities import RunStatus
        from mlflow.tracking import MlflowClient

        global _open_sweep
        _open_sweep = None
        info = sweep_info(config.hydra.sweep.dir)
        if info is None:
            return
        client = MlflowClient(info["tracking_uri"])
        parent = client.get_run(info["parent_run_id"])
        children = sweep_runs(client, parent.info.run_id)
        failed = [c for c in children if c.info.status != "FINISHED"]
        reused = [c for c in children if c.data.tags.get(schema.PARENT_RUN) != parent.info.run_id]
        client.set_tag(parent.info.run_id, schema.SWEEP_JOBS, str(len(children)))
        client.set_tag(parent.info.run_id, schema.SWEEP_REUSED_JOBS, str(len(reused)))
        if failed:
            names = ", ".join(f"{c.info.run_name} ({c.data.tags.get(schema.ERROR, c.info.status)})" for c in failed)
            client.set_tag(parent.info.run_id, schema.SWEEP_FAILED_JOBS, names[:5000])
            client.set_terminated(parent.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            print(
                f"error: sweep {info['sweep_id']}: {len(failed)} of {len(children)} jobs failed: {names}",
                file=sys.stderr,
            )
            sys.exit(1)
        client.set_terminated(parent.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
        print(
            f"[pipeline] sweep {info['sweep_id']}: {len(children)} jobs finished ({len(reused)} reused from earlier "
            "runs); compare them with "
            f"`make compare` (python -m pipeline.report --sweep-id {info['sweep_id']})",
            file=sys.stderr,
        )


def end_interrupted_sweep() -> str | None:
    """After Ctrl-C or SIGTERM of this sweeping process: the parent run of the sweep it opened ended KILLED, with the
    runs of its jobs whose processes are gone (a parallel launcher's workers), and what it kept, in words; None outside
    a sweep."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.store import end_killed

    if _open_sweep is None:
        return None
    client = MlflowClient(_open_sweep["tracking_uri"])
    parent_id = _open_sweep["parent_run_id"]
    children = sweep_runs(client, parent_id)
    finished = sum(c.info.status == "FINISHED" for c in children)
    stopped = [c for c in children if c.info.status == "RUNNING" and process_gone(c.data.tags, "run")]
    for run in [*stopped, client.get_run(parent_id)]:
        end_killed(client, run.info.run_id, "interrupted (Ctrl-C or SIGTERM)")
    line = f"sweep {_open_sweep['sweep_id']} ended KILLED after {finished} finished jobs (kept: reused on resume)"
    if stopped:
        line += f"; the MLflow runs of {len(stopped)} running jobs ended KILLED, keeping their last checkpoints"
    return line


def end_gone_sweeps(client: MlflowClient) -> dict[str, str]:
    """Parent runs left RUNNING by a sweep process that is gone (SIGKILL, a closed terminal) on this host, marked
    KILLED: a line for each, by parent run id. A parent opened on another host is left RUNNING: nothing here can tell."""
    from pipeline.tracking.store import end_killed, search_all_runs

    ended = {}
    for parent in search_all_runs(client, f"tags.`{schema.ROLE}` = 'sweep' and attributes.status = 'RUNNING'"):
        tags = parent.data.tags
        if not process_gone(tags, "sweep"):
            continue
        line = f"sweep {tags['sweep_id']}: its process (pid {tags['sweep.pid']}) is gone; its parent run marked KILLED"
        end_killed(client, parent.info.run_id, line)
        ended[parent.info.run_id] = line
    return ended
