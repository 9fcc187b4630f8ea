"""`eval.backend=mteb`: the same NanoBEIR NDCG@10, computed by mteb 2's retrieval evaluation (`mteb.evaluate`).

Where the tasks come from (`build_tasks`):
- `eval.dataset_id` = sentence-transformers/NanoBEIR-en (the default): mteb's own registered NanoBEIR tasks
  (`NanoSciFactRetrieval`, ...), whose data mteb loads from the Hub (`mteb/Nano<Name>Retrieval`).
- a local dir in the NanoBEIR layout (offline runs), or any other Hub id in that layout: `LocalNanoRetrieval`, an
  `AbsTaskRetrieval` whose data is read from `corpus|queries|qrels/Nano<Name>.parquet` (a Hub id: with
  `datasets.load_dataset`, as sentence-transformers reads it) and whose metadata is copied from mteb's registered
  task of that name, so mteb runs exactly its own retrieval evaluation on the local copy.

And `eval.tasks` (`evaluate_tasks`, `retrieval_task`): any registered MTEB retrieval task in place of NanoBEIR, mteb's own
class on its first eval split, its data from the Hub or, `eval.task_dirs`, from a local copy of its Hub dataset that
mteb's own loader reads; the same per-query capture, files and summary.

Never stale: mteb's result cache keys on the model's name and revision, which a local or fine-tuned model does not
have (it is None, or the *base* model's name for a fine-tune), so a second model would be served the first one's
scores. Every call passes `cache=None` and `overwrite_strategy="always"`: mteb reads and writes no result cache.

Systematic differences from the sentence-transformers backend (`NanoBEIREvaluator`), and what is done about each;
`tests/evaluation/test_mteb_backend.py` tests every one, and `pipeline.evaluation.crosscheck` reports them:
1. Rounding: mteb rounds its aggregate scores to 5 decimals (`parse_metrics_from_scores`). The per-dataset NDCG@10
   here is the unrounded mean of mteb's own per-query pytrec_eval scores (captured through the task's
   `task_specific_scores` hook, which mteb calls with them); it is checked to round to mteb's reported score.
   metrics.json keeps mteb's numbers as mteb reports them.
2. Ties: sentence-transformers ranks equal scores by ascending corpus id; mteb hands the raw scores to pytrec_eval
   (trec_eval), which ranks them by *descending* doc id. Only exact ties differ, i.e. documents with identical
   embeddings (duplicate texts); this backend keeps mteb's tie order, since its number is meant to be mteb's, and
   the crosscheck re-ranks tied documents to show that such differences are the tie order and nothing else.
3. Empty texts: sentence-transformers drops documents and queries whose text is "" before evaluating; mteb keeps
   them. The local tasks apply the same filter (and the same last-wins rule for duplicate ids), so both evaluate the
   same corpus and queries. (mteb's own Hub tasks are evaluated as mteb defines them.)
4. Whitespace: mteb `.strip()`s document texts, sentence-transformers does not. For WordPiece tokenizers (BERT,
   MiniLM) surrounding whitespace yields the same tokens, so the embeddings are identical; a tokenizer that encodes
   leading whitespace (SentencePiece) could differ on such documents.
5. Relevance grades: sentence-transformers treats every qrels row as relevant (binary); mteb uses the qrels' score.
   The local tasks give every qrels row relevance 1, as sentence-transformers does (NanoBEIR's qrels are binary).
6. Query id == document id: mteb can drop a document whose id equals the query's (`ignore_identical_ids`), which
   sentence-transformers never does; no NanoBEIR task in mteb 2 sets it, and the local tasks pin it to False.
7. Similarity, sequence length, prompts: both backends get the same `SentenceTransformer` object, so they truncate
   at its `max_seq_length`, score with its `similarity` (`similarity_fn_name`) and encode with `encode_query` /
   `encode_document` (its "query"/"document" prompts). mteb would also use a model prompt keyed by the task name
   (e.g. "NanoSciFactRetrieval-query"), which sentence-transformers ignores; the models here define none.
8. Device: sentence-transformers scores on the model's device, mteb on the CPU. On a GPU the two similarity matrices
   can differ in the last float32 bit, which can swap near-tied documents; on the CPU they are bit-identical.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import schema
from pipeline.evaluation.nanobeir import NANOBEIR_DATASETS, dataset_table

HUB_NANOBEIR = "sentence-transformers/NanoBEIR-en"
SPLIT = "train"  # mteb's NanoBEIR tasks evaluate their one split, named "train"
SUBSET = "default"
PREDICTIONS_TOP_K = 100  # documents per query kept in mteb_predictions_*.jsonl, as sentence-transformers keeps

# NanoBEIR short name (sentence-transformers' names) -> mteb 2's registered task
MTEB_TASKS = {
    "climatefever": "NanoClimateFeverRetrieval",
    "dbpedia": "NanoDBPediaRetrieval",
    "fever": "NanoFEVERRetrieval",
    "fiqa2018": "NanoFiQA2018Retrieval",
    "hotpotqa": "NanoHotpotQARetrieval",
    "msmarco": "NanoMSMARCORetrieval",
    "nfcorpus": "NanoNFCorpusRetrieval",
    "nq": "NanoNQRetrieval",
    "quoraretrieval": "NanoQuoraRetrieval",
    "scidocs": "NanoSCIDOCSRetrieval",
    "arguana": "NanoArguAnaRetrieval",
    "scifact": "NanoSciFactRetrieval",
    "touche2020": "NanoTouche2020Retrieval",
}


def task_name(short: str, human: str) -> str:
    """mteb's task name for a set: its registered NanoBEIR task's, else `Nano<Name>Retrieval`."""
    return MTEB_TASKS.get(short, f"Nano{human}Retrieval")


def predictions_file(human: str) -> str:
    """Where `evaluate_mteb` writes a set's ranked lists (top 100 per query, sentence-transformers' jsonl format)."""
    return f"mteb_predictions_Nano{human}.jsonl"


def mteb_version() -> str:
    import mteb

    return mteb.__version__


@dataclass
class SplitData:
    """One NanoBEIR set as sentence-transformers evaluates it: ids are str, texts non-empty, qrels binary."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, set[str]]


