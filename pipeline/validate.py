"""Checks that a type cannot express, run on the composed config before any model is loaded or run is opened.

Each failure is a `ConfigError` whose message is one line naming the bad value and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from pipeline.config import LossName, mini_batch_size
from pipeline.evaluation.nanobeir import dataset_table
from pipeline.models import model_source

NANOBEIR_LAYOUT = ("corpus", "queries", "qrels")
KNOWN_URI_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")


class ConfigError(ValueError):
    """A bad config value: the message is the one line the user sees."""


def validate(cfg: DictConfig) -> None:
    _check_finetune(cfg)
    _check_train(cfg)
    _check_data(cfg)
    _check_eval(cfg)
    _check_model(cfg)
    _check_tracking(cfg)


def _check_finetune(cfg: DictConfig) -> None:
    ft = cfg.finetune
    if ft.method == "lora":
        if ft.r < 1:
            raise ConfigError(f"finetune.r={ft.r} is not allowed: the LoRA rank must be an integer >= 1")
        if ft.alpha <= 0:
            raise ConfigError(f"finetune.alpha={ft.alpha} is not allowed: LoRA alpha must be > 0")
        if not 0 <= ft.dropout < 1:
            raise ConfigError(f"finetune.dropout={ft.dropout} is not allowed: LoRA dropout must be in [0, 1)")


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


def _check_data(cfg: DictConfig) -> None:
    data = cfg.data
    if data.train_size is not None and data.train_size <= 0:
        raise ConfigError(f"data.train_size={data.train_size} is not allowed: use a row count >= 1, or null for all")
    if data.eval_size <= 0:
        raise ConfigError(f"data.eval_size={data.eval_size} is not allowed: must be >= 1")
    if not os.path.isdir(data.path):
        if _looks_local(data.path):
            raise ConfigError(f"data.path={data.path} does not exist: give a local dataset dir or a Hub dataset id")
        _check_hub("dataset", data.path, "data.path")
        return
    # A local dir is cheap to read: check its columns and size now rather than after loading a model
    import datasets
    from datasets import load_dataset

    datasets.disable_progress_bars()
    try:
        dataset = load_dataset(data.path, data.name, split=data.split)
    except Exception as error:  # noqa: BLE001 - any loader failure is a bad data.path
        raise ConfigError(
            f"data.path={data.path} cannot be read as a dataset ({type(error).__name__}: {error})"
        ) from error
    missing = [c for c in (data.question_column, data.answer_column) if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"data.path={data.path} has no column(s) {missing} (data.question_column / data.answer_column); "
            f"columns found: {dataset.column_names}"
        )
    available = len(dataset) - data.eval_size
    if available < 1:
        raise ConfigError(f"data.eval_size={data.eval_size} leaves no training rows: {data.path} has {len(dataset)}")
    if data.train_size is not None and data.train_size > available:
        raise ConfigError(
            f"data.train_size={data.train_size} is larger than the data: {data.path} has {len(dataset)} rows, "
            f"{available} after holding out data.eval_size={data.eval_size}"
        )


def _check_eval(cfg: DictConfig) -> None:
    ev = cfg.eval
    local = os.path.isdir(ev.dataset_id)
    if not local and _looks_local(ev.dataset_id):
        raise ConfigError(
            f"eval.dataset_id={ev.dataset_id} does not exist: give a local NanoBEIR-layout dir or a Hub id"
        )
    if local:
        missing = [sub for sub in NANOBEIR_LAYOUT if not (Path(ev.dataset_id) / sub).is_dir()]
        if missing:
            raise ConfigError(
                f"eval.dataset_id={ev.dataset_id} is not in the NanoBEIR layout: missing {missing} "
                "(expected corpus/, queries/, qrels/ with one Nano<Name>.parquet each per dataset)"
            )
    table = dataset_table(ev.dataset_id)
    names = [n.lower() for n in ev.datasets] if ev.datasets else None
    unknown = [n for n in names or [] if n not in table]
    if unknown:
        raise ConfigError(f"eval.datasets has unknown name(s) {unknown}; allowed: {', '.join(table)}")
    if names == []:
        raise ConfigError("eval.datasets=[] is not allowed: name at least one dataset, or null for all 13")
    if not local:
        _check_hub("dataset", ev.dataset_id, "eval.dataset_id")
        return
    root = Path(ev.dataset_id)
    absent = [
        n
        for n in names or list(table)
        if not all((root / sub / f"Nano{table[n]}.parquet").is_file() for sub in NANOBEIR_LAYOUT)
    ]
    if absent:
        found = sorted({p.stem for p in (root / "corpus").glob("Nano*.parquet")})
        raise ConfigError(
            f"eval.dataset_id={ev.dataset_id} lacks corpus/queries/qrels for {absent}; it holds: {', '.join(found) or 'none'}"
        )


def _check_model(cfg: DictConfig) -> None:
    name = cfg.model.name
    if os.path.isdir(model_source(name)):
        return
    if _looks_local(name):
        raise ConfigError(f"model.name={name} is not a local dir (it does not exist) and not a Hub model id")
    _check_hub("model", name, "model.name", revision=cfg.model.revision)


def _check_tracking(cfg: DictConfig) -> None:
    uri = cfg.tracking.uri
    if not uri:
        return
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if ":" not in uri or scheme not in KNOWN_URI_SCHEMES:
        raise ConfigError(
            f"tracking.uri={uri} cannot be opened: use one of {', '.join(s + '://' for s in KNOWN_URI_SCHEMES)}"
        )
    if scheme == "sqlite":
        from pipeline.tracking.run import client_for

        try:
            client_for(uri)  # creates the DB once, or opens it
        except Exception as error:  # noqa: BLE001 - whatever stops MLflow from opening it
            raise ConfigError(f"tracking.uri={uri} cannot be opened ({type(error).__name__}: {error})") from error
    elif scheme in ("http", "https"):
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)  # noqa: S310 - the user's own server
        except OSError as error:
            raise ConfigError(
                f"tracking.uri={uri} cannot be opened: the MLflow server does not answer ({error})"
            ) from error


def _looks_local(name: str) -> bool:
    """A path-like name (absolute, ./, ../, ~ or more than one '/') cannot be a Hub id."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def _check_hub(kind: str, repo_id: str, key: str, revision: str | None = None) -> None:
    """A Hub id must be in the local HF cache or answer on the Hub; say which when neither works."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        snapshot_download(repo_id, repo_type=kind, revision=revision, local_files_only=True)
        return  # cached: works offline
    except Exception:  # noqa: BLE001 - not cached; ask the Hub
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConfigError(
            f"{key}={repo_id} is not a local dir and not in the Hugging Face cache, and HF_HUB_OFFLINE is set: "
            "pass a local dir"
        )
    api = HfApi()
    try:
        (api.model_info if kind == "model" else api.dataset_info)(repo_id, revision=revision, timeout=10)
    except RepositoryNotFoundError:
        raise ConfigError(f"{key}={repo_id} is not a local dir and not a {kind} on the Hugging Face Hub") from None
    except Exception as error:  # noqa: BLE001 - network failures of every kind
        raise ConfigError(
            f"{key}={repo_id} is not a local dir, and the Hugging Face Hub is unreachable "
            f"({type(error).__name__}): pass a local dir or retry with network"
        ) from error


def check_group_options(conf_dir: Path, overrides: list[str]) -> None:
    """`group=option` overrides must name an existing option (e.g. `experiment=paper_lora`, `finetune=lora,full`)."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        group = conf_dir / key
        if not sep or "." in key or key.startswith("hydra") or not group.is_dir() or value in ("null", ""):
            continue
        allowed = sorted(p.stem for p in group.glob("*.yaml"))
        for option in value.split(","):
            if option not in allowed:
                raise ConfigError(f"{key}={option} is not a known {key}; allowed: {', '.join(allowed)}")


