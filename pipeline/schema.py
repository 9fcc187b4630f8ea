"""The MLflow schema: the metric, tag and artifact names that pipeline runs, a sweep's parent run and the report write
and read. Writers (`pipeline.tracking`, `pipeline.sweep.decider`, `pipeline.report.compare`) and readers (the report,
`make decide`, the UI's view) import them from here; no other module spells them. Pure: no MLflow, no Hydra.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------------- a run's metrics
# The general benchmark's metrics are named after it (`benchmark_prefix`): `nanobeir_*` for NanoBEIR, `mteb_*` for the
# MTEB tasks of `eval.tasks`; the run's tag BENCHMARK holds its name, so a reader knows which names to read
NANOBEIR = "NanoBEIR"  # the default general benchmark's name (`pipeline.evaluation.benchmark.label`)
BASELINE = "baseline_"  # the prefix of the base model's evaluation metrics (baseline_nanobeir_mean_ndcg_at_10, ...)
DEV = "dev_ndcg_at_10"  # the in-domain dev set: what sweeps select on and Optuna maximises
IN_DOMAIN = "test_ndcg_at_10"  # the in-domain test set (data.test_size): what the in-domain verdict reads
TRAIN_LOSS = "train_loss"  # the final train loss: a blow-up is a diverged seed
IN_TRAINING_EVAL = "eval_NanoBEIR"  # the trainer's prefix for the in-training evaluator's metrics
COST = ("trainable_params", "train_seconds", "train_samples_per_second", "peak_memory_mb", "weights_mb")
_NDCG = "_ndcg_at_10"
_DELTA = "_delta_vs_base"


def benchmark_prefix(benchmark: str = NANOBEIR) -> str:
    """The general benchmark's metric prefix, from its name: "nanobeir" for NanoBEIR, "mteb" for MTEB tasks."""
    return "nanobeir" if benchmark == NANOBEIR else "mteb"


def benchmark_mean(benchmark: str = NANOBEIR, prefix: str = "") -> str:
    """The verdict's score, the mean NDCG@10 over the benchmark's sets (`nanobeir_mean_ndcg_at_10`); `prefix`
    BASELINE: the base model's."""
    return f"{prefix}{benchmark_prefix(benchmark)}_mean{_NDCG}"


def benchmark_delta(benchmark: str = NANOBEIR) -> str:
    """What fine-tuning forgot (or gained) out of domain: the mean's change from the base model."""
    return f"{benchmark_prefix(benchmark)}{_DELTA}"


BENCHMARK_MEAN = benchmark_mean()  # NanoBEIR's, the default benchmark (the published numbers' metric)


def split_metric(split: str) -> str:
    """An in-domain split's NDCG@10 (`dev_ndcg_at_10`, `test_ndcg_at_10`)."""
    return f"{split}{_NDCG}"


def split_delta(split: str) -> str:
    """An in-domain split's change from the base model (`dev_delta_vs_base`, `test_delta_vs_base`)."""
    return f"{split}{_DELTA}"


def dataset_metric(dataset: str, prefix: str = "", benchmark: str = NANOBEIR) -> str:
    """One benchmark set's NDCG@10 (`nanobeir_NanoSciFact_ndcg_at_10`; `prefix` BASELINE: the base model's)."""
    return f"{prefix}{benchmark_prefix(benchmark)}_{dataset}{_NDCG}"


def dataset_delta(dataset: str, benchmark: str = NANOBEIR) -> str:
    """One benchmark set's change from the base model (`nanobeir_NanoSciFact_delta_vs_base`)."""
    return f"{benchmark_prefix(benchmark)}_{dataset}{_DELTA}"


def dataset_of(metric: str, prefix: str = "", benchmark: str = NANOBEIR) -> str | None:
    """The set a `dataset_metric(dataset, prefix, benchmark)` name is of ("mean" for the benchmark's mean), None for
    any other name."""
    head, tail = f"{prefix}{benchmark_prefix(benchmark)}_", _NDCG
    if not metric.startswith(head) or not metric.endswith(tail) or len(metric) <= len(head) + len(tail):
        return None
    return metric[len(head) : -len(tail)]


def dataset_of_delta(metric: str, benchmark: str = NANOBEIR) -> str | None:
    """The set a `dataset_delta(dataset, benchmark)` name is of, None for any other name (the mean's delta too)."""
    head = f"{benchmark_prefix(benchmark)}_"
    if metric == benchmark_delta(benchmark) or not metric.startswith(head) or not metric.endswith(_DELTA):
        return None
    return metric[len(head) : -len(_DELTA)] or None


