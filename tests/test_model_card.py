"""The card text is not in the finetune key: a reused fine-tune's card gets this run's language, license and title."""

from __future__ import annotations

from pipeline.stages.model_card import model_card

CARD = """---
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
    (tmp_path / "ft" / "model" / "README.md").write_text(CARD)
    return {
        "card": {"language": "en", "license": "apache-2.0", "model_name": "org/tiny adapter finetuned on qa pairs"},
        "base_revision": "c" * 40,
        "target_modules": ["query", "value"],
        "trainable_params": 10,
        "trainable_percent": 1.0,
        "total_params": 1000,
        "weights_file": "adapter_model.safetensors",
        "weights_mb": 0.1,
        "device": "cpu",
        "precision": "fp32",
    }


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
        tmp_path / "out",
        wanted,
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "language:\n- de\n" in card and "license: mit\n" in card and "# Mein Adapter\n" in card
    assert "- en\n" not in card and "apache-2.0" not in card and "finetuned on qa pairs" not in card
    assert "c" * 40 in card  # the base model's pinned revision
