"""The stage graph, declared once, and the runner that hashes, caches, locks and reports `ran` / `cached`.

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
from omegaconf import DictConfig, OmegaConf

from pipeline.disk import check_disk, disk_full_fails_the_stage
from pipeline.fingerprint import code_version, config_hash, eval_identity, pinned_config, sources
from pipeline.manifest import is_complete, read_result, write_manifest
from pipeline.models import device_and_precision
from pipeline.stages.evaluate import (
    evaluate_baseline,
    evaluate_dev_baseline,
    evaluate_dev_finetuned,
    evaluate_finetuned,
)
from pipeline.stages.finetune import finetune
from pipeline.stages.mine_negatives import mine_negatives
from pipeline.stages.model_card import card_values, model_card
from pipeline.stages.prepare_data import prepare_data, prepare_dev


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


# What a config key can change, stage by stage: each `Stage` names, per config group it reads, a function from the
# group's values to the slice that goes into its key. Keys the sources cover (a local dir's content, a Hub id at its
# SHA) are left out: `data.path`, `eval.dataset_id`, the revisions. What a stage does not read is left out too.
Values = dict[str, Any]
_NOT_WEIGHTS = (  # train keys that do not change the trained weights
    "logging_steps",  # how often the loss is logged
    "save_steps",  # checkpoints, to resume a killed run
    "save_total_limit",
    "eval_batch_size",  # only the in-training evaluation loss
    "mini_batch_size",  # CachedMNRL's gradient cache: the same gradients in less memory
    "precision",  # replaced by the resolved precision (auto -> bf16 / fp16 / fp32)
)


def _without(values: Values, *names: str, prefix: str | None = None) -> Values:
    return {k: v for k, v in values.items() if k not in names and not (prefix and k.startswith(prefix))}


def _only(values: Values, prefix: str) -> Values:
    return {k: v for k, v in values.items() if k.startswith(prefix)}


def pairs(values: Values) -> Values:
    """What prepare_data reads: not the dev set's sizes (prepare_dev's), not the mining (mine_negatives'), the negative
    columns only where set, so that a config without negatives keys as it did before they existed."""
    values = _without(values, "path", "revision", "mine", prefix="dev_")
    return values if values.get("negative_columns") is not None else _without(values, "negative_columns")


def mining(values: Values) -> Values:
    """The mining keys, the seed its random sampling draws with, the device it embeds on (GPU and CPU round apart)."""
    return {"mine": values["mine"], "seed": values["seed"], "device": device_and_precision()[0]}


def model_loaded(values: Values) -> Values:
    """What loads the model, its name aside (the sources say what it holds): not the card text, not the revision."""
    return _without(values, "name", "revision", prefix="card_")


def method(values: Values) -> Values:
    """The adapter's keys; a full fine-tune has none (r / alpha / dropout / targets do not touch it)."""
    return {"method": "full"} if values["method"] == "full" else values


def trained_weights(values: Values) -> Values:
    """The training keys that change the weights, with the resolved device and precision."""
    device, precision = device_and_precision(values["precision"])
    values = _without(values, *_NOT_WEIGHTS)
    if values["max_steps"] is not None:
        values.pop("epochs")  # max_steps decides the length
    return {**values, "device": device, "resolved_precision": precision}


def nanobeir(values: Values) -> Values:
    """The NanoBEIR evaluation on the resolved device (GPU and CPU embeddings differ in rounding); during_training is
    only the finetune stage's log; precision only the fine-tuned model's scoring (the evaluate stage adds it)."""
    scored = _without(values, "during_training", "dataset_id", "revision", "precision")
    return {**scored, "device": device_and_precision()[0]}


def dev_encoding(values: Values) -> Values:
    """The dev set is upstream (prepare_dev's key): only how it is encoded."""
    return {"batch_size": values["batch_size"], "device": device_and_precision()[0]}


@dataclass(frozen=True)
class Stage:
    name: str
    keys: dict[str, Callable[[Values], Values]]  # config group -> the slice of its values that can change the output
    inputs: tuple[str, ...]  # upstream stages
    run: Callable[..., dict]  # (cfg, upstream outputs by name, out dir, context) -> summary
    code: tuple[str, ...]  # the modules it runs: their source (and what they import) is part of its key
    reads: tuple[str, ...] | None = None  # the groups whose content (sources) it reads; None: all of `keys`' groups
    resumable: bool = False  # keep a killed run's partial dir (checkpoints) for the next attempt
    when: Callable[[DictConfig], bool] | None = None  # an optional stage runs only where this holds (None: always)

    def key_material(self, cfg: DictConfig) -> dict[str, Values]:
        """The config values in this stage's key, group by group."""
        return {
            group: slice_of(OmegaConf.to_container(cfg[group], resolve=True, enum_to_str=True))
            for group, slice_of in self.keys.items()
        }


@dataclass
class StageOutput:
    name: str
    key: str
    dir: Path
    result: dict[str, Any]
    status: str  # "ran" or "cached"
    seconds: float


def _finetune(cfg: DictConfig, up: dict, out: Path, ctx: Context) -> dict:
    result = finetune(
        cfg.model,
        cfg.data,
        cfg.finetune,
        cfg.train,
        cfg.eval,
        up.get("mine_negatives", up["prepare_data"]).dir,  # the mined rows where mining is on
        out,
        list(ctx.callbacks),
        ctx.datasets_cache("eval"),
    )
    # Which evaluation its in-training metrics are of: the key leaves `eval` out (it does not change the weights), so a
    # run that reuses this output with another evaluation must not log those metrics as its own
    return {**result, "in_training_eval": eval_identity(cfg, ctx.sources)}


# The DAG: prepare_data -> finetune -> evaluate (NanoBEIR, the test set) and dev_evaluate (the in-domain dev set that
# prepare_data held out) -> model_card, with the base model's evaluations (baseline, dev_baseline) beside them.
# prepare_data and the baselines do not depend on the method or its hyper-parameters, so a sweep computes them once.
DAG: tuple[Stage, ...] = (
    Stage(
        "prepare_data",
        keys={"data": pairs},
        inputs=(),
        run=lambda cfg, up, out, ctx: prepare_data(cfg.data, out, ctx.datasets_cache("data")),
        code=("pipeline.stages.prepare_data",),
    ),
    Stage(
        "prepare_dev",
        # which held-out pairs: upstream; the dev_* sizes, and the seed that samples distractors
        keys={"data": lambda v: {**_only(v, prefix="dev_"), "seed": v["seed"]}},
        inputs=("prepare_data",),
        run=lambda cfg, up, out, ctx: prepare_dev(cfg.data, up["prepare_data"].dir, out),
        code=("pipeline.stages.prepare_data",),
    ),
    Stage(
        "baseline",
        keys={"model": model_loaded, "eval": nanobeir},
        inputs=(),
        run=lambda cfg, up, out, ctx: evaluate_baseline(cfg.model, cfg.eval, out, ctx.datasets_cache("eval")),
        code=("pipeline.stages.evaluate",),
    ),
    Stage(
        "dev_baseline",
        keys={"model": model_loaded, "eval": dev_encoding},  # the dev set is prepare_dev's output: its key is upstream
        inputs=("prepare_dev",),
        run=lambda cfg, up, out, ctx: evaluate_dev_baseline(cfg.model, cfg.eval, up["prepare_dev"].dir, out),
        code=("pipeline.stages.evaluate",),
        reads=("model",),  # eval: its batch size only, not the NanoBEIR sets
    ),
    Stage(
        "mine_negatives",  # optional: data.mine.enabled=true; finetune then trains on its rows
        keys={"model": model_loaded, "data": mining},
        inputs=("prepare_data",),
        run=lambda cfg, up, out, ctx: mine_negatives(cfg.model, cfg.data, up["prepare_data"].dir, out),
        code=("pipeline.stages.mine_negatives",),
        reads=("model",),  # the training rows are prepare_data's: its key is upstream
        when=lambda cfg: bool(OmegaConf.select(cfg, "data.mine.enabled", default=False)),
    ),
    Stage(
        "finetune",
        # the model's name too: its adapter_config.json records it
        keys={"model": lambda v: _without(v, "revision", prefix="card_"), "finetune": method, "train": trained_weights},
        inputs=("prepare_data", "mine_negatives"),
        run=_finetune,
        code=("pipeline.stages.finetune",),
        resumable=True,
    ),
    Stage(
        "evaluate",
        keys={"model": model_loaded, "eval": lambda v: {**nanobeir(v), "precision": v["precision"]}},
        inputs=("finetune",),
        run=lambda cfg, up, out, ctx: evaluate_finetuned(
            cfg.model, cfg.eval, up["finetune"].dir, out, ctx.datasets_cache("eval")
        ),
        code=("pipeline.stages.evaluate",),
    ),
    Stage(
        "dev_evaluate",
        keys={"model": model_loaded, "eval": dev_encoding},
        inputs=("prepare_dev", "finetune"),
        run=lambda cfg, up, out, ctx: evaluate_dev_finetuned(
            cfg.model, cfg.eval, up["prepare_dev"].dir, up["finetune"].dir, out
        ),
        code=("pipeline.stages.evaluate",),
        reads=("model",),
    ),
    Stage(
        "model_card",
        keys={  # the card names the base as configured, and the data in its default title
            "model": lambda v: {"name": v["name"], **_only(v, prefix="card_")},
            "finetune": method,
            "data": lambda v: {"path_name": Path(v["path"]).name},
        },
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
            card_values(cfg.model, cfg.data, cfg.finetune),
        ),
        code=("pipeline.stages.model_card",),
        reads=(),  # no content itself: its upstream keys cover the data and model
    ),
)
STAGES = {stage.name: stage for stage in DAG}