def precompose(conf_dir: Path, argv: list[str]) -> None:
    """Compose the config as the CLI will, so that a type error fails in one line before Hydra starts a job.

    Each value of a sweep override (`finetune.r=4,8`) is composed once; Hydra's own overrides are left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc") for a in argv):
        return
    from pipeline.launch.grid import is_relative_alpha

    with_value = {
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--config-path",
        "-cp",
        "--config-name",
        "-cn",
        "--config-dir",
        "-cd",
    }
    args, skip = [], False
    for a in argv:
        if skip or a in with_value:  # a flag's value is no override
            skip = not skip
            continue
        if not a.startswith("-") and not a.lstrip("+~").startswith("hydra") and not is_relative_alpha(a):
            args.append(a)
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as error:
        raise ConfigError(_one_line(error)) from error
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [o for o in parsed if o.is_sweep_override()]
    variants = [fixed + [f"{s.get_key_element()}={first}" for s, first in _firsts(sweeps)]]
    for sweep in sweeps:
        others = [f"{s.get_key_element()}={first}" for s, first in _firsts(sweeps) if s is not sweep]
        variants += [fixed + others + [f"{sweep.get_key_element()}={v}"] for v in sweep.sweep_string_iterator()]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            for overrides in variants:
                try:
                    compose(config_name="config", overrides=overrides)
                except (HydraException, OmegaConfBaseException) as error:
                    raise ConfigError(_one_line(error)) from error
    finally:
        GlobalHydra.instance().clear()


def _firsts(sweeps):
    return [(s, next(iter(s.sweep_string_iterator()))) for s in sweeps]


def _one_line(error: BaseException) -> str:
    """Hydra's message and its cause's first line (OmegaConf's says what was wrong and what is allowed)."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause):
        message += ": " + str(cause).splitlines()[0]
    return message
