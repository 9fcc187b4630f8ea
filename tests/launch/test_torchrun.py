"""Several processes per job (`launch.processes_per_job`, pipeline/launch/torchrun.py), on CPU with gloo: the same
weights as one process with the same global batch, one MLflow run and one cache entry, a failing process's line, a
killed job that resumes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from pipeline.app import run
from pipeline.launch.torchrun import ProcessFailed, run_processes
from pipeline.manifest import read_result
from pipeline.validate import ConfigError, validate
from tests.conftest import compose_config, tiny_method, tiny_overrides
from tests.distributed_calls import fail_on_rank_one
from tests.test_app import (
    _all_gone,
    _assert_no_step_before_the_checkpoint_ran_twice,
    start_pipeline,
    wait_for_checkpoint,
)


@pytest.mark.integration
def test_the_first_process_returns_and_a_failing_process_is_named(tmp_path):
    with pytest.raises(ProcessFailed, match=r"^process 1 of 2: planted failure of run$"):
        run_processes(fail_on_rank_one, {"kind": "run"}, 2, tmp_path / "a")
    with pytest.raises(ProcessFailed, match=r"^process 1 of 2: ValueError: planted failure of bug$"):
        run_processes(fail_on_rank_one, {"kind": "bug"}, 2, tmp_path / "b")
    assert run_processes(fail_on_rank_one, {"kind": "none"}, 1, tmp_path / "c") == "rank 0 done"


def _trained(cfg) -> tuple[dict[str, torch.Tensor], dict]:
    run(cfg)
    (entry,) = [p for p in (Path(cfg.paths.outputs) / "cache" / "finetune").iterdir() if p.is_dir()]
    (weights,) = (entry / "model").glob("*.safetensors")
    return load_file(weights), entry


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(
    "method, loss",
    [("full", "train.mini_batch_size=auto"), ("lora", "train.loss=mnrl"), ("full", "train.mini_batch_size=2")],
    ids=["full-auto-cached", "lora-mnrl", "full-cached-2"],
)
def test_two_processes_train_what_one_trains_with_one_run_and_one_cache_entry(
    method, loss, tmp_path, tiny_no_dropout_model, tiny_qa, tiny_nanobeir
):
    """DDP on 2 gloo processes, each taking half of the global batch with in-batch negatives gathered from both: every
    step's loss and gradient norm are one process's, and so are the weights, within 1e-5 (no dropout: the two would
    draw differently). A few weights may differ more: AdamW divides a gradient by its own size plus eps (1e-8), so an
    element whose gradient is about eps (LoRA's A at step 2, while B is ~lr) turns a rounding difference into up to
    a few 1e-5 of its update (one weight of 3,840 in the LoRA arm, 4.7e-5, with equal losses and gradient norms)."""
    trained, logged = {}, {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        overrides = tiny_overrides(out, tiny_no_dropout_model, tiny_qa, tiny_nanobeir) + [
            f"finetune={method}",
            *tiny_method([f"finetune={method}"]),
            loss,
            "train.max_steps=3",
            "train.warmup_ratio=0",
            "train.eval_steps=null",
            "run.until=finetune",
            f"launch.processes_per_job={processes}",
        ]
        cfg = compose_config(overrides + (["finetune.dropout=0"] if method == "lora" else []))
        weights, entry = _trained(cfg)
        trained[processes] = weights
        client = MlflowClient(cfg.tracking.uri)
        (mlflow_run,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
        assert mlflow_run.info.status == "FINISHED"
        history = {m: client.get_metric_history(mlflow_run.info.run_id, m) for m in ("loss", "grad_norm")}
        assert [m.step for m in history["loss"]] == [1, 2, 3]
        logged[processes] = {name: [m.value for m in values] for name, values in history.items()}
        summary = read_result(entry)  # the first process's summary, written once to the one cache entry
        assert summary["processes"] == processes and summary["global_step"] == 3
    assert logged[2] == {name: pytest.approx(values, rel=1e-5) for name, values in logged[1].items()}
    assert trained[1].keys() == trained[2].keys()
    differences = torch.cat([(trained[1][k] - trained[2][k]).abs().flatten() for k in trained[1]])
    assert float(differences.quantile(0.999)) < 1e-5 and float(differences.max()) < 1e-4, float(differences.max())


@pytest.mark.slow
@pytest.mark.integration
def test_a_process_that_fails_ends_the_run_failed_with_its_line(tiny_cfg, capsys):
    cfg = tiny_cfg(["finetune=full", "train.lr=1e-30", "train.warmup_ratio=0", "run.until=finetune"])
    cfg.launch.processes_per_job = 2
    with pytest.raises(SystemExit):
        run(cfg)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: process 0 of 2: the fine-tune did not train"), line
    client = MlflowClient(cfg.tracking.uri)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert mlflow_run.info.status == "FAILED"
    assert mlflow_run.data.tags["error"].startswith("ProcessFailed: process 0 of 2: the fine-tune did not train")


def test_processes_must_divide_the_batch_and_sharding_needs_several(tiny_cfg):
    with pytest.raises(ConfigError, match=r"^launch.processes_per_job=3 does not divide train.batch_size=8"):
        validate(tiny_cfg(["launch.processes_per_job=3"]))
    with pytest.raises(ConfigError, match=r"^launch.fsdp=full is not allowed with launch.processes_per_job=1"):
        validate(tiny_cfg(["launch.fsdp=full"]))
    with pytest.raises(ConfigError, match=r"^launch.processes_per_job=0 is not allowed: must be >= 1"):
        validate(tiny_cfg(["launch.processes_per_job=0"]))
    with pytest.raises(ConfigError, match=r"^launch.fsdp=both needs GPUs: accelerate shards \(FSDP\) only across GPUs"):
        validate(tiny_cfg(["launch.processes_per_job=2", "launch.fsdp=both"]))  # on this CPU machine
    validate(tiny_cfg(["launch.processes_per_job=2", "launch.fsdp=off"]))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_a_killed_two_process_job_leaves_no_process_and_resumes_into_its_run(
    sig, tmp_path, tiny_model, tiny_qa, tiny_nanobeir
):
    """SIGKILL to the job's process (torchrun and its workers follow it), or Ctrl-C (the run ends KILLED, exit 130,
    after torchrun stopped its workers); then the same command resumes from the last checkpoint into the same run."""
    overrides = tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) + [
        "finetune=full",
        "train.max_steps=120",
        "train.save_steps=10",
        "train.eval_steps=null",
        "train.logging_steps=10",
        "launch.processes_per_job=2",
    ]
    proc, again = start_pipeline(overrides)
    finetune_cache = tmp_path / "outputs" / "cache" / "finetune"
    wait_for_checkpoint(proc, finetune_cache, "checkpoint-20")
    children = psutil.Process(proc.pid).children(recursive=True)  # torchrun and its two workers
    assert len([c for c in children if "pipeline.launch.torchrun" in " ".join(c.cmdline())]) >= 2
    os.killpg(proc.pid, sig)  # the job's process group, as a terminal's Ctrl-C; torchrun has a session of its own
    assert proc.wait(timeout=120) == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    assert _all_gone(children, timeout=60), [c.pid for c in children if c.is_running()]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (interrupted,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert interrupted.info.status == ("KILLED" if sig == signal.SIGINT else "RUNNING")

    done = again()
    assert done.returncode == 0, done.stderr[-3000:]
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert mlflow_run.info.run_id == interrupted.info.run_id
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["resumed"] == "true"
    assert int(mlflow_run.data.tags["resumed_from"].split("-")[1]) >= 10, mlflow_run.data.tags
    assert client.get_metric_history(mlflow_run.info.run_id, "loss")[-1].step == 120
    _assert_no_step_before_the_checkpoint_ran_twice(client, mlflow_run)  # nor logged by two processes


def test_a_checkpoint_whose_other_process_was_killed_while_saving_its_rng_state_is_not_resumed(tmp_path):
    """Process 0 writes trainer_state.json without waiting for process 1's rng_state_1.pth: a kill between the two
    left a checkpoint that looked complete and made process 1 fail with EOFError on resuming. It is removed and the
    one before it resumed; one process needs no other file."""
    import json as _json
    import random

    from pipeline.stages.finetune import last_complete_checkpoint

    state = {"python": random.getstate(), "cpu": torch.random.get_rng_state()}
    for step, cut in ((10, False), (20, True)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text(_json.dumps({"global_step": step}))
        for rank in (0, 1):
            torch.save(state, checkpoint / f"rng_state_{rank}.pth")
        if cut:  # process 1 killed half-way through writing its file
            data = (checkpoint / "rng_state_1.pth").read_bytes()
            (checkpoint / "rng_state_1.pth").write_bytes(data[: len(data) // 2])
    assert last_complete_checkpoint(tmp_path, processes=1) == str(tmp_path / "checkpoint-20")  # reads no rng file
    assert last_complete_checkpoint(tmp_path, processes=2) == str(tmp_path / "checkpoint-10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]


def test_the_memory_check_is_per_process_and_sharding_divides_the_trained_state(tiny_cfg, tiny_model):
    from pipeline.memory import estimate

    def need(*extra: str):
        cfg = tiny_cfg(["finetune=full", "train.loss=mnrl", *extra])
        return estimate(cfg, tiny_model.parent, "cpu", "fp32")

    one, ddp, fsdp = need(), need("launch.processes_per_job=2"), need("launch.processes_per_job=2", "launch.fsdp=full")
    assert ddp.tokens * 2 == one.tokens and ddp.activations * 2 == one.activations  # half the batch each
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (one.weights, one.gradients, one.optimizer)  # replicated
    assert fsdp.gradients * 2 == one.gradients and fsdp.optimizer * 2 == one.optimizer
    assert one.weights / 2 < fsdp.weights < one.weights  # a half, plus the layers gathered at once


NUMBERED = ("verdict.sentence", "verdict.reason")


@pytest.mark.slow
@pytest.mark.integration
def test_make_decide_in_two_processes_per_job_gives_one_process_scores_and_verdict(
    tmp_path, tiny_no_dropout_model, tiny_qa, tiny_nanobeir
):
    """`make decide` shrunk (the grid, then one look of fresh seeds) with every job in two processes: each run's
    NanoBEIR score and the verdict are one process's (no dropout, the same global batch)."""
    from tests.sweep.test_decide import _decide

    tiny = (tiny_no_dropout_model, tiny_qa, tiny_nanobeir)
    shrunk = ("finetune.dropout=0", "hydra.sweeper.decide.extend=0", "hydra.sweeper.decide.budget=2")
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"x{processes}"
        out.mkdir()
        _, _, parent, runs = _decide(out, tiny, *shrunk, f"launch.processes_per_job={processes}")
        scores = {r.info.run_name: r.data.metrics["nanobeir_mean_ndcg_at_10"] for r in runs}
        # the label, looks and seeds (the sentence's and reason's numbers are the scores, compared to 1e-4 below)
        verdict = {k: v for k, v in parent.data.tags.items() if k.startswith("verdict") and k not in NUMBERED}
        results[processes] = scores, verdict, {r.data.tags.get("processes") for r in runs}
    (one, one_verdict, one_tags), (two, two_verdict, two_tags) = results[1], results[2]
    assert one_tags == {"1"} and two_tags == {"2"}  # each run says how it trained
    assert sorted(two) == sorted(one) and len(one) == 6  # 2 grid jobs, then 2 fresh seeds per arm
    assert two == pytest.approx(one, abs=1e-4)
    assert two_verdict == one_verdict and {"verdict", "verdict.looks", "verdict.seeds_full"} <= set(one_verdict)
