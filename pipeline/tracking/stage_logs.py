"""What each stage's result logs into a pipeline's MLflow run (`PipelineRun.on_stage`): metrics, tags, dataset inputs
and artifacts, by the explicit mapping `STAGE_LOGS`, checked against the stage table when this module loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from pipeline import schema
from pipeline.evaluation.benchmark import label
from pipeline.fingerprint import eval_identity, sources
from pipeline.graph import require_every_stage
from pipeline.tracking.datasets import dev_input, evaluation_inputs, log_data_inputs, training_input
from pipeline.tracking.store import _now_ms, log_step, metric_name

if TYPE_CHECKING:  # the DAG pulls in torch; a sweep's finished-job check must not
    from pipeline.dag import StageOutput


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
        self.client.set_tag(self.run_id, schema.stage_tag(output.name), output.status)
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
        self._log_evaluation(output, prefix=schema.BASELINE, artifact_path=schema.BASELINE_EVALUATION)

    def _log_prepare_dev(self, output: StageOutput, split: str = "dev") -> None:
        r = output.result
        self._metrics({f"data_{name}": value for name, value in r.items()})  # data_dev_queries, data_test_dropped, ...
        rows = r[f"{split}_queries"]
        log_data_inputs(self.client, self.run_id, [dev_input(self.cfg.data, self.sources["data"], rows, split)])

    def _log_dev_baseline(self, output: StageOutput, split: str = "dev") -> None:
        self.base[split] = output.result
        self._metrics({schema.BASELINE + schema.split_metric(split): output.result["ndcg_at_10"]})
        per_query = str(output.dir / schema.PER_QUERY_FILE)
        self.client.log_artifact(self.run_id, per_query, schema.split_evaluation(split, baseline=True))

    def _log_dev_evaluate(self, output: StageOutput, split: str = "dev") -> None:
        """In-domain NDCG@10 on dev (what a sweep selects on) or on the test set (the in-domain verdict's), and what
        fine-tuning learned in-domain: the change from the base."""
        scores = {schema.split_metric(split): output.result["ndcg_at_10"]}
        if split in self.base:  # run.until=dev_evaluate runs it; otherwise the base model's score is there
            scores[schema.split_delta(split)] = output.result["ndcg_at_10"] - self.base[split]["ndcg_at_10"]
        self._metrics(scores)
        per_query = str(output.dir / schema.PER_QUERY_FILE)
        self.client.log_artifact(self.run_id, per_query, schema.split_evaluation(split))

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
                    entry = {k: v for k, v in entry.items() if not k.startswith(schema.IN_TRAINING_EVAL)}
                log_step(self.client, self.run_id, entry, int(entry.get("step", 0)))
        for key in ("device", "precision", "resumed_from", schema.TRAINABLE_DTYPE, "gradient_checkpointing"):
            self.client.set_tag(self.run_id, key, str(r.get(key)))
        # how many processes trained it (one per GPU), sharded or not; a summary from before either key: one, DDP
        self.client.set_tag(self.run_id, "processes", str(r.get("processes", 1)))
        self.client.set_tag(self.run_id, "fsdp", str(r.get("fsdp", False)))
        for side, prompt in (r.get("prompts") or {}).items():  # what training and every evaluation prepended
            self.client.set_tag(self.run_id, schema.prompt_tag(side), prompt or "(none)")
        cost = ("train_seconds", "train_samples_per_second", "peak_memory_mb")  # what the run cost
        sizes = ("total_params", "trainable_params", "trainable_percent", "weights_mb", "adapter_params")
        self._metrics({k: r[k] for k in sizes + cost if r.get(k) is not None})
        self.client.log_artifacts(self.run_id, str(output.dir / "model"), "model")

    def _log_evaluate(self, output: StageOutput) -> None:
        """NanoBEIR NDCG@10, and what fine-tuning forgot (or gained) out of domain: the change from the base."""
        self._log_evaluation(output, prefix="", artifact_path=schema.EVALUATION)
        if "nanobeir" not in self.base:  # run.until=evaluate: the base model was not evaluated in this run
            return
        r, base = output.result, self.base["nanobeir"]
        benchmark = label(self.cfg.eval)
        deltas = {schema.benchmark_delta(benchmark): r["ndcg_at_10"] - base["ndcg_at_10"]}
        for name, value in r["per_dataset_ndcg_at_10"].items():
            deltas[schema.dataset_delta(name, benchmark)] = value - base["per_dataset_ndcg_at_10"][name]
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
        benchmark = label(self.cfg.eval)  # the metrics are named after it: nanobeir_*, mteb_*
        metrics = {schema.benchmark_mean(benchmark, prefix): r["ndcg_at_10"]}
        metrics.update({schema.dataset_metric(n, prefix, benchmark): v for n, v in r["per_dataset_ndcg_at_10"].items()})
        all_metrics = json.loads((output.dir / schema.METRICS_FILE).read_text())
        group = f"{prefix}{schema.benchmark_prefix(benchmark)}"
        metrics.update({f"{group}/{metric_name(k)}": v for k, v in all_metrics.items()})
        self._metrics(metrics)
        for key in ("backend", "backend_version"):  # which library computed these numbers, at which version
            self.client.set_tag(self.run_id, f"{prefix}eval.{key}", str(r.get(key, "unknown")))
        for name in (schema.METRICS_FILE, schema.PER_QUERY_FILE):
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
require_every_stage(STAGE_LOGS, "pipeline.tracking.stage_logs.STAGE_LOGS")
