"""Typed (structured) configs: one dataclass per config group, registered with Hydra's ConfigStore.

Types and enums fail at compose time (`finetune.r=abc`, `train.precision=fp8`); the range and existence checks
that a type cannot express live in `pipeline.validate` and run before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# The finetune group's schemas, one per method, live in pipeline.adapter_configs (re-exported here)
from pipeline.adapter_configs import FinetuneConfig, Method, register_adapter_configs  # noqa: F401


class LossName(str, Enum):
    cached_mnrl = "cached_mnrl"  # CachedMultipleNegativesRankingLoss: large batches in constant memory
    mnrl = "mnrl"  # MultipleNegativesRankingLoss: the loss the published numbers were trained with


class Precision(str, Enum):
    auto = "auto"  # bf16 where CUDA supports it, else fp16 on CUDA, else fp32
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ModelDtype(str, Enum):
    """The dtype the model's weights load and train in (`torch_dtype`): whatever the checkpoint stores.

    float32 keeps fp32 master weights in both arms: a full fine-tune's small updates do not round away in bf16 while
    LoRA's zero-initialised B does not care (train.precision stays the autocast of the forward pass)."""

    float32 = "float32"
    bfloat16 = "bfloat16"  # both arms train without fp32 master weights: not a comparison of the methods alone
    float16 = "float16"


class EvalBackend(str, Enum):
    sentence_transformers = "sentence_transformers"  # NanoBEIREvaluator
    mteb = "mteb"  # mteb.evaluate on mteb's NanoBEIR tasks (pipeline.evaluation.mteb_backend)


class EvalPrecision(str, Enum):
    """How the evaluate stage scores the fine-tuned model on NanoBEIR (the base model is always scored in fp32)."""

    fp32 = "fp32"  # the saved model reloaded (an adapter merged) and encoded in fp32
    # under bf16 autocast, an adapter attached, not merged: as a script scores its in-memory model after bf16 training
    # (accelerate leaves the trained model's forward in autocast), as the published 0.4705 / 0.4728 were scored
    autocast = "autocast"


@dataclass
class ModelConfig:
    name: str = MISSING  # Hub id or local dir
    revision: str | None = None
    max_seq_length: int | None = None  # None keeps the model's own limit
    trust_remote_code: bool = False
    dtype: ModelDtype = ModelDtype.float32  # training and evaluation load the weights in this dtype (pipeline.models)
    attn_implementation: str | None = None  # None: the library's default; sdpa, eager, flash_attention_2 when asked
    card_language: str = "en"
    card_license: str = "apache-2.0"
    card_model_name: str | None = None


class SamplingStrategy(str, Enum):
    top = "top"  # the best-scoring candidates that pass the filters
    random = "random"  # a draw (seed data.seed) among them


@dataclass
class MineConfig:
    """sentence-transformers' `mine_hard_negatives` with the base model over the training rows' answers (the stage
    `mine_negatives`, pipeline.stages.mine_negatives); its arguments by the library's names."""

    enabled: bool = False
    num_negatives: int = 1  # negative columns per row; each adds batch_size texts to every training step
    range_min: int = 0  # skip the best range_min candidates (the likeliest unlabelled positives)
    range_max: int | None = None  # candidates up to this rank; None: the library's (from num_negatives and filters)
    absolute_margin: float | None = None  # keep a candidate scoring at most positive - absolute_margin
    relative_margin: float | None = 0.05  # ... at most positive - |positive| * relative_margin (NV-Retriever's 95%)
    max_score: float | None = None  # drop candidates scoring above this
    sampling_strategy: SamplingStrategy = SamplingStrategy.top
    batch_size: int = 64  # encoding batch


@dataclass
class DataConfig:
    path: str = MISSING  # Hub id or local dir in the Hub layout
    name: str | None = None  # dataset config name
    revision: str | None = None
    split: str = "train"
    question_column: str = "question"
    answer_column: str = "answer"
    eval_size: int = 10_000
    train_size: int | None = None  # None: every row left after the split
    seed: int = 12
    # The in-domain dev set (pipeline.evaluation.dev), built from the held-out rows; what a sweep selects on
    dev_queries: int = 1_000  # held-out questions used as dev queries (capped: 10,000 would slow every evaluation)
    dev_corpus: int = 5_000  # held-out answers in the dev corpus: the dev queries' own answers first, then others
    dev_distractors: int = 0  # training answers sampled (seed `seed`) into the dev corpus as extra distractors
    # The in-domain test set: the last test_size held-out pairs, built as the dev set is (its sizes, its distractors),
    # disjoint from training and dev by content; never selected on; the in-domain verdict's data. 0: none
    test_size: int = 1_000
    # Hard negatives (pipeline.negatives): the dataset's own columns, in order; a column of lists gives one negative per
    # item (each row the same count). They become negative_1..n after the answer; None: pairs only
    negative_columns: list[str] | None = None
    mine: MineConfig = field(default_factory=MineConfig)  # the optional mine_negatives stage


@dataclass
class TrainConfig:
    loss: LossName = LossName.cached_mnrl
    # CachedMNRL's gradient-cache chunk (memory, not results): "auto" picks it per batch from free memory, with no
    # cache at all where the whole batch fits (pipeline.losses); an integer (as a string: Hydra cannot type a union)
    # keeps sentence-transformers' CachedMultipleNegativesRankingLoss at that size, as the recipe does
    mini_batch_size: str = "auto"
    epochs: float = 1.0
    max_steps: int | None = None  # None: run `epochs`
    batch_size: int = 64
    eval_batch_size: int | None = None  # None: batch_size
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    precision: Precision = Precision.auto
    # Instruction prompts, one value for training and every evaluation (dev, NanoBEIR): "auto" the model's own (its
    # query prompt on the question column, its document prompt on the answer and negative columns), "none", or
    # {query: "...", document: "..."} (pipeline.models.prompts_of)
    prompts: Any = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward (non-reentrant): memory, not results
    eval_steps: int | None = None  # None: evaluate only at the end of training
    save_steps: int | None = 100  # checkpoint every N steps, to resume after a kill; None: no checkpoints
    save_total_limit: int = 2
    logging_steps: int = 25
    seed: int = 12


