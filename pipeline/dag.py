"""The runner: how each stage of the table (`pipeline.graph`) runs, and what hashes, caches, locks and reports
`ran` / `cached`.

Each stage's output lives in `<outputs>/cache/<stage>/<key>/`, where the key hashes the config values that can change
the stage's output (`Stage.keys`: exactly those, with the resolved device and precision), a fingerprint of what it
reads (a local dir's content, a Hub id's commit SHA), the version of its code and its upstream keys. A stage is
computed in `<key>.partial/` under a file lock and renamed to `<key>/` when complete, with a manifest of its files:
a partial or damaged output is never used, and of two processes that need the same output one computes it while the
other waits and then reads it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig

from pipeline.config import sharded
from pipeline.disk import check_disk, disk_full_fails_the_stage, local_model_dir
from pipeline.fingerprint import code_version, config_hash, eval_identity, pinned_config, sources
from pipeline.graph import DAG as DAG  # the table and its graph, for pipeline.dag's callers
from pipeline.graph import STAGES as STAGES
from pipeline.graph import Stage, inputs_of, require_every_stage, stages_until
from pipeline.graph import forced_stages as forced_stages
from pipeline.graph import runs as runs
from pipeline.launch.torchrun import run_processes
from pipeline.manifest import is_complete, read_result, write_manifest
from pipeline.memory import check_memory
from pipeline.stages.evaluate import (
    evaluate_baseline,
    evaluate_dev_baseline,
    evaluate_dev_finetuned,
    evaluate_finetuned,
)
from pipeline.stages.finetune import finetune, last_complete_checkpoint
from pipeline.stages.mine_negatives import mine_negatives
from pipeline.stages.model_card import card_values, model_card
from pipeline.stages.prepare_data import prepare_data, prepare_dev, prepare_test


@dataclass(frozen=True)
class Context:
    """What a stage may need beyond config and upstream outputs."""

    cache: Path  # <outputs>/cache
    sources: dict[str, str]  # the run's content fingerprints by config group (pipeline.fingerprint.sources)
    callbacks: tuple = ()  # trainer callbacks the runner hands in (MLflow logging): stages know nothing of tracking

    def datasets_cache(self, group: str) -> Path:
        """`datasets`' cache for what config group `group` reads, keyed on its content: `datasets` caches a local dir
        by path, so a dir rebuilt in place gets a new cache instead of the old rows."""
        return self.cache / "hf_datasets" / config_hash(self.sources[group])


@dataclass
class StageOutput:
    name: str
    key: str
    dir: Path
    result: dict[str, Any]
    status: str  # "ran" or "cached"
    seconds: float


def _finetune(cfg: DictConfig, up: dict, out: Path, ctx: Context) -> dict:
    arguments = dict(
        model_cfg=cfg.model,
        data_cfg=cfg.data,
        ft=cfg.finetune,
        train=cfg.train,
        eval_cfg=cfg.eval,
        data_dir=up.get("mine_negatives", up["prepare_data"]).dir,  # the mined rows where mining is on
        out=out,
        callbacks=list(ctx.callbacks),
        cache_dir=ctx.datasets_cache("eval"),
        fsdp=sharded(cfg),
    )
    processes = cfg.launch.processes_per_job
    if processes == 1:
        result = finetune(**arguments)
    else:  # the same call in each of the job's processes, under torchrun; the first one's summary
        last_complete_checkpoint(out / "checkpoints", processes)  # a killed save's half-written checkpoint goes, once
        result = run_processes(finetune, arguments, processes, out / "processes")
    # Which evaluation its in-training metrics are of: the key leaves `eval` out (it does not change the weights), so a
    # run that reuses this output with another evaluation must not log those metrics as its own
    return {**result, "in_training_eval": eval_identity(cfg, ctx.sources)}


# How each stage of the table runs: (cfg, upstream outputs by name, out dir, context) -> its summary. Every stage
# has one, checked when this module loads.
RUNNERS: dict[str, Callable[..., dict]] = {
    "prepare_data": lambda cfg, up, out, ctx: prepare_data(cfg.data, out, ctx.datasets_cache("data")),
    "prepare_dev": lambda cfg, up, out, ctx: prepare_dev(cfg.data, up["prepare_data"].dir, out),
    "prepare_test": lambda cfg, up, out, ctx: prepare_test(
        cfg.data, up["prepare_data"].dir, up["prepare_dev"].dir, out
    ),
    "baseline": lambda cfg, up, out, ctx: evaluate_baseline(
        cfg.model, cfg.eval, cfg.train.prompts, out, ctx.datasets_cache("eval")
    ),
    "dev_baseline": lambda cfg, up, out, ctx: evaluate_dev_baseline(
        cfg.model, cfg.eval, cfg.train.prompts, up["prepare_dev"].dir, out
    ),
    "test_baseline": lambda cfg, up, out, ctx: evaluate_dev_baseline(
        cfg.model, cfg.eval, cfg.train.prompts, up["prepare_test"].dir, out, split="test"
    ),
    "mine_negatives": lambda cfg, up, out, ctx: mine_negatives(cfg.model, cfg.data, up["prepare_data"].dir, out),
    "finetune": _finetune,
    "evaluate": lambda cfg, up, out, ctx: evaluate_finetuned(
        cfg.model, cfg.eval, cfg.train.prompts, up["finetune"].dir, out, ctx.datasets_cache("eval")
    ),
    "dev_evaluate": lambda cfg, up, out, ctx: evaluate_dev_finetuned(
        cfg.model, cfg.eval, cfg.train.prompts, up["prepare_dev"].dir, up["finetune"].dir, out
    ),
    "test_evaluate": lambda cfg, up, out, ctx: evaluate_dev_finetuned(
        cfg.model, cfg.eval, cfg.train.prompts, up["prepare_test"].dir, up["finetune"].dir, out, split="test"
    ),
    "model_card": lambda cfg, up, out, ctx: model_card(
        cfg.model,
        cfg.finetune,
        up["finetune"].dir,
        up["finetune"].result,
        up["baseline"].result,
        up["evaluate"].result,
        up["dev_baseline"].result,
        up["dev_evaluate"].result,
        out,
        card_values(cfg.model, cfg.data, cfg.finetune),
    ),
}
require_every_stage(RUNNERS, "pipeline.dag.RUNNERS")


def stage_key(
    stage: Stage, cfg: DictConfig, upstream_keys: dict[str, str], found_sources: dict[str, str] | None = None
) -> str:
    """The cache key: the stage's config slices, the content of what it reads (`found_sources`: the fingerprints a
    run computed once for all its stages), the version of its code, and its upstream keys."""
    reads = tuple(stage.keys) if stage.reads is None else stage.reads
    if found_sources is None:
        found_sources = sources(cfg, reads)
    material = {
        "stage": stage.name,
        "config": stage.key_material(cfg),
        "sources": {g: found_sources[g] for g in reads if g in found_sources},
        "code": code_version(*stage.code),
        "upstream": upstream_keys,
    }
    if not reads:  # a stage that reads no content itself (the card: its upstream keys cover the data and model)
        material.pop("sources")
    return config_hash(material)


def run_stage(
    stage: Stage,
    cfg: DictConfig,
    upstream: dict[str, StageOutput],
    cache: Path,
    ctx: Context,
    force: bool = False,
    run_cfg: DictConfig | None = None,
) -> StageOutput:
    """Reuse the stage's complete output, or compute it; `force`: compute it even when complete.

    `cfg` keys the stage; the stage runs with `run_cfg` (the config with Hub ids pinned to their SHAs), default `cfg`.
    """
    key = stage_key(stage, cfg, {name: out.key for name, out in upstream.items()}, ctx.sources)
    final = cache / stage.name / key
    start = time.perf_counter()
    if is_complete(final) and not force:
        return StageOutput(stage.name, key, final, read_result(final), "cached", time.perf_counter() - start)

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if is_complete(final) and not force:  # computed by another process while this one waited for the lock
            return StageOutput(stage.name, key, final, read_result(final), "cached", time.perf_counter() - start)
        if final.exists():  # incomplete, damaged or forced: never used, rebuilt
            shutil.rmtree(final)
        work = final.with_name(key + ".partial")
        if work.exists() and (force or not stage.resumable):
            shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        _status_line(stage.name, "running", key=key)
        with disk_full_fails_the_stage(stage.name, work):  # one line; the half-written dir (checkpoints too) goes
            result = RUNNERS[stage.name](run_cfg if run_cfg is not None else cfg, upstream, work, ctx)
            write_manifest(work, result)
        os.replace(work, final)
    return StageOutput(stage.name, key, final, result, "ran", time.perf_counter() - start)


def run_dag(
    cfg: DictConfig,
    found_sources: dict[str, str] | None = None,
    callbacks: tuple = (),
    on_stage: Callable[[StageOutput], None] | None = None,
) -> dict[str, StageOutput]:
    """Run (or reuse) every stage up to `cfg.run.until`, in order; `on_stage` sees each output as it completes.

    `found_sources`: the run's content fingerprints, computed once by the runner (here when not given)."""
    cache = Path(cfg.paths.outputs).resolve() / "cache"
    found = found_sources if found_sources is not None else sources(cfg)
    ctx = Context(cache, found, tuple(callbacks))
    run_cfg = pinned_config(cfg, found)  # every Hub id at the SHA the keys were computed with
    forced = forced_stages(cfg.run.get("force"))
    if "finetune" in _to_compute(cfg, found, forced):
        model_dir = local_model_dir(cfg)  # its safetensors headers: sizes without loading it
        check_disk(cfg, model_dir)  # before any model loads: the checkpoints and the model must fit under paths.outputs
        check_memory(cfg, model_dir)  # and the weights, gradients, AdamW and activations must fit the device
    outputs: dict[str, StageOutput] = {}
    for stage in stages_until(cfg.run.until, cfg):
        upstream = {name: outputs[name] for name in inputs_of(stage, cfg)}
        output = run_stage(stage, cfg, upstream, cache, ctx, force=stage.name in forced, run_cfg=run_cfg)
        outputs[stage.name] = output
        _status_line(stage.name, output.status, seconds=output.seconds)
        if on_stage is not None:
            on_stage(output)
    return outputs


def _to_compute(cfg: DictConfig, found: dict[str, str], forced: set[str]) -> set[str]:
    """The stages up to `run.until` that have no complete output (or are forced)."""
    cache, keys = Path(cfg.paths.outputs).resolve() / "cache", {}
    for stage in stages_until(cfg.run.until, cfg):
        keys[stage.name] = stage_key(stage, cfg, {name: keys[name] for name in inputs_of(stage, cfg)}, found)
    return {name for name, key in keys.items() if name in forced or not is_complete(cache / name / key)}


def _status_line(name: str, status: str, key: str | None = None, seconds: float | None = None) -> None:
    detail = f"key {key}" if key else f"{seconds:.1f}s"
    print(f"[pipeline] {name:<13} {status:<8} {detail}", file=sys.stderr, flush=True)


def status_table(outputs: dict[str, StageOutput]) -> str:
    rows = [f"{'stage':<16}{'status':<9}{'seconds':>9}  output"]
    rows += [f"{o.name:<16}{o.status:<9}{o.seconds:>9.1f}  {o.dir}" for o in outputs.values()]
    return "\n".join(rows)
