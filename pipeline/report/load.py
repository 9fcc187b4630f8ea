"""A sweep's arms from MLflow: its parent run, its child runs (and the runs it reused), their per-query scores.

Reads MLflow only, never the pipeline's cache.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import schema
from pipeline.fingerprint import config_hash
from pipeline.report.stats import MeanCI, PairedTest
from pipeline.sweep.callbacks import sweep_runs
from pipeline.tracking.store import all_experiments, search_all_runs
from pipeline.tracking.uri import default_db_uri

MEAN = schema.BENCHMARK_MEAN  # per_dataset's key for the benchmark's mean, where only metrics were logged
SHOWN_SWEEP_IDS = 5
NOT_CONFIGURATION = ("train.seed", "tracking.run_name")  # runs that differ only here are seeds of one configuration


class SweepNotFound(LookupError):
    """No sweep matches the request; the message says what exists instead."""


@dataclass
class Arm:
    """One row of the report: a child run of the sweep, or the base model."""

    name: str
    method: str  # "full", "none" (the base model) or an adapter method: lora, dora, rslora, ia3, loha, lokr
    status: str
    run_id: str | None = None
    start_time: int = 0
    r: int | None = None
    alpha: int | None = None
    dropout: float | None = None
    params: dict[str, str] = field(default_factory=dict)  # the method's hyper-parameters (finetune.* but method)
    error: str | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    weights_mb: float | None = None
    lr: float | None = None
    seed: int | None = None
    configuration: str = ""  # the same for runs that differ only by seed
    dev: float = math.nan  # in-domain dev NDCG@10: what selection reads
    dev_delta: float = math.nan  # dev - base model's dev: what fine-tuning learned in domain (selection read it)
    in_domain: dict | None = None  # per-query NDCG@10 on the in-domain test set: what the in-domain verdict reads
    test_delta: float = math.nan  # in-domain test - base model's: what fine-tuning learned, never selected on
    nanobeir_delta: float = math.nan  # NanoBEIR - base model's: what it forgot (or gained) out of domain
    benchmark: str = "NanoBEIR"  # the general benchmark it was scored on (the run's `benchmark` tag)
    dataset_deltas: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)  # train_seconds, samples/s, peak_memory_mb, ...
    per_query: dict | None = None
    per_dataset: dict[str, float] = field(default_factory=dict)
    ndcg: MeanCI | None = None
    delta: PairedTest | None = None  # run vs run: the selected full fine-tune's run at the same seed, same queries
    train_loss: float | None = None  # the final train loss (a diverged run: not finite, or huge)
    prompts: dict[str, str] = field(default_factory=dict)  # query / document prompt of training and every evaluation
    trainable_dtype: str | None = (
        None  # the dtype its trained parameters had (model.dtype float32: fp32 master weights)
    )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "run_id": self.run_id,
            "method": self.method,
            "status": self.status,
            "error": self.error,
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "weights_mb": self.weights_mb,
            "lr": self.lr,
            "seed": self.seed,
            "configuration": self.configuration,
            schema.DEV: none_if_nan(self.dev),  # comparison.json keeps the runs' metric names
            schema.split_delta("dev"): none_if_nan(self.dev_delta),
            schema.split_delta("test"): none_if_nan(self.test_delta),
            schema.benchmark_delta(self.benchmark): none_if_nan(self.nanobeir_delta),
            "cost": self.cost,
            "ndcg_at_10": no_nan(self.ndcg._asdict()) if self.ndcg else None,  # no CI without per-query scores
            "per_dataset_ndcg_at_10": self.per_dataset,
            "delta_vs_full": self.delta._asdict() if self.delta else None,  # run vs run (queries only)
            schema.TRAIN_LOSS: self.train_loss,
        }


def none_if_nan(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def no_nan(values: dict) -> dict:
    return {k: none_if_nan(v) if isinstance(v, float) else v for k, v in values.items()}


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the pipeline's default DB: sqlite:///<PIPELINE_OUTPUTS or outputs>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_db_uri()


def sweep_id_of(run: Run) -> str:
    return run.data.tags.get(schema.SWEEP_ID) or (run.info.run_name or run.info.run_id).removeprefix("sweep-")


def list_sweeps(client: MlflowClient, experiment_ids: list[str] | None = None) -> list[Run]:
    """Parent runs of sweeps (tag `pipeline.role=sweep`), newest first, across all experiments unless given."""
    query = f"tags.`{schema.ROLE}` = 'sweep'"
    return search_all_runs(client, query, experiment_ids, ["attributes.start_time DESC"])


def find_sweep(client: MlflowClient, sweep_id: str | None = None, experiment: str | None = None) -> Run:
    """The sweep's parent run: by id, else the newest sweep (in `experiment` if given, else in any experiment)."""
    experiment_ids = None
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = ", ".join(e.name for e in all_experiments(client)) or "none"
            raise SweepNotFound(f"no experiment named {experiment!r}; existing experiments: {names}")
        experiment_ids = [found.experiment_id]
    sweeps = list_sweeps(client, experiment_ids)
    where = f" in experiment {experiment!r}" if experiment is not None else ""
    if sweep_id is None:
        if not sweeps:
            raise SweepNotFound(f"no sweep{where} (no run tagged pipeline.role=sweep); run a sweep first")
        return sweeps[0]
    for run in sweeps:
        if sweep_id_of(run) == sweep_id:
            return run
    ids = [sweep_id_of(run) for run in sweeps]
    shown = ", ".join(ids[:SHOWN_SWEEP_IDS]) + (
        f" (and {len(ids) - SHOWN_SWEEP_IDS} more)" if len(ids) > SHOWN_SWEEP_IDS else ""
    )
    raise SweepNotFound(f"no sweep with id {sweep_id!r}{where}; existing sweep ids, newest first: {shown or 'none'}")


