"""Checks that a type cannot express, run on the composed config before any model is loaded or run is opened.

Each failure is a `ConfigError` whose message is one line naming the bad value and what is allowed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.adapter_configs import ALL_LINEAR, SCHEMAS, Method, keys_of
from pipeline.config import ConfigError, LossName, Precision, mini_batch_size
from pipeline.evaluation.checks import check_eval
from pipeline.graph import STAGE_NAMES  # what run.force may name
from pipeline.hub_checks import check_hub, check_hub_push, looks_local
from pipeline.inputs import (
    DATA_FILE_BUILDERS,
    duplicate_count,
    load_source,
    model_dir_problem,
    pair_problems,
    target_module_problem,
)
from pipeline.models import model_source
from pipeline.negatives import mine_problem, negatives_problem

KNOWN_URI_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")


AT_LEAST_ONE = (  # integer keys that must be >= 1 where set (None means "the default" for those that allow it)
    "model.max_seq_length",
    "train.eval_batch_size",
    "train.eval_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.logging_steps",
    "eval.batch_size",
    "launch.processes_per_job",
)


def validate(cfg: DictConfig) -> None:
    _check_ranges(cfg)
    _check_finetune(cfg)
    _check_train(cfg)
    _check_launch(cfg)
    _check_run(cfg)
    _check_data(cfg)
    check_eval(cfg)
    _check_model(cfg)
    check_hub_push(cfg)  # before the tracking check, which creates a sqlite store
    _check_tracking(cfg)
    _check_precision(cfg)


def _check_ranges(cfg: DictConfig) -> None:
    for key in AT_LEAST_ONE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} is not allowed: must be >= 1, or null for the default")
    for key in ("train.seed", "data.seed"):
        value = OmegaConf.select(cfg, key)
        if value < 0:
            raise ConfigError(f"{key}={value} is not allowed: a seed must be >= 0")


def _check_run(cfg: DictConfig) -> None:
    force = cfg.run.get("force")
    if force is None or force == "":
        return
    names = [force] if isinstance(force, str) else list(force) if OmegaConf.is_list(force) else None
    if names is None or any(not isinstance(n, str) for n in names):
        raise ConfigError(f"run.force={force} is not allowed: give a stage name, a list of them, or all")
    unknown = [n for n in names if n not in (*STAGE_NAMES, "all")]
    if unknown:
        raise ConfigError(f"run.force has unknown stage(s) {unknown}; allowed: {', '.join(STAGE_NAMES)}, all")


def _check_precision(cfg: DictConfig) -> None:
    """bf16 / fp16 need a CUDA GPU (that supports them): say so now, not after the baseline has run."""
    precision = Precision(cfg.train.precision).value
    if precision not in ("bf16", "fp16"):
        return  # auto and fp32 work on any device; torch stays unloaded
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.precision={precision} needs a CUDA GPU and this machine has none: use train.precision=auto or fp32"
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16 is not supported by {torch.cuda.get_device_name(0)}: use auto or fp16")


def _check_finetune(cfg: DictConfig) -> None:
    ft = cfg.finetune
    method = Method(ft.method)
    schema = OmegaConf.get_type(ft)
    if schema is not SCHEMAS[method]:  # finetune.method=... set over another method's schema
        raise ConfigError(
            f"finetune.method={method.value} does not match the finetune config {schema.__name__}: "
            f"choose the method with finetune={method.value}"
        )
    keys = keys_of(method)
    for key in ("r", "decompose_factor"):
        if key in keys and ft[key] < 1 and not (key == "decompose_factor" and ft[key] == -1):
            what = "an integer >= 1" + (", or -1" if key == "decompose_factor" else "")
            raise ConfigError(f"finetune.{key}={ft[key]} is not allowed with finetune={method.value}: use {what}")
    if "alpha" in keys and ft.alpha <= 0:
        raise ConfigError(f"finetune.alpha={ft.alpha} is not allowed with finetune={method.value}: must be > 0")
    for key in ("dropout", "rank_dropout", "module_dropout"):
        if key in keys and not 0 <= ft[key] < 1:
            raise ConfigError(f"finetune.{key}={ft[key]} is not allowed: dropout must be in [0, 1)")
    if "target_modules" in keys:
        _check_modules("target_modules", ft.target_modules, allow_all_linear=True)
    if "feedforward_modules" in keys:
        _check_modules("feedforward_modules", ft.feedforward_modules, allow_all_linear=False)
        targets, feedforward = ft.target_modules, ft.feedforward_modules
        if feedforward and isinstance(targets, ListConfig) and not set(feedforward) <= set(targets):
            raise ConfigError(
                f"finetune.feedforward_modules={list(feedforward)} is not allowed: (IA)^3's feedforward modules "
                f"must be among finetune.target_modules={list(targets)}"
            )


def _check_modules(key: str, value, allow_all_linear: bool) -> None:
    """None, a non-empty list of module names, or (for targets) peft's `all-linear`."""
    if value is None or (allow_all_linear and value == ALL_LINEAR):
        return
    if isinstance(value, ListConfig) and len(value) and all(isinstance(v, str) and v for v in value):
        return
    allowed = (
        "null for peft's default, "
        + (f"{ALL_LINEAR}, " if allow_all_linear else "")
        + "or a list of module names like [query,value]"
    )
    raise ConfigError(f"finetune.{key}={value} is not allowed: use {allowed}")


