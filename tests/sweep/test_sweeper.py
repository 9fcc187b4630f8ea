"""Sweeps: the grid plus the full arm, one parent run, shared stages once, parallel jobs, a failing job, re-runs."""

from __future__ import annotations

import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline.overrides import relative_alpha_as_sweep
from pipeline.protocol import VERDICTS
from pipeline.report import compare
from pipeline.sweep.callbacks import sweep_runs
from pipeline.sweep.grid import lora_vs_full_jobs, replicates, with_learning_rates, with_seed
from pipeline.sweep.scores import JobScores
from pipeline.sweep.selection import Candidate, select, tie_key
from pipeline.validate import ConfigError
from tests.conftest import ROOT, compose_config, tiny_overrides


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


def test_a_relative_alpha_alone_is_a_one_value_sweep_and_a_single_run_refuses_it():
    argv = ["-m", "sweep=lora_grid", "finetune.r=8,64", "finetune.alpha=2r", "train.lr=1e-4"]
    assert relative_alpha_as_sweep(argv) == [*argv[:3], "finetune.alpha=choice(2r)", "train.lr=1e-4"]
    assert relative_alpha_as_sweep(["-m", "finetune.alpha=r,2r"]) == ["-m", "finetune.alpha=r,2r"]  # a sweep already
    with pytest.raises(ConfigError, match=r"finetune.alpha=2r is relative to r, which only a sweep \(-m\) resolves"):
        relative_alpha_as_sweep(["finetune.r=8", "finetune.alpha=2r"])


def test_each_method_gets_its_own_learning_rates_and_the_grid_seed():
    jobs = [["finetune=lora", "finetune.r=8"], ["finetune=full"], ["finetune=lora", "finetune.r=4", "train.lr=3e-4"]]
    rates = {"lora": [1e-4, 5e-4], "full": [2e-5]}
    assert with_seed(with_learning_rates(jobs, rates, default_method="lora"), 12) == [
        ["finetune=lora", "finetune.r=8", "train.lr=0.0001", "train.seed=12"],
        ["finetune=lora", "finetune.r=8", "train.lr=0.0005", "train.seed=12"],
        ["finetune=full", "train.lr=2e-05", "train.seed=12"],
        ["finetune=lora", "finetune.r=4", "train.lr=3e-4", "train.seed=12"],  # its own rate: left as it is
    ]
    assert with_learning_rates([["finetune.r=8"]], rates, default_method="lora")[1] == [
        "finetune.r=8",
        "train.lr=0.0005",
    ]
    assert replicates([["finetune=full", "train.lr=2e-05", "train.seed=12"]], [13, 14]) == [
        ["finetune=full", "train.lr=2e-05", "train.seed=13"],
        ["finetune=full", "train.lr=2e-05", "train.seed=14"],
    ]


def test_selection_is_per_method_on_dev_on_the_shared_seed():
    c = [
        Candidate("lora", "a", 12, 0.70, tie_key("lora", 8, "lora-r8-a8-lr1e-4")),
        Candidate("lora", "b", 12, 0.72, tie_key("lora", 16, "lora-r16-a16-lr1e-4")),
        Candidate("lora", "a", 13, 0.99, tie_key("lora", 8, "lora-r8-a8-lr1e-4")),  # a fresh seed: not shared by b
        Candidate("full", "f1", 12, 0.60, tie_key("full", None, "full-lr1e-5")),
        Candidate("full", "f2", 12, float("nan"), tie_key("full", None, "full-lr2e-5")),  # failed
        Candidate("lora", "c", 12, 0.72, tie_key("lora", 4, "lora-r4-a8-lr1e-4")),  # ties with b: the smaller rank
        Candidate("lora", "d", 12, 0.72, tie_key("lora", 4, "lora-r4-a4-lr1e-4")),  # ties with c: the name's order
    ]
    assert select(c) == {"lora": "d", "full": "f1"}
    assert select(list(reversed(c))) == {"lora": "d", "full": "f1"}  # the order given decides nothing here
    assert tie_key("lora", 64, "lora-r64") < tie_key("full", None, "full")  # any adapter before the full fine-tune
    assert select([Candidate("lora", "a", 1, 0.5), Candidate("lora", "b", 2, 0.6)]) == {"lora": "b"}  # no shared seed


