"""Sweeps: the grid plus the full arm, one parent run, shared stages once, parallel jobs, a failing job, re-runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline.launch.grid import lora_vs_full_jobs
from pipeline.report import compare
from pipeline.tracking.sweep import sweep_runs
from tests.conftest import ROOT, tiny_overrides


def test_grid_becomes_lora_jobs_plus_one_full_arm():
    grid = [
        ["finetune=lora", "finetune.r=4", "finetune.alpha=r"],
        ["finetune=lora", "finetune.r=4", "finetune.alpha=2r"],
        ["finetune=lora", "finetune.r=8", "finetune.alpha=r"],
        ["finetune=full", "finetune.r=4", "finetune.alpha=r"],
        ["finetune=full", "finetune.r=8", "finetune.alpha=2r"],
    ]
    assert lora_vs_full_jobs(grid) == [
        ["finetune=lora", "finetune.r=4", "finetune.alpha=4"],
        ["finetune=lora", "finetune.r=4", "finetune.alpha=8"],
        ["finetune=lora", "finetune.r=8", "finetune.alpha=8"],
        ["finetune=full"],
    ]
    with pytest.raises(ValueError, match="relative to r"):
        lora_vs_full_jobs([["finetune.alpha=2r"]])


def _sweep(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, *args: str, check=True, experiment="lora-vs-full", sweeps=1):
    overrides = [
        o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if not o.startswith("finetune.")
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline", "-m", "sweep=lora_grid", *overrides, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if r.data.tags.get("pipeline.role") == "sweep"]  # newest first
    assert len(parents) == sweeps
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return proc, client, parents[0], children


@pytest.mark.slow
def test_sweep_two_lora_and_full_shares_stages(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    proc, client, parent, children = _sweep(
        tmp_path, tiny_model, tiny_qa, tiny_nanobeir, "finetune.r=2,4", "finetune.alpha=8"
    )
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["full", "lora-r2-a8", "lora-r4-a8"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["sweep_id"] for r in children} == {parent.data.tags["sweep_id"]}
    assert {r.data.tags["method"] for r in children} == {"lora", "full"}
    # shared stages computed once, by the sweep before its jobs started (pipeline.launch.prefix); every job reused them
    for stage in ("prepare_data", "baseline"):
        assert parent.data.tags[f"sweep.prefix.{stage}"] == "ran"
        assert sorted(r.data.tags[f"stage.{stage}"] for r in children) == ["cached", "cached", "cached"], stage
    assert all(r.data.tags["stage.finetune"] == "ran" for r in children)
    baselines = {r.data.metrics["baseline_nanobeir_mean_ndcg_at_10"] for r in children}
    assert len(baselines) == 1


@pytest.mark.slow
def test_joblib_parallel_jobs_lose_nothing(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    proc, client, parent, children = _sweep(
        tmp_path,
        tiny_model,
        tiny_qa,
        tiny_nanobeir,
        "finetune=lora",
        "finetune.r=2,4",
        "finetune.alpha=8",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "tracking.experiment=parallel",  # the parent run goes where its jobs log
        experiment="parallel",
    )
    assert sorted(r.info.run_name for r in children) == ["lora-r2-a8", "lora-r4-a8"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["finetune.alpha"] == "8"
        assert "nanobeir_mean_ndcg_at_10" in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    # the shared stages were computed before the parallel jobs started (tests/test_faults.py races two processes
    # for one stage: the file locks)
    for stage in ("prepare_data", "baseline"):
        assert sorted(r.data.tags[f"stage.{stage}"] for r in children) == ["cached", "cached"]


@pytest.mark.slow
def test_failing_job_is_failed_and_the_sweep_exits_non_zero(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    proc, client, parent, children = _sweep(
        tmp_path,
        tiny_model,
        tiny_qa,
        tiny_nanobeir,
        "finetune.r=2",
        "finetune.alpha=8",
        "finetune.target_modules=[query],[no_such_module]",
        check=False,
    )
    assert proc.returncode != 0
    assert "1 of 3 jobs failed" in proc.stderr
    by_status = sorted((r.info.status, r.info.run_name) for r in children)
    assert by_status == [("FAILED", "lora-r2-a8"), ("FINISHED", "full"), ("FINISHED", "lora-r2-a8")]
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "no_such_module" in failed.data.tags["error"]
    assert parent.info.status == "FAILED" and "lora-r2-a8" in parent.data.tags["sweep.failed_jobs"]


@pytest.mark.slow
def test_a_rerun_sweep_runs_only_what_is_missing(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    tiny = (tmp_path, tiny_model, tiny_qa, tiny_nanobeir)
    _, _, first, _ = _sweep(*tiny, "finetune=lora", "finetune.r=2", "finetune.alpha=8")
    # the grid grows by r=4: r=2 finished already, so only r=4 runs
    proc, client, parent, children = _sweep(*tiny, "finetune=lora", "finetune.r=2,4", "finetune.alpha=8", sweeps=2)
    assert parent.info.run_id != first.info.run_id and parent.info.status == "FINISHED"
    assert "lora-r2-a8: this config already finished" in proc.stderr
    assert [r.info.run_name for r in children] == ["lora-r4-a8"]
    jobs = [r for r in client.search_runs([parent.info.experiment_id]) if "pipeline.role" not in r.data.tags]
    assert sorted(r.info.run_name for r in jobs) == ["lora-r2-a8", "lora-r4-a8"]  # r=2 was not run twice
    assert parent.data.tags["sweep.jobs"] == "2" and parent.data.tags["sweep.reused_jobs"] == "1"
    assert sorted(r.info.run_name for r in sweep_runs(client, parent.info.run_id)) == ["lora-r2-a8", "lora-r4-a8"]
    report = compare(f"sqlite:///{tmp_path}/mlflow.db", parent.data.tags["sweep_id"], out_dir=tmp_path / "report")
    assert {row["name"] for row in report["rows"]} >= {"lora-r2-a8", "lora-r4-a8"}

    # run.skip_finished=false: the same config runs again, as a new run
    proc, client, parent, children = _sweep(
        *tiny, "finetune=lora", "finetune.r=2", "finetune.alpha=8", "run.skip_finished=false", sweeps=3
    )
    assert [r.info.run_name for r in children] == ["lora-r2-a8"] and parent.data.tags["sweep.reused_jobs"] == "0"
