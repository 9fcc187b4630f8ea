"""NanoBEIR NDCG@10 of a model through sentence-transformers: mean and per dataset, with per-query scores.

sentence-transformers' `NanoBEIREvaluator` computes the metrics; its ranked predictions are re-scored per query with
pytrec_eval (`ndcg_cut_10`), whose mean must equal the evaluator's NDCG@10.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytrec_eval
import sentence_transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import NanoBEIREvaluator, nano_beir

from pipeline import schema
from pipeline.config import EvalBackend, EvalConfig
from pipeline.evaluation.nanobeir import dataset_table
from pipeline.fingerprint import datasets_cache


def build_evaluator(eval_cfg: EvalConfig, prompts: dict[str, str] | None = None, **kwargs) -> NanoBEIREvaluator:
    """NanoBEIREvaluator on the Hub's NanoBEIR-en (or a local dir in its layout) for the configured datasets.

    `prompts`: {"query": ..., "document": ...} as training used them (`pipeline.models.prompts_of`; "" is no prompt);
    None: the model's own prompts, the evaluator's default.

    A local dir may hold sets beyond NanoBEIR's 13 (the offline demo's `pydocs`): their names are registered with
    the evaluator's name table, which is how it finds a dataset's `Nano<Name>` split.
    """
    for short, human in dataset_table(eval_cfg.dataset_id).items():
        nano_beir.DATASET_NAME_TO_HUMAN_READABLE.setdefault(short, human)
    return NanoBEIREvaluator(
        dataset_names=list(eval_cfg.datasets) if eval_cfg.datasets else None,
        dataset_id=eval_cfg.dataset_id,
        batch_size=eval_cfg.batch_size,
        query_prompts=prompts["query"] if prompts else None,  # a string: every dataset's queries
        corpus_prompts=prompts["document"] if prompts else None,
        **kwargs,
    )


def evaluate(
    model: SentenceTransformer,
    eval_cfg: EvalConfig,
    out: Path,
    cache_dir: Path | None = None,
    evaluator: NanoBEIREvaluator | None = None,
    prompts: dict[str, str] | None = None,
) -> dict:
    """Run NanoBEIR on `model`; write metrics.json and per_query.json under `out`; return the headline numbers.

    `evaluator`: one built by `build_evaluator(eval_cfg, write_predictions=True)`, to reuse across models.
    `prompts`: the query and document prompts training used (see `build_evaluator`).
    Whatever `eval_cfg.backend` says: `pipeline.evaluation.benchmark.evaluate` is what picks a backend.
    """
    out.mkdir(parents=True, exist_ok=True)
    if evaluator is None:
        with datasets_cache(cache_dir) if cache_dir else nullcontext():
            evaluator = build_evaluator(eval_cfg, prompts, write_predictions=True)  # ranked lists, for per-query scores
    metrics = evaluator(model, output_path=str(out))
    # e.g. "NanoBEIR_mean_cosine_ndcg@10": the model's own similarity function
    primary = evaluator.primary_metric
    score_function = primary[len(evaluator.name) + 1 :].split("_ndcg@")[0]

    per_dataset, per_query = {}, {}
    for ir in evaluator.evaluators:
        short = ir.name[len("Nano") :].lower()
        per_dataset[short] = metrics[f"{ir.name}_{score_function}_ndcg@10"]
        per_query[short] = per_query_ndcg10(ir, out, score_function)
        pytrec_mean = sum(per_query[short].values()) / len(per_query[short])
        if abs(pytrec_mean - per_dataset[short]) > 1e-6:
            raise RuntimeError(
                f"pytrec_eval NDCG@10 {pytrec_mean:.6f} != evaluator's {per_dataset[short]:.6f} on {ir.name}"
            )

    summary = {
        "ndcg_at_10": metrics[primary],
        "per_dataset_ndcg_at_10": per_dataset,
        "score_function": score_function,
        "dataset_id": eval_cfg.dataset_id,
        "queries": {k: len(v) for k, v in per_query.items()},
        "backend": EvalBackend.sentence_transformers.value,
        "backend_version": sentence_transformers.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / schema.PER_QUERY_FILE).write_text(json.dumps(per_query, indent=2))
    return summary


def per_query_ndcg10(ir, out: Path, score_function: str) -> dict[str, float]:
    """NDCG@10 of every query with pytrec_eval, from the evaluator's predictions in its own ranking order."""
    path = out / ir.predictions_file.replace(".jsonl", f"_{score_function}.jsonl")
    run = {}
    with open(path) as f:
        for line in f:
            pred = json.loads(line)
            # Scores by rank, so trec_eval's tie-breaking cannot reorder what the evaluator ranked
            n = len(pred["results"])
            run[str(pred["query_id"])] = {str(hit["corpus_id"]): float(n - i) for i, hit in enumerate(pred["results"])}
    qrels = {str(q): {str(d): 1 for d in docs} for q, docs in ir.relevant_docs.items() if str(q) in run}
    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"}).evaluate(run)
    # A query that retrieved nothing relevant still counts, with 0
    return {q: scores.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels}