def load_layout_split(dataset_id: str, human: str, cache_dir: Path | None = None) -> SplitData:
    """The `Nano<human>` split of a NanoBEIR-layout dir (parquet files) or Hub id (`datasets.load_dataset`).

    Mirrors `NanoBEIREvaluator._load_dataset`: texts of length 0 dropped, a repeated id keeps its last text (and its
    first position), every qrels row relevant; ids are made str for pytrec_eval.
    """
    import numpy as np

    split = f"Nano{human}"
    if Path(dataset_id).is_dir():
        import pandas as pd

        def rows(config: str) -> list[dict[str, Any]]:
            return pd.read_parquet(Path(dataset_id) / config / f"{split}.parquet").to_dict("records")

    else:
        from datasets import load_dataset

        def rows(config: str) -> list[dict[str, Any]]:
            with _datasets_cache(cache_dir):
                return list(load_dataset(dataset_id, config, split=split))

    def texts(config: str) -> dict[str, str]:
        return {str(r["_id"]): r["text"] for r in rows(config) if isinstance(r["text"], str) and len(r["text"]) > 0}

    qrels: dict[str, set[str]] = {}
    for r in rows("qrels"):
        ids = r["corpus-id"]
        ids = list(ids) if np.ndim(ids) == 1 else [ids]  # a list of corpus ids: all of them relevant
        qrels.setdefault(str(r["query-id"]), set()).update(str(d) for d in ids)
    return SplitData(corpus=texts("corpus"), queries=texts("queries"), qrels=qrels)


