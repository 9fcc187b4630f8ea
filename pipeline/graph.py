"""The stage table: every stage's name, upstream stages, code modules and key policy, declared once, and the graph
read from it (which stages run, in which order, what `run.until` / `run.force` reach).

Cheap to import (no torch, no stage module): validation (`run.force` names) and tracking read it before any model
loads; `STAGE_CODE`, the stages' modules, is what a run's identity covers (`pipeline.tracking.identity.run_key`). How
a stage runs is `pipeline.dag`'s (`RUNNERS`), how its result is logged
`pipeline.tracking.stage_logs`' (`STAGE_LOGS`); both are mappings by stage name, checked against this table when their module
loads (`require_every_stage`), so a stage added here without a runner or a logger fails at import, not after it ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.models import device_and_precision

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
    "gradient_checkpointing",  # activations recomputed in backward: the same gradients in less memory
)


def _without(values: Values, *names: str, prefix: str | None = None) -> Values:
    return {k: v for k, v in values.items() if k not in names and not (prefix and k.startswith(prefix))}


def _only(values: Values, prefix: str) -> Values:
    return {k: v for k, v in values.items() if k.startswith(prefix)}


def pairs(values: Values) -> Values:
    """What prepare_data reads: not the held-out sets' sizes (prepare_dev's, prepare_test's), not the mining
    (mine_negatives'), the negative columns only where set, so that a config without negatives keys as it did before
    they existed."""
    values = _without(values, "path", "revision", "mine", "test_size", prefix="dev_")
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


def benchmark_settings(values: Values) -> Values:
    """The general benchmark's settings (`eval`) without where its sets come from (`dataset_id`, `revision`,
    `task_dirs`: keyed by content, the `eval` source fingerprint), and without `tasks` when it is null (NanoBEIR), so
    that a NanoBEIR config keys as it did before MTEB task lists existed."""
    values = _without(values, "dataset_id", "revision", "task_dirs")
    return values if values.get("tasks") is not None else _without(values, "tasks")


def nanobeir(values: Values) -> Values:
    """The NanoBEIR evaluation on the resolved device (GPU and CPU embeddings differ in rounding); during_training is
    only the finetune stage's log; precision only the fine-tuned model's scoring (the evaluate stage adds it)."""
    scored = _without(benchmark_settings(values), "during_training", "precision")
    return {**scored, "device": device_and_precision()[0]}


def prompts(values: Values) -> Values:
    """An evaluation reads one training key: the prompts it encodes queries and documents with (as training did)."""
    return {"prompts": values["prompts"]}


def held_out(values: Values) -> Values:
    """Which held-out rows and how many (test_size splits them), the dev_* sizes, the seed that samples distractors."""
    return {**_only(values, prefix="dev_"), "seed": values["seed"], "test_size": values["test_size"]}


def has_test_set(cfg: DictConfig) -> bool:
    """The in-domain test set's stages run where data.test_size > 0."""
    return OmegaConf.select(cfg, "data.test_size", default=0) > 0


def dev_encoding(values: Values) -> Values:
    """The dev set is upstream (prepare_dev's key): only how it is encoded."""
    return {"batch_size": values["batch_size"], "device": device_and_precision()[0]}


@dataclass(frozen=True)
class Stage:
    name: str
    keys: dict[str, Callable[[Values], Values]]  # config group -> the slice of its values that can change the output
    inputs: tuple[str, ...]  # upstream stages
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


