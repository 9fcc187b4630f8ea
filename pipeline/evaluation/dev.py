"""The in-domain dev set: the held-out question/answer pairs as an information-retrieval task, what a sweep selects on.

prepare_data holds out `eval_size` pairs (the recipe's `train_test_split(test_size=10_000, seed=12)`). Of those, the
first `dev_queries` questions are the dev queries; each one's own answer is its relevant document. The corpus is
deterministic: the dev queries' answers, then the other held-out answers up to `dev_corpus`, then the dev queries'
own hard negatives where the data has them (`data.negative_columns`, row by row, column by column), then (optionally)
`dev_distractors` training answers sampled with the data seed. Documents are de-duplicated by text: a question whose
answer text appears twice has one relevant document, never a relevant twin ranked as a negative; a negative whose text
is another dev query's answer is that answer's document, relevant to that query alone. Mined negatives
(`mine_negatives`) never enter: they are the base model's own confusions, and would tilt the dev set against it.

The in-domain test set (`data.test_size`) is built the same way from the last `test_size` held-out pairs, which the
dev set never sees (`held_out_split`): its queries, its relevant answers and the dev set's are disjoint by content, and
its distractors are the dev set's kind (its own rows' negatives, the same sampled training answers). Selection never
reads it: it is the in-domain verdict's data, as NanoBEIR is the general verdict's.

A configuration is chosen on dev NDCG@10, and reported on the in-domain test set and on NanoBEIR.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline import schema


def held_out_split(rows: int, test_size: int) -> tuple[range, range]:
    """The held-out rows' indices for the dev set (the first ones) and the in-domain test set (the last `test_size`)."""
    if not 0 <= test_size < rows:
        raise ValueError(f"data.test_size={test_size} must leave held-out rows for the dev set: {rows} are held out")
    return range(rows - test_size), range(rows - test_size, rows)


def unseen_rows(questions, answers, seen: set[str]) -> list[int]:
    """The rows whose question and answer are both texts not in `seen` (training's and the dev set's): the test set is
    disjoint from them by content, not only by index (a data set can repeat a pair)."""
    return [i for i, (q, a) in enumerate(zip(questions, answers, strict=True)) if q not in seen and a not in seen]


def build_dev_set(
    heldout_questions,
    heldout_answers,
    train_answers,
    queries: int,
    corpus: int,
    distractors: int,
    seed: int,
    heldout_negatives=(),
) -> dict:
    """{"queries": {qid: text}, "corpus": {did: text}, "relevant_docs": {qid: [did]}} from the held-out pairs;
    `heldout_negatives`: the held-out rows' negative columns (each a list of texts, one per row), or none."""
    heldout_questions, heldout_answers = list(heldout_questions), list(heldout_answers)
    n_queries = min(queries, len(heldout_questions))
    n_corpus = max(n_queries, min(corpus, len(heldout_answers)))
    doc_of_text: dict[str, str] = {}
    corpus_docs: dict[str, str] = {}

    def add(text: str) -> str:
        if text not in doc_of_text:
            doc_of_text[text] = f"d{len(doc_of_text)}"
            corpus_docs[doc_of_text[text]] = text
        return doc_of_text[text]

    relevant = {f"q{i}": [add(heldout_answers[i])] for i in range(n_queries)}
    for i in range(n_queries, n_corpus):
        add(heldout_answers[i])
    negatives = [list(column) for column in heldout_negatives]
    for i in range(n_queries):  # after every answer: a negative never takes the place of a relevant document
        for column in negatives:
            add(column[i])
    if distractors > 0 and len(train_answers) > 0:
        picks = random.Random(seed).sample(range(len(train_answers)), min(distractors, len(train_answers)))
        for i in sorted(picks):
            add(train_answers[i])
    return {
        "queries": {f"q{i}": heldout_questions[i] for i in range(n_queries)},
        "corpus": corpus_docs,
        "relevant_docs": relevant,
    }


def write_dev_set(dev: dict, out: Path, split: str = "dev") -> Path:
    path = out / f"{split}.json"
    path.write_text(json.dumps(dev, ensure_ascii=False))
    return path


def load_dev_set(data_dir: Path, split: str = "dev") -> dict:
    return json.loads((data_dir / f"{split}.json").read_text())


def dev_evaluator(dev: dict, batch_size: int, prompts: dict[str, str] | None = None, split: str = "dev", **kwargs):
    """sentence-transformers' InformationRetrievalEvaluator on a held-out set (`split`: dev or test; NDCG@10 is its
    primary metric), with the query and document prompts training used (None: the model's own)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries=dev["queries"],
        corpus=dev["corpus"],
        relevant_docs={q: set(docs) for q, docs in dev["relevant_docs"].items()},
        batch_size=batch_size,
        name=split,
        write_csv=False,
        query_prompt=prompts["query"] if prompts else None,
        corpus_prompt=prompts["document"] if prompts else None,
        **kwargs,
    )


def evaluate_dev(
    model, data_dir: Path, out: Path, batch_size: int, prompts: dict[str, str] | None = None, split: str = "dev"
) -> dict:
    """NDCG@10 of `model` on the held-out set `split` (dev or test; mean and per query, pytrec_eval on the evaluator's
    own ranking); writes metrics.json and per_query.json ({split: {query id: NDCG@10}}) under `out`."""
    from pipeline.evaluation.st_backend import per_query_ndcg10

    out.mkdir(parents=True, exist_ok=True)
    evaluator = dev_evaluator(load_dev_set(data_dir, split), batch_size, prompts, split, write_predictions=True)
    metrics = evaluator(model, output_path=str(out))
    score_function = evaluator.primary_metric[len(f"{split}_") :].split("_ndcg@")[0]
    ndcg = metrics[evaluator.primary_metric]
    per_query = per_query_ndcg10(evaluator, out, score_function)
    pytrec_mean = sum(per_query.values()) / len(per_query)
    if abs(pytrec_mean - ndcg) > 1e-6:
        raise RuntimeError(f"pytrec_eval {split} NDCG@10 {pytrec_mean:.6f} != the evaluator's {ndcg:.6f}")
    for predictions in out.glob("*_predictions*.jsonl"):
        predictions.unlink()  # rankings of every dev query: large, and per_query.json holds what is needed
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / schema.PER_QUERY_FILE).write_text(json.dumps({split: per_query}, indent=2))
    return {
        "ndcg_at_10": ndcg,
        "score_function": score_function,
        "queries": len(per_query),
        "corpus": len(evaluator.corpus),
    }
