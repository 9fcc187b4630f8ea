"""Stage 3: NDCG@10 of the base model (baseline) and of the fine-tuned one, on NanoBEIR (the general test set: mean,
per dataset and per query), on the in-domain dev set (what a sweep selects on) and on the in-domain test set.

The numbers come from `pipeline.evaluation` (sentence-transformers' NanoBEIREvaluator, or mteb with eval.backend=mteb).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import EvalConfig, ModelConfig
from pipeline.evaluation.benchmark import evaluate
from pipeline.evaluation.dev import evaluate_dev
from pipeline.evaluation.precision import merged_for, scoring_precision
from pipeline.models import load_model, prompts_of


def evaluate_baseline(
    model_cfg: ModelConfig, eval_cfg: EvalConfig, prompts, out: Path, cache_dir: Path | None = None
) -> dict:
    """The base model before any training: the reference every fine-tune is compared with.

    `prompts`: train.prompts, resolved against the loaded model as training resolves it (`prompts_of`): every
    evaluation encodes queries and documents with the prompts the fine-tunes trained with."""
    model = load_model(model_cfg)
    return evaluate(model, eval_cfg, out, cache_dir, prompts=prompts_of(prompts, model))


def evaluate_finetuned(
    model_cfg: ModelConfig, eval_cfg: EvalConfig, prompts, finetune_dir: Path, out: Path, cache_dir: Path | None = None
) -> dict:
    """The fine-tuned model (full) or base + adapter merged (LoRA), loaded from the finetune stage's output, scored in
    fp32 or under bf16 autocast (eval.precision; an adapter then stays attached, as in a training script's memory)."""
    model = load_model(model_cfg, str(finetune_dir / "model"), merge=merged_for(eval_cfg.precision))
    with scoring_precision(eval_cfg.precision, model.device):
        return evaluate(model, eval_cfg, out, cache_dir, prompts=prompts_of(prompts, model))


def evaluate_dev_baseline(
    model_cfg: ModelConfig, eval_cfg: EvalConfig, prompts, dev_dir: Path, out: Path, split: str = "dev"
) -> dict:
    """The base model on an in-domain held-out set: the dev set (prepare_dev's output: the pairs prepare_data held out)
    or, `split="test"`, the in-domain test set (prepare_test's)."""
    model = load_model(model_cfg)
    return evaluate_dev(model, dev_dir, out, eval_cfg.batch_size, prompts_of(prompts, model), split)


def evaluate_dev_finetuned(
    model_cfg: ModelConfig, eval_cfg: EvalConfig, prompts, dev_dir: Path, finetune_dir: Path, out: Path, split="dev"
) -> dict:
    """The fine-tuned model (LoRA merged) on the same held-out set: the evaluator, prompts and precision of dev."""
    model = load_model(model_cfg, str(finetune_dir / "model"), merge=True)
    return evaluate_dev(model, dev_dir, out, eval_cfg.batch_size, prompts_of(prompts, model), split)
