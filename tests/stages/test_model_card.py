"""The model card: Hub-conventional front matter (base_model, base_model_relation), the evaluation section, and a
reused fine-tune's card with this run's card text (the card text is not in the finetune key)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from pipeline.adapter_configs import FullFinetune, LoraFinetune
from pipeline.config import Method, ModelConfig
from pipeline.dag import run_dag
from pipeline.stages.model_card import model_card

ST_CARD = """---
language:
- en
library_name: sentence-transformers
{base}---

# a model

### Model Description
- **Model Type:** Sentence Transformer
<!-- - **Base model:** [Unknown](https://huggingface.co/unknown) -->
"""
TRAINED = {
    "trainable_params": 10,
    "trainable_percent": 1.0,
    "total_params": 1000,
    "weights_file": "adapter_model.safetensors",
    "weights_mb": 0.1,
    "device": "cpu",
    "precision": "fp32",
    "dtype": "float32",
    "trainable_dtype": "float32",
    "prompts": {"query": "Instruct: find\nQuery: ", "document": ""},
    "target_modules": ["query", "value"],
}
BASELINE = {"ndcg_at_10": 0.5, "per_dataset_ndcg_at_10": {"scifact": 0.5}}
FINETUNED = {
    "ndcg_at_10": 0.6,
    "per_dataset_ndcg_at_10": {"scifact": 0.6},
    "queries": {"scifact": 6},
    "score_function": "cosine",
    "backend": "sentence_transformers",
}
DEV_BASE = {"ndcg_at_10": 0.41, "queries": 64, "corpus": 100}
DEV = {"ndcg_at_10": 0.52, "queries": 64, "corpus": 100}


def _card(tmp_path: Path, model: ModelConfig, method: Method, base: str = "", **results) -> tuple[ModelCard, dict]:
    (tmp_path / "ft" / "model").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ft" / "model" / "README.md").write_text(ST_CARD.format(base=base))
    out = tmp_path / "card"
    summary = model_card(
        model,
        LoraFinetune(r=4, alpha=8) if method == Method.lora else FullFinetune(),
        tmp_path / "ft",
        TRAINED,
        {**BASELINE, **results.get("baseline", {})},
        {**FINETUNED, **results.get("finetuned", {})},
        DEV_BASE,
        DEV,
        out,
    )
    return ModelCard.load(out / "README.md"), summary


def test_a_hub_base_is_linked_with_its_revision_and_relation(tmp_path):
    model = ModelConfig(name="sentence-transformers/all-MiniLM-L6-v2", revision="c9745ed1")
    card, summary = _card(tmp_path, model, Method.lora)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.base_model_revision == "c9745ed1"
    assert card.data.base_model_relation == "adapter" and summary["base_model_relation"] == "adapter"
    assert card.data.library_name == "sentence-transformers"  # what sentence-transformers wrote stays
    assert "- **Base model:** [sentence-transformers/all-MiniLM-L6-v2](https://huggingface.co/" in card.text
    full, _ = _card(tmp_path, ModelConfig(name="BAAI/bge-small-en-v1.5"), Method.full)
    assert full.data.base_model == "BAAI/bge-small-en-v1.5" and full.data.base_model_relation == "finetune"
    assert "base_model_revision" not in full.data.to_dict()  # unknown: not written as null


def test_a_local_base_is_never_written_as_base_model(tmp_path):
    local = tmp_path / "my-model"
    local.mkdir()
    # sentence-transformers may have guessed a base from the local path: a path never reaches the front matter
    card, summary = _card(tmp_path, ModelConfig(name=str(local)), Method.full, base=f"base_model: {local}\n")
    assert "base_model" not in card.data.to_dict() and summary["base_model"] is None
    assert card.data.base_model_relation == "finetune"
    assert str(tmp_path) not in card.content
    # what sentence-transformers verified on the Hub for a local copy is kept
    card, _ = _card(tmp_path, ModelConfig(name=str(local)), Method.lora, base="base_model: org/model\n")
    assert card.data.base_model == "org/model" and card.data.base_model_relation == "adapter"


def test_the_evaluation_section_has_the_dev_metric_the_table_and_how_it_was_measured(tmp_path):
    card, _ = _card(tmp_path, ModelConfig(name="org/model"), Method.lora)
    assert "| scifact | 6 | 0.5000 | 0.6000 | +0.1000 |" in card.text
    assert "| **mean** | | 0.5000 | 0.6000 | +0.1000 |" in card.text
    assert "How this was measured" in card.text and "within a stated margin" in card.text
    assert "64 queries, 100 documents): NDCG@10 0.5200 (base model 0.4100, +0.1100)" in card.text


@pytest.mark.integration
def test_the_pipelines_card_has_the_front_matter(tiny_cfg):
    outputs = run_dag(tiny_cfg(["finetune=full"]))
    card = ModelCard.load(outputs["model_card"].dir / "README.md")
    assert card.data.base_model_relation == "finetune"
    assert "base_model" not in card.data.to_dict()  # the tiny model is a local dir: no Hub id to link
    assert card.data.pipeline_tag == "sentence-similarity"  # sentence-transformers' metadata is kept
    assert "## Evaluation: base model vs fine-tuned" in card.text and "| **mean** |" in card.text


REUSED_CARD = """---
language:
- en
license: apache-2.0
tags:
- sentence-transformers
base_model: org/tiny
library_name: sentence-transformers
---

# org/tiny adapter finetuned on qa pairs

This is a [sentence-transformers](https://www.SBERT.net) model finetuned from org/tiny on the qa dataset.
"""


def _trained(tmp_path):
    (tmp_path / "ft" / "model").mkdir(parents=True)
    (tmp_path / "ft" / "model" / "README.md").write_text(REUSED_CARD)
    card = {"language": "en", "license": "apache-2.0", "model_name": "org/tiny adapter finetuned on qa pairs"}
    return {**TRAINED, "card": card, "base_revision": "c" * 40}


def test_a_reused_fine_tunes_card_gets_this_runs_card_text(tmp_path, tiny_cfg):
    cfg = tiny_cfg(["model.card_language=de", "model.card_license=mit", "model.card_model_name=Mein Adapter"])
    evaluation = {"per_dataset_ndcg_at_10": {"scifact": 0.5}, "queries": {"scifact": 6}, "ndcg_at_10": 0.5}
    wanted = {"language": "de", "license": "mit", "model_name": "Mein Adapter"}
    model_card(
        cfg.model,
        cfg.finetune,
        tmp_path / "ft",
        _trained(tmp_path),
        evaluation,
        {**evaluation, "score_function": "cosine"},
        DEV_BASE,
        DEV,
        tmp_path / "out",
        wanted,
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "language:\n- de\n" in card and "license: mit\n" in card and "# Mein Adapter\n" in card
    assert "- en\n" not in card and "apache-2.0" not in card and "finetuned on qa pairs" not in card
    assert "c" * 40 in card  # the base model's pinned revision


def test_the_card_says_the_trained_dtype_and_the_prompts(tmp_path):
    card, _ = _card(tmp_path, ModelConfig(name="org/model"), Method.lora)
    assert "| Trained weights' dtype | float32 (loaded as `model.dtype=float32`) |" in card.text
    assert "| Prompts (training and evaluation) | query: `'Instruct: find\\nQuery: '` |" in card.text
