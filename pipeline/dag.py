"""The stage graph, declared once, and the runner that hashes, caches, locks and reports `ran` / `cached`.

Each stage's output lives in `<outputs>/cache/<stage>/<key>/`, where the key hashes the config groups the stage reads,
a content fingerprint of the local dirs it reads (data, eval set, base model) and its upstream keys. A stage is
computed in `<key>.partial/` under a file lock and renamed to `<key>/` when complete, with a manifest of its files:
a partial or damaged output is never used, and of two processes that need the same output one computes it while the
other waits and then reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from pipeline.fingerprint import config_hash, sources
from pipeline.stages.evaluate import (
    evaluate_baseline,
    evaluate_dev_baseline,
    evaluate_dev_finetuned,
    evaluate_finetuned,
)
from pipeline.stages.finetune import finetune
from pipeline.stages.model_card import model_card
from pipeline.stages.prepare_data import prepare_data

MANIFEST = "_SUCCESS.json"


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


@dataclass(frozen=True)
class Stage:
    name: str
    config: tuple[str, ...]  # the config groups whose values change this stage's output
    inputs: tuple[str, ...]  # upstream stages
    run: Callable[..., dict]  # (cfg, upstream outputs by name, out dir, context) -> summary
    resumable: bool = False  # keep a killed run's partial dir (checkpoints) for the next attempt


@dataclass
class StageOutput:
    name: str
    key: str
    dir: Path
    result: dict[str, Any]
    status: str  # "ran" or "cached"
    seconds: float


# The DAG: prepare_data -> finetune -> evaluate (NanoBEIR, the test set) and dev_evaluate (the in-domain dev set that
# prepare_data held out) -> model_card, with the base model's evaluations (baseline, dev_baseline) beside them.
# prepare_data and the baselines do not depend on the method or its hyper-parameters, so a sweep computes them once.
DAG: tuple[Stage, ...] = (
    Stage(
        "prepare_data",
        config=("data",),
        inputs=(),
        run=lambda cfg, up, out, ctx: prepare_data(cfg.data, out, ctx.datasets_cache("data")),
    ),
    Stage(
        "baseline",
        config=("model", "eval"),
        inputs=(),
        run=lambda cfg, up, out, ctx: evaluate_baseline(cfg.model, cfg.eval, out, ctx.datasets_cache("eval")),
    ),
    Stage(
        "dev_baseline",
        config=("model",),  # the dev set is prepare_data's output: its key is upstream
        inputs=("prepare_data",),
        run=lambda cfg, up, out, ctx: evaluate_dev_baseline(cfg.model, cfg.eval, up["prepare_data"].dir, out),
    ),
    Stage(
        "finetune",
        config=("model", "finetune", "train", "eval"),
        inputs=("prepare_data",),
        run=lambda cfg, up, out, ctx: finetune(
            cfg.model,
            cfg.data,
            cfg.finetune,
            cfg.train,
            cfg.eval,
            up["prepare_data"].dir,
            out,
            list(ctx.callbacks),
            ctx.datasets_cache("eval"),
        ),
        resumable=True,
    ),
    Stage(
        "evaluate",
        config=("model", "eval"),
        inputs=("finetune",),
        run=lambda cfg, up, out, ctx: evaluate_finetuned(
            cfg.model, cfg.eval, up["finetune"].dir, out, ctx.datasets_cache("eval")
        ),
    ),
    Stage(
        "dev_evaluate",
        config=("model",),
        inputs=("prepare_data", "finetune"),
        run=lambda cfg, up, out, ctx: evaluate_dev_finetuned(
            cfg.model, cfg.eval, up["prepare_data"].dir, up["finetune"].dir, out
        ),
    ),
    Stage(
        "model_card",
        config=("model", "finetune"),
        inputs=("finetune", "baseline", "evaluate", "dev_baseline", "dev_evaluate"),
        run=lambda cfg, up, out, ctx: model_card(
            cfg.model,
            cfg.finetune,
            up["finetune"].dir,
            up["finetune"].result,
            up["baseline"].result,
            up["evaluate"].result,
            up["dev_baseline"].result,
            up["dev_evaluate"].result,
            out,
        ),
    ),
)
STAGES = {stage.name: stage for stage in DAG}


def stages_until(until: str | None) -> list[Stage]:
    """The stages needed to produce `until` (itself and its ancestors), in DAG order; all of them for None."""
    if until is None:
        return list(DAG)
    if until not in STAGES:
        raise ValueError(f"run.until={until} is not a stage; stages: {', '.join(STAGES)}")
    needed, todo = set(), [until]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(STAGES[name].inputs)
    return [stage for stage in DAG if stage.name in needed]


def _config_slice(cfg: DictConfig, group: str, stage: str) -> Any:
    """The values of `group` that can change `stage`'s output."""
    values = OmegaConf.to_container(cfg[group], resolve=True, enum_to_str=True)
    if group == "finetune" and values["method"] == "full":
        return {"method": "full"}  # r / alpha / dropout / targets do not touch a full fine-tune
    if group == "model" and stage not in ("finetune", "model_card"):
        return {k: v for k, v in values.items() if not k.startswith("card_")}  # card text: only in saved cards
    if group == "eval" and stage == "finetune":
        return {k: v for k, v in values.items() if k != "backend"}  # in-training evaluation is sentence-transformers'
    return values


