"""The whole DAG on a tiny BERT: both arms, the MLflow run, the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from sentence_transformers import SentenceTransformer

from pipeline.app import run
from pipeline.dag import run_dag
from pipeline.tracking.run import tracking_uri


def _only_run(cfg):
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time DESC"])
    return client, runs


def test_lora_run_end_to_end(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    score = run(cfg)
    client, runs = _only_run(cfg)
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "lora-r4-a8"
    assert r.data.tags["method"] == "lora"
    assert r.data.params["finetune.r"] == "4" and r.data.params["data.train_size"] == "32"
    m = r.data.metrics
    assert m["nanobeir_mean_ndcg_at_10"] == score
    assert 0.0 <= m["baseline_nanobeir_mean_ndcg_at_10"] <= 1.0
    assert {"nanobeir_scifact_ndcg_at_10", "nanobeir_msmarco_ndcg_at_10"} <= set(m)
    np.testing.assert_allclose(
        (m["nanobeir_scifact_ndcg_at_10"] + m["nanobeir_msmarco_ndcg_at_10"]) / 2, score, rtol=1e-9
    )
    assert m["trainable_params"] < m["total_params"]
    assert [x.step for x in client.get_metric_history(r.info.run_id, "loss")] == [1, 2]
    # in-training NanoBEIR evaluation, '@' made MLflow-safe
    assert any(k.startswith("eval_NanoBEIR_mean") and k.endswith("ndcg_at_10") for k in m)
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "model")}
    assert {"model/adapter_model.safetensors", "model/adapter_config.json", "model/README.md"} <= artifacts
    assert "model/model.safetensors" not in artifacts
    per_query = json.loads(
        open(client.download_artifacts(r.info.run_id, "evaluation/per_query.json", str(tmp_path))).read()
    )
    assert set(per_query) == {"scifact", "msmarco"} and len(per_query["scifact"]) == 6
    # the adapter records its base as configured, and loads with SentenceTransformer(dir) and with load_adapter
    model_dir = client.download_artifacts(r.info.run_id, "model", str(tmp_path / "dl"))
    adapter_config = json.loads(open(f"{model_dir}/adapter_config.json").read())
    assert adapter_config["base_model_name_or_path"] == cfg.model.name
    texts = ["what is heart pain?", "blood pressure and stroke"]
    direct = SentenceTransformer(model_dir).encode(texts)
    base = SentenceTransformer(cfg.model.name)
    base.load_adapter(model_dir)
    np.testing.assert_allclose(base.encode(texts), direct, atol=1e-6)
    assert not np.allclose(SentenceTransformer(cfg.model.name).encode(texts), direct, atol=1e-4)  # it trained
    card = open(client.download_artifacts(r.info.run_id, "model/README.md", str(tmp_path))).read()
    assert "Trainable parameters" in card and "| scifact |" in card


def test_second_identical_run_is_cached(tiny_cfg):
    cfg = tiny_cfg(["finetune=full"])
    first = run_dag(cfg)
    assert {o.status for o in first.values()} == {"ran"}
    second = run_dag(cfg)
    assert {o.status for o in second.values()} == {"cached"}
    assert second["evaluate"].result == first["evaluate"].result
    # a different r changes finetune and everything after it, not the shared stages
    lora = run_dag(tiny_cfg(["finetune=lora"]))
    assert lora["prepare_data"].status == "cached" and lora["baseline"].status == "cached"
    assert lora["finetune"].status == "ran"


def test_full_output_is_a_plain_model_dir(tiny_cfg):
    outputs = run_dag(tiny_cfg(["finetune=full", "run.until=finetune"]))
    assert list(outputs) == ["prepare_data", "finetune"]
    model_dir = outputs["finetune"].dir / "model"
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "adapter_config.json").exists()
    SentenceTransformer(str(model_dir)).encode(["a question"])


def test_keys_depend_only_on_what_changes_a_stage(tiny_cfg):
    from pipeline.dag import STAGES, stage_key

    lora = tiny_cfg(["finetune=lora", "model.card_model_name=an adapter", "eval.backend=sentence_transformers"])
    full = tiny_cfg(["finetune=full", "model.card_model_name=a full fine-tune"])
    mteb = tiny_cfg(["finetune=lora", "model.card_model_name=an adapter", "eval.backend=mteb"])
    # the baseline reads neither the method nor the card text: one baseline for both arms of a comparison
    assert stage_key(STAGES["baseline"], lora, {}) == stage_key(STAGES["baseline"], full, {})
    # a full fine-tune has no r (its config refuses one); the backend of the final evaluation does not retrain
    with pytest.raises(ConfigCompositionException, match="Could not override 'finetune.r'"):
        tiny_cfg(["finetune=full", "finetune.r=32"])
    assert stage_key(STAGES["finetune"], lora, {}) == stage_key(STAGES["finetune"], mteb, {})
    assert stage_key(STAGES["evaluate"], lora, {}) != stage_key(STAGES["evaluate"], mteb, {})
    assert stage_key(STAGES["finetune"], lora, {}) != stage_key(STAGES["finetune"], tiny_cfg(["finetune.r=8"]), {})