def _check_train(cfg: DictConfig) -> None:
    train = cfg.train
    if train.max_steps is not None and train.max_steps < 1:
        raise ConfigError(f"train.max_steps={train.max_steps} is not allowed: use a number of steps >= 1, or null")
    if train.max_steps is None and train.epochs <= 0:
        raise ConfigError(f"train.epochs={train.epochs} is not allowed: must be > 0")
    if train.batch_size < 2:
        raise ConfigError(
            f"train.batch_size={train.batch_size} is not allowed with train.loss={LossName(train.loss).value}: "
            "in-batch negatives need a batch size >= 2"
        )
    if train.loss == LossName.cached_mnrl and mini_batch_size(train.mini_batch_size) == 0:
        raise ConfigError(
            f"train.mini_batch_size={train.mini_batch_size} is not allowed: use auto (from free memory) or an integer >= 1"
        )
    if not 0 <= train.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio={train.warmup_ratio} is not allowed: must be in [0, 1)")
    if train.lr <= 0:
        raise ConfigError(f"train.lr={train.lr} is not allowed: must be > 0")
    _check_prompts(train.prompts)


def _check_launch(cfg: DictConfig) -> None:
    """Several processes per job split the global batch evenly, one GPU each where there are GPUs."""
    from pipeline.config import Fsdp
    from pipeline.launch.gpus import visible_gpus
    from pipeline.models import device_and_precision

    processes, batch = cfg.launch.processes_per_job, cfg.train.batch_size
    if batch % processes:
        raise ConfigError(
            f"launch.processes_per_job={processes} does not divide train.batch_size={batch}: the global batch is split "
            f"evenly across the processes; use a batch size that is a multiple of {processes}"
        )
    if Fsdp(cfg.launch.fsdp) != Fsdp.off and processes == 1:
        raise ConfigError(
            f"launch.fsdp={Fsdp(cfg.launch.fsdp).value} is not allowed with launch.processes_per_job=1: sharding "
            "needs several processes; set launch.processes_per_job, or launch.fsdp=off"
        )
    if Fsdp(cfg.launch.fsdp) != Fsdp.off and device_and_precision()[0] != "cuda":
        raise ConfigError(
            f"launch.fsdp={Fsdp(cfg.launch.fsdp).value} needs GPUs: accelerate shards (FSDP) only across GPUs, and CPU "
            "processes would train under DDP instead; use launch.fsdp=off here"
        )
    gpus = visible_gpus()
    if gpus and processes > len(gpus):
        raise ConfigError(
            f"launch.processes_per_job={processes} is more than the {len(gpus)} GPUs visible here "
            f"({','.join(gpus)}): one process per GPU"
        )