def test_a_dev_tie_goes_to_the_same_configuration_in_the_sweeper_and_the_report(monkeypatch):
    """Two LoRA configurations tie on dev: the sweeper replicates the one the report then selects (the smaller rank,
    `tie_key`), listed second so that the order of the jobs alone would pick the other."""
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.lora_vs_full_sweeper.lora_vs_full_sweeper import LoraVsFullSweeper
    from pipeline.report.applied import apply
    from pipeline.report.load import Arm

    grid = [
        ["finetune=lora", "finetune.r=16", "finetune.alpha=32", "train.lr=1e-4", "train.seed=12"],
        ["finetune=lora", "finetune.r=8", "finetune.alpha=16", "train.lr=1e-4", "train.seed=12"],
        ["finetune=full", "train.lr=1e-5", "train.seed=12"],
    ]
    dev = [0.9, 0.9, 0.8]
    sweeper = LoraVsFullSweeper(max_batch_size=None)
    monkeypatch.setattr(sweeper, "configs", lambda jobs: [compose_config(list(job)) for job in jobs])
    returns = [JobReturn(status=JobStatus.COMPLETED, _return_value=JobScores(f"run{i}", d)) for i, d in enumerate(dev)]
    replicated = sweeper.selected(grid, returns)
    assert sorted(replicated) == sorted([grid[1][:-1], grid[2][:-1]])

    names = ["lora-r16-a32-lr1e-4", "lora-r8-a16-lr1e-4", "full-lr1e-5"]
    per_query = {"scifact": {"q1": 0.5, "q2": 0.6}}
    arms = [
        Arm(
            f"{name}-s12",
            job[0].split("=")[1],
            "FINISHED",
            run_id=name,
            r=r,
            seed=12,
            configuration=name,
            dev=d,
            per_query=per_query,
        )  # fmt: skip
        for name, job, r, d in zip(names, grid, [16, 8, None], dev, strict=True)
    ]
    protocol = apply(arms, n_resamples=100)
    assert protocol.adapter.name == names[1] and protocol.full.name == names[2]
    assert {c.name for c in protocol.configurations if c.selected} == {names[1], names[2]}


def test_make_decide_and_the_report_send_the_same_adapter_against_full():
    """Two adapter methods over two grid seeds: LoRA's dev is 0.80 then 0.70 (mean 0.75), DoRA's 0.78 twice. Both sides
    choose through `pipeline.protocol.facing_full` on the mean: DoRA, though LoRA's first run scored higher."""
    from pipeline.report.applied import apply
    from pipeline.report.load import Arm
    from pipeline.sweep.decide import decided_arms

    dev = {"lora-r8": [0.80, 0.70], "dora-r8": [0.78, 0.78], "full": [0.70, 0.70]}
    candidates = [
        Candidate(
            name.split("-")[0], (name,), seed, score, tie_key(name.split("-")[0], None if name == "full" else 8, name)
        )  # fmt: skip
        for name, scores in dev.items()
        for seed, score in zip((1, 2), scores, strict=True)
    ]
    arms = decided_arms(candidates, {(name,): None if name == "full" else 8 for name in dev}, with_ranks=False)
    runs = [
        Arm(
            f"{name}-s{seed}",
            name.split("-")[0],
            "FINISHED",
            run_id=f"{name}{seed}",
            r=None if name == "full" else 8,
            seed=seed,
            configuration=name,
            dev=score,
            per_query={"scifact": {"q1": 0.5, "q2": 0.6}},
        )  # fmt: skip
        for name, scores in dev.items()
        for seed, score in zip((1, 2), scores, strict=True)
    ]
    protocol = apply(runs, n_resamples=100, grid_seeds={1, 2})
    assert [arm.config for arm in arms] == [("dora-r8",), ("full",)]
    assert (protocol.adapter.name, protocol.full.name) == ("dora-r8", "full")


