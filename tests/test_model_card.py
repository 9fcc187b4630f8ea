"""The model card: Hub-conventional front matter (base_model, base_model_relation) and the evaluation section."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from pipeline.config import FinetuneConfig, Method, ModelConfig
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


def _card(tmp_path: Path, model: ModelConfig, method: Method, base: str = "", **results) -> tuple[ModelCard, dict]:
    (tmp_path / "ft" / "model").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ft" / "model" / "README.md").write_text(ST_CARD.format(base=base))
    out = tmp_path / "card"
    summary = model_card(
        model,
        FinetuneConfig(method=method, r=4, alpha=8),
        tmp_path / "ft",
        TRAINED,
        {**BASELINE, **results.get("baseline", {})},
        {**FINETUNED, **results.get("finetuned", {})},
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


def test_the_evaluation_section_has_the_dev_metric_the_table_and_the_method(tmp_path):
    model = ModelConfig(name="org/model")
    card, _ = _card(tmp_path, model, Method.lora)
    assert "| scifact | 6 | 0.5000 | 0.6000 | +0.1000 |" in card.text
    assert "| **mean** | | 0.5000 | 0.6000 | +0.1000 |" in card.text
    assert "How this was measured" in card.text and "permutation test" in card.text
    assert "dev set" not in card.text  # no dev metric in this run: no row for it
    card, _ = _card(
        tmp_path,
        model,
        Method.lora,
        baseline={"dev_ndcg_at_10": 0.41},
        finetuned={"dev_ndcg_at_10": 0.52, "dev_queries": 64},
    )
    assert "In-domain dev set (held out of the training data, 64 queries): NDCG@10 0.5200 (base model 0.4100)" in (
        card.text
    )


def test_the_pipelines_card_has_the_front_matter(tiny_cfg):
    outputs = run_dag(tiny_cfg(["finetune=full"]))
    card = ModelCard.load(outputs["model_card"].dir / "README.md")
    assert card.data.base_model_relation == "finetune"
    assert "base_model" not in card.data.to_dict()  # the tiny model is a local dir: no Hub id to link
    assert card.data.pipeline_tag == "sentence-similarity"  # sentence-transformers' metadata is kept
    assert "## Evaluation: base model vs fine-tuned" in card.text and "| **mean** |" in card.text