def stage_key(
    stage: Stage, cfg: DictConfig, upstream_keys: dict[str, str], found_sources: dict[str, str] | None = None
) -> str:
    """The cache key: the stage's config slices, the content of the dirs it reads (`found_sources`: the fingerprints
    a run computed once for all its stages), and its upstream keys."""
    if found_sources is None:
        found_sources = sources(cfg, stage.config)
    material = {
        "stage": stage.name,
        "config": {group: _config_slice(cfg, group, stage.name) for group in stage.config},
        "sources": {group: found_sources[group] for group in stage.config if group in found_sources},
        "upstream": upstream_keys,
    }
    return config_hash(material)


def is_complete(path: Path) -> bool:
    """A stage dir counts only with its manifest, and with every file the manifest lists, at its size."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((path / rel).is_file() and (path / rel).stat().st_size == size for rel, size in files.items())


def _write_manifest(path: Path, result: dict) -> None:
    files = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (path / MANIFEST).write_text(json.dumps({"result": result, "files": files}, indent=2, default=str))


def _read_result(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())["result"]


def run_stage(
    stage: Stage,
    cfg: DictConfig,
    upstream: dict[str, StageOutput],
    cache: Path,
    ctx: Context,
) -> StageOutput:
    key = stage_key(stage, cfg, {name: out.key for name, out in upstream.items()}, ctx.sources)
    final = cache / stage.name / key
    start = time.perf_counter()
    if is_complete(final):
        return StageOutput(stage.name, key, final, _read_result(final), "cached", time.perf_counter() - start)

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if is_complete(final):  # computed by another process while this one waited for the lock
            return StageOutput(stage.name, key, final, _read_result(final), "cached", time.perf_counter() - start)
        if final.exists():  # incomplete or damaged: never used, rebuilt
            shutil.rmtree(final)
        work = final.with_name(key + ".partial")
        if work.exists() and not stage.resumable:
            shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        _status_line(stage.name, "running", key=key)
        result = stage.run(cfg, upstream, work, ctx)
        _write_manifest(work, result)
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
    ctx = Context(cache, found_sources if found_sources is not None else sources(cfg), tuple(callbacks))
    outputs: dict[str, StageOutput] = {}
    for stage in stages_until(cfg.run.until):
        output = run_stage(stage, cfg, {name: outputs[name] for name in stage.inputs}, cache, ctx)
        outputs[stage.name] = output
        _status_line(stage.name, output.status, seconds=output.seconds)
        if on_stage is not None:
            on_stage(output)
    return outputs


def _status_line(name: str, status: str, key: str | None = None, seconds: float | None = None) -> None:
    detail = f"key {key}" if key else f"{seconds:.1f}s"
    print(f"[pipeline] {name:<13} {status:<8} {detail}", file=sys.stderr, flush=True)


def status_table(outputs: dict[str, StageOutput]) -> str:
    rows = [f"{'stage':<14}{'status':<9}{'seconds':>9}  output"]
    rows += [f"{o.name:<14}{o.status:<9}{o.seconds:>9.1f}  {o.dir}" for o in outputs.values()]
    return "\n".join(rows)