def runs(stage: Stage, cfg: DictConfig) -> bool:
    """Whether `stage` runs for `cfg`: always, or where its `when` holds (an optional stage)."""
    return stage.when is None or stage.when(cfg)


def inputs_of(stage: Stage, cfg: DictConfig) -> tuple[str, ...]:
    """`stage`'s upstream stages for `cfg`: an optional stage that does not run is no input, nor part of the key."""
    return tuple(name for name in stage.inputs if runs(STAGES[name], cfg))


def stages_until(until: str | None, cfg: DictConfig) -> list[Stage]:
    """The stages of `cfg` needed to produce `until` (itself and its ancestors), in DAG order; all for None."""
    if until is not None and until not in STAGES:
        raise ValueError(f"run.until={until} is not a stage; stages: {', '.join(STAGES)}")
    needed, todo = set(), [until] if until is not None else list(STAGES)
    while todo:
        name = todo.pop()
        if name not in needed and runs(STAGES[name], cfg):
            needed.add(name)
            todo.extend(STAGES[name].inputs)
    return [stage for stage in DAG if stage.name in needed]


def forced_stages(force: Any) -> set[str]:
    """`run.force` (a stage name, a list of them, or `all`) and every stage downstream of those."""
    if force is None or force == "" or force == []:
        return set()
    names = [force] if isinstance(force, str) else list(force)
    if "all" in names:
        return set(STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"run.force={force} names no stage {unknown}; stages: {', '.join(STAGES)}, or all")
    forced = set(names)
    for stage in DAG:  # in DAG order: a stage is forced when any of its inputs is
        if any(i in forced for i in stage.inputs):
            forced.add(stage.name)
    return forced


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
            result = stage.run(run_cfg if run_cfg is not None else cfg, upstream, work, ctx)
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
        check_disk(cfg)  # before any model loads: the checkpoints and the model must fit under paths.outputs
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
    rows = [f"{'stage':<14}{'status':<9}{'seconds':>9}  output"]
    rows += [f"{o.name:<14}{o.status:<9}{o.seconds:>9.1f}  {o.dir}" for o in outputs.values()]
    return "\n".join(rows)