def open_client(uri: str) -> MlflowClient:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact read otherwise
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise SweepNotFound(
            f"no MLflow database at {uri[len('sqlite:///') :]}; run a sweep first or pass --tracking-uri"
        )
    return MlflowClient(uri)


def load_arms(client: MlflowClient, parent: Run, warnings: list[str]) -> tuple[list[Arm], Arm | None]:
    """The sweep's child runs as arms, and the base model's arm from their baseline artifacts and metrics."""
    children = sweep_runs(client, parent.info.run_id)  # its jobs, and the finished runs it reused
    arms, baselines, baseline_metrics, baseline_dev, baseline_in_domain = [], [], {}, math.nan, None
    for run in children:
        arm = _arm(run)
        arms.append(arm)
        if arm.status != "FINISHED":
            continue
        arm.per_query = _read_json(client, run.info.run_id, schema.PER_QUERY)
        if arm.per_query is None:
            warnings.append(f"{arm.name}: no {schema.PER_QUERY} artifact; mean from its metrics, without CI or test")
        else:
            arm.per_dataset = _per_dataset(arm.per_query)
        arm.in_domain = _read_json(client, run.info.run_id, schema.IN_DOMAIN_PER_QUERY)  # None: no in-domain test set
        baseline_pq = _read_json(client, run.info.run_id, schema.BASELINE_PER_QUERY)
        if baseline_pq is not None:
            baselines.append((arm.name, baseline_pq))
        if baseline_in_domain is None:
            baseline_in_domain = _read_json(client, run.info.run_id, schema.IN_DOMAIN_BASELINE_PER_QUERY)
        benchmark = run.data.tags.get(schema.BENCHMARK, schema.NANOBEIR)
        baseline_metrics = baseline_metrics or _dataset_metrics(run.data.metrics, schema.BASELINE, benchmark)
        if math.isnan(baseline_dev):
            baseline_dev = run.data.metrics.get(schema.BASELINE + schema.DEV, math.nan)
    baseline = None
    if baselines:
        first_name, first = baselines[0]
        differing = [name for name, pq in baselines[1:] if pq != first]
        if differing:
            warnings.append(f"baseline per-query scores differ between {first_name} and {', '.join(differing)}")
        baseline = Arm("baseline", "none", "", per_query=first, per_dataset=_per_dataset(first))
    elif baseline_metrics:
        baseline = Arm("baseline", "none", "", per_dataset=baseline_metrics)
        warnings.append(f"no {schema.BASELINE_PER_QUERY} artifact; baseline from metrics, without CI or test")
    if baseline is not None:
        baseline.dev, baseline.in_domain = baseline_dev, baseline_in_domain
    if baseline is not None and baseline.per_query is None and MEAN in baseline.per_dataset:
        baseline.ndcg = MeanCI(baseline.per_dataset.pop(MEAN), math.nan, math.nan)
    for arm in arms:
        if arm.per_query is None and MEAN in arm.per_dataset:
            arm.ndcg = MeanCI(arm.per_dataset.pop(MEAN), math.nan, math.nan)
    return arms, baseline


