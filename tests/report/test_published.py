"""`make reproduce`: the published-recipe step, `make decide` on the recipe and the report, run as the Makefile runs them
on a tiny model and local data; the report opens with the published-vs-ours table of the runs just made and reads only
the sweeps those steps made (an older sweep of the same experiment in the store, or in the default store, is not it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.report import main
from pipeline.sweep.callbacks import SWEEP_FILE
from tests.conftest import ROOT, compose_config, tiny_overrides

PUBLISHED = {"lora": 0.4705, "full": 0.4728}


def _older_sweep(uri: str) -> str:
    """A finished sweep of experiment `paper` left by an earlier call: what a 'newest sweep' guess could pick."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("paper") or client.create_experiment("paper")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    tags = {"sweep_id": "older-sweep", "pipeline.role": "sweep"}
    parent = client.create_run(experiment_id, run_name="sweep-older-sweep", tags=tags)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def _recorded(folder: Path) -> dict:
    return json.loads((folder / SWEEP_FILE).read_text())


@pytest.mark.slow
@pytest.mark.integration
def test_make_reproduce_opens_its_report_with_published_vs_ours_of_the_sweeps_it_made(
    tmp_path, tiny_model, tiny_qa, tiny_nanobeir
):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    default_outputs = tmp_path / "default"
    default_outputs.mkdir()
    _older_sweep(store)
    _older_sweep(f"sqlite:///{default_outputs}/mlflow.db")  # where a report without the run's ARGS would look

    shrunk = ("train.lr=", "train.max_steps=", "train.eval_steps=")
    args = [o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if not o.startswith(shrunk)]
    args += ["train.max_steps=2", "train.precision=fp32"]  # bf16 training needs a GPU; the recipe's eval_steps=100
    decide = [
        "finetune.r=2", "finetune.alpha=4", "hydra.sweeper.lr.lora=[5e-2]", "hydra.sweeper.lr.full=[5e-2]",
        "hydra.sweeper.seeds=[1]", "hydra.sweeper.decide.first=2", "hydra.sweeper.decide.step=1",
        "hydra.sweeper.decide.budget=2", "hydra.sweeper.decide.extend=0",
    ]  # fmt: skip
    outputs = tmp_path / "make_outputs"
    folder = outputs / "multirun" / "reproduce-test"
    report = tmp_path / "report"
    cmd = [
        "make", "reproduce", f"BIN={Path(sys.executable).parent}", f"OUTPUTS={outputs}", f"REPRODUCE_DIR={folder}",
        f"ARGS={' '.join(args)}", f"DECIDE_ARGS={' '.join(decide)}", f"COMPARE_ARGS=--resamples 200 --out {report}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PIPELINE_OUTPUTS": str(default_outputs)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]

    recipe, decided = _recorded(Path(f"{folder}-recipe")), _recorded(Path(f"{folder}-decide"))
    assert recipe["tracking_uri"] == decided["tracking_uri"] == store  # every step in the store ARGS names
    result = json.loads((report / "comparison.json").read_text())
    assert result["sweep_id"] == decided["sweep_id"] and result["tracking_uri"] == store
    table = result["published"]
    assert table["sweep_id"] == recipe["sweep_id"]

    client = MlflowClient(store)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("paper").experiment_id])}
    rows = {row["method"]: row for row in table["rows"]}
    names = {method: row["name"] for method, row in rows.items()}
    assert sorted(names) == ["full", "lora"]
    for method, name in names.items():  # published-recipe runs, named apart, with their loss (and seed)
        assert name.startswith(f"recipe-{method}-") and name.endswith("-lr2e-5-mnrl-s42"), name
    for method, row in rows.items():
        assert row["published"] == PUBLISHED[method] and row["loss"] == "mnrl"
        assert row["ours"] == runs[names[method]].data.metrics["nanobeir_mean_ndcg_at_10"]
        assert "eval.batch_size: ours 16, published 1024" in row["differences"]  # the evaluator batch
        assert f"eval.dataset_id: ours {tiny_nanobeir}, published zeta-alpha-ai/Nano*" in row["differences"]
        scored = [d for d in row["differences"] if d.startswith("eval.precision")]
        assert scored == []  # scored under bf16 autocast, as published
    assert table["delta"]["published"] == pytest.approx(0.4705 - 0.4728)
    assert table["delta"]["ours"] == pytest.approx(rows["lora"]["ours"] - rows["full"]["ours"])
    protocol = [name for name, r in runs.items() if r.data.tags.get("mlflow.parentRunId") == decided["parent_run_id"]]
    assert protocol and not any(name.startswith("recipe-") or "-mnrl-" in name for name in protocol)

    text = (report / "report.md").read_text()
    assert text.startswith(f"# Published vs ours: NanoBEIR mean NDCG@10 (sweep {recipe['sweep_id']})")
    assert f"| {names['lora']} | lora | mnrl | 42 | 0.4705 | {rows['lora']['ours']:.4f} |" in text
    assert f"| Δ lora − full | | | | -0.0023 | {table['delta']['ours']:+.4f} |" in text
    assert text.index("# Published vs ours") < text.index(f"# Sweep {decided['sweep_id']}")  # then the verdict
    assert "older-sweep" not in text


