"""The Model Registry: a run's trained model registered through MLflow's sentence-transformers flavour, loading back
with MLflow's API alone; `python -m pipeline.report --register` registers the sweep's winning arm."""

from __future__ import annotations

from pathlib import Path

import mlflow.sentence_transformers
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.models import load_model
from pipeline.report import main
from pipeline.report.compare import winning_arm
from pipeline.tracking.uri import tracking_uri

TEXTS = ["what is heart pain?", "blood pressure and stroke"]


@pytest.mark.integration
def test_report_register_registers_the_winning_arm_and_it_loads_back(tiny_lora_run, tmp_path, capsys, monkeypatch):
    cfg, scores = tiny_lora_run  # a LoRA run: its adapter is merged into the base for the registry
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    child = client.get_run(scores.run_id)
    # make it the one arm of a sweep, as a multirun would
    parent = client.create_run(exp, run_name="sweep-s1", tags={"sweep_id": "s1", "pipeline.role": "sweep"})
    client.set_tag(child.info.run_id, "sweep_id", "s1")
    client.set_tag(child.info.run_id, "mlflow.parentRunId", parent.info.run_id)

    assert main(["--sweep-id", "s1", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--register", "tiny"]) == 0
    assert f"run {child.info.run_id}) as model 'tiny' version 1" in capsys.readouterr().out  # its only configuration
    (version,) = client.search_model_versions("name='tiny'")
    assert version.run_id == child.info.run_id and version.tags["merged_adapter"] == "true"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where models:/ URIs resolve
    registered = mlflow.sentence_transformers.load_model("models:/tiny/1")  # MLflow's API, no peft, no base
    trained = load_model(cfg.model, str(next((Path(cfg.paths.outputs) / "cache" / "finetune").glob("*/model"))))
    np.testing.assert_allclose(registered.encode(TEXTS), trained.encode(TEXTS), atol=1e-5)
    assert not hasattr(registered.transformers_model, "peft_config")  # one standalone model, no adapter to attach
    base = load_model(cfg.model).encode(TEXTS)
    assert not np.allclose(registered.encode(TEXTS), base, atol=1e-4)  # the trained model, not its base

    # registering again is the next version of the same model
    assert main(["--sweep-id", "s1", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--register", "tiny"]) == 0
    assert sorted(int(v.version) for v in client.search_model_versions("name='tiny'")) == [1, 2]


def test_the_winner_is_the_verdicts():
    def config(name, method, selected=True):
        return {"name": name, "method": method, "selected": selected, "runs": [f"{name}-s12", f"{name}-s13"]}

    configs = [config("lora-r8", "lora"), config("lora-r4", "lora", False), config("full", "full")]
    verdict = {"adapter": "lora-r8", "full": "full", "reason": ""}
    for label, winner in [
        ("equivalent", "lora-r8"),
        ("non-inferior", "lora-r8"),
        ("superior", "lora-r8"),
        ("inferior", "full"),
    ]:
        chosen, why = winning_arm({"configurations": configs, "verdict": {**verdict, "label": label}})
        assert chosen["name"] == winner and label in why
    chosen, why = winning_arm({"configurations": configs, "verdict": {**verdict, "label": "inconclusive"}})
    assert chosen is None and "inconclusive" in why
    # one method, no verdict: its configuration selected on dev; two methods without a verdict: none
    assert winning_arm({"configurations": configs[:2], "verdict": None})[0]["name"] == "lora-r8"
    assert winning_arm({"configurations": configs, "verdict": None})[0] is None