def _arm(run: Run) -> Arm:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    method = (
        tags.get(schema.METHOD) or params.get("finetune.method") or ("full" if run.info.run_name == "full" else "lora")
    )
    adapter = is_adapter(method)
    benchmark = tags.get(schema.BENCHMARK, schema.NANOBEIR)  # its metrics are named after it
    arm = Arm(
        name=run.info.run_name or run.info.run_id,
        method=method,
        status=run.info.status,
        run_id=run.info.run_id,
        start_time=run.info.start_time or 0,
        r=_number(params.get("finetune.r"), int) if adapter else None,
        alpha=_number(params.get("finetune.alpha"), int) if adapter else None,
        dropout=_number(params.get("finetune.dropout"), float) if adapter else None,
        params={k.removeprefix("finetune."): v for k, v in sorted(params.items()) if _is_method_param(k)}
        if adapter
        else {},
        error=tags.get(schema.ERROR),
        trainable_params=_number(metrics.get("trainable_params"), int),
        total_params=_number(metrics.get("total_params"), int),
        weights_mb=metrics.get("weights_mb"),
        lr=_number(params.get("train.lr"), float),
        seed=_number(params.get("train.seed"), int),
        configuration=config_hash({k: v for k, v in params.items() if k not in NOT_CONFIGURATION}),
        dev=metrics.get(schema.DEV, math.nan),
        dev_delta=metrics.get(schema.split_delta("dev"), math.nan),
        test_delta=metrics.get(schema.split_delta("test"), math.nan),
        nanobeir_delta=metrics.get(schema.benchmark_delta(benchmark), math.nan),
        benchmark=benchmark,
        cost={k: metrics[k] for k in schema.COST if k in metrics},
        train_loss=metrics.get(schema.TRAIN_LOSS),
        prompts={
            side: tags[schema.prompt_tag(side)] for side in ("query", "document") if schema.prompt_tag(side) in tags
        },
        trainable_dtype=tags.get(schema.TRAINABLE_DTYPE),
    )
    if arm.status == "FINISHED":
        arm.per_dataset = _dataset_metrics(metrics, "", benchmark)  # replaced by the per-query means where they exist
        arm.dataset_deltas = {name: v for k, v in metrics.items() if (name := schema.dataset_of_delta(k, benchmark))}
    return arm


def is_adapter(method: str) -> bool:
    """Every method but the full fine-tune (and the base model's row) is an adapter, compared alike."""
    return method not in ("full", "none")


def _is_method_param(key: str) -> bool:
    return key.startswith("finetune.") and key != "finetune.method"


def _dataset_metrics(metrics: dict[str, float], prefix: str, benchmark: str) -> dict[str, float]:
    """{dataset: ndcg@10} from the `schema.dataset_metric(dataset, prefix, benchmark)` metrics, and the mean under
    MEAN."""
    found = {}
    for key, value in metrics.items():
        if (name := schema.dataset_of(key, prefix, benchmark)) is not None:
            found[MEAN if name == "mean" else name] = value
    return found


def _read_json(client: MlflowClient, run_id: str, path: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text())


def _per_dataset(per_query: dict) -> dict[str, float]:
    return {name: sum(scores.values()) / len(scores) for name, scores in sorted(per_query.items()) if scores}


def _number(value, kind):
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if kind is int and number.is_integer() else kind(number)


def ordered(arms: list[Arm]) -> list[Arm]:
    """Adapters, then the full fine-tune(s), then anything else; within them by r, alpha, learning rate, seed."""

    def key(arm: Arm):
        numbers = (arm.r, arm.alpha, arm.lr, arm.seed)
        group = 0 if is_adapter(arm.method) else 1 if arm.method == "full" else 2
        return (group, arm.method != "lora", arm.method), *(math.inf if x is None else x for x in numbers), arm.name

    return sorted(arms, key=key)


def recorded(parent: Run, key: str) -> str | None:
    """A value the sweep recorded on its parent run, as a tag or a param."""
    return parent.data.tags.get(key) or parent.data.params.get(key)


def fresh_order_of(parent: Run) -> list[int] | None:
    """The fresh seeds in the order make decide trains them (`decide.seeds`), None when not recorded."""
    value = recorded(parent, schema.FRESH_SEEDS)
    return None if value is None else [int(float(x)) for x in value.split(",") if x.strip()]


def grid_seeds_of(parent: Run) -> set[int] | None:
    """The seeds the grid trained (`sweep.grid_seeds`, comma-separated), None when not recorded."""
    value = recorded(parent, schema.GRID_SEEDS)
    if value is None:
        return None
    return {int(float(x)) for x in value.replace("[", "").replace("]", "").split(",") if x.strip()}
