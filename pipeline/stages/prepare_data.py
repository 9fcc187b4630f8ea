"""Stage 1: question/answer pairs (and the dataset's hard negatives, `data.negative_columns`) from the Hub or a local
dir, split as the reference recipe does; the held-out rows as an in-domain dev set (what selection reads) and an
in-domain test set (the last `data.test_size` held-out rows: what the in-domain verdict reads)."""

from __future__ import annotations

import sys
from pathlib import Path

from datasets import DatasetDict, load_from_disk

from pipeline.config import DataConfig
from pipeline.evaluation.dev import build_dev_set, held_out_split, load_dev_set, unseen_rows, write_dev_set
from pipeline.fingerprint import source_fingerprint
from pipeline.inputs import load_source
from pipeline.negatives import negative_columns, negatives_problem, unused_negative_like, with_negatives


def prepare_data(data: DataConfig, out: Path, cache_dir: Path | None = None) -> dict:
    # `datasets.load_dataset` reads a Hub id, a local dir in the Hub layout or a data file (.jsonl, .csv, .parquet)
    dataset = load_source(data.path, data.name, data.split, data.revision, cache_dir)
    columns = [data.question_column, data.answer_column]
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"data.path={data.path} has no column(s) {missing}; columns found: {dataset.column_names}")
    problem = negatives_problem(dataset, data, f"data.path={data.path}")
    if problem:
        raise ValueError(problem)
    unused = unused_negative_like(dataset.column_names, data)
    if unused:
        print(
            f"warning: data.path={data.path} has column(s) {unused} that look like hard negatives and are not trained "
            "on: name them in data.negative_columns to use them",
            file=sys.stderr,
        )
    # The losses read the columns in order: (anchor, positive, negative_1, ..., negative_n)
    dataset = with_negatives(dataset, data)

    # As the recipe: train_test_split(test_size=10_000, seed=12), then the first train_size training rows
    splits = dataset.train_test_split(test_size=data.eval_size, seed=data.seed)
    train = splits["train"]
    if data.train_size is not None:
        if data.train_size > len(train):
            raise ValueError(
                f"data.train_size={data.train_size} is larger than the {len(train)} training rows left after "
                f"holding out eval_size={data.eval_size}"
            )
        train = train.select(range(data.train_size))

    DatasetDict(train=train, eval=splits["test"]).save_to_disk(out / "dataset")

    return {
        "train_rows": len(train),
        "eval_rows": len(splits["test"]),
        "negatives": len(negative_columns(train.column_names)),  # per row
        "source": source_fingerprint(data.path, data.revision),
    }


def prepare_dev(data: DataConfig, data_dir: Path, out: Path) -> dict:
    """The held-out rows before the test set's as an in-domain retrieval dev set, their negatives as distractors: what
    a sweep selects on.

    A stage of its own, so that its sizes never change the training data's key (nor retrain anything)."""
    dataset = load_from_disk(str(data_dir / "dataset"))
    heldout, train = dataset["eval"], dataset["train"]
    dev = _retrieval_set(data, heldout.select(held_out_split(len(heldout), data.test_size)[0]), train)
    write_dev_set(dev, out)
    return {"dev_queries": len(dev["queries"]), "dev_corpus": len(dev["corpus"])}


def prepare_test(data: DataConfig, data_dir: Path, dev_dir: Path, out: Path) -> dict:
    """The last `data.test_size` held-out rows as the in-domain test set, built as the dev set is (same sizes, same
    kind of distractors), less every row whose question or answer is a training or dev text: disjoint by content."""
    dataset = load_from_disk(str(data_dir / "dataset"))
    heldout, train = dataset["eval"], dataset["train"]
    rows = heldout.select(held_out_split(len(heldout), data.test_size)[1])
    dev = dev_texts(dev_dir)
    seen = {*train[data.question_column], *train[data.answer_column], *dev}
    kept = rows.select(unseen_rows(rows[data.question_column], rows[data.answer_column], seen))
    if len(kept) == 0:
        raise ValueError(
            f"data.test_size={data.test_size}: every one of its held-out rows repeats a training or dev text; "
            "raise data.eval_size and data.test_size, or set data.test_size=0 (no in-domain test set)"
        )
    test = _retrieval_set(data, kept, train)
    write_dev_set(test, out, "test")
    return {
        "test_queries": len(test["queries"]),
        "test_corpus": len(test["corpus"]),
        "test_dropped": len(rows) - len(kept),
    }


def dev_texts(dev_dir: Path) -> set[str]:
    """The dev set's query and document texts."""
    dev = load_dev_set(dev_dir)
    return {*dev["queries"].values(), *dev["corpus"].values()}


def _retrieval_set(data: DataConfig, heldout, train) -> dict:
    """A held-out retrieval set of `heldout`'s rows with the dev sizes (`data.dev_*`) and distractors."""
    return build_dev_set(
        heldout[data.question_column],
        heldout[data.answer_column],
        train[data.answer_column] if data.dev_distractors else [],
        queries=data.dev_queries,
        corpus=data.dev_corpus,
        distractors=data.dev_distractors,
        seed=data.seed,
        heldout_negatives=[heldout[column] for column in negative_columns(heldout.column_names)],
    )
