"""Where jobs run, without a cluster: the shared prefix a sweep computes first, one GPU per local job from a pool
(a faked device list), and which interrupted SLURM jobs requeue themselves (a faked scontrol)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from pipeline.launch import gpus, slurm
from pipeline.sweep.prefix import run_shared_prefix, shared_stages
from tests.conftest import ROOT, compose_config, tiny_overrides

# --------------------------------------------------------------------------------------------------- shared prefix

# what no method or rank reaches (the tiny config has an in-domain test set)
SHARED_STAGES = ["prepare_data", "prepare_dev", "prepare_test", "baseline", "dev_baseline", "test_baseline"]


@pytest.fixture
def job_cfgs(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    base = [o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if not o.startswith("finetune.")]
    return lambda *jobs: [compose_config(base + list(job)) for job in jobs]


def test_prefix_is_what_no_swept_key_reaches(job_cfgs):
    grid = job_cfgs(["finetune=lora", "finetune.r=2"], ["finetune=lora", "finetune.r=4"], ["finetune=full"])
    shared = SHARED_STAGES
    assert shared_stages(grid) == shared
    # a swept data key: the data differ, so do the stages downstream of them; the baseline is still shared
    assert shared_stages(job_cfgs(["data.train_size=16"], ["data.train_size=32"])) == ["baseline"]
    # a swept learning rate changes only training: everything before it is shared
    assert shared_stages(job_cfgs(["train.lr=1e-3"], ["train.lr=1e-4"])) == shared
    # two identical jobs share every stage
    trained = ["finetune", "evaluate", "dev_evaluate", "test_evaluate", "model_card"]
    assert shared_stages(job_cfgs([], [])) == [*shared, *trained]
    # only what every job runs: run.until=baseline needs no data
    assert shared_stages(job_cfgs(["run.until=baseline"], ["run.until=baseline", "train.lr=1"])) == ["baseline"]
    assert shared_stages(job_cfgs(["run.until=baseline"], ["run.until=prepare_data"])) == []


def test_a_demo_like_sweep_computes_its_prefix_instead_of_falling_back(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """The demo's data.path interpolates ${paths.outputs}: the prefix's stage keys resolve it, and the shared stages
    run in the sweeping process (no warning, no silent fallback to the jobs)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from omegaconf import OmegaConf

    shutil.copytree(tiny_qa, tmp_path / "outputs" / "demo_data" / "qa")
    base = [o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if not o.startswith("finetune.")]
    base = [o for o in base if not o.startswith("data.path=")] + ["data.path=${paths.outputs}/demo_data/qa"]
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
    sweep = OmegaConf.create(
        {"hydra": {"overrides": {"hydra": []}, "job": {"config_name": "config"}, "sweep": {"dir": str(tmp_path)}}}
    )
    jobs = [[*base, "finetune=lora", "finetune.r=2", "finetune.alpha=4"], [*base, "finetune=full"]]
    assert run_shared_prefix(sweep, loader, jobs) == dict.fromkeys(SHARED_STAGES, "ran")
    assert run_shared_prefix(sweep, loader, jobs) == dict.fromkeys(SHARED_STAGES, "cached")