def _check_prompts(value) -> None:
    """auto, none, or {query: ..., document: ...} (strings; a side left out gets no prompt)."""
    if value in ("auto", "none"):
        return
    if (
        OmegaConf.is_dict(value)
        and set(value) <= {"query", "document"}
        and all(isinstance(v, str) or v is None for v in value.values())
    ):
        return
    raise ConfigError(
        f"train.prompts={value} is not allowed: use auto (the model's own prompts), none, or "
        '{query:"...",document:"..."}'
    )


def _check_data(cfg: DictConfig) -> None:
    data = cfg.data
    if data.train_size is not None and data.train_size <= 0:
        raise ConfigError(f"data.train_size={data.train_size} is not allowed: use a row count >= 1, or null for all")
    if data.eval_size <= 0:
        raise ConfigError(f"data.eval_size={data.eval_size} is not allowed: must be >= 1")
    if not 0 <= data.test_size < data.eval_size:
        raise ConfigError(
            f"data.test_size={data.test_size} is not allowed: use 0 (no in-domain test set) up to "
            f"{data.eval_size - 1}, fewer than the data.eval_size={data.eval_size} held-out pairs (the rest are the "
            "dev set's)"
        )
    problem = mine_problem(data, cfg.run.until, cfg.run.get("force"))
    if problem:
        raise ConfigError(problem)
    is_file = os.path.isfile(data.path)
    if is_file and Path(data.path).suffix.lower() not in DATA_FILE_BUILDERS:
        raise ConfigError(
            f"data.path={data.path} is a file of an unknown type: allowed {', '.join(DATA_FILE_BUILDERS)} "
            "(or a dataset dir, or a Hub dataset id)"
        )
    if not os.path.isdir(data.path) and not is_file:
        if looks_local(data.path) or os.path.splitext(data.path)[1].lower() in DATA_FILE_BUILDERS:
            raise ConfigError(
                f"data.path={data.path} does not exist: give a local dataset dir or data file, or a Hub dataset id"
            )
        check_hub("dataset", data.path, "data.path", revision=data.revision)
        return
    # A local dir or file is cheap to read: check its columns, values and size now rather than after loading a model
    import datasets

    from pipeline.fingerprint import config_hash, digest_memo, source_fingerprint

    datasets.disable_progress_bars()
    # `datasets` caches a local dir by path and mtime: a cache keyed on the content never hands back old rows
    content = source_fingerprint(data.path, memo_file=digest_memo())
    cache = Path(datasets.config.HF_DATASETS_CACHE) / "lora-vs-full" / config_hash(content)
    try:
        dataset = load_source(data.path, data.name, data.split, None, cache)
    except Exception as error:  # noqa: BLE001 - any loader failure is a bad data.path
        raise ConfigError(
            f"data.path={data.path} cannot be read as a dataset ({type(error).__name__}: {' '.join(str(error).split())})"
        ) from error
    missing = [c for c in (data.question_column, data.answer_column) if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"data.path={data.path} has no column(s) {missing} (data.question_column / data.answer_column); "
            f"columns found: {dataset.column_names}"
        )
    problem = negatives_problem(dataset, data, f"data.path={data.path}")
    if problem:
        raise ConfigError(problem)
    available = len(dataset) - data.eval_size
    if available < 1:
        raise ConfigError(f"data.eval_size={data.eval_size} leaves no training rows: {data.path} has {len(dataset)}")
    if data.train_size is not None and data.train_size > available:
        raise ConfigError(
            f"data.train_size={data.train_size} is larger than the data: {data.path} has {len(dataset)} rows, "
            f"{available} after holding out data.eval_size={data.eval_size}"
        )
    columns = [data.question_column, data.answer_column]
    problem = pair_problems(
        dataset, f"data.path={data.path}", columns, cfg.train.batch_size, data.train_size or available
    )
    if problem:
        raise ConfigError(problem)
    _check_distinct_questions(cfg, dataset, data.train_size or available)
    repeated = duplicate_count(dataset, data.question_column)
    if repeated:
        print(
            f"warning: data.path={data.path} repeats {repeated} question(s); the NO_DUPLICATES sampler keeps each "
            "out of batches that already hold it",
            file=sys.stderr,
        )


