"""A run's identity and name: what makes two runs the same run (`run_key`, the tag `schema.CONFIG_HASH`), the newest
FINISHED run of a config (`finished_run`: what a sweep reuses), the params logged (the resolved config without secrets)
and the run's name (`lora-r16-a32-lr2e-4-s12`). Reads MLflow, writes nothing.
"""

from __future__ import annotations

import re

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipeline import schema
from pipeline.adapter_configs import hyperparameters
from pipeline.adapter_configs import run_name as method_run_name
from pipeline.config import LossName, Method
from pipeline.fingerprint import code_version, config_hash, sources
from pipeline.graph import STAGE_CODE
from pipeline.tracking.uri import sqlite_path, tracking_uri

SECRET = re.compile(r"token|secret|password|passwd|api_?key|credential", re.IGNORECASE)


# how to run, not what: not its identity; nor a recipe's published numbers (`published`, None on a protocol run)
RUN_ONLY = ("run.skip_finished", "run.force", "tracking.system_metrics", "published")


RUN_ONLY_GROUPS = ("hub.", "published.", "launch.")  # publishing a result, or how many processes train it


def run_name(cfg: DictConfig) -> str:
    """e.g. `lora-r16-a32-lr2e-4-s12`, `full-lr2e-5-s12`: the method, its hyper-parameters, learning rate and seed;
    a loss other than the default after the rate (`-mnrl`), and `recipe-` first on a published-recipe run (a config
    with `published` numbers: `recipe-lora-r64-a128-lr2e-5-mnrl-s42`), never confused with the protocol's runs."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    method = method_run_name(cfg.finetune)  # lora-r16-a32, lora-r64-a128-query+value, ia3, full
    loss = LossName(cfg.train.loss)
    loss_part = "" if loss == LossName.cached_mnrl else f"-{loss.value}"
    recipe = "recipe-" if cfg.get("published") is not None else ""
    return f"{recipe}{method}-lr{short_float(cfg.train.lr)}{loss_part}-s{cfg.train.seed}"


def short_float(x: float) -> str:
    """1e-4 -> '1e-4', 2.5e-05 -> '2.5e-5', 0.5 -> '5e-1'."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def method_tags(cfg: DictConfig) -> dict[str, str]:
    """`method` and each of its hyper-parameters as `method.<key>` (e.g. method.r, method.target_modules)."""
    tags = {schema.METHOD: Method(cfg.finetune.method).value}
    tags.update({f"method.{k}": str(v) for k, v in hyperparameters(cfg.finetune).items()})
    return tags


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config, flattened to `group.key` params; keys that look like secrets are never logged."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    flat: dict[str, str] = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif not SECRET.search(prefix):
            flat[prefix] = str(node)[:6000]

    walk("", container)
    return flat


def without_secrets(cfg: DictConfig) -> dict:
    """The resolved config with every key that looks like a secret removed, at any depth (for config.yaml)."""

    def clean(node):
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not SECRET.search(str(k))}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def method_params(params: dict[str, str]) -> dict[str, str]:
    """The params a run's method uses, for the UI: a full fine-tune has no adapter keys (r, alpha, dropout, targets,
    or any other method's `finetune.*` key), only `finetune.method`. The run's identity (`run_key`) keeps them all."""
    if params.get("finetune.method") == Method.full.value:
        return {k: v for k, v in params.items() if not k.startswith("finetune.") or k == "finetune.method"}
    return dict(params)


def run_key(cfg: DictConfig, found_sources: dict[str, str] | None = None, params: dict[str, str] | None = None) -> str:
    """What makes two runs the same run: the resolved config, what the data, evaluation sets and model hold
    (`found_sources`: the run's content fingerprints and Hub SHAs, `pipeline.fingerprint.sources`) and the code.

    Tagged `schema.CONFIG_HASH`: a killed run resumes into the run of its key, a sweep skips a key that finished.
    """
    params = {
        k: v for k, v in (params or flat_params(cfg)).items() if k not in RUN_ONLY and not k.startswith(RUN_ONLY_GROUPS)
    }
    found = found_sources if found_sources is not None else sources(cfg)
    return config_hash({"params": params, "sources": found, "code": code_version(*STAGE_CODE)})


def finished_run(cfg: DictConfig) -> Run | None:
    """The newest FINISHED run of this config (same `run_key`) in its experiment, if any; creates nothing."""
    uri = tracking_uri(cfg)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return None
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return None
    return newest_run(client, experiment.experiment_id, run_key(cfg), ("FINISHED",))


def newest_run(client: MlflowClient, exp_id: str, key: str, statuses: tuple[str, ...]) -> Run | None:
    """The newest run of `key` (tag `schema.CONFIG_HASH`) in the experiment whose status is one of `statuses`."""
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{schema.CONFIG_HASH}` = '{key}'", order_by=["attributes.start_time DESC"]
    )
    return next((run for run in runs if run.info.status in statuses), None)