@functools.cache
def _local_task_class():
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    class LocalNanoRetrieval(AbsTaskRetrieval):
        """An mteb retrieval task over data given to it; `local_task` subclasses it with a set's metadata.

        (mteb wants `metadata` on the class: `unload_data` drops an instance's own.)
        """

        ignore_identical_ids = False  # as sentence-transformers: a document with the query's id is still ranked
        skip_first_result = False

        def __init__(self, data: SplitData, **kwargs):
            self._data = data
            super().__init__(**kwargs)

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            if self.data_loaded:
                return
            from datasets import Dataset

            d = self._data
            queries = [q for q in d.queries if d.qrels.get(q)]  # as sentence-transformers: queries with positives
            self.dataset = {
                SUBSET: {
                    SPLIT: {
                        "corpus": Dataset.from_dict({"id": list(d.corpus), "text": list(d.corpus.values())}),
                        "queries": Dataset.from_dict({"id": queries, "text": [d.queries[q] for q in queries]}),
                        "relevant_docs": {q: dict.fromkeys(sorted(docs), 1) for q, docs in d.qrels.items()},
                        "top_ranked": None,
                    }
                }
            }
            self.data_loaded = True

    return LocalNanoRetrieval


def local_task(metadata, data: SplitData):
    """An mteb retrieval task with `metadata` whose data is `data` instead of what the metadata's dataset names."""
    cls = type(metadata.name, (_local_task_class(),), {"metadata": metadata})
    return cls(data)


def _metadata_for(short: str, human: str, dataset_id: str, revision: str):
    """mteb's metadata for the set (its own task's, or NanoSciFact's renamed for a set mteb lacks), data local."""
    import mteb

    template = mteb.get_task(MTEB_TASKS.get(short, "NanoSciFactRetrieval")).metadata
    update: dict[str, Any] = {
        "dataset": {"path": dataset_id, "revision": revision},
        "eval_splits": [SPLIT],
    }
    if short not in MTEB_TASKS:
        update.update(name=task_name(short, human), description=f"Nano{human} in the NanoBEIR layout", prompt=None)
    return template.model_copy(update=update, deep=True)


