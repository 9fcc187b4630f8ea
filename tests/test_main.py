"""The packaged all-MiniLM-L6-v2 on real data (../shared/data): the issue's command, twice, checked through MLflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sentence_transformers import SentenceTransformer

from pipeline.dag import is_complete
from pipeline.models import model_source
from pipeline.tools.adapters import load_with_local_base
from tests.conftest import ROOT, SHARED_DATA, requires_shared_data

pytestmark = [pytest.mark.slow, pytest.mark.integration, requires_shared_data("medquad-qa", "nanobeir-mini")]


def _run(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "finetune=lora",
        f"data.path={SHARED_DATA / 'medquad-qa'}",
        "data.train_size=256",
        "data.eval_size=64",
        "data.test_size=16",  # the last 16 held-out pairs: the in-domain test set
        f"eval.dataset_id={SHARED_DATA / 'nanobeir-mini'}",
        "eval.datasets=[msmarco]",
        "train.max_steps=4",
        "train.batch_size=32",
        f"tracking.uri=sqlite:///{tmp_path}/m.db",
        f"paths.outputs={tmp_path}/out",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_minilm_lora_on_medquad_twice(tmp_path):
    first = _run(tmp_path)
    assert re.search(r"^prepare_data\s+ran\s", first.stdout, re.MULTILINE), first.stdout  # the status table
    second = _run(tmp_path)
    for stage in ("prepare_data", "baseline", "finetune", "evaluate", "test_evaluate", "model_card"):
        assert re.search(rf"^{stage}\s+cached\s", second.stdout, re.MULTILINE), second.stdout

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    experiment = client.get_experiment_by_name("lora-vs-full")
    runs = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time ASC"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    run = runs[0]
    assert run.data.tags["method"] == "lora" and run.data.tags["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert run.data.params["data.train_size"] == "256" and run.data.params["finetune.r"] == "64"
    metrics = run.data.metrics
    for name in ("nanobeir_mean_ndcg_at_10", "baseline_nanobeir_mean_ndcg_at_10", "nanobeir_msmarco_ndcg_at_10"):
        assert 0.2 < metrics[name] <= 1.0, (name, metrics[name])
    # the in-domain test set of real MedQuAD pairs: scored like dev, before and after
    assert 0.2 < metrics["test_ndcg_at_10"] <= 1.0 and 0.2 < metrics["baseline_test_ndcg_at_10"] <= 1.0
    assert metrics["data_test_queries"] + metrics["data_test_dropped"] == 16
    # the second, cached run logs the same results
    assert runs[1].data.metrics["nanobeir_mean_ndcg_at_10"] == metrics["nanobeir_mean_ndcg_at_10"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/adapter_model.safetensors", "model/adapter_config.json", "model/README.md"} <= artifacts
    assert "model/model.safetensors" not in artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} >= {
        "evaluation/metrics.json",
        "evaluation/per_query.json",
        "evaluation/baseline",
    }

    # a portable adapter: it records the base's Hub id, never this machine's path of the packaged copy
    adapter_dir = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "dl"))
    recorded = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == "sentence-transformers/all-MiniLM-L6-v2"
    # offline, it loads on a local copy of the base: with load_adapter, or the documented helper
    texts = ["what are the symptoms of anemia?", "Anemia causes fatigue and pale skin."]
    local_base = model_source("sentence-transformers/all-MiniLM-L6-v2")
    helper = load_with_local_base(adapter_dir, local_base).encode(texts)
    base = SentenceTransformer(local_base)
    base.max_seq_length = 128
    base.load_adapter(adapter_dir)
    np.testing.assert_allclose(base.encode(texts), helper, atol=1e-6)
    # and gives the embeddings the pipeline evaluated with: the finetune stage checked its save reloads exactly
    finetune_dir = next(p for p in (tmp_path / "out" / "cache" / "finetune").iterdir() if is_complete(p))
    summary = json.loads((finetune_dir / "_SUCCESS.json").read_text())["result"]
    assert summary["reload_max_abs_diff"] < 1e-5
