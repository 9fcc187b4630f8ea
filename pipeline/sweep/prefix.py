"""A sweep's shared prefix: the stages every job would compute identically, computed once before any job starts.

Each job's config is composed as the launcher will compose it, and each stage's cache key computed
(`pipeline.dag.stage_key`: its config slice, the content of what it reads, its upstream keys). The stages whose key is
the same for every job that will run (data preparation and the baseline today; any stage that no swept key reaches)
run here, in the sweeping process, so that jobs on other nodes only ever find them cached, instead of relying on file
locks across nodes (the DAG's locks stay, for local parallel jobs and separate sweeps).

Jobs that already have a FINISHED run (reused, `run.skip_finished`) and jobs with a bad config (they fail on their own,
in one line) are left out. A prefix stage that fails here for its inputs or its machine (`STAGE_FAILURES`) is left to
the jobs, which then compute it themselves; any other error (a bug) stops the sweep instead of hiding behind a warning.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from pipeline import schema
from pipeline.config import RunError
from pipeline.disk import DiskSpaceError

# what a shared stage may fail with for its inputs or its machine (a file, the network, the disk, a run that cannot go
# on): the jobs then compute the stage themselves and report it. Anything else is a bug, and stops the sweep.
STAGE_FAILURES = (OSError, RunError, DiskSpaceError)


def job_configs(config: DictConfig, config_loader: Any, jobs: Sequence[Sequence[str]]) -> list[DictConfig]:
    """Each job's config as its launcher composes it (the sweep's config plus the job's overrides), without the
    `hydra` node, which only resolves inside a running job (as the task function's config)."""
    configs = []
    for job in jobs:
        cfg = config_loader.load_sweep_config(config, list(job))
        with open_dict(cfg):
            del cfg["hydra"]
        configs.append(cfg)
    return configs


def composable(config: DictConfig, config_loader: Any, jobs: Sequence[Sequence[str]]) -> list[DictConfig]:
    """`job_configs` of the jobs whose config composes; a job whose config does not fails on its own, in one line."""
    configs = []
    for job in jobs:
        try:
            configs += job_configs(config, config_loader, [job])
        except (HydraException, OmegaConfBaseException):  # an override that does not compose, a value of a wrong type
            continue
    return configs


def pending(configs: list[DictConfig]) -> list[DictConfig]:
    """The configs that will run: valid, and (with `run.skip_finished`) without a FINISHED run to reuse."""
    from pipeline.tracking.identity import finished_run
    from pipeline.validate import ConfigError, validate

    result = []
    for cfg in configs:
        try:
            validate(cfg)
        except ConfigError:
            continue
        if cfg.run.skip_finished and finished_run(cfg) is not None:
            continue
        result.append(cfg)
    return result


def shared_stages(configs: list[DictConfig]) -> list[str]:
    """The stages every config runs (up to its `run.until`) with the same key, in DAG order."""
    from pipeline.dag import DAG, inputs_of, stage_key, stages_until
    from pipeline.fingerprint import sources

    fingerprints: dict[str, dict[str, str]] = {}  # by the groups' values: a dir is hashed once, not once per job

    def found(cfg: DictConfig) -> dict[str, str]:
        # each group resolved in place: its values may interpolate keys outside it (the demo's data.path is under
        # ${paths.outputs}), which a masked copy of the groups alone cannot resolve
        material = OmegaConf.to_yaml(
            {g: OmegaConf.to_container(cfg[g], resolve=True) for g in ("data", "eval", "model")}
        )
        if material not in fingerprints:
            fingerprints[material] = sources(cfg)
        return fingerprints[material]

    keys: list[dict[str, str]] = [{} for _ in configs]
    for job_keys, cfg in zip(keys, configs, strict=True):
        for stage in stages_until(cfg.run.until, cfg):
            upstream = {name: job_keys[name] for name in inputs_of(stage, cfg)}
            job_keys[stage.name] = stage_key(stage, cfg, upstream, found(cfg))
    # a key covers its upstream keys: a stage downstream of one that differs differs too
    return [s.name for s in DAG if s.name in keys[0] and len({job_keys.get(s.name) for job_keys in keys}) == 1]


def run_shared_prefix(config: DictConfig, config_loader: Any, jobs: Sequence[Sequence[str]]) -> dict[str, str]:
    """Compute the stages shared by the sweep's jobs before they start; returns {stage: "ran" | "cached"}.

    Nothing for fewer than two jobs to run: one job computes its own prefix at the same cost."""
    configs = pending(composable(config, config_loader, jobs))
    if len(configs) < 2:
        return {}
    names = shared_stages(configs)
    if not names:
        return {}
    print(f"[pipeline] sweep: {', '.join(names)} shared by {len(configs)} jobs, computed once first", file=sys.stderr)
    try:
        statuses = _run(configs[0], names)
    except STAGE_FAILURES as error:  # the jobs compute it themselves, and each reports the failure
        print(f"warning: shared stages not computed before the jobs ({type(error).__name__}: {error})", file=sys.stderr)
        return {}
    _tag_parent_run(config, statuses)
    return statuses


def _run(cfg: DictConfig, names: list[str]) -> dict[str, str]:
    from pipeline.dag import STAGES, Context, inputs_of, run_stage
    from pipeline.fingerprint import pinned_config, sources

    cache = Path(cfg.paths.outputs).resolve() / "cache"
    ctx = Context(cache, sources(cfg))
    run_cfg = pinned_config(cfg, ctx.sources)  # as `run_dag` runs a job's stages: every Hub id at its keyed SHA
    outputs: dict = {}
    for name in names:
        stage = STAGES[name]
        upstream = {n: outputs[n] for n in inputs_of(stage, cfg)}
        outputs[name] = run_stage(stage, cfg, upstream, cache, ctx, run_cfg=run_cfg)
        print(f"[pipeline] {name:<13} {outputs[name].status:<8} {outputs[name].seconds:.1f}s", file=sys.stderr)
    return {name: output.status for name, output in outputs.items()}


def _tag_parent_run(config: DictConfig, statuses: dict[str, str]) -> None:
    """`sweep.prefix.<stage>` on the sweep's parent run: what was computed before the jobs (they find it cached)."""
    from mlflow.tracking import MlflowClient

    from pipeline.sweep.callbacks import sweep_info

    info = sweep_info(config.hydra.sweep.dir)
    if info is None:
        return
    client = MlflowClient(info["tracking_uri"])
    for name, status in statuses.items():
        client.set_tag(info["parent_run_id"], schema.PREFIX_STAGE.format(name), status)
