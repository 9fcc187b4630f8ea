"""Runs on a cluster: a live MLflow tracking server with parallel writers, a sweep through a live single-node SLURM
cluster (tests/slurm_cluster.py) logging to that server, then the comparison, and a SLURM job requeued mid-training.

`make test-cluster` runs this file. Without Debian's slurm-wlm and munge the SLURM tests skip, naming them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.launch.server import server_command
from pipeline.sweep.callbacks import sweep_runs
from tests import slurm_cluster
from tests.conftest import ROOT, tiny_overrides

WRITERS, STEPS = 6, 40


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`python -m pipeline.launch.server` (what `make server` runs) on a free port, over a sqlite file of its own."""
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    command = [
        sys.executable, "-m", "pipeline.launch.server", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = open(root / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a fresh store runs MLflow's schema migrations first (slow on busy cores)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the tracking server did not come up"
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the session started for it
        proc.wait(timeout=60)


def test_server_command_binds_loopback_and_serves_artifacts():
    command = server_command("127.0.0.1", 5001, "sqlite:////srv/mlflow.db", "/srv/artifacts")
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--serve-artifacts" in command and "--allowed-hosts" not in command
    assert "--allowed-hosts" in server_command("0.0.0.0", 5001, "sqlite:////srv/mlflow.db", "/srv/artifacts")


def _writer(uri: str, index: int) -> str:
    """One job's logging, as the pipeline does it: its experiment (created by whichever writer comes first), a run,
    params, a metric per step, an artifact, the end."""
    from mlflow.entities import Metric, Param

    from pipeline.tracking.store import client_for, experiment_id

    client = client_for(uri)
    exp_id = experiment_id(client, uri, "parallel-writers")
    run_id = client.create_run(exp_id, run_name=f"writer-{index}").info.run_id
    client.log_batch(run_id, params=[Param("writer", str(index)), Param("steps", str(STEPS))])
    for step in range(1, STEPS + 1):
        client.log_batch(run_id, metrics=[Metric("loss", index + step / 1000, int(time.time() * 1000), step)])
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / f"writer-{index}.txt"
        artifact.write_text(f"writer {index}\n")
        client.log_artifact(run_id, str(artifact), "notes")
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.mark.integration  # its module-scoped fixture trains / starts a process
def test_parallel_writers_to_the_tracking_server_lose_nothing(tracking_server):
    with multiprocessing.get_context("spawn").Pool(WRITERS) as pool:
        run_ids = pool.starmap(_writer, [(tracking_server, i) for i in range(WRITERS)])
    client = MlflowClient(tracking_server)
    (experiment,) = [e for e in client.search_experiments() if e.name == "parallel-writers"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for run in runs:
        index = int(run.data.params["writer"])
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
        assert {round(m.value - index, 6) for m in history} == {round(s / 1000, 6) for s in range(1, STEPS + 1)}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == [f"notes/writer-{index}.txt"]
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, f"notes/writer-{index}.txt", tmp)
            assert Path(path).read_text() == f"writer {index}\n"


# ---------------------------------------------------------------------------------------------------------- SLURM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = slurm_cluster.missing_tools()
    if missing:
        pytest.skip(f"needs Debian's slurm-wlm and munge (missing {', '.join(missing)}; .ci/run installs them)")
    cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    left = cluster.stop()
    assert not left, f"processes of the test cluster outlived it: {left}"


def _slurm_sweep(tmp_path, tiny, slurm, server, *args: str) -> subprocess.Popen:
    """`make sweep` through the SLURM launcher: one SLURM job per sweep job, each logging to the tracking server."""
    overrides = [o for o in tiny_overrides(tmp_path, *tiny) if not o.startswith(("finetune.", "tracking.uri"))]
    cmd = [
        sys.executable, "-m", "pipeline", "-m", "sweep=lora_grid", *overrides,
        "hydra.sweeper.seeds=[]",  # the grid only: the tiny config's own learning rate and seed, no replicates
        f"tracking.uri={server}",
        "hydra/launcher=slurm",  # ours: submitit_slurm with one GPU per job, shrunk to this test cluster below
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=20",
        f"hydra.launcher.partition={slurm.partition}",
        f"hydra.launcher.submitit_folder={tmp_path}/submitit/%j",
        *args,
    ]  # fmt: skip
    env = {**slurm.env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, tmp_path: Path, slurm, timeout: float = 1500) -> str:
    """Wait for the sweep (minutes on quiet cores; much longer on 2 cores shared with other work)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log = (tmp_path / "sweep.log").read_text()
    jobs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "submitit").rglob("*.err")))
    assert proc.returncode == 0, f"{log[-4000:]}\n--- job logs\n{jobs[-4000:]}\n{slurm.logs()[-2000:]}"
    return log


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_through_slurm_to_the_tracking_server_then_compare(
    tmp_path, tiny_model, tiny_qa, tiny_nanobeir, slurm, tracking_server
):
    tiny = (tiny_model, tiny_qa, tiny_nanobeir)
    proc = _slurm_sweep(tmp_path, tiny, slurm, tracking_server, "finetune.r=2,4", "finetune.alpha=8")
    log = _finish(proc, tmp_path, slurm)
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("lora-vs-full")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    (parent,) = [r for r in runs if r.data.tags.get("pipeline.role") == "sweep"]
    children = sweep_runs(client, parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == [
        "full-lr1e-3-s12",
        "lora-r2-a8-lr1e-3-s12",
        "lora-r4-a8-lr1e-3-s12",
    ]
    assert all(r.info.status == "FINISHED" for r in children)
    # each ran as a SLURM job of its own
    assert len({r.data.tags["slurm.job_id"] for r in children}) == 3
    # the shared prefix was computed once, before the jobs: every job found it cached
    assert parent.data.tags["sweep.prefix.prepare_data"] == "ran" and parent.data.tags["sweep.prefix.baseline"] == "ran"
    for stage in ("prepare_data", "baseline"):
        assert {r.data.tags[f"stage.{stage}"] for r in children} == {"cached"}, stage
    assert all(r.data.tags["stage.finetune"] == "ran" for r in children)
    # artifacts went through the server
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"model", "evaluation"}

    # make compare, against the server
    report = subprocess.run(
        [sys.executable, "-m", "pipeline.report", "--tracking-uri", tracking_server, "--out", str(tmp_path / "report"),
         "--sweep-id", parent.data.tags["sweep_id"], "--resamples", "200"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    table = (tmp_path / "report" / "report.md").read_text()
    assert all(name in table for name in ("full-lr1e-3-s12", "lora-r2-a8-lr1e-3-s12", "lora-r4-a8-lr1e-3-s12"))
    assert any(a.path == "report" for a in client.list_artifacts(parent.info.run_id))

    # the same sweep again: every job reuses its finished run, and no shared stage is computed for them
    again = _slurm_sweep(tmp_path, tiny, slurm, tracking_server, "finetune.r=2,4", "finetune.alpha=8")
    log = _finish(again, tmp_path, slurm)
    assert "3 jobs finished (3 reused" in log and "computed once first" not in log


@pytest.mark.slow
@pytest.mark.integration
# 2: one task whose training runs in 2 torchrun processes; on SIGTERM the job's process stops them, then requeues
@pytest.mark.parametrize("processes", [1, 2])
def test_a_slurm_job_sent_sigterm_is_requeued_and_resumes_into_the_same_run(
    processes, tmp_path, tiny_model, tiny_qa, tiny_nanobeir, slurm, tracking_server
):
    tiny = (tiny_model, tiny_qa, tiny_nanobeir)
    training = ["train.max_steps=50", "train.save_steps=10", "train.eval_steps=null", "train.logging_steps=10"]
    experiment = [f"tracking.experiment=requeue-{processes}"]  # the tracking server is shared by the module
    proc = _slurm_sweep(
        tmp_path,
        tiny,
        slurm,
        tracking_server,
        "finetune=lora",
        "finetune.r=2",
        "finetune.alpha=8",
        *training,
        *experiment,
        f"launch.processes_per_job={processes}",
    )
    finetune_cache = tmp_path / "outputs" / "cache" / "finetune"
    deadline = time.monotonic() + 300
    while not list(finetune_cache.glob("*.partial/checkpoints/checkpoint-20")):
        assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "training never reached checkpoint-20"
        time.sleep(0.05)
    (job,) = slurm.run("squeue", "-h", "-o", "%A").split()
    slurm.run("scancel", "--signal=TERM", job)  # preemption: the job is signalled, not cancelled

    # the job requeues itself; SLURM holds a requeued job back (BeginTime) for a while: let it start now
    deadline = time.monotonic() + 60
    while "PENDING" not in slurm.run("squeue", "-h", "-j", job, "-o", "%T", check=False):
        assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"job {job} was not requeued: {slurm.run('squeue', check=False)}"
        time.sleep(0.2)
    slurm.run("scontrol", "update", f"jobid={job}", "StartTime=now")
    _finish(proc, tmp_path, slurm)

    client = MlflowClient(tracking_server)
    exp_id = client.get_experiment_by_name(f"requeue-{processes}").experiment_id
    jobs = [r for r in client.search_runs([exp_id]) if r.data.tags.get("pipeline.role") != "sweep"]
    assert len(jobs) == 1, [(r.info.status, r.data.tags) for r in jobs]  # one run, not two
    (run,) = jobs
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert run.data.tags["processes"] == str(processes)
    assert run.data.tags["slurm.job_id"] == job and run.data.tags["slurm.restart_count"] == "1"
    assert int(run.data.tags["resumed_from"].split("-")[1]) >= 10
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(set(steps)) == [1, *range(10, 51, 10)]  # every logged step, over both attempts


@pytest.mark.integration
def test_the_cluster_leaves_no_job_process_behind(tmp_path):
    """A job whose script and step ignore SIGTERM (as the SIGTERM-requeue test's do) still running when the cluster
    stops: cancelled, its steps awaited then SIGKILLed, before the daemons go; nothing of it outlives the cluster."""
    missing = slurm_cluster.missing_tools()
    if missing:
        pytest.skip(f"needs Debian's slurm-wlm and munge (missing {', '.join(missing)}; .ci/run installs them)")
    cluster = slurm_cluster.start(tmp_path / "slurm")
    try:
        script = "trap '' TERM; srun --ntasks=1 bash -c \"trap '' TERM; sleep 600\""
        job = cluster.run("sbatch", "--parsable", f"--output={tmp_path}/job.out", "--wrap", script).strip()
        deadline = time.monotonic() + 60
        while not any(p.name() == "sleep" for p in cluster.job_processes()):
            assert time.monotonic() < deadline, f"job {job} never started its step: {cluster.run('squeue')}"
            time.sleep(0.2)
        names = {p.name() for p in cluster.job_processes()}
        assert {"slurmstepd", "srun", "sleep"} <= names, names  # what it must find to end
    finally:
        left = cluster.stop()
    assert left == []


@pytest.mark.slow
@pytest.mark.integration
def test_make_decide_through_slurm_one_batch_per_round(
    tmp_path, tiny_model, tiny_qa, tiny_nanobeir, slurm, tracking_server
):
    """`make decide` through the SLURM launcher: the grid, then each round of fresh seeds as SLURM jobs of their own,
    the looks read from the runs on the tracking server."""
    tiny = (tiny_model, tiny_qa, tiny_nanobeir)
    decide = [
        "train.max_steps=4", "train.eval_steps=null", "finetune.r=2", "finetune.alpha=4", "hydra.sweeper.seeds=[1]",
        "train.lr=5e-2", "hydra.sweeper.decide.enabled=true",
        "hydra.sweeper.decide.first=2", "hydra.sweeper.decide.step=1", "hydra.sweeper.decide.budget=3",
        "hydra.sweeper.decide.extend=0", "tracking.experiment=decide",
    ]  # fmt: skip
    proc = _slurm_sweep(tmp_path, tiny, slurm, tracking_server, *decide)
    _finish(proc, tmp_path, slurm, timeout=2400)
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("decide")
    (parent,) = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("pipeline.role")]
    tags = parent.data.tags
    n = int(tags["verdict.looks"])
    seeds = {1: "2,3", 2: "2,3,4"}[n]
    assert tags["verdict.seeds_adapter"] == tags["verdict.seeds_full"] == seeds and tags["sweep.grid_seeds"] == "1"
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "verdict.look.delta")] == list(
        range(1, n + 1)
    )
    runs = sweep_runs(client, parent.info.run_id)
    fresh = [r for r in runs if r.data.params["train.seed"] != "1"]
    assert sorted(r.data.params["train.seed"] for r in fresh) == sorted(seeds.split(",") * 2)
    assert len({r.data.tags["slurm.job_id"] for r in runs}) == len(runs)  # each a SLURM job of its own
