"""The general benchmark, the out-of-domain half of the verdict: NanoBEIR (default) or a list of MTEB retrieval tasks.

`evaluate` is the one entry point of the evaluate stages. It scores NanoBEIR through sentence-transformers'
`NanoBEIREvaluator` (`eval.backend=sentence_transformers`) or through mteb (`eval.backend=mteb`), or the MTEB retrieval
tasks of `eval.tasks` through mteb (each from the Hub, or from the local copy `eval.task_dirs` names). Every path writes
metrics.json and per_query.json ({set: {query id: NDCG@10}}) and returns the same summary, so what reads the sets
downstream (per-set Δ, heterogeneity, the "one set drives it" flag) is the same whichever benchmark they came from.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import schema
from pipeline.config import EvalBackend, EvalConfig


def label(eval_cfg: EvalConfig) -> str:
    """The benchmark's name in a sentence: "NanoBEIR", or "MTEB (SciFact, FiQA2018)"."""
    return f"MTEB ({', '.join(eval_cfg.tasks)})" if eval_cfg.tasks else schema.NANOBEIR


def evaluate(
    model, eval_cfg: EvalConfig, out: Path, cache_dir: Path | None = None, prompts: dict[str, str] | None = None
) -> dict:
    """NDCG@10 of `model` on the general benchmark (mean and per set, and its `label` as "benchmark"), per-query
    scores under `out`.

    `prompts`: the query and document prompts training used (`pipeline.models.prompts_of`); None: the model's own.
    """
    return {**_scores(model, eval_cfg, out, cache_dir, prompts), "benchmark": label(eval_cfg)}


def _scores(model, eval_cfg: EvalConfig, out: Path, cache_dir: Path | None, prompts: dict[str, str] | None) -> dict:
    if not eval_cfg.tasks and EvalBackend(eval_cfg.backend) == EvalBackend.sentence_transformers:
        from pipeline.evaluation.st_backend import evaluate as evaluate_st

        return evaluate_st(model, eval_cfg, out, cache_dir, prompts=prompts)
    from pipeline.evaluation.mteb_backend import evaluate_mteb, evaluate_tasks

    if prompts is not None:  # mteb encodes through encode_query / encode_document: the model's own prompts
        model.prompts = {**model.prompts, **prompts}
    if eval_cfg.tasks:
        return evaluate_tasks(model, eval_cfg, out, cache_dir)
    return evaluate_mteb(model, eval_cfg, out, cache_dir)