def test_the_report_fails_in_one_line_when_the_sweep_it_is_given_is_absent(tmp_path, capsys):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    _older_sweep(store)
    capsys.readouterr()  # MLflow's lines on creating the store
    empty = tmp_path / "never-started"
    assert main(["--sweep-dir", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --sweep-dir {empty} has no {SWEEP_FILE}: no sweep started in that dir (hydra.sweep.dir)"

    gone = tmp_path / "gone"  # a sweep dir whose sweep is not in its store
    gone.mkdir()
    (gone / SWEEP_FILE).write_text(json.dumps({"sweep_id": "gone-1", "parent_run_id": "x", "tracking_uri": store}))
    assert main(["--sweep-dir", str(gone), "--no-log"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no sweep with id 'gone-1'") and "older-sweep" in err and "\n" not in err

    other = f"sqlite:///{tmp_path}/other.db"  # a --tracking-uri that is not the store the sweep was recorded in
    assert main(["--sweep-dir", str(gone), "--tracking-uri", other]) == 2
    assert f"is recorded in {store}, not in {other}" in capsys.readouterr().err


def test_published_recipe_configs_carry_the_published_numbers_and_the_protocol_ones_none():
    for experiment in ("paper_lora_mnrl", "paper_full_mnrl"):
        cfg = compose_config([f"experiment={experiment}"])
        assert dict(cfg.published.ndcg) == PUBLISHED
        assert cfg.eval.precision == "autocast" and cfg.eval.batch_size == cfg.published.recipe.eval.batch_size == 1024
    protocol = compose_config(["experiment=paper_lora"])
    assert protocol.published is None and protocol.eval.precision == "fp32" and protocol.eval.batch_size == 1024


def _recipe_sweep(uri: str) -> str:
    """make reproduce's first step as MLflow holds it: a sweep of two published-recipe runs (LoRA, full), seed 42."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("paper")
    tags = {"sweep_id": "recipe-1", "pipeline.role": "sweep"}
    parent = client.create_run(experiment_id, run_name="sweep-recipe-1", tags=tags).info.run_id
    for method, ours, batch in (("lora", 0.4671, "1024"), ("full", 0.4752, "32")):
        params = {
            "finetune.method": method, "train.loss": "mnrl", "train.seed": "42", "eval.batch_size": batch,
            "eval.precision": "fp32", "published.source": "the PEFT page", "published.ndcg.lora": "0.4705",
            "published.ndcg.full": "0.4728", "published.recipe.eval.batch_size": "1024",
            "published.recipe.eval.precision": "autocast", "published.recipe.finetune.r": "64",
        }  # fmt: skip
        run = client.create_run(experiment_id, run_name=f"recipe-{method}-s42", tags={"mlflow.parentRunId": parent})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "nanobeir_mean_ndcg_at_10", ours)
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def test_a_published_recipe_sweep_reported_alone_gets_its_table_and_no_protocol_verdict(tmp_path):
    from pipeline.report import compare

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _recipe_sweep(uri)
    result = compare(uri, sweep_id="recipe-1", out_dir=tmp_path / "report", n_resamples=100)
    assert result["verdict"] is None and result["configurations"] == []
    rows = {row["method"]: row for row in result["published"]["rows"]}
    assert [rows[m]["published"] for m in ("lora", "full")] == [0.4705, 0.4728]
    assert rows["lora"]["differences"] == ["eval.precision: ours fp32, published autocast"]  # r: not logged, skipped
    assert rows["full"]["differences"] == [
        "eval.batch_size: ours 32, published 1024",
        "eval.precision: ours fp32, published autocast",
    ]
    delta = result["published"]["delta"]
    assert delta["published"] == pytest.approx(-0.0023) and delta["ours"] == pytest.approx(0.4671 - 0.4752)
    text = (tmp_path / "report" / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# Published vs ours: NanoBEIR mean NDCG@10 (sweep recipe-1)"
    assert "| recipe-lora-s42 | lora | mnrl | 42 | 0.4705 | 0.4671 | -0.0034 |" in lines
    assert "| Δ lora − full | | | | -0.0023 | -0.0081 | -0.0058 |" in lines
    assert (
        "- recipe-full-s42: eval.batch_size: ours 32, published 1024; eval.precision: ours fp32, published autocast"
        in lines
    )
    assert "no protocol verdict" in text  # not a protocol sweep made of two single runs ("fresh seeds 42", "[+nan")
    assert "fresh seeds 42" not in text and "nan" not in text
