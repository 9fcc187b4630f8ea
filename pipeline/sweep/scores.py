"""What a sweep's job returns to the sweeper through Hydra's `JobReturn`: its run and scores (`JobScores`).

The grid's selection reads `dev`; `make decide`'s rounds read `benchmark`, `in_domain`, `train_loss` and `per_query`,
so a job's scores reach the verdict without a round trip to MLflow. `float(scores)` is the dev score: what Hydra's
Optuna sweeper maximises (it takes any float-castable return value). Light: no MLflow, no torch at import.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobStatus

from pipeline import schema

if TYPE_CHECKING:
    from mlflow.entities import Run


@dataclass(frozen=True)
class JobScores:
    run_id: str | None = None  # its MLflow run (None: the job failed before a run opened)
    dev: float = math.nan  # in-domain dev NDCG@10: what selection reads (nan: failed, or no dev stage ran)
    benchmark: float = math.nan  # the general benchmark's mean NDCG@10: what the verdict compares
    in_domain: float = math.nan  # the in-domain test NDCG@10 (data.test_size; nan without a test set)
    train_loss: float | None = None  # the final train loss (a blow-up is a diverged seed); None: not trained
    per_query: dict[str, dict[str, float]] | None = None  # the benchmark's {set: {query id: NDCG@10}}: target queries

    def __float__(self) -> float:
        return self.dev


def from_outputs(run_id: str, outputs: dict[str, Any]) -> JobScores:
    """A finished run's scores from its stages' outputs (`pipeline.dag.run_dag`), as its run logged them."""

    def score(stage: str) -> float:
        return float(outputs[stage].result["ndcg_at_10"]) if stage in outputs else math.nan

    per_query = None
    if "evaluate" in outputs:
        per_query = json.loads((Path(outputs["evaluate"].dir) / schema.PER_QUERY_FILE).read_text())
    loss = outputs["finetune"].result.get("train_loss") if "finetune" in outputs else None
    return JobScores(run_id, score("dev_evaluate"), score("evaluate"), score("test_evaluate"), loss, per_query)


def from_run(run: Run, tracking_uri: str) -> JobScores:
    """A FINISHED run's scores from MLflow: a job that reuses it (`run.skip_finished`) returns what it logged."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    metrics = run.data.metrics
    try:
        path = download_artifacts(run_id=run.info.run_id, artifact_path=schema.PER_QUERY, tracking_uri=tracking_uri)
        per_query = json.loads(Path(path).read_text())
    except (MlflowException, OSError):  # a run that did not evaluate the benchmark (run.until before evaluate)
        per_query = None
    return JobScores(
        run.info.run_id,
        metrics.get(schema.DEV, math.nan),
        metrics.get(schema.benchmark_mean(run.data.tags.get(schema.BENCHMARK, schema.NANOBEIR)), math.nan),
        metrics.get(schema.IN_DOMAIN, math.nan),
        metrics.get(schema.TRAIN_LOSS),
        per_query,
    )


def returned(result) -> JobScores:
    """The scores a job returned in its Hydra `JobReturn`; empty (all nan) for a job that raised or returned none."""
    if result.status is not JobStatus.COMPLETED:  # a job that raised: no score, not selectable
        return JobScores()
    value = result.return_value
    return value if isinstance(value, JobScores) else JobScores()
