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