def build_tasks(
    dataset_id: str,
    datasets: list[str],
    names: dict[str, str],
    source: str = "auto",
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """{short name: mteb task}. `source`: "registered" (mteb's Hub tasks), "layout" (read `dataset_id` as
    sentence-transformers does), or "auto": registered for the Hub's NanoBEIR-en, layout for anything else."""
    import mteb

    if source == "auto":
        source = "registered" if dataset_id == HUB_NANOBEIR else "layout"
    if source == "registered":
        unknown = [s for s in datasets if s not in MTEB_TASKS]
        if unknown:
            raise ValueError(f"mteb has no NanoBEIR task for {unknown}; known: {', '.join(MTEB_TASKS)}")
        return {s: mteb.get_task(MTEB_TASKS[s]) for s in datasets}
    if source != "layout":
        raise ValueError(f"source={source!r}: expected auto, registered or layout")
    from pipeline.fingerprint import source_fingerprint

    revision = source_fingerprint(dataset_id)
    return {
        s: local_task(
            _metadata_for(s, names[s], dataset_id, revision), load_layout_split(dataset_id, names[s], cache_dir)
        )
        for s in datasets
    }


@dataclass
class DatasetResult:
    """What mteb computed for one set: its score dict, per-query NDCG@10 and ranked retrieval output."""

    short: str
    task_name: str
    scores: dict[str, Any]  # mteb's scores for the split, as mteb reports them (rounded to 5 decimals)
    per_query: dict[str, float]  # pytrec_eval ndcg_cut_10 of every query, from mteb's own evaluation
    ranking: dict[str, list[tuple[str, float]]] = field(repr=False)  # query -> (doc, score), in pytrec_eval's order

    @property
    def ndcg_at_10(self) -> float:
        """The unrounded mean of the per-query scores: mteb's NDCG@10 before it rounds it."""
        return sum(self.per_query.values()) / len(self.per_query)


def _capture(task) -> dict[str, Any]:
    """Record the per-query scores and retrieval output that mteb hands to `task_specific_scores`."""
    captured: dict[str, Any] = {}
    original = task.task_specific_scores

    def hook(scores, qrels, results, hf_split, hf_subset):
        captured["per_query"] = {str(q): float(s["ndcg_cut_10"]) for q, s in scores.items()}
        captured["results"] = results
        return original(scores, qrels, results, hf_split=hf_split, hf_subset=hf_subset)

    task.task_specific_scores = hook
    return captured


@contextmanager
def _rng_preserved() -> Iterator[None]:
    """mteb reseeds random / numpy / torch (seed 42) when it builds a task or evaluator: undo that afterwards."""
    import numpy as np
    import torch

    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _datasets_cache(cache_dir: Path | None):
    from pipeline.fingerprint import datasets_cache

    return datasets_cache(cache_dir) if cache_dir else nullcontext()


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars while mteb maps its corpus and queries (one per set and call)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _pytrec_order(results: dict[str, float]) -> list[tuple[str, float]]:
    """Documents in the order pytrec_eval ranks them: score descending, ties by doc id descending."""
    return sorted(results.items(), key=lambda item: (item[1], item[0]), reverse=True)


def run_mteb(model, tasks: dict[str, Any], batch_size: int, cache_dir: Path | None = None) -> dict[str, DatasetResult]:
    """Evaluate `model` (a SentenceTransformer) with `mteb.evaluate` on `tasks` ({name: mteb retrieval task}, each on
    its first eval split and first subset), no result cache."""
    import mteb

    with _rng_preserved(), _quiet_datasets():
        captured = {short: _capture(task) for short, task in tasks.items()}
        with _datasets_cache(cache_dir):
            result = mteb.evaluate(
                model,
                list(tasks.values()),
                cache=None,  # never read or write mteb's result cache: it keys on the model's name
                overwrite_strategy="always",
                encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
                co2_tracker=False,
                show_progress_bar=False,
                raise_error=True,
            )
    by_name = {r.task_name: r for r in result.task_results}
    out = {}
    for short, task in tasks.items():
        name, split, subset = task.metadata.name, task.eval_splits[0], task.hf_subsets[0]
        scores = next(s for s in by_name[name].scores[split] if s["hf_subset"] == subset)
        got = captured[short]
        ranking = {q: _pytrec_order(docs)[:PREDICTIONS_TOP_K] for q, docs in got["results"].items()}
        res = DatasetResult(short, name, dict(scores), got["per_query"], ranking)
        # mteb reports round(mean, 5): the captured per-query scores must be the ones it averaged
        if abs(res.ndcg_at_10 - scores["ndcg_at_10"]) > 5e-6 + 1e-9:
            raise RuntimeError(
                f"mteb per-query NDCG@10 mean {res.ndcg_at_10:.6f} != its {scores['ndcg_at_10']} on {name}"
            )
        out[short] = res
    return out


def _flat_metrics(results: dict[str, DatasetResult], benchmark: str) -> dict[str, float]:
    """mteb's numeric scores per task (`<Task>_<metric>`) and their unweighted mean (`<benchmark>_mean_<metric>`).

    Without mteb's ~90 nAUC (abstention) scores per task: they would be most of the run's MLflow metrics.
    """
    metrics: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {}
    for r in results.values():
        for key, value in r.scores.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue  # hf_subset, languages
            if key.startswith("nauc_"):
                continue
            metrics[f"{r.task_name}_{key}"] = float(value)
            per_metric.setdefault(key, []).append(float(value))
    n = len(results)
    metrics.update({f"{benchmark}_mean_{k}": sum(v) / n for k, v in per_metric.items() if len(v) == n})
    return metrics


def evaluate_mteb(model, eval_cfg, out: Path, cache_dir: Path | None = None, source: str = "auto") -> dict:
    """The evaluate stage through mteb: same summary, metrics.json and per_query.json as the default backend.

    Also writes `mteb_predictions_<Name>.jsonl` (top 100 per query in mteb's order, the format of
    sentence-transformers' predictions files), which `pipeline.evaluation.crosscheck` compares rank by rank.
    """

    out.mkdir(parents=True, exist_ok=True)
    datasets = list(eval_cfg.datasets) if eval_cfg.datasets else list(NANOBEIR_DATASETS)
    names = dataset_table(eval_cfg.dataset_id)
    with _rng_preserved(), _quiet_datasets():
        tasks = build_tasks(eval_cfg.dataset_id, datasets, names, source, cache_dir)
    results = run_mteb(model, tasks, eval_cfg.batch_size, cache_dir)
    files = {short: predictions_file(names[short]) for short in results}
    return _write_results(model, results, files, "NanoBEIR", {"dataset_id": eval_cfg.dataset_id}, out)


def retrieval_task(name: str, local_dir: str | None = None):
    """mteb's registered retrieval task `name` on its first eval split and its one subset; `local_dir`: a local copy
    of the task's Hub dataset (its `corpus`, `queries` and `default` or `qrels` configs), which mteb's own loader
    reads in place of the Hub. A typo, a task of another type or one with several language subsets: ValueError."""
    import mteb

    try:
        task = mteb.get_task(name)
    except KeyError as e:  # mteb's message names the closest task ("Did you mean: ...")
        raise ValueError(f"eval.tasks: {e.args[0]}") from None
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    if not isinstance(task, AbsTaskRetrieval):
        raise ValueError(f"eval.tasks: {name} is an mteb {task.metadata.type} task; allowed: Retrieval tasks")
    if len(task.hf_subsets) != 1:
        raise ValueError(
            f"eval.tasks: {name} has {len(task.hf_subsets)} language subsets ({', '.join(task.hf_subsets[:5])}, ...); "
            "allowed: tasks with one subset"
        )
    split = task.metadata.eval_splits[0]
    if local_dir is None:
        return mteb.get_task(name, eval_splits=[split])
    from pipeline.fingerprint import source_fingerprint

    dataset = {**task.metadata.dataset, "path": local_dir, "revision": source_fingerprint(local_dir)}
    metadata = task.metadata.model_copy(update={"dataset": dataset, "eval_splits": [split]}, deep=True)
    return type(name, (type(task),), {"metadata": metadata})()  # mteb wants metadata on the class


def evaluate_tasks(model, eval_cfg, out: Path, cache_dir: Path | None = None) -> dict:
    """The general benchmark as a list of MTEB retrieval tasks (`eval.tasks`, local copies from `eval.task_dirs`):
    the summary, metrics.json and per_query.json of `evaluate_mteb`, one "dataset" per task, keyed by its name."""
    out.mkdir(parents=True, exist_ok=True)
    with _rng_preserved(), _quiet_datasets():
        tasks = {name: retrieval_task(name, eval_cfg.task_dirs.get(name)) for name in eval_cfg.tasks}
    results = run_mteb(model, tasks, eval_cfg.batch_size, cache_dir)
    files = {name: f"mteb_predictions_{name}.jsonl" for name in results}
    sources = {name: task.metadata.dataset["path"] for name, task in tasks.items()}
    return _write_results(model, results, files, "MTEB", {"tasks": sources}, out)


def _write_results(
    model, results: dict[str, DatasetResult], files: dict[str, str], benchmark: str, source: dict, out: Path
) -> dict:
    """metrics.json (`_flat_metrics` under `benchmark`), per_query.json and each set's ranked lists (top 100 per
    query, to `files[set]`) of `results`; the stage's summary, with `source` saying where the sets came from."""
    per_dataset = {s: r.ndcg_at_10 for s, r in results.items()}
    per_query = {s: r.per_query for s, r in results.items()}
    for s, r in results.items():
        with open(out / files[s], "w") as f:
            for q, hits in r.ranking.items():
                hits_json = [{"corpus_id": d, "score": score} for d, score in hits]
                f.write(json.dumps({"query_id": q, "results": hits_json}) + "\n")
    (out / "metrics.json").write_text(json.dumps(_flat_metrics(results, benchmark), indent=2))
    (out / schema.PER_QUERY_FILE).write_text(json.dumps(per_query, indent=2))
    return {
        "ndcg_at_10": sum(per_dataset.values()) / len(per_dataset),
        "per_dataset_ndcg_at_10": per_dataset,
        "score_function": model.similarity_fn_name,
        **source,
        "queries": {s: len(v) for s, v in per_query.items()},
        "backend": "mteb",
        "backend_version": mteb_version(),
    }