def mini_batch_size(value: str | int) -> int | None:
    """`train.mini_batch_size` as the loss takes it: None for auto, the integer, or 0 where it is neither."""
    text = str(value).strip()
    if text == "auto":
        return None
    return int(text) if text.isdigit() and int(text) >= 1 else 0


@dataclass
class EvalConfig:
    dataset_id: str = "sentence-transformers/NanoBEIR-en"  # Hub id or local dir in the NanoBEIR layout
    revision: str | None = None  # of a Hub dataset_id: branch, tag or commit SHA (None: main), pinned at run start
    datasets: list[str] | None = None  # NanoBEIR short names; None: all 13
    batch_size: int = 64
    during_training: bool = True  # run the NanoBEIR evaluator at eval_steps, as the recipe does
    backend: EvalBackend = EvalBackend.sentence_transformers  # which library computes the evaluate stages' NDCG@10
    precision: EvalPrecision = EvalPrecision.fp32  # the fine-tuned model's NanoBEIR scoring (EvalPrecision)
    # The general benchmark instead of NanoBEIR: MTEB retrieval tasks by mteb's names (e.g. [SciFact, FiQA2018]),
    # evaluated through mteb on each task's first eval split; None: NanoBEIR (dataset_id, datasets, backend above)
    tasks: list[str] | None = None
    task_dirs: dict[str, str] = field(default_factory=dict)  # task -> a local copy of its Hub dataset (offline)


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: sqlite DB under paths.outputs
    experiment: str = "lora-vs-full"
    run_name: str | None = None  # None: from the method and overrides, e.g. lora-r16-a32
    system_metrics: bool = True  # MLflow's system metrics (CPU, memory, GPU where found) on the run, every 10 s


@dataclass
class PathsConfig:
    outputs: str = "outputs"


@dataclass
class RunConfig:
    until: str | None = None  # stop after this stage (e.g. prepare_data); None: the whole DAG
    skip_finished: bool = True  # in a sweep, a job whose config already has a FINISHED run reuses it instead
    # Recompute these stages and every stage after them, even when cached: a stage name (run.force=finetune), a list
    # (run.force=[baseline,finetune]) or `all`; a forced sweep job never reuses a finished run
    force: Any = None


@dataclass
class HubConfig:
    push: bool = False  # publish the trained adapter or model, with its completed card, after the model_card stage
    repo_id: str | None = None  # "<user or org>/<name>" on the Hugging Face Hub
    private: bool = False  # create the repo private (an existing repo keeps its visibility)


@dataclass
class PublishedConfig:
    """A recipe's published NanoBEIR mean NDCG@10, for the report's published-vs-ours table (pipeline.report.published).

    Set by the experiments that run a recipe as published (conf/published/); a run with it is a published-recipe run
    (named `recipe-...`), not a protocol run. It is not part of a run's identity (pipeline.tracking.identity.RUN_ONLY)."""

    source: str = MISSING  # where the numbers are published
    ndcg: dict[str, float] = field(default_factory=dict)  # finetune.method -> published NanoBEIR mean NDCG@10
    # The publication's settings, as config keys of ours (nested: {eval: {batch_size: 1024}}); the report names each
    # run's setting that differs from them
    recipe: dict[str, Any] = field(default_factory=dict)


class Fsdp(str, Enum):
    """Which arms shard their weights, gradients and AdamW states across a job's processes (FSDP full shard) instead of
    replicating them (DDP): for models whose full fine-tune (~16 bytes per parameter) does not fit one device."""

    off = "off"  # DDP for both arms
    full = "full"  # the full arm sharded, the adapter (whose trainable state is small) under DDP
    both = "both"


@dataclass
class LaunchConfig:
    """How a job runs, not what it computes: no stage key or run identity depends on it (pipeline.launch.torchrun)."""

    # Processes per job (one per GPU), under torchrun: train.batch_size stays the global batch (each process takes
    # batch_size / N rows; in-batch negatives are gathered across all of them), so results do not depend on N
    processes_per_job: int = 1
    fsdp: Fsdp = Fsdp.off  # with processes_per_job > 1: which arms train fully sharded (FSDP) instead of under DDP


def sharded(cfg) -> bool:
    """Whether this run's arm trains under FSDP (`launch.fsdp`: the full arm, or both arms) rather than DDP."""
    scope = Fsdp(cfg.launch.fsdp)
    return scope == Fsdp.both or (scope == Fsdp.full and Method(cfg.finetune.method) == Method.full)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: Any = MISSING  # the chosen method's schema (pipeline.adapter_configs), from conf/finetune/<method>.yaml
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    published: PublishedConfig | None = None  # a recipe's published numbers (conf/published/); None: a protocol run


def register_configs() -> None:
    """The primary config (`conf/config.yaml`) starts from this schema: every group is type-checked on compose."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    register_adapter_configs(store)


class RunError(RuntimeError):
    """A run that cannot start or go on (no room, nothing trained): the message is the one line the user sees."""


class ConfigError(ValueError):
    """A bad config value: the message is the one line the user sees (raised by `pipeline.validate`)."""
