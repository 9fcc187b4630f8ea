"""Hard negatives: a dataset's own negative columns (schema, layout), the sampler and the losses that read them, the dev
set's distractors, and the optional mine_negatives stage (sentence-transformers' mine_hard_negatives), on tiny models
and on slices of the shared data."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset, load_from_disk
from omegaconf import OmegaConf

from pipeline.config import DataConfig
from pipeline.evaluation.dev import build_dev_set
from pipeline.negatives import mine_problem, negatives_problem, with_negatives
from tests.conftest import SHARED_DATA, WORDS, requires_shared_data


def _data(**values) -> DataConfig:
    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"path": "x", **values})


def _rows(n: int = 6) -> dict:
    return {
        "anchor": [f"q{i}" for i in range(n)],
        "positive": [f"a{i}" for i in range(n)],
        "negative": [f"n{i}" for i in range(n)],
        "neg": [[f"m{i}", f"k{i}"] for i in range(n)],
        "label": list(range(n)),
    }


def _cols(negatives) -> DataConfig:
    return _data(question_column="anchor", answer_column="positive", negative_columns=negatives)


@pytest.mark.parametrize(
    ("change", "negatives", "expected"),
    [
        ({}, ["missing"], "data.negative_columns has ['missing'], not a column of d; columns found"),
        ({}, [], "data.negative_columns=[] is not allowed"),
        ({}, ["negative", "negative"], "names ['negative'] more than once"),
        ({}, ["positive"], "the question or answer column"),
        ({}, ["label"], "column 'label' (data.negative_columns) holds int64: a negative column holds text or lists"),
        ({"neg": [["m"], ["m", "k"], ["m", "k"], ["a"], ["b"], ["c"]]}, ["neg"], "holds lists of 1 to 2 negatives"),
        ({"neg": [[]] * 6}, ["neg"], "holds lists of null: a negative column holds text or lists of text"),
        (
            {"negative": ["n0", "", "n2", "n3", "n4", "n5"]},
            ["negative"],
            "1 null or empty negative(s) (first at row 1)",
        ),
        ({"negative": ["n0", "n1", "a2", "n3", "n4", "n5"]}, ["negative"], "1 negative(s) equal to the row's answer"),
        (
            {"neg": [["m", "k"]] * 3 + [["m", "a3"]] + [["m", "k"]] * 2},
            ["neg"],
            "equal to the row's answer (first at row 3)",
        ),
    ],
)
def test_a_bad_negative_column_is_one_line(change, negatives, expected):
    problem = negatives_problem(Dataset.from_dict({**_rows(), **change}), _cols(negatives), "d")
    assert problem is not None and expected in problem and "\n" not in problem


def test_negatives_are_laid_out_as_the_loss_reads_them():
    """(question, answer, negative_1..n): a text column one negative, a list column one per item, in the given order;
    no negative_columns keeps the pairs exactly."""
    dataset = Dataset.from_dict(_rows())
    data = _cols(["neg", "negative"])
    assert negatives_problem(dataset, data, "d") is None
    laid = with_negatives(dataset, data)
    assert laid.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert laid[2] == {"anchor": "q2", "positive": "a2", "negative_1": "m2", "negative_2": "k2", "negative_3": "n2"}
    assert with_negatives(dataset, _cols(None)).column_names == ["anchor", "positive"]


def test_mining_config_is_checked_before_anything_loads():
    assert mine_problem(_data()) is None
    assert "data.mine.enabled=true" in mine_problem(_data(mine={"enabled": False}), until="mine_negatives")
    on = {"enabled": True}
    assert "or on mined ones" in mine_problem(_data(mine=on, negative_columns=["n"]))
    assert "must hold num_negatives" in mine_problem(
        _data(mine={**on, "range_min": 3, "range_max": 4, "num_negatives": 2})
    )
    assert "data.mine.num_negatives=0" in mine_problem(_data(mine={**on, "num_negatives": 0}))
    assert "data.mine.relative_margin=-0.1" in mine_problem(_data(mine={**on, "relative_margin": -0.1}))


def _write(path: Path, frame: pd.DataFrame) -> Path:
    (path / "data").mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path / "data" / "train.parquet")
    return path


def _scifact_with_negatives(path: Path, rows: int = 48) -> Path:
    """scifact-qa's first rows as (anchor, positive, negative, negs): each negative another row's answer."""
    frame = pd.read_parquet(next((SHARED_DATA / "scifact-qa").rglob("*.parquet"))).head(rows)
    answers = list(frame["answer"])
    unique = {a: i for i, a in enumerate(answers)}
    frame = pd.DataFrame(
        {
            "anchor": frame["question"],
            "positive": answers,
            "negative": [next(a for a in answers[i + 1 :] + answers if a != answers[i]) for i in range(rows)],
            "negs": [[a for a in answers[::-1] if a != answers[i]][:2] for i in range(rows)],
            "hard_negative": ["unused"] * rows,
        }
    )
    assert len(unique) > 2
    return _write(path, frame)


@requires_shared_data("scifact-qa")
def test_prepare_data_keeps_the_negatives_and_the_dev_set_holds_them(tmp_path, tiny_cfg, capsys):
    from pipeline.stages.prepare_data import prepare_data, prepare_dev
    from pipeline.validate import validate

    data = _scifact_with_negatives(tmp_path / "scifact-neg")
    common = [f"data.path={data}", "data.question_column=anchor", "data.answer_column=positive"]
    cfg = tiny_cfg([*common, "data.negative_columns=[negative,negs]", "data.eval_size=8", "data.dev_queries=4"])
    validate(cfg)
    result = prepare_data(cfg.data, tmp_path / "prep")
    assert "['hard_negative'] that look like hard negatives" in capsys.readouterr().err
    assert result["negatives"] == 3
    prepared = load_from_disk(str(tmp_path / "prep" / "dataset"))
    assert prepared["train"].column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    heldout = prepared["eval"]
    pairs_only = tiny_cfg([*common, "data.eval_size=8", "data.dev_queries=4"])
    prepare_data(pairs_only.data, tmp_path / "pairs")
    assert load_from_disk(str(tmp_path / "pairs" / "dataset"))["eval"]["anchor"] == heldout["anchor"]  # same split

    import json

    for name in ("dev", "dev_pairs"):
        (tmp_path / name).mkdir()
    prepare_dev(cfg.data, tmp_path / "prep", tmp_path / "dev")
    prepare_dev(pairs_only.data, tmp_path / "pairs", tmp_path / "dev_pairs")
    dev = json.loads((tmp_path / "dev" / "dev.json").read_text())
    plain = json.loads((tmp_path / "dev_pairs" / "dev.json").read_text())
    corpus = set(dev["corpus"].values())
    negatives = {heldout[c][i] for c in ("negative_1", "negative_2", "negative_3") for i in range(4)}
    assert negatives <= corpus  # the dev queries' negatives are distractors
    assert dev["relevant_docs"] == plain["relevant_docs"]  # and never change which documents are relevant
    assert {d: t for d, t in dev["corpus"].items() if d in plain["corpus"]} == plain["corpus"]


def test_dev_distractors_are_deduplicated_and_never_relevant_by_mistake():
    questions, answers = ["q0", "q1", "q2"], ["a0", "a1", "a2"]
    negatives = [["a1", "x", "a0"], ["x", "y", "z"]]  # q0's negative is q1's answer; q2's is its own (refused in prep)
    dev = build_dev_set(questions, answers, [], 3, 3, 0, 12, heldout_negatives=negatives)
    doc = {text: did for did, text in dev["corpus"].items()}
    assert list(dev["corpus"].values()) == ["a0", "a1", "a2", "x", "y", "z"]  # answers first, then negatives, once each
    assert dev["relevant_docs"] == {"q0": [doc["a0"]], "q1": [doc["a1"]], "q2": [doc["a2"]]}
    assert build_dev_set(questions, answers, [], 3, 3, 0, 12, heldout_negatives=negatives) == dev  # deterministic


def test_the_no_duplicates_sampler_reads_every_negative_column():
    """What finetune's BatchSamplers.NO_DUPLICATES does with negatives (sentence-transformers 6.3, base/sampler.py):
    every value of every column of a row joins the batch's value set, so a row whose answer is another row's negative,
    or two rows sharing a negative, never share a batch (either would score a text against its own duplicate)."""
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    rows = {
        "q": [f"q{i}" for i in range(8)],
        "a": [f"a{i}" for i in range(8)],
        "negative_1": ["a1", "n1", "s", "s", "n4", "n5", "n6", "n7"],  # row 0's negative is row 1's answer
    }
    for seed in range(20):
        sampler = NoDuplicatesBatchSampler(Dataset.from_dict(rows), batch_size=4, drop_last=False, seed=seed)
        for batch in sampler:
            assert not {0, 1} <= set(batch) and not {2, 3} <= set(batch), (seed, batch)


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + f" {i}" for i in range(n)]


@pytest.mark.parametrize("loss_name", ["mnrl", "cached", "auto_uncached", "auto_cached"])
def test_negatives_reach_the_loss(loss_name, tiny_no_dropout_model):
    """Every loss the pipeline trains with embeds the negative column and scores each anchor against it: the loss
    changes, every text is embedded, and each loss equals MNRL's with negatives (value and gradients)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    from pipeline.losses import AutoCachedMNRL

    model = SentenceTransformer(str(tiny_no_dropout_model), device="cpu")
    model.train()
    make = {
        "mnrl": lambda: MultipleNegativesRankingLoss(model),
        "cached": lambda: CachedMultipleNegativesRankingLoss(model, mini_batch_size=3),
        "auto_uncached": lambda: AutoCachedMNRL(model, budget_bytes=1e12),
        "auto_cached": lambda: AutoCachedMNRL(model, budget_bytes=0),
    }[loss_name]
    columns = [model.tokenize(_texts(8, seed)) for seed in (1, 2, 3)]  # anchor, positive, negative_1
    embedded = []
    hook = model[0].register_forward_hook(lambda module, args, out: embedded.append(len(out["input_ids"])))

    def run(loss_fn, features):
        model.zero_grad()
        value = loss_fn(features, None)
        value.backward()
        return float(value.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    with_negatives, grad = run(make(), columns)
    assert sum(embedded) >= 3 * 8  # the negatives were embedded (cached losses embed twice)
    without, _ = run(make(), columns[:2])
    assert with_negatives != pytest.approx(without, abs=1e-4)
    reference, reference_grad = run(MultipleNegativesRankingLoss(model), columns)
    hook.remove()
    assert with_negatives == pytest.approx(reference, abs=1e-5)
    assert torch.allclose(grad, reference_grad, atol=1e-5)


def _scifact_pairs(path: Path, rows: int) -> Path:
    frame = pd.read_parquet(next((SHARED_DATA / "scifact-qa").rglob("*.parquet"))).head(rows)
    return _write(path, frame[["question", "answer"]])


@requires_shared_data("scifact-qa")
@pytest.mark.parametrize("strategy", ["top", "random"])
def test_mining_gives_negatives_that_are_never_a_positive(strategy, tmp_path, tiny_cfg):
    """mine_negatives on a scifact-qa slice with the tiny base model: the n-tuple layout, no negative equal to an
    answer of its question (duplicates included), the held-out rows untouched, the same rows again for the same seed."""
    from pipeline.stages.mine_negatives import mine_negatives
    from pipeline.stages.prepare_data import prepare_data

    data = _scifact_pairs(tmp_path / "scifact", 64)
    mine = ["data.mine.enabled=true", "data.mine.num_negatives=2", f"data.mine.sampling_strategy={strategy}"]
    # a random tiny model scores its positives no higher than the rest: no margin, or nothing passes
    cfg = tiny_cfg(
        [f"data.path={data}", "data.eval_size=8", *mine, "data.mine.range_max=12", "data.mine.relative_margin=null"]
    )
    prepare_data(cfg.data, tmp_path / "prep")
    prepared = load_from_disk(str(tmp_path / "prep" / "dataset"))
    result = mine_negatives(cfg.model, cfg.data, tmp_path / "prep", tmp_path / "mined")
    mined = load_from_disk(str(tmp_path / "mined" / "dataset"))
    assert mined["train"].column_names == ["question", "answer", "negative_1", "negative_2"]
    assert mined["eval"].to_dict() == prepared["eval"].to_dict()
    answers_of: dict[str, set[str]] = {}
    for row in prepared["train"]:
        answers_of.setdefault(row["question"], set()).add(row["answer"])
    train_answers = set(prepared["train"]["answer"])
    for row in mined["train"]:
        negatives = {row["negative_1"], row["negative_2"]}
        assert len(negatives) == 2 and not negatives & answers_of[row["question"]]
        assert negatives <= train_answers  # candidates are the training answers
    assert result["train_rows"] + result["dropped_rows"] == len(prepared["train"]) == result["train_rows_in"]
    assert result["train_rows"] == len(mined["train"]) > 0
    again = mine_negatives(cfg.model, cfg.data, tmp_path / "prep", tmp_path / "again")
    assert again == result
    assert load_from_disk(str(tmp_path / "again" / "dataset"))["train"].to_dict() == mined["train"].to_dict()


@requires_shared_data("scifact-qa")
@pytest.mark.integration
def test_the_dag_mines_then_trains_on_the_mined_rows(tmp_path, tiny_cfg):
    """run_dag with data.mine.enabled: mine_negatives runs between prepare_data and finetune, which trains on its
    (question, answer, negative_1) rows through the trainer, sampler and loss; a second run reuses both."""
    from pipeline.dag import run_dag

    data = _scifact_pairs(tmp_path / "scifact", 48)
    cfg = tiny_cfg(
        [
            f"data.path={data}",
            "data.eval_size=8",
            "data.mine.enabled=true",
            "data.mine.relative_margin=null",  # a random tiny model: see test_mining_gives_negatives...
            "run.until=finetune",
            "train.max_steps=1",
            "train.warmup_ratio=0",  # one step at the full learning rate: the adapter moves
            "train.eval_steps=null",
            "train.save_steps=null",
        ]
    )
    outputs = run_dag(cfg)
    assert list(outputs) == ["prepare_data", "mine_negatives", "finetune"]
    assert outputs["mine_negatives"].result["train_rows"] > 0
    assert outputs["finetune"].result["global_step"] == 1
    again = run_dag(cfg)
    assert {o.status for o in again.values()} == {"cached"}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.negative_columns=[negative]"], "data.negative_columns has ['negative'], not a column of data.path="),
        (["data.negative_columns=[answer]"], "holds ['answer'], the question or answer column"),
        (["data.mine.enabled=true", "data.negative_columns=[question2]"], "train on the dataset's own negatives or"),
        (["run.until=mine_negatives"], "run.until=mine_negatives names the mine_negatives stage"),
        (["run.force=mine_negatives"], "run.force=mine_negatives names the mine_negatives stage"),
        (["data.mine.enabled=true", "data.mine.range_max=1", "data.mine.num_negatives=2"], "data.mine.range_max=1"),
    ],
)
def test_validation_refuses_bad_negatives_in_one_line(overrides, expected, tiny_cfg):
    from pipeline.config import ConfigError
    from pipeline.validate import validate

    with pytest.raises(ConfigError) as error:
        validate(tiny_cfg(overrides))
    assert expected in str(error.value) and "\n" not in str(error.value)