# ---------------------------------------------------------------------------------------------------- a run's tags
CONFIG_HASH = "pipeline.config_hash"  # the run's identity (`pipeline.tracking.identity.run_key`)
BENCHMARK = "benchmark"  # the general benchmark the run was scored on: "NanoBEIR" or "MTEB (SciFact, ...)"
METHOD = "method"
ERROR = "error"
TRAINABLE_DTYPE = "trainable_dtype"
SWEEP_ID = "sweep_id"
PARENT_RUN = "mlflow.parentRunId"
ROLE = "pipeline.role"  # "sweep" on a sweep's parent run


def prompt_tag(side: str) -> str:
    """The prompt training and every evaluation prepended on `side` ("query", "document")."""
    return f"prompt.{side}"


def stage_tag(stage: str) -> str:
    """A stage's status in the run ("ran", "cached")."""
    return f"stage.{stage}"


# --------------------------------------------------------------------------------------------------- a run's files
EVALUATION = "evaluation"  # the benchmark's metrics.json and per_query.json ({set: {query id: NDCG@10}})
BASELINE_EVALUATION = "evaluation/baseline"
PER_QUERY_FILE = "per_query.json"
METRICS_FILE = "metrics.json"
PER_QUERY = f"{EVALUATION}/{PER_QUERY_FILE}"
BASELINE_PER_QUERY = f"{BASELINE_EVALUATION}/{PER_QUERY_FILE}"


def split_evaluation(split: str, baseline: bool = False) -> str:
    """Where an in-domain split's per_query.json goes (`evaluation/test`, `evaluation/test_baseline`)."""
    return f"{EVALUATION}/{split}{'_baseline' if baseline else ''}"


IN_DOMAIN_PER_QUERY = f"{split_evaluation('test')}/{PER_QUERY_FILE}"  # {"test": {query: NDCG@10}}
IN_DOMAIN_BASELINE_PER_QUERY = f"{split_evaluation('test', baseline=True)}/{PER_QUERY_FILE}"

# ------------------------------------------------------------------------------------ a sweep's parent run (make decide)
SWEEP_OVERRIDES = "sweep.overrides"  # the sweep's command-line overrides
SWEEP_JOBS, SWEEP_REUSED_JOBS, SWEEP_FAILED_JOBS = "sweep.jobs", "sweep.reused_jobs", "sweep.failed_jobs"
REUSED = "sweep.reused.{parent_run_id}"  # on a FINISHED run that a later sweep reused instead of running it again
PREFIX_STAGE = "sweep.prefix.{}"  # a shared stage computed before the jobs: its status
GRID_SEEDS = "sweep.grid_seeds"  # the seeds the grid trained
EXTENDED = "sweep.extended"  # the grid edges make decide extended
FRESH_SEEDS = "decide.seeds"  # the fresh seeds in the order make decide trains them
DESIGN = "decide."  # + first, step, budget, margin, alpha, in_domain_margin, target: the design, for the replay
LOOKS_FILE = "decide/looks.json"
REPORT = "report"  # where the report (report.md, comparison.json, the plots) is logged on the parent run
VERDICT = "verdict"  # the answer (for both halves when the in-domain half exists: `combined`)
VERDICT_GENERAL = "verdict.general"
VERDICT_IN_DOMAIN = "verdict.in_domain"
VERDICT_REASON = "verdict.reason"
VERDICT_SENTENCE = "verdict.sentence"
VERDICT_IN_DOMAIN_SENTENCE = "verdict.in_domain.sentence"
VERDICT_LOOKS = "verdict.looks"
VERDICT_IN_DOMAIN_LOOKS = "verdict.in_domain.looks"
VERDICT_TARGET = "verdict.target"
VERDICT_RANK = "verdict.rank"
VERDICT_RANK_LABELS = "verdict.rank.labels"
VERDICT_ADAPTER = "verdict_adapter"  # the report's: the adapter configuration that faced the full fine-tune
VERDICT_DELTA = "verdict_delta_ndcg_at_10"  # the report's: the verdict's difference, adapter - full
VERDICT_MARGIN = "verdict_margin"
LOOK_METRIC = "verdict.look.{}"  # .format("delta" | "low" | "high"), at step = the look's index
IN_DOMAIN_LOOK_METRIC = "verdict.in_domain.look.{}"  # the in-domain verdict's looks, likewise


def seeds_tag(arm: str) -> str:
    """The fresh seeds an arm ("adapter", "full") trained, in training order."""
    return f"verdict.seeds_{arm}"


def run_ids_tag(arm: str) -> str:
    """The report's: the finished runs whose scores made up an arm ("adapter", "full") of the verdict."""
    return f"verdict_{arm}_run_ids"


def arm_mean(arm: str, benchmark: str = NANOBEIR) -> str:
    """The report's: an arm's ("adapter", "full") benchmark mean over its seeds, on the sweep's parent run."""
    return f"{arm}_{benchmark_mean(benchmark)}"
