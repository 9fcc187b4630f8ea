"""What reaches MLflow: flattened params without secrets, MLflow-safe metric names, what identifies a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline.app import run
from pipeline.tracking.identity import finished_run, flat_params, run_key
from pipeline.tracking.store import metric_name
from pipeline.tracking.uri import tracking_uri
from tests.conftest import write_qa_dir


def test_secret_like_keys_are_never_params():
    cfg = OmegaConf.create(
        {
            "model": {"name": "m", "hf_token": "hf_abc"},
            "tracking": {"api_key": "k", "password": "p", "uri": "u"},
            "data": {"client_secret": "s", "path": "d"},
            "hydra": {"x": 1},
        }
    )
    params = flat_params(cfg)
    assert params == {"model.name": "m", "tracking.uri": "u", "data.path": "d"}


def test_metric_names_are_mlflow_safe():
    assert metric_name("eval_NanoBEIR_mean_cosine_ndcg@10") == "eval_NanoBEIR_mean_cosine_ndcg_at_10"


def test_a_token_in_the_config_is_logged_nowhere(tiny_cfg, monkeypatch, tmp_path):
    """A token that enters the config (here through an env interpolation) reaches no param, tag or config.yaml."""
    secret = "hf_SECRET_do_not_log_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    from pipeline.tracking.run import pipeline_run

    # the typed schema has no token key: a plain copy of the config takes one, as a user's own config group might
    cfg = OmegaConf.create(OmegaConf.to_container(tiny_cfg(["run.until=prepare_data"]), enum_to_str=True))
    cfg.model.hf_token = "${oc.env:HF_TOKEN}"
    cfg.tracking.auth = {"api_key": "${oc.env:HF_TOKEN}"}
    assert secret in OmegaConf.to_yaml(cfg, resolve=True)  # it is in the config
    with pipeline_run(cfg):
        pass
    client = MlflowClient(tracking_uri(cfg))
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    logged = list(r.data.params.values()) + list(r.data.tags.values())
    assert not any(secret in str(v) for v in logged)
    assert r.data.params["model.trust_remote_code"] == "False"
    config_yaml = Path(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert secret not in config_yaml and "hf_token" not in config_yaml
    assert OmegaConf.create(config_yaml).model.trust_remote_code is False  # the rest of the config is there
    assert "auth" in OmegaConf.create(config_yaml).tracking


def test_an_interrupted_run_resumes_with_the_new_tags(tiny_cfg):
    from pipeline.tracking.run import pipeline_run

    cfg = tiny_cfg()
    with pytest.raises(KeyboardInterrupt), pipeline_run(cfg, tags={"sweep_id": "old"}) as first:
        raise KeyboardInterrupt
    client = MlflowClient(tracking_uri(cfg))
    assert client.get_run(first.run_id).info.status == "KILLED"
    with pipeline_run(cfg, tags={"sweep_id": "new"}) as second:
        pass
    run = client.get_run(second.run_id)
    assert second.run_id == first.run_id and run.info.status == "FINISHED"
    assert run.data.tags["sweep_id"] == "new" and run.data.tags["resumed"] == "true"
    # a finished run is never resumed: the same config again is a new run
    with pipeline_run(cfg) as third:
        pass
    assert third.run_id != first.run_id


def test_a_run_is_identified_by_its_config_and_by_what_its_data_holds(tiny_cfg, tmp_path):
    data = write_qa_dir(tmp_path / "qa", rows=64, seed=0)
    cfg = tiny_cfg([f"data.path={data}"])
    key = run_key(cfg)
    assert run_key(tiny_cfg([f"data.path={data}", "run.skip_finished=false"])) == key  # how to run, not what
    assert run_key(tiny_cfg([f"data.path={data}", "finetune.r=8"])) != key
    write_qa_dir(data, rows=64, seed=1)  # rebuilt in place: same path, other pairs
    assert run_key(cfg) != key


def test_finished_run_creates_nothing_and_finds_only_finished_runs(tiny_cfg):
    cfg = tiny_cfg(["run.until=prepare_data"])
    assert finished_run(cfg) is None
    assert not Path(tracking_uri(cfg).removeprefix("sqlite:///")).exists()  # no DB made by looking
    run(cfg)
    found = finished_run(cfg)
    assert found is not None and found.info.status == "FINISHED"
    assert finished_run(tiny_cfg(["run.until=prepare_data", "finetune.r=8"])) is None


def test_a_full_run_logs_only_its_methods_params_but_keeps_its_identity(tiny_cfg, monkeypatch):
    from pipeline.tracking.identity import method_params

    cfg = tiny_cfg(["finetune=full", "run.until=prepare_data"])
    run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert r.data.params["finetune.method"] == "full"
    assert not [k for k in r.data.params if k.startswith("finetune.") and k != "finetune.method"]
    assert r.data.params["train.lr"] == "0.001"  # what a full run does use stays
    # any method's own keys (another adapter's, say) are dropped for a full run, kept for an adapter run
    params = {"finetune.method": "full", "finetune.r": "4", "finetune.vera_d_initial": "0.1", "train.lr": "1"}
    assert method_params(params) == {"finetune.method": "full", "train.lr": "1"}
    assert method_params({**params, "finetune.method": "lora"}) == {**params, "finetune.method": "lora"}
    # the identity still covers every key, as before: the same full config with another seed is another run key
    assert r.data.tags["pipeline.config_hash"] == run_key(cfg)
    assert run_key(tiny_cfg(["finetune=full", "train.seed=3"])) != run_key(tiny_cfg(["finetune=full"]))


@pytest.mark.integration
def test_a_run_logs_its_datasets_with_context_and_content_digest(tiny_cfg, tmp_path):
    from pipeline.tracking.datasets import logged_inputs

    data = write_qa_dir(tmp_path / "qa", rows=64, seed=0)
    cfg = tiny_cfg([f"data.path={data}"])  # the whole DAG: the evaluation set is read twice, logged once
    run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    (r,) = client.search_runs([exp])
    inputs = {i["context"]: i for i in logged_inputs(r)}
    assert set(inputs) == {"training", "dev", "test", "evaluation"}
    training, evaluation = inputs["training"], inputs["evaluation"]
    assert inputs["dev"]["profile"] == {"num_rows": r.data.metrics["data_dev_queries"]}  # held out of the same source
    assert inputs["dev"]["digest"] != training["digest"]
    assert training["name"] == "qa" and training["source"]["path"] == str(data.resolve())
    assert training["profile"] == {"num_rows": 32}
    assert evaluation["name"] == Path(cfg.eval.dataset_id).name
    assert evaluation["profile"]["queries"] == {"msmarco": 6, "scifact": 6}
    # the digest follows the content: the same dir rebuilt with other pairs is another dataset
    write_qa_dir(data, rows=64, seed=1)
    run(tiny_cfg([f"data.path={data}", "run.until=prepare_data"]))
    newest = client.search_runs([exp], order_by=["attributes.start_time DESC"])[0]
    (again,) = [i for i in logged_inputs(newest) if i["context"] == "training"]
    assert again["digest"] != training["digest"] and again["name"] == training["name"]
    # and so does the selection: fewer training rows of the same dir, another digest
    run(tiny_cfg([f"data.path={data}", "run.until=prepare_data", "data.train_size=16"]))
    newest = client.search_runs([exp], order_by=["attributes.start_time DESC"])[0]
    (fewer,) = [i for i in logged_inputs(newest) if i["context"] == "training"]
    assert fewer["digest"] not in (again["digest"], training["digest"]) and fewer["profile"] == {"num_rows": 16}
    # the held-out part of the same source (the dev set) is another dataset than the training part
    from omegaconf import OmegaConf

    from pipeline.tracking.datasets import dev_input, training_input

    data_cfg = OmegaConf.to_object(cfg.data)
    assert dev_input(data_cfg, "local:x", 8).digest != training_input(data_cfg, "local:x", 8).digest
    assert dev_input(data_cfg, "local:x", 8).context == "dev"
    # and the in-domain test set (its last rows) a third
    assert inputs["test"]["profile"] == {"num_rows": r.data.metrics["data_test_queries"]}
    assert len({inputs[c]["digest"] for c in ("training", "dev", "test")}) == 3


@pytest.mark.integration
def test_a_run_logs_system_metrics(tiny_cfg, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    cfg = tiny_cfg(["run.until=finetune"])
    run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    system = {k for k in r.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    history = client.get_metric_history(r.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2  # sampled while the run went on, not once
    off = tiny_cfg(["run.until=prepare_data", "tracking.system_metrics=false", "tracking.experiment=off"])
    run(off)
    (r,) = client.search_runs([client.get_experiment_by_name("off").experiment_id])
    assert not [k for k in r.data.metrics if k.startswith("system/")]


def test_the_hub_http_clients_info_lines_are_quiet_but_warnings_stay(caplog):
    import logging

    from pipeline.app import quiet_libraries

    quiet_libraries()
    with caplog.at_level(logging.NOTSET):
        logging.getLogger("httpx").info("HTTP Request: HEAD https://huggingface.co/... 200 OK")
        logging.getLogger("huggingface_hub.file_download").info("downloading")
        logging.getLogger("httpx").warning("retrying")
    assert [r.getMessage() for r in caplog.records] == ["retrying"]


@pytest.mark.integration
def test_a_run_logs_its_params_each_stage_the_trainers_logs_and_its_end(tiny_cfg):
    """One run, logged from its own process: params, each stage's metrics, the trainer's logs by step, FINISHED."""
    cfg = tiny_cfg()
    run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert r.info.status == "FINISHED"
    assert {"dev_ndcg_at_10", "nanobeir_mean_ndcg_at_10", "nanobeir_delta_vs_base", "trainable_params"} <= set(
        r.data.metrics
    )
    assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == [1, 2]  # the trainer's logs, by step
    assert r.data.tags["stage.model_card"] == "ran" and r.data.params["train.max_steps"] == str(cfg.train.max_steps)


def test_logging_that_fails_fails_the_run_and_keeps_what_was_logged(tiny_cfg, tmp_path):
    """What cannot be logged (here: a stage's files are gone) fails the run: FAILED with the error, never a silent
    gap; what was logged before it stays."""
    from pipeline.dag import StageOutput
    from pipeline.tracking.run import pipeline_run

    cfg = tiny_cfg(["run.until=prepare_data"])
    gone = StageOutput("dev_baseline", "k", tmp_path / "gone", {"ndcg_at_10": 0.5}, "ran", 0.0)
    with pytest.raises(FileNotFoundError), pipeline_run(cfg) as tracked:
        tracked.on_stage(gone)
    client = MlflowClient(tracking_uri(cfg))
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert r.info.status == "FAILED" and "gone" in r.data.tags["error"]
    assert r.data.metrics["baseline_dev_ndcg_at_10"] == 0.5  # what it logged before the failure stays


def test_a_store_mlflow_cannot_open_is_a_one_line_config_error(tmp_path):
    """A sqlite file that is no MLflow DB: a ConfigError naming the URI, before any stage (`python -m pipeline` prints
    it as one line: tests/test_validate.py)."""
    from pipeline.config import ConfigError
    from pipeline.tracking.store import open_store

    db = tmp_path / "not_a.db"
    db.write_text("not sqlite at all\n" * 100)
    with pytest.raises(ConfigError, match=f"tracking.uri=sqlite:///{db} cannot be opened"):
        open_store(f"sqlite:///{db}", "e")


def test_an_error_ends_the_run_failed_with_its_line_and_traceback(tiny_cfg, tmp_path):
    """The run's exception as the `error` tag and its traceback as `error.txt`."""
    from pipeline.tracking.run import pipeline_run

    cfg = tiny_cfg(["run.until=prepare_data"])

    def failing_stage():
        raise ValueError("boom in the run's process")

    with pytest.raises(ValueError, match="boom"), pipeline_run(cfg):
        failing_stage()
    client = MlflowClient(tracking_uri(cfg))
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert r.info.status == "FAILED" and r.data.tags["error"] == "ValueError: boom in the run's process"
    trace = Path(client.download_artifacts(r.info.run_id, "error.txt", str(tmp_path))).read_text()
    assert "failing_stage" in trace and "Traceback" in trace


@pytest.mark.parametrize("until", ["evaluate", "dev_evaluate"])
@pytest.mark.integration
def test_a_run_until_an_evaluation_logs_its_score_without_the_base_models(tiny_cfg, until):
    """run.until=evaluate (docs/reproducing.md re-scores at another eval.precision so) runs no baseline: the run logs
    its score and no change from the base model, and finishes (it ended in a KeyError)."""
    cfg = tiny_cfg([f"run.until={until}"])
    run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    score = "nanobeir_mean_ndcg_at_10" if until == "evaluate" else "dev_ndcg_at_10"
    assert r.info.status == "FINISHED" and score in r.data.metrics
    assert not [k for k in r.data.metrics if "delta_vs_base" in k]