# The DAG: prepare_data -> finetune -> evaluate (NanoBEIR, the general test set), dev_evaluate (the in-domain dev set
# that prepare_data held out) and test_evaluate (the in-domain test set, the last held-out rows) -> model_card, with
# the base model's evaluations (baseline, dev_baseline, test_baseline) beside them.
# prepare_data and the baselines do not depend on the method or its hyper-parameters, so a sweep computes them once.
DAG: tuple[Stage, ...] = (
    Stage(
        "prepare_data",
        keys={"data": pairs},
        inputs=(),
        code=("pipeline.stages.prepare_data",),
    ),
    Stage(
        "prepare_dev",
        keys={"data": held_out},  # which held-out pairs: upstream
        inputs=("prepare_data",),
        code=("pipeline.stages.prepare_data",),
    ),
    Stage(
        "prepare_test",  # the in-domain test set: disjoint from the dev set's texts, so built after it
        keys={"data": held_out},
        inputs=("prepare_data", "prepare_dev"),
        code=("pipeline.stages.prepare_data",),
        when=has_test_set,
    ),
    Stage(
        "baseline",
        keys={"model": model_loaded, "eval": nanobeir, "train": prompts},
        inputs=(),
        code=("pipeline.stages.evaluate",),
    ),
    Stage(
        "dev_baseline",
        # the dev set is prepare_dev's output: its key is upstream
        keys={"model": model_loaded, "eval": dev_encoding, "train": prompts},
        inputs=("prepare_dev",),
        code=("pipeline.stages.evaluate",),
        reads=("model",),  # eval: its batch size only, not the NanoBEIR sets
    ),
    Stage(
        "test_baseline",
        keys={"model": model_loaded, "eval": dev_encoding, "train": prompts},
        inputs=("prepare_test",),
        code=("pipeline.stages.evaluate",),
        reads=("model",),
        when=has_test_set,
    ),
    Stage(
        "mine_negatives",  # optional: data.mine.enabled=true; finetune then trains on its rows
        keys={"model": model_loaded, "data": mining},
        inputs=("prepare_data",),
        code=("pipeline.stages.mine_negatives",),
        reads=("model",),  # the training rows are prepare_data's: its key is upstream
        when=lambda cfg: bool(OmegaConf.select(cfg, "data.mine.enabled", default=False)),
    ),
    Stage(
        "finetune",
        # the model's name too: its adapter_config.json records it
        keys={"model": lambda v: _without(v, "revision", prefix="card_"), "finetune": method, "train": trained_weights},
        inputs=("prepare_data", "mine_negatives"),
        code=("pipeline.stages.finetune",),
        resumable=True,
    ),
    Stage(
        "evaluate",
        keys={"model": model_loaded, "eval": lambda v: {**nanobeir(v), "precision": v["precision"]}, "train": prompts},
        inputs=("finetune",),
        code=("pipeline.stages.evaluate",),
    ),
    Stage(
        "dev_evaluate",
        keys={"model": model_loaded, "eval": dev_encoding, "train": prompts},
        inputs=("prepare_dev", "finetune"),
        code=("pipeline.stages.evaluate",),
        reads=("model",),
    ),
    Stage(
        "test_evaluate",  # as dev_evaluate: the same evaluator, prompts and precision
        keys={"model": model_loaded, "eval": dev_encoding, "train": prompts},
        inputs=("prepare_test", "finetune"),
        code=("pipeline.stages.evaluate",),
        reads=("model",),
        when=has_test_set,
    ),
    Stage(
        "model_card",
        keys={  # the card names the base as configured, and the data in its default title
            "model": lambda v: {"name": v["name"], **_only(v, prefix="card_")},
            "finetune": method,
            "data": lambda v: {"path_name": Path(v["path"]).name},
        },
        inputs=("finetune", "baseline", "evaluate", "dev_baseline", "dev_evaluate"),
        code=("pipeline.stages.model_card",),
        reads=(),  # no content itself: its upstream keys cover the data and model
    ),
)
STAGES = {stage.name: stage for stage in DAG}
STAGE_NAMES = tuple(STAGES)  # what run.until and run.force may name (pipeline.validate)
STAGE_CODE = tuple(sorted({module for stage in DAG for module in stage.code}))  # what a run's identity covers


def require_every_stage(mapping: Mapping[str, Any], owner: str) -> None:
    """Raise, naming them, if `mapping` (a module's per-stage table, `owner`) lacks a stage of the table or has a
    name that is none: called when that module loads."""
    missing = [name for name in STAGE_NAMES if name not in mapping]
    unknown = [name for name in mapping if name not in STAGES]
    if missing or unknown:
        raise LookupError(
            f"{owner} must have exactly one entry per stage of pipeline.graph.DAG: missing {missing}, "
            f"not a stage {unknown}"
        )


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
