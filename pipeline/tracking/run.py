"""MLflow: one run per pipeline run, what is logged, and how runs are named.

Runs go through an explicit `MlflowClient` and run id (no global active run), so parallel jobs of a sweep each log
to their own run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipeline.adapter_configs import hyperparameters
from pipeline.adapter_configs import run_name as method_run_name
from pipeline.config import LossName, Method
from pipeline.evaluation.benchmark import label
from pipeline.fingerprint import STAGE_CODE, code_version, config_hash, eval_identity, sources
from pipeline.graph import require_every_stage
from pipeline.signals import sigterm_as_interrupt
from pipeline.tracking.datasets import dev_input, evaluation_inputs, log_data_inputs, training_input
from pipeline.tracking.store import Store, _now_ms, end_killed, log_step, metric_name, open_store
from pipeline.tracking.system_metrics import system_metrics
from pipeline.tracking.uri import sqlite_path, tracking_uri

if TYPE_CHECKING:  # the DAG pulls in torch; a sweep's finished-job check must not
    from pipeline.dag import StageOutput

SECRET = re.compile(r"token|secret|password|passwd|api_?key|credential", re.IGNORECASE)
METRIC = "nanobeir_mean_ndcg_at_10"  # the test metric: what the verdict compares
SELECTION_METRIC = "dev_ndcg_at_10"  # the in-domain dev metric: what sweeps select on and Optuna maximises
IN_TRAINING_EVAL = "eval_NanoBEIR"  # the trainer's prefix for the in-training evaluator's metrics
# how to run, not what: not its identity; nor a recipe's published numbers (`published`, None on a protocol run)
RUN_ONLY = ("run.skip_finished", "run.force", "tracking.system_metrics", "published")
RUN_ONLY_GROUPS = ("hub.", "published.", "launch.")  # publishing a result, or how many processes train it
PACKAGES = ("torch", "transformers", "sentence-transformers", "peft", "mteb", "datasets", "mlflow", "hydra-core")


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
    tags = {"method": Method(cfg.finetune.method).value}
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

    Tagged `pipeline.config_hash`: a killed run resumes into the run of its key, a sweep skips a key that finished.
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
    return _newest_run(client, experiment.experiment_id, run_key(cfg), ("FINISHED",))


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


class PipelineRun:
    """One MLflow run for one pipeline run: params and tags up front, then what each stage produces."""

    def __init__(self, client: MlflowClient, run_id: str, cfg: DictConfig, found_sources: dict[str, str] | None = None):
        self.client, self.run_id, self.cfg = client, run_id, cfg
        self._sources = found_sources
        self._eval_input_logged = False
        self.base: dict[str, dict] = {}  # the base model's results, for what fine-tuning learned and forgot

    @property
    def sources(self) -> dict[str, str]:
        """The run's content fingerprints (what its dataset inputs' digests are made of)."""
        if self._sources is None:
            self._sources = sources(self.cfg)
        return self._sources

    def on_stage(self, output: StageOutput) -> None:
        self.client.set_tag(self.run_id, f"stage.{output.name}", output.status)
        STAGE_LOGS[output.name](self, output)

    def _log_prepare_data(self, output: StageOutput) -> None:
        r = output.result
        self.client.set_tag(self.run_id, "data.source", r["source"])
        training = training_input(self.cfg.data, self.sources["data"], rows=r["train_rows"])
        log_data_inputs(self.client, self.run_id, [training])
        self._metrics({"data_train_rows": r["train_rows"], "data_eval_rows": r["eval_rows"]})
        if r.get("negatives"):  # the dataset's own hard negatives per row (data.negative_columns)
            self._metrics({"data_negatives": r["negatives"]})

    def _log_mine_negatives(self, output: StageOutput) -> None:
        """The mined training rows (data.mine): how many kept negatives, how hard they are for the base model."""
        r = output.result
        self._metrics(
            {
                "mine_train_rows": r["train_rows"],  # what finetune trains on: rows without enough candidates dropped
                "data_negatives": r["num_negatives"],
                "mine_dropped_rows": r["dropped_rows"],
                "mine_distinct_negatives": r["distinct_negatives"],
                "mine_positive_score_mean": r["positive_score_mean"],
                "mine_negative_score_mean": r["negative_score_mean"],
            }
        )

    def _log_baseline(self, output: StageOutput) -> None:
        self.base["nanobeir"] = output.result
        self._log_evaluation(output, prefix="baseline_", artifact_path="evaluation/baseline")

    def _log_prepare_dev(self, output: StageOutput, split: str = "dev") -> None:
        r = output.result
        self._metrics({f"data_{name}": value for name, value in r.items()})  # data_dev_queries, data_test_dropped, ...
        rows = r[f"{split}_queries"]
        log_data_inputs(self.client, self.run_id, [dev_input(self.cfg.data, self.sources["data"], rows, split)])

    def _log_dev_baseline(self, output: StageOutput, split: str = "dev") -> None:
        self.base[split] = output.result
        self._metrics({f"baseline_{split}_ndcg_at_10": output.result["ndcg_at_10"]})
        self.client.log_artifact(self.run_id, str(output.dir / "per_query.json"), f"evaluation/{split}_baseline")

    def _log_dev_evaluate(self, output: StageOutput, split: str = "dev") -> None:
        """In-domain NDCG@10 on dev (what a sweep selects on) or on the test set (the in-domain verdict's), and what
        fine-tuning learned in-domain: the change from the base."""
        scores = {f"{split}_ndcg_at_10": output.result["ndcg_at_10"]}
        if split in self.base:  # run.until=dev_evaluate runs it; otherwise the base model's score is there
            scores[f"{split}_delta_vs_base"] = output.result["ndcg_at_10"] - self.base[split]["ndcg_at_10"]
        self._metrics(scores)
        self.client.log_artifact(self.run_id, str(output.dir / "per_query.json"), f"evaluation/{split}")

    def _log_finetune(self, output: StageOutput) -> None:
        r = output.result
        if output.status == "cached":  # trained earlier: replay its log history into this run
            history = json.loads((output.dir / "log_history.json").read_text())
            other_eval = r.get("in_training_eval") != eval_identity(self.cfg, self.sources)
            if other_eval:  # its in-training NanoBEIR numbers are of another evaluation config: not this run's
                self.client.set_tag(
                    self.run_id, "in_training_eval", "dropped: the reused fine-tune evaluated other sets"
                )
            for entry in history:
                if other_eval:
                    entry = {k: v for k, v in entry.items() if not k.startswith(IN_TRAINING_EVAL)}
                log_step(self.client, self.run_id, entry, int(entry.get("step", 0)))
        for key in ("device", "precision", "resumed_from", "trainable_dtype", "gradient_checkpointing"):
            self.client.set_tag(self.run_id, key, str(r.get(key)))
        # how many processes trained it (one per GPU), sharded or not; a summary from before either key: one, DDP
        self.client.set_tag(self.run_id, "processes", str(r.get("processes", 1)))
        self.client.set_tag(self.run_id, "fsdp", str(r.get("fsdp", False)))
        for side, prompt in (r.get("prompts") or {}).items():  # what training and every evaluation prepended
            self.client.set_tag(self.run_id, f"prompt.{side}", prompt or "(none)")
        cost = ("train_seconds", "train_samples_per_second", "peak_memory_mb")  # what the run cost
        sizes = ("total_params", "trainable_params", "trainable_percent", "weights_mb", "adapter_params")
        self._metrics({k: r[k] for k in sizes + cost if r.get(k) is not None})
        self.client.log_artifacts(self.run_id, str(output.dir / "model"), "model")

    def _log_evaluate(self, output: StageOutput) -> None:
        """NanoBEIR NDCG@10, and what fine-tuning forgot (or gained) out of domain: the change from the base."""
        self._log_evaluation(output, prefix="", artifact_path="evaluation")
        if "nanobeir" not in self.base:  # run.until=evaluate: the base model was not evaluated in this run
            return
        r, base = output.result, self.base["nanobeir"]
        deltas = {"nanobeir_delta_vs_base": r["ndcg_at_10"] - base["ndcg_at_10"]}
        for name, value in r["per_dataset_ndcg_at_10"].items():
            deltas[f"nanobeir_{name}_delta_vs_base"] = value - base["per_dataset_ndcg_at_10"][name]
        self._metrics(deltas)

    def _log_model_card(self, output: StageOutput) -> None:
        # The completed card replaces the one sentence-transformers wrote into the logged model dir
        self.client.log_artifact(self.run_id, str(output.dir / "README.md"), "model")

    def on_pushed(self, pushed: dict) -> None:
        self.client.set_tag(self.run_id, "hub.repo_id", pushed["repo_id"])
        self.client.set_tag(self.run_id, "hub.commit_url", str(pushed["commit_url"]))

    def _log_evaluation(self, output: StageOutput, prefix: str, artifact_path: str) -> None:
        r = output.result
        if not self._eval_input_logged:  # the baseline and the fine-tuned model read the same evaluation sets
            log_data_inputs(self.client, self.run_id, evaluation_inputs(self.cfg.eval, self.sources["eval"], r))
            self._eval_input_logged = True
        metrics = {f"{prefix}nanobeir_mean_ndcg_at_10": r["ndcg_at_10"]}
        metrics.update({f"{prefix}nanobeir_{n}_ndcg_at_10": v for n, v in r["per_dataset_ndcg_at_10"].items()})
        all_metrics = json.loads((output.dir / "metrics.json").read_text())
        metrics.update({f"{prefix}nanobeir/{metric_name(k)}": v for k, v in all_metrics.items()})
        self._metrics(metrics)
        for key in ("backend", "backend_version"):  # which library computed these numbers, at which version
            self.client.set_tag(self.run_id, f"{prefix}eval.{key}", str(r.get(key, "unknown")))
        for name in ("metrics.json", "per_query.json"):
            self.client.log_artifact(self.run_id, str(output.dir / name), artifact_path)

    def _metrics(self, values: dict[str, float]) -> None:
        metrics = [Metric(metric_name(k), float(v), _now_ms(), 0) for k, v in values.items()]
        for i in range(0, len(metrics), 500):  # log_batch takes at most 1000 entities
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 500])


# What each stage's result logs into the run: every stage of the table (pipeline.graph) has an entry, checked when this
# module loads, so a stage added without one fails at import, not after it ran
STAGE_LOGS: dict[str, Callable[[PipelineRun, StageOutput], None]] = {
    "prepare_data": PipelineRun._log_prepare_data,
    "prepare_dev": PipelineRun._log_prepare_dev,
    "prepare_test": lambda run, output: run._log_prepare_dev(output, "test"),
    "baseline": PipelineRun._log_baseline,
    "dev_baseline": PipelineRun._log_dev_baseline,
    "test_baseline": lambda run, output: run._log_dev_baseline(output, "test"),
    "mine_negatives": PipelineRun._log_mine_negatives,
    "finetune": PipelineRun._log_finetune,
    "evaluate": PipelineRun._log_evaluate,
    "dev_evaluate": PipelineRun._log_dev_evaluate,
    "test_evaluate": lambda run, output: run._log_dev_evaluate(output, "test"),
    "model_card": PipelineRun._log_model_card,
}
require_every_stage(STAGE_LOGS, "pipeline.tracking.run.STAGE_LOGS")


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
        interrupted = _newest_run(client, store.experiment_id, key, ("RUNNING", "KILLED"))
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
            client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
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
        "benchmark": label(cfg.eval),  # the general benchmark the nanobeir_* metrics hold: NanoBEIR or MTEB (tasks)
        "pipeline.config_hash": key,
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


def _newest_run(client: MlflowClient, exp_id: str, key: str, statuses: tuple[str, ...]) -> Run | None:
    """The newest run of `key` (tag `pipeline.config_hash`) in the experiment whose status is one of `statuses`."""
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`pipeline.config_hash` = '{key}'", order_by=["attributes.start_time DESC"]
    )
    return next((run for run in runs if run.info.status in statuses), None)
