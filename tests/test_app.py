"""Faults: a SIGKILLed training resumes into the same MLflow run; damaged cache entries are rebuilt; run states."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline.dag import is_complete, run_dag
from tests.conftest import ROOT, tiny_method, tiny_overrides


def start_pipeline(args: list[str], stderr=subprocess.DEVNULL) -> tuple[subprocess.Popen, Callable]:
    """`python -m pipeline ARGS` started in the background, offline, in a session of its own (a test signals its
    process group as a terminal would); and `again()`, which runs the same command to its end (the resume)."""
    cmd = [sys.executable, "-m", "pipeline", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    return proc, lambda: subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("method", ["lora", "full"])
def test_sigkill_mid_training_resumes_into_the_same_run(method, tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    overrides = tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) + [
        f"finetune={method}",
        *tiny_method([f"finetune={method}"]),
        "train.max_steps=120",
        "train.save_steps=10",
        "train.eval_steps=null",
        "train.logging_steps=10",
    ]
    proc, again = start_pipeline(overrides)
    finetune_cache = tmp_path / "outputs" / "cache" / "finetune"
    wait_for_checkpoint(proc, finetune_cache, "checkpoint-20")
    children = psutil.Process(proc.pid).children(recursive=True)  # the dataloader's workers, if any
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _all_gone(children, timeout=30), [c.pid for c in children if _alive(c)]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (killed,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert killed.info.status == "RUNNING"  # SIGKILL leaves no chance to say otherwise

    done = again()
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert run.info.run_id == killed.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert run.data.tags["resumed_from"].startswith("checkpoint-")
    # checkpoint-20 may have been half-written when the kill came: then it resumes from checkpoint-10
    assert int(run.data.tags["resumed_from"].split("-")[1]) >= 10
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps[0] == 1 and steps[-1] == 120
    (final,) = [p for p in finetune_cache.iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    assert not (final / "checkpoints").exists()
    _assert_no_step_before_the_checkpoint_ran_twice(client, run)


def _assert_no_step_before_the_checkpoint_ran_twice(client: MlflowClient, run) -> None:
    """A resumed run goes on from its checkpoint: the steps up to it were logged once, by the killed process. A run
    that silently trained from step 0 again (its `resumed_from` tag and step range intact) logs them twice."""
    resumed_at = int(run.data.tags["resumed_from"].split("-")[1])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    before = [s for s in steps if s <= resumed_at]
    assert before and len(before) == len(set(before)), f"steps up to {resumed_at} logged more than once: {steps}"


def wait_for_checkpoint(
    proc: subprocess.Popen, finetune_cache: Path, name: str = "checkpoint-10", runs: int = 1
) -> None:
    """Until `runs` runs trained by `proc` (or its workers) are mid-training at or past checkpoint `name`. A run ahead
    may already have rotated `name` away (`train.save_total_limit`), so any later checkpoint of it counts."""
    step = int(name.removeprefix("checkpoint-"))

    def past(run: Path) -> bool:
        steps = [c.name.removeprefix("checkpoint-") for c in run.glob("checkpoints/checkpoint-*")]
        return any(int(s) >= step for s in steps if s.isdigit())

    deadline = time.time() + 600
    while sum(past(run) for run in finetune_cache.glob("*.partial")) < runs:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)


LONG_TRAINING = ["train.max_steps=400", "train.save_steps=10", "train.eval_steps=null", "train.logging_steps=10"]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_ends_killed_with_one_line_and_exit_130(sig, tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) or SIGTERM mid-training: the run KILLED with
    what it logged, one line saying what was kept and the command that resumes, no traceback, exit code 130."""
    overrides = tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) + LONG_TRAINING
    with open(tmp_path / "stderr.txt", "w") as err:
        proc, _ = start_pipeline(overrides, stderr=err)
        wait_for_checkpoint(proc, tmp_path / "outputs" / "cache" / "finetune")
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
        assert proc.wait(timeout=120) == 130
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    line = stderr.rstrip().splitlines()[-1]  # the last line, on its own (the trainer's bar closed before it)
    assert line.startswith("interrupted: ") and stderr.count("interrupted: ") == 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert run.info.status == "KILLED" and run.data.metrics["baseline_nanobeir_mean_ndcg_at_10"] >= 0
    assert f"MLflow run {run.info.run_id} ended KILLED" in line and "last checkpoint" in line
    assert line.endswith("Resume with the same command: " + shlex.join(["python", "-m", "pipeline", *overrides]))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _all_gone(processes: list[psutil.Process], timeout: float) -> bool:
    deadline = time.time() + timeout
    while any(_alive(p) for p in processes):
        if time.time() > deadline:
            for p in processes:  # leave no orphan behind
                if _alive(p):
                    p.kill()
            return False
        time.sleep(0.1)
    return True