def _check_distinct_questions(cfg: DictConfig, dataset, train_rows: int) -> None:
    """In-batch negatives are the other questions' answers: a batch needs `train.batch_size` distinct questions."""
    import pyarrow.compute as pc
    from datasets import Dataset
    from datasets.table import InMemoryTable

    data, batch_size = cfg.data, cfg.train.batch_size
    # the question column in memory (no index files written into the datasets cache)
    questions = Dataset(InMemoryTable(dataset.select_columns([data.question_column]).with_format("arrow")[:]))
    # the training rows as prepare_data cuts them (the held-out split, then the first train_rows)
    train = questions.train_test_split(test_size=data.eval_size, seed=data.seed, keep_in_memory=True)["train"]
    column = train.select(range(train_rows)).with_format("arrow")[:][data.question_column]
    distinct = pc.count_distinct(column).as_py()
    if distinct < batch_size:
        raise ConfigError(
            f"data.path={data.path} has {distinct} distinct question(s) in its {train_rows} training rows, fewer than "
            f"train.batch_size={batch_size}: in-batch negatives cannot be formed; use more varied data or a batch "
            f"size <= {distinct}"
        )


ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def _check_attn_implementation(value: str | None) -> None:
    """One of transformers' attention implementations, and one this machine can run."""
    if value is None:
        return
    if value not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"model.attn_implementation={value} is not allowed: use null (the library's default) or one of "
            f"{', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if value.startswith("flash_attention"):
        import torch
        from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

        available = is_flash_attn_2_available() if value.endswith("2") else is_flash_attn_3_available()
        if not (torch.cuda.is_available() and available):
            raise ConfigError(
                f"model.attn_implementation={value} is not available here (it needs a CUDA GPU and the flash-attn "
                "package): use null or sdpa"
            )


def _check_model(cfg: DictConfig) -> None:
    _check_attn_implementation(cfg.model.attn_implementation)
    name = cfg.model.name
    local = model_source(name)
    if os.path.isdir(local):
        problem = model_dir_problem(local, "model.name")
        if problem:
            raise ConfigError(problem)
        model_dir = local
    else:
        if looks_local(name) or os.path.isfile(name):
            raise ConfigError(f"model.name={name} is not a local dir (it does not exist) and not a Hub model id")
        check_hub("model", name, "model.name", revision=cfg.model.revision, filename="config.json")
        from pipeline.fingerprint import cached_snapshot

        model_dir = cached_snapshot(name, "model", cfg.model.revision)
    targets = cfg.finetune.get("target_modules")  # a full fine-tune has none; all-linear matches any model
    if isinstance(targets, ListConfig) and targets and model_dir is not None:
        problem = target_module_problem(model_dir, list(targets), "finetune.target_modules")
        if problem:
            raise ConfigError(problem)


def _check_tracking(cfg: DictConfig) -> None:
    uri = cfg.tracking.uri
    if not uri:
        return
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if ":" not in uri or scheme not in KNOWN_URI_SCHEMES:
        raise ConfigError(
            f"tracking.uri={uri} cannot be opened: use one of {', '.join(s + '://' for s in KNOWN_URI_SCHEMES)}"
        )
    if scheme in ("http", "https"):  # a sqlite DB is opened after validation (`open_store`)
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)  # noqa: S310 - the user's own server
        except OSError as error:
            raise ConfigError(
                f"tracking.uri={uri} cannot be opened: the MLflow server does not answer ({error})"
            ) from error