@pytest.mark.integration
def test_a_sweep_computes_its_prefix_before_its_jobs(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """run.until=baseline keeps it fast: the sweeping process computes the baseline, the jobs reuse it."""
    overrides = [
        o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if not o.startswith("finetune.")
    ]
    cmd = [sys.executable, "-m", "pipeline", "-m", "sweep=lora_grid", *overrides]
    cmd += ["finetune=lora", "finetune.r=2,4", "finetune.alpha=8", "run.until=baseline"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    before_jobs, jobs = proc.stdout.split("Launching 2 jobs locally")
    assert "baseline shared by 2 jobs, computed once first" in before_jobs
    assert "[pipeline] baseline      ran" in before_jobs and "prepare_data" not in before_jobs
    assert jobs.count("[pipeline] baseline      cached") == 2
    assert "running" not in jobs  # no job computed a stage


# --------------------------------------------------------------------------------------------------- GPU pool


def test_each_job_takes_a_free_gpu_and_waits_when_all_are_busy(tmp_path):
    pool = ["0", "1"]
    (first,), (lock1,) = gpus.acquire_gpus(pool, tmp_path)
    (second,), (lock2,) = gpus.acquire_gpus(pool, tmp_path)
    assert {first, second} == {"0", "1"}
    got, waited = [], threading.Event()

    def third_job():
        got.append(gpus.acquire_gpus(pool, tmp_path, poll_s=0.02, on_wait=waited.set))

    thread = threading.Thread(target=third_job)
    thread.start()
    assert waited.wait(5) and not got  # both GPUs are busy: the third job waits
    time.sleep(0.1)
    assert not got
    lock2.release()  # the job on `second` ends
    thread.join(5)
    assert got and got[0][0] == [second]
    got[0][1][0].release()
    lock1.release()


def test_a_job_of_several_processes_takes_that_many_gpus_and_holds_none_while_it_waits(tmp_path):
    pool = ["0", "1", "2"]
    (one,), (lock1,) = gpus.acquire_gpus(pool, tmp_path)  # another job holds one GPU
    got, waited = [], threading.Event()

    def job_of_three():
        got.append(gpus.acquire_gpus(pool, tmp_path, count=3, poll_s=0.02, on_wait=waited.set))

    thread = threading.Thread(target=job_of_three)
    thread.start()
    assert waited.wait(5) and not got  # two of the three are free: it waits
    # meanwhile it holds neither free GPU: a job of two takes them
    pair, locks = gpus.acquire_gpus(pool, tmp_path, count=2, poll_s=0.02)
    assert sorted(pair) == sorted(set(pool) - {one})
    for lock in [*locks, lock1]:
        lock.release()
    thread.join(5)
    assert got and sorted(got[0][0]) == pool
    for lock in got[0][1]:
        lock.release()


def test_sweep_jobs_are_pinned_to_their_gpu_and_cpu_machines_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus, "_process_gpu", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the faked device list: GPUs 2 and 3 of this machine
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    other = gpus.FileLock(str(tmp_path / f"gpu-{gpus.socket.gethostname().split('.')[0]}-2.lock"))
    other.acquire()  # another job holds GPU 2
    with gpus.gpu_of_this_job(tmp_path, in_local_sweep=True) as gpu:
        assert gpu == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    other.release()
    # this process's CUDA context lives on GPU 3: its next job waits for GPU 3, even with GPU 2 free
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with gpus.gpu_of_this_job(tmp_path, in_local_sweep=True) as gpu:
        assert gpu == "3"

    monkeypatch.setattr(gpus, "_process_gpu", None)
    for env, in_sweep in [("", True), ("0,1", False)]:  # CPU-only machine; a single run (not a sweep)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        with gpus.gpu_of_this_job(tmp_path, in_local_sweep=in_sweep) as gpu:
            assert gpu is None and os.environ["CUDA_VISIBLE_DEVICES"] == env
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # SLURM gave this job its GPUs
    with gpus.gpu_of_this_job(tmp_path, in_local_sweep=True) as gpu:
        assert gpu is None and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_visible_gpus_without_nvidia_smi_is_none(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpus.shutil, "which", lambda name: None)
    assert gpus.visible_gpus() == []


# --------------------------------------------------------------------------------------------------- SLURM requeue


class FakeScontrol:
    def __init__(self, state: str):
        self.state, self.calls = state, []

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd[1:])
        out = f"JobId=7 JobName=x\n   JobState={self.state} Reason=None" if cmd[1] == "show" else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")


@pytest.mark.parametrize(
    "state, requeued, comes_back",
    [("RUNNING", True, True), ("PENDING", False, True), ("CANCELLED", False, False), ("COMPLETING", False, False)],
)
def test_an_interrupted_slurm_job_requeues_itself_unless_cancelled(monkeypatch, state, requeued, comes_back):
    """RUNNING: only signalled (preemption, scancel --signal=TERM), so it requeues itself; PENDING: SLURM requeues
    it already; CANCELLED / COMPLETING: scancel, which must stay a cancel."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    fake = FakeScontrol(state)
    monkeypatch.setattr(slurm.subprocess, "run", fake)
    with pytest.raises(KeyboardInterrupt), slurm.requeue_when_interrupted():
        raise KeyboardInterrupt("signal 15")
    assert (["requeue", "7"] in fake.calls) == requeued
    assert slurm.requeue("7") == comes_back


def test_outside_slurm_an_interrupt_is_only_an_interrupt(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    fake = FakeScontrol("RUNNING")
    monkeypatch.setattr(slurm.subprocess, "run", fake)
    with pytest.raises(KeyboardInterrupt), slurm.requeue_when_interrupted():
        raise KeyboardInterrupt
    assert fake.calls == [] and slurm.slurm_tags() == {}


def test_submitits_requeue_exit_ends_the_run_killed_so_the_requeued_job_resumes_it(tiny_cfg, monkeypatch):
    """Near a SLURM time limit submitit requeues the job and calls sys.exit inside the training: the run must end
    KILLED (resumable by the requeued job), not FAILED (which the next attempt would not resume)."""
    from mlflow.tracking import MlflowClient

    import pipeline.stages.finetune as finetune_module
    from pipeline.app import run

    def requeued_by_submitit(*args, **kwargs):
        sys.exit(-1)

    monkeypatch.setattr(finetune_module.SentenceTransformerTrainer, "train", requeued_by_submitit)
    cfg = tiny_cfg()
    with pytest.raises(SystemExit):
        run(cfg)
    client = MlflowClient(f"sqlite:///{cfg.paths.outputs}/../mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert r.info.status == "KILLED"