def test_damaged_cache_entry_is_rebuilt(tiny_cfg):
    cfg = tiny_cfg(["finetune=full", "run.until=prepare_data"])
    first = run_dag(cfg)["prepare_data"]
    assert is_complete(first.dir)
    # a file removed: the manifest no longer matches, the entry is rebuilt, never used
    victim = next(p for p in first.dir.rglob("*.arrow"))
    victim.unlink()
    assert not is_complete(first.dir)
    again = run_dag(cfg)["prepare_data"]
    assert again.status == "ran" and is_complete(again.dir) and victim.exists()
    # the marker missing: likewise
    (again.dir / "_SUCCESS.json").unlink()
    assert run_dag(cfg)["prepare_data"].status == "ran"
    # a leftover partial dir of a crashed process is not mistaken for an output, nor built upon
    partial = again.dir.with_name(again.dir.name + ".partial")
    partial.mkdir()
    (partial / "junk").write_text("half-written")
    assert run_dag(cfg)["prepare_data"].status == "cached"  # the complete output wins
    shutil.rmtree(again.dir)  # now only the crashed process's partial dir is left
    rebuilt = run_dag(cfg)["prepare_data"]
    assert rebuilt.status == "ran" and is_complete(rebuilt.dir)
    assert not (rebuilt.dir / "junk").exists() and not partial.exists()  # started afresh, not from the leftover


@pytest.mark.integration
def test_two_processes_never_both_compute_a_stage(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """Two processes start the same baseline stage at once: one computes it, the other waits and reuses it.

    The test holds the stage's lock until both processes are at it, so that they do overlap."""
    from filelock import FileLock

    from pipeline.dag import STAGES, stage_key
    from tests.conftest import compose_config

    overrides = tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) + ["run.until=baseline"]
    cfg = compose_config(overrides)
    final = Path(cfg.paths.outputs).resolve() / "cache" / "baseline" / stage_key(STAGES["baseline"], cfg, {})
    final.parent.mkdir(parents=True)
    code = (
        "import json, sys, pathlib; from tests.conftest import compose_config; from pipeline.dag import run_dag; "
        "cfg = compose_config(sys.argv[2:]); pathlib.Path(sys.argv[1]).touch(); "
        "out = run_dag(cfg); print(json.dumps({k: v.status for k, v in out.items()}))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    markers = [tmp_path / f"started-{i}" for i in range(2)]
    lock = FileLock(str(final) + ".lock")
    with lock:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(m), *overrides], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
            )
            for m in markers
        ]
        deadline = time.time() + 300
        while not all(m.exists() for m in markers) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # both past their imports: now at the stage's lock, which this test holds
        assert not final.exists()
    statuses = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1])["baseline"] for p in procs]
    assert sorted(statuses) == ["cached", "ran"]


def test_exception_ends_the_run_failed_with_its_error(tiny_cfg):
    from pipeline.app import run

    cfg = tiny_cfg(["finetune.target_modules=[no_such_module]"])
    with pytest.raises(ValueError, match="no_such_module"):
        run(cfg)
    client = MlflowClient(f"sqlite:///{cfg.paths.outputs}/../mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert r.info.status == "FAILED" and "no_such_module" in r.data.tags["error"]
    assert r.data.metrics["baseline_nanobeir_mean_ndcg_at_10"] >= 0  # what was written before the failure stays
    assert "error.txt" in {a.path for a in client.list_artifacts(r.info.run_id)}


def test_ctrl_c_ends_the_run_killed(tiny_cfg, monkeypatch):
    import pipeline.stages.finetune as finetune_module
    from pipeline.app import run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module.SentenceTransformerTrainer, "train", interrupted)
    cfg = tiny_cfg()
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    client = MlflowClient(f"sqlite:///{cfg.paths.outputs}/../mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert r.info.status == "KILLED"
    assert "baseline_nanobeir_mean_ndcg_at_10" in r.data.metrics


def test_a_truncated_cache_file_is_rebuilt_not_reused(tiny_cfg):
    """A file cut short (a disk that filled, a copy that stopped) has its name but not its size: never reused."""
    cfg = tiny_cfg(["run.until=prepare_data"])
    first = run_dag(cfg)["prepare_data"]
    victim = next(p for p in first.dir.rglob("*.arrow"))
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    assert not is_complete(first.dir)
    again = run_dag(cfg)["prepare_data"]
    assert again.status == "ran" and is_complete(again.dir)
    assert victim.stat().st_size == size  # rebuilt whole
