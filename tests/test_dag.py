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
from pipeline.tracking.uri import tracking_uri


def _only_run(cfg):
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time DESC"])
    return client, runs


@pytest.mark.integration
def test_lora_run_end_to_end(tiny_lora_run, tmp_path):
    cfg, score = tiny_lora_run
    client = MlflowClient(tracking_uri(cfg))
    r = client.get_run(score.run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "lora-r4-a8-lr1e-3-s12"
    assert r.data.tags["method"] == "lora"
    assert r.data.params["finetune.r"] == "4" and r.data.params["data.train_size"] == "32"
    m = r.data.metrics
    # the run returns its scores as logged (what a sweep's job hands the sweeper); float(): the dev score, what sweeps
    # select on and Optuna maximises, never the NanoBEIR test score
    assert float(score) == score.dev == m["dev_ndcg_at_10"] and score.run_id == r.info.run_id
    assert score.benchmark == m["nanobeir_mean_ndcg_at_10"] and score.in_domain == m["test_ndcg_at_10"]
    assert score.train_loss == m["train_loss"]
    assert m["dev_delta_vs_base"] == m["dev_ndcg_at_10"] - m["baseline_dev_ndcg_at_10"]
    assert 0.0 <= m["baseline_nanobeir_mean_ndcg_at_10"] <= 1.0
    assert {"nanobeir_scifact_ndcg_at_10", "nanobeir_msmarco_ndcg_at_10"} <= set(m)
    np.testing.assert_allclose(
        (m["nanobeir_scifact_ndcg_at_10"] + m["nanobeir_msmarco_ndcg_at_10"]) / 2,
        m["nanobeir_mean_ndcg_at_10"],
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        m["nanobeir_delta_vs_base"], m["nanobeir_mean_ndcg_at_10"] - m["baseline_nanobeir_mean_ndcg_at_10"]
    )
    assert m["train_seconds"] > 0 and m["peak_memory_mb"] > 0 and m["train_samples_per_second"] > 0
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
    assert score.per_query == per_query
    dev = json.loads(
        open(client.download_artifacts(r.info.run_id, "evaluation/dev/per_query.json", str(tmp_path))).read()
    )
    assert len(dev["dev"]) == m["data_dev_queries"] > 0
    np.testing.assert_allclose(sum(dev["dev"].values()) / len(dev["dev"]), m["dev_ndcg_at_10"], rtol=1e-9)
    # the in-domain test set (the last data.test_size=2 held-out pairs): scored per query, as dev, beside its baseline
    test = json.loads(
        open(client.download_artifacts(r.info.run_id, "evaluation/test/per_query.json", str(tmp_path))).read()
    )
    assert len(test["test"]) == m["data_test_queries"] == 2 - m["data_test_dropped"]
    np.testing.assert_allclose(sum(test["test"].values()) / len(test["test"]), m["test_ndcg_at_10"], rtol=1e-9)
    assert m["test_delta_vs_base"] == m["test_ndcg_at_10"] - m["baseline_test_ndcg_at_10"]
    assert r.data.tags["stage.test_evaluate"] == "ran"
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


@pytest.mark.integration
def test_second_identical_run_is_cached(tiny_cfg):
    cfg = tiny_cfg(["finetune=lora"])
    first = run_dag(cfg)
    assert {o.status for o in first.values()} == {"ran"}
    second = run_dag(cfg)
    assert {o.status for o in second.values()} == {"cached"}
    assert second["evaluate"].result == first["evaluate"].result
    # a different r (and nothing else) changes finetune and everything after it, not the shared stages
    other_r = run_dag(tiny_cfg(["finetune=lora", "finetune.r=8"]))
    assert {n: o.status for n, o in other_r.items()} == {
        "prepare_data": "cached",
        "prepare_dev": "cached",
        "prepare_test": "cached",
        "baseline": "cached",
        "dev_baseline": "cached",
        "test_baseline": "cached",
        "finetune": "ran",
        "evaluate": "ran",
        "dev_evaluate": "ran",
        "test_evaluate": "ran",
        "model_card": "ran",
    }
    # another evaluation set re-evaluates; it does not retrain
    other_eval = run_dag(tiny_cfg(["finetune=lora", "eval.datasets=[scifact]"]))
    assert other_eval["finetune"].status == "cached" and other_eval["evaluate"].status == "ran"
    assert other_eval["dev_evaluate"].status == other_eval["test_evaluate"].status == "cached"  # nor did these sets
    assert list(other_eval["evaluate"].result["per_dataset_ndcg_at_10"]) == ["scifact"]


@pytest.mark.integration
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
    same_card = ["finetune=lora", "model.card_model_name=an adapter", "eval.backend=sentence_transformers"]
    assert stage_key(STAGES["finetune"], lora, {}) != stage_key(
        STAGES["finetune"], tiny_cfg([*same_card, "finetune.r=8"]), {}
    )
    assert stage_key(STAGES["finetune"], lora, {}) == stage_key(STAGES["finetune"], tiny_cfg(same_card), {})


@pytest.mark.integration
def test_a_reused_fine_tune_logs_no_in_training_numbers_of_another_evaluation(tiny_cfg):
    """The finetune stage is reused across evaluation configs; its in-training NanoBEIR metrics are of the one it
    was trained with, so a run with other evaluation sets logs its loss history but not those metrics."""
    first = tiny_cfg()
    run(first)
    client, (r1,) = _only_run(first)
    assert any(k.startswith("eval_NanoBEIR") for k in r1.data.metrics)
    run(tiny_cfg(["eval.datasets=[scifact]"]))
    client, (r2, _) = _only_run(first)
    assert r2.data.tags["stage.finetune"] == "cached" and r2.data.tags["stage.evaluate"] == "ran"
    assert not any(k.startswith("eval_NanoBEIR") for k in r2.data.metrics)
    assert [m.step for m in client.get_metric_history(r2.info.run_id, "loss")] == [1, 2]  # the loss is replayed
    assert "nanobeir_scifact_ndcg_at_10" in r2.data.metrics
