"""The in-domain dev set prepare_data builds from its held-out pairs (pipeline.evaluation.dev)."""

from __future__ import annotations

import pytest
from sentence_transformers import SentenceTransformer

from pipeline.evaluation.dev import build_dev_set, dev_evaluator, evaluate_dev, write_dev_set

QUESTIONS = [f"question {i}" for i in range(10)]
ANSWERS = [f"answer {i}" for i in range(10)]
TRAIN = [f"train answer {i}" for i in range(50)]


def test_queries_are_the_first_heldout_questions_and_their_answers_are_relevant():
    dev = build_dev_set(QUESTIONS, ANSWERS, TRAIN, queries=4, corpus=6, distractors=0, seed=12)
    assert list(dev["queries"].values()) == QUESTIONS[:4]
    for qid, question in dev["queries"].items():
        (doc,) = dev["relevant_docs"][qid]
        assert dev["corpus"][doc] == ANSWERS[QUESTIONS.index(question)]
    assert sorted(dev["corpus"].values()) == sorted(ANSWERS[:6])  # the other held-out answers fill the corpus


def test_sizes_are_capped_by_the_heldout_rows_and_the_corpus_holds_every_relevant_answer():
    dev = build_dev_set(QUESTIONS, ANSWERS, TRAIN, queries=100, corpus=2, distractors=0, seed=12)
    assert len(dev["queries"]) == 10 and len(dev["corpus"]) == 10


def test_distractors_are_sampled_deterministically_from_the_training_answers():
    one = build_dev_set(QUESTIONS, ANSWERS, TRAIN, queries=4, corpus=4, distractors=5, seed=12)
    two = build_dev_set(QUESTIONS, ANSWERS, TRAIN, queries=4, corpus=4, distractors=5, seed=12)
    other = build_dev_set(QUESTIONS, ANSWERS, TRAIN, queries=4, corpus=4, distractors=5, seed=13)
    assert one == two
    extra = set(one["corpus"].values()) - set(ANSWERS)
    assert len(extra) == 5 and extra <= set(TRAIN)
    assert set(other["corpus"].values()) != set(one["corpus"].values())


def test_a_repeated_answer_text_is_one_document_relevant_to_both_questions():
    answers = ["same answer", "same answer", "other", "answer 3"]
    dev = build_dev_set(QUESTIONS[:4], answers, ["same answer", "fresh"], queries=4, corpus=4, distractors=2, seed=0)
    assert len(dev["corpus"]) == 4  # "same answer" once, the training copy of it too
    assert dev["relevant_docs"]["q0"] == dev["relevant_docs"]["q1"]
    assert list(dev["corpus"].values()).count("same answer") == 1


def test_dev_ndcg_is_the_evaluators_and_matches_the_per_query_mean(tmp_path, tiny_model):
    questions = ["what causes high blood pressure", "how do I sort a list", "what is the capital of france"]
    answers = ["salt and stress raise blood pressure", "use sorted(xs) in python", "paris is the capital"]
    dev = build_dev_set(questions, answers, [], queries=3, corpus=3, distractors=0, seed=0)
    write_dev_set(dev, tmp_path)
    model = SentenceTransformer(str(tiny_model))
    summary = evaluate_dev(model, tmp_path, tmp_path / "out", batch_size=4)
    expected = dev_evaluator(dev, batch_size=4)(model)["dev_cosine_ndcg@10"]
    assert summary["ndcg_at_10"] == pytest.approx(expected, abs=1e-9)
    assert summary["queries"] == 3 and summary["corpus"] == 3
    assert not list((tmp_path / "out").glob("*predictions*"))


def test_the_in_domain_test_set_is_the_last_heldout_rows_disjoint_by_content_from_training_and_dev(tmp_path):
    """Every pair written twice: many of the last held-out rows repeat a training (or dev) pair by text. The test set
    keeps only rows whose question and answer are texts neither training nor the dev set holds; both sets are built
    alike (their sizes, the same sampled training distractors)."""
    import pandas as pd
    from datasets import load_from_disk
    from omegaconf import OmegaConf

    from pipeline.config import DataConfig
    from pipeline.evaluation.dev import load_dev_set
    from pipeline.stages.prepare_data import prepare_data, prepare_dev, prepare_test

    pairs = [(f"what is item {i}?", f"item {i} is a thing numbered {i}.") for i in range(60)]
    (tmp_path / "qa" / "data").mkdir(parents=True)
    pd.DataFrame(pairs * 2, columns=["question", "answer"]).to_parquet(tmp_path / "qa" / "data" / "train.parquet")
    data = OmegaConf.structured(DataConfig(path=str(tmp_path / "qa"), eval_size=40, test_size=16, dev_distractors=3))
    for name in ("data", "dev", "test"):
        (tmp_path / name).mkdir()
    prepare_data(data, tmp_path / "data")
    prepare_dev(data, tmp_path / "data", tmp_path / "dev")
    summary = prepare_test(data, tmp_path / "data", tmp_path / "dev", tmp_path / "test")
    dev, test = load_dev_set(tmp_path / "dev"), load_dev_set(tmp_path / "test", "test")
    split = load_from_disk(str(tmp_path / "data" / "dataset"))
    train = {*split["train"]["question"], *split["train"]["answer"]}
    heldout = split["eval"]
    assert list(dev["queries"].values()) == heldout["question"][:24]  # the first 40 - 16 rows are the dev set's
    relevant = {test["corpus"][d] for docs in test["relevant_docs"].values() for d in docs}
    questions = set(test["queries"].values())
    assert questions and not (questions | relevant) & (
        train | set(dev["queries"].values()) | set(dev["corpus"].values())
    )
    assert summary["test_dropped"] > 0 and summary["test_queries"] + summary["test_dropped"] == 16
    assert questions <= set(heldout["question"][24:])  # from the last 16 rows alone
    # the same distractors as dev: the 3 sampled training answers in both corpora
    assert len(set(dev["corpus"].values()) & set(test["corpus"].values()) & train) == 3


def test_a_test_size_leaving_no_dev_rows_is_refused_before_any_work(tiny_cfg):
    from pipeline.validate import ConfigError, validate

    with pytest.raises(ConfigError, match=r"data.test_size=8 is not allowed: use 0 .* up to 7"):
        validate(tiny_cfg(["data.test_size=8"]))