def _sweep(
    tmp_path, tiny_model, tiny_qa, tiny_nanobeir, *args: str, check=True, experiment="lora-vs-full", sweeps=1, grid=True
):
    overrides = [
        o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if not o.startswith("finetune.")
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if grid:  # the grid only (no seed replicates): the tiny config's own learning rate and seed
        overrides.append("hydra.sweeper.seeds=[]")
    else:  # the protocol: learning rates and seeds from the sweeper
        overrides = [o for o in overrides if not o.startswith("train.lr=")]
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
@pytest.mark.integration
def test_sweep_two_lora_and_full_shares_stages(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    proc, client, parent, children = _sweep(
        tmp_path, tiny_model, tiny_qa, tiny_nanobeir, "finetune.r=2,4", "finetune.alpha=2r"
    )  # a relative alpha given alone: Hydra would merge "2r" into the typed config before the sweeper resolves it
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == [
        "full-lr1e-3-s12",
        "lora-r2-a4-lr1e-3-s12",
        "lora-r4-a8-lr1e-3-s12",
    ]
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["sweep_id"] for r in children} == {parent.data.tags["sweep_id"]}
    assert {r.data.tags["method"] for r in children} == {"lora", "full"}
    # shared stages computed once, by the sweep before its jobs started (pipeline.sweep.prefix); every job reused them
    for stage in ("prepare_data", "baseline"):
        assert parent.data.tags[f"sweep.prefix.{stage}"] == "ran"
        assert sorted(r.data.tags[f"stage.{stage}"] for r in children) == ["cached", "cached", "cached"], stage
    assert all(r.data.tags["stage.finetune"] == "ran" for r in children)
    baselines = {r.data.metrics["baseline_nanobeir_mean_ndcg_at_10"] for r in children}
    assert len(baselines) == 1


@pytest.mark.slow
@pytest.mark.integration
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
    assert sorted(r.info.run_name for r in children) == ["lora-r2-a8-lr1e-3-s12", "lora-r4-a8-lr1e-3-s12"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["finetune.alpha"] == "8"
        assert "nanobeir_mean_ndcg_at_10" in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    # the shared stages were computed before the parallel jobs started (tests/test_app.py races two processes
    # for one stage: the file locks)
    for stage in ("prepare_data", "baseline"):
        assert sorted(r.data.tags[f"stage.{stage}"] for r in children) == ["cached", "cached"]


@pytest.mark.slow
@pytest.mark.integration
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
    assert by_status == [  # run names carry the target modules that were set
        ("FAILED", "lora-r2-a8-no_such_module-lr1e-3-s12"),
        ("FINISHED", "full-lr1e-3-s12"),
        ("FINISHED", "lora-r2-a8-query-lr1e-3-s12"),
    ]
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "no_such_module" in failed.data.tags["error"]
    assert parent.info.status == "FAILED" and "lora-r2-a8-no_such_module" in parent.data.tags["sweep.failed_jobs"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_rerun_sweep_runs_only_what_is_missing(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    tiny = (tmp_path, tiny_model, tiny_qa, tiny_nanobeir)
    _, _, first, _ = _sweep(*tiny, "finetune=lora", "finetune.r=2", "finetune.alpha=8")
    # the grid grows by r=4: r=2 finished already, so only r=4 runs
    proc, client, parent, children = _sweep(*tiny, "finetune=lora", "finetune.r=2,4", "finetune.alpha=8", sweeps=2)
    assert parent.info.run_id != first.info.run_id and parent.info.status == "FINISHED"
    assert "lora-r2-a8-lr1e-3-s12: this config already finished" in proc.stderr
    assert [r.info.run_name for r in children] == ["lora-r4-a8-lr1e-3-s12"]
    jobs = [r for r in client.search_runs([parent.info.experiment_id]) if "pipeline.role" not in r.data.tags]
    assert sorted(r.info.run_name for r in jobs) == [
        "lora-r2-a8-lr1e-3-s12",
        "lora-r4-a8-lr1e-3-s12",
    ]  # r=2 was not run twice
    assert parent.data.tags["sweep.jobs"] == "2" and parent.data.tags["sweep.reused_jobs"] == "1"
    assert sorted(r.info.run_name for r in sweep_runs(client, parent.info.run_id)) == [
        "lora-r2-a8-lr1e-3-s12",
        "lora-r4-a8-lr1e-3-s12",
    ]
    report = compare(f"sqlite:///{tmp_path}/mlflow.db", parent.data.tags["sweep_id"], out_dir=tmp_path / "report")
    assert {row["name"] for row in report["rows"]} >= {"lora-r2-a8-lr1e-3-s12", "lora-r4-a8-lr1e-3-s12"}

    # run.skip_finished=false: the same config runs again, as a new run
    proc, client, parent, children = _sweep(
        *tiny, "finetune=lora", "finetune.r=2", "finetune.alpha=8", "run.skip_finished=false", sweeps=3
    )
    assert [r.info.run_name for r in children] == ["lora-r2-a8-lr1e-3-s12"] and parent.data.tags[
        "sweep.reused_jobs"
    ] == "0"
    # a new run, whose stages come from the cache: neither the config nor the code changed
    assert {children[0].data.tags[f"stage.{s}"] for s in ("prepare_data", "baseline", "finetune")} == {"cached"}

    # run.force=finetune: a new run that trains again (and evaluates again), reusing the shared stages
    proc, client, parent, children = _sweep(
        *tiny, "finetune=lora", "finetune.r=2", "finetune.alpha=8", "run.force=finetune", sweeps=4
    )
    assert [r.info.run_name for r in children] == ["lora-r2-a8-lr1e-3-s12"] and parent.data.tags[
        "sweep.reused_jobs"
    ] == "0"
    tags = children[0].data.tags
    assert tags["stage.finetune"] == "ran" and tags["stage.evaluate"] == "ran" and tags["stage.baseline"] == "cached"


@pytest.mark.slow
@pytest.mark.integration
def test_the_protocol_end_to_end_gives_a_verdict(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """make sweep -> make compare, shrunk: 2 LoRA learning rates + 1 full at seed 1, then the selected configuration
    of each method at seeds 2 and 3; the report's verdict on the parent run, every child with its dev score."""
    proc, client, parent, children = _sweep(
        tmp_path,
        tiny_model,
        tiny_qa,
        tiny_nanobeir,
        "finetune.r=2",
        "finetune.alpha=4",
        "hydra.sweeper.lr.lora=[1e-3,5e-3]",
        "hydra.sweeper.lr.full=[1e-4]",
        "hydra.sweeper.seeds=[1,2,3]",
        grid=False,
    )
    names = sorted(r.info.run_name for r in children)
    grid = ["full-lr1e-4-s1", "lora-r2-a4-lr1e-3-s1", "lora-r2-a4-lr5e-3-s1"]
    assert set(grid) <= set(names) and len(names) == 7
    dev = {r.info.run_name: r.data.metrics["dev_ndcg_at_10"] for r in children}
    best_lora = max(("lora-r2-a4-lr1e-3-s1", "lora-r2-a4-lr5e-3-s1"), key=lambda n: (dev[n], n.endswith("1e-3-s1")))
    replicated = ["full-lr1e-4-s2", "full-lr1e-4-s3", best_lora.replace("-s1", "-s2"), best_lora.replace("-s1", "-s3")]
    assert sorted(set(names) - set(grid)) == sorted(replicated)  # replicated on dev
    report = compare(f"sqlite:///{tmp_path}/mlflow.db", parent.data.tags["sweep_id"], out_dir=tmp_path / "report")
    # seed 1 is the grid's (selection) seed: the verdict's Δ is on the fresh seeds 2 and 3 only
    assert report["verdict"]["label"] in VERDICTS and report["verdict"]["seeds"] == {"adapter": 2, "full": 2}
    assert report["verdict"]["fresh_seeds"] == {"adapter": [2, 3], "full": [2, 3]}
    assert report["verdict"]["adapter"] == best_lora.removesuffix("-s1")
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["verdict"] == report["verdict"]["label"]
    assert all("dev_ndcg_at_10" in r.data.metrics and "dev_delta_vs_base" in r.data.metrics for r in children)


@pytest.mark.slow
@pytest.mark.integration
def test_ctrl_c_of_a_sweep_ends_the_job_and_the_sweep_killed_in_one_line(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """SIGINT to the sweep's process group (Ctrl-C) while its first job trains: that job's run and the parent run end
    KILLED, the next job never starts, one line says what was kept and the command that resumes, exit code 130."""
    stderr, client, parent, (job,) = _interrupted_sweep(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, "finetune.r=2")
    assert parent.info.status == "KILLED" and job.info.status == "KILLED"  # and the next job: not started
    line = stderr.rstrip().splitlines()[-1]
    assert line.startswith("interrupted: ") and stderr.count("interrupted: ") == 1
    assert f"sweep {parent.data.tags['sweep_id']} ended KILLED after 0 finished jobs" in line
    assert f"MLflow run {job.info.run_id} ended KILLED" in line and "jobs not started were not started" in line


@pytest.mark.slow
@pytest.mark.integration
def test_ctrl_c_of_a_parallel_sweep_ends_every_running_job_killed(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """The same with joblib's parallel workers: whichever way each worker went, every job's run and the parent run end
    KILLED (the sweeping process ends the runs of workers that are gone), in one line, exit code 130."""
    parallel = ("finetune=lora", "finetune.r=2,4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    stderr, client, parent, jobs = _interrupted_sweep(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, *parallel)
    assert parent.info.status == "KILLED" and [j.info.status for j in jobs] == ["KILLED", "KILLED"]
    assert stderr.count("interrupted: ") == 1
    assert f"interrupted: sweep {parent.data.tags['sweep_id']} ended KILLED after 0 finished jobs" in stderr


def test_ctrl_c_ends_the_sweeps_parent_run_killed_without_a_subprocess(tmp_path, monkeypatch, capsys):
    """The path Ctrl-C takes, in process and in seconds: the sweep's callback opens the parent run; a job's run is
    RUNNING in a worker that is gone; `interrupted` (what `python -m pipeline` calls on KeyboardInterrupt or SIGTERM)
    ends both KILLED, says so in one line and exits 130. The slow tests above do it to a real sweep."""
    from hydra import compose, initialize_config_dir

    import pipeline.sweep.callbacks as callbacks
    from pipeline.__main__ import interrupted

    monkeypatch.setattr(callbacks, "_open_sweep", None)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [f"tracking.uri={uri}", f"paths.outputs={tmp_path}/outputs", f"hydra.sweep.dir={tmp_path}/multirun"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        callbacks.MLflowSweepCallback().on_multirun_start(config)
    client = MlflowClient(uri)
    (parent,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    gone = subprocess.Popen(["true"])
    gone.wait()
    tags = {"mlflow.parentRunId": parent.info.run_id, "run.host": socket.gethostname(), "run.pid": str(gone.pid)}
    job = client.create_run(parent.info.experiment_id, tags={**tags, "run.pid_started": "1.0"}).info.run_id
    with pytest.raises(SystemExit) as exit_:
        interrupted(KeyboardInterrupt())
    assert exit_.value.code == 130
    assert client.get_run(parent.info.run_id).info.status == "KILLED"
    assert client.get_run(job).info.status == "KILLED"  # its worker is gone: ended by the sweeping process
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("interrupted: ")]
    assert f"sweep {parent.data.tags['sweep_id']} ended KILLED after 0 finished jobs" in line
    assert "Resume with the same command: python -m pipeline" in line


def _interrupted_sweep(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, *grid: str):
    """A tiny sweep of `grid` sent SIGINT to its process group once its jobs train: it exits 130 without a traceback;
    its stderr, a client, its parent run and its job runs."""
    from tests.test_app import LONG_TRAINING, start_pipeline, wait_for_checkpoint

    tiny = [o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if not o.startswith("finetune.")]
    args = ["-m", "sweep=lora_grid", *tiny, "hydra.sweeper.seeds=[]", *grid, "finetune.alpha=8", *LONG_TRAINING]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc, _ = start_pipeline(args, stderr=err)
        wait_for_checkpoint(
            proc, tmp_path / "outputs" / "cache" / "finetune", runs=2 if "hydra/launcher=joblib" in grid else 1
        )
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "Resume with the same command: " + shlex.join(["python", "-m", "pipeline", *args]) in stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("pipeline.role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return stderr, client, parent, jobs


@pytest.mark.integration
def test_a_sweep_whose_process_is_gone_is_marked_killed_by_the_report(tmp_path):
    """A parent run left RUNNING by a sweep process that is gone (same host, its pid dead) ends KILLED when a report
    finds it, and the report says so; a live sweep's parent, or one on another host, stays RUNNING."""
    from tests.report.test_compare import job, make_sweep

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("e")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    newer = subprocess.Popen(["sleep", "60"])  # alive, but not the process that opened its sweep: the pid was reused
    here = socket.gethostname()
    where = {
        "gone": (here, dead.pid, 0.0),
        "reused": (here, newer.pid, psutil.Process(newer.pid).create_time() - 60),
        "alive": (here, os.getpid(), psutil.Process().create_time()),
        "elsewhere": ("another-host", dead.pid, 0.0),
    }
    parents = {}
    for sweep_id, (host, pid, started) in where.items():
        jobs = [job("lora", 12, dev=0.7, gain=0.05, r=4, alpha=8), job("full", 12, dev=0.7, gain=0.05)]
        parent = make_sweep(client, exp_id, sweep_id, int(time.time() * 1000), jobs, tmp_path)
        client.update_run(parent, status="RUNNING")
        tags = {"sweep.host": host, "sweep.pid": str(pid), "sweep.pid_started": str(started)}
        for key, value in tags.items():
            client.set_tag(parent, key, value)
        parents[sweep_id] = parent
    report = compare(uri, "gone", out_dir=tmp_path / "gone", n_resamples=100, log_to_mlflow=False)
    newer.kill()
    assert {client.get_run(parents[s]).info.status for s in ("gone", "reused")} == {"KILLED"}
    assert f"sweep gone: its process (pid {dead.pid}) is gone; its parent run marked KILLED" in report["warnings"]
    assert "its process" in (tmp_path / "gone" / "report.md").read_text()
    assert {client.get_run(parents[s]).info.status for s in ("alive", "elsewhere")} == {"RUNNING"}
    report = compare(uri, "alive", out_dir=tmp_path / "alive", n_resamples=100, log_to_mlflow=False)
    assert "sweep alive is still running: this report covers the jobs that ended so far" in report["warnings"]


def test_a_job_hands_its_scores_to_the_sweeper_and_its_dev_score_to_optuna():
    """A job's JobReturn carries its scores; Hydra's Optuna sweeper takes `float(return_value)`: the dev score."""
    from hydra.core.utils import JobReturn, JobStatus

    from pipeline.sweep.scores import returned

    scores = JobScores("run1", dev=0.71, benchmark=0.52, in_domain=0.8, train_loss=0.3, per_query={"s": {"q": 0.5}})
    assert float(scores) == 0.71
    assert returned(JobReturn(status=JobStatus.COMPLETED, _return_value=scores)) == scores
    failed = returned(JobReturn(status=JobStatus.FAILED, _return_value=None))
    assert failed.run_id is None and math.isnan(failed.dev) and math.isnan(failed.benchmark)


def test_the_sweepers_cartesian_product_is_hydras_basic_sweeps():
    """The sweeper (on Hydra's public Sweeper) builds the grid as Hydra's own basic sweeper would: same jobs, same order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.lora_vs_full_sweeper.lora_vs_full_sweeper import cartesian

    lines = [
        "finetune.r=4,8,16",
        "train.lr=1e-4",
        "finetune.alpha=range(8,24,8)",
        "finetune=lora,dora",
        "finetune.r=2,4",
    ]
    overrides = OverridesParser.create().parse_overrides(lines)
    assert cartesian(overrides) == BasicSweeper.split_arguments(overrides, None)[0]
    assert len(cartesian(overrides)) == 2 * 2 * 2  # the later finetune.r replaces the first, in its place
