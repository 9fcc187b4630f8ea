"""A full disk: an estimate before training that names the free space, the need and the keys that change it; a disk
that fills anyway ends the run FAILED in one line with no cache entry. On a small tmpfs (root only: skipped else)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, tiny_overrides

SIZE = re.compile(r"\d+(\.\d)? (B|kB|MB|GB)")


def _bytes(size: str) -> float:
    number, unit = size.split()
    return float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


@pytest.fixture
def small_disk(tmp_path):
    """A 10 MB tmpfs under tmp_path: room for the data, the baselines and the model, not for a checkpoint of the tiny
    BERT's full fine-tune (4 MB of weights and 8 MB of AdamW states)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def full_finetune(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, outputs) -> list[str]:
    overrides = [o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if "paths.outputs" not in o]
    return [*overrides, f"paths.outputs={outputs}", "finetune=full", "train.save_steps=1", "train.eval_steps=null"]


@pytest.mark.integration
def test_a_run_that_does_not_fit_stops_before_any_model_loads(small_disk, tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    outputs = small_disk / "outputs"
    cmd = [sys.executable, "-m", "pipeline", *full_finetune(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, outputs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = errors[0]
    assert f"paths.outputs={outputs}" in line and "train.save_total_limit" in line and "train.save_steps" in line
    free, need = [_bytes(m.group(0)) for m in SIZE.finditer(line.split("has ", 1)[1])][:2]  # "has F free ... about N"
    assert 0 < free <= 10.5e6 < need, line  # 10 MiB
    assert not (outputs / "cache" / "baseline").exists()  # no stage ran: nothing loaded, nothing written
    (run,) = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["0", "1"])
    assert run.info.status == "FAILED"


@pytest.mark.integration
def test_a_disk_that_fills_fails_the_run_in_one_line_and_leaves_no_cache_entry(
    small_disk, tmp_path, tiny_model, tiny_qa, tiny_nanobeir, capsys, monkeypatch
):
    import pipeline.dag as dag
    from pipeline.app import run
    from tests.conftest import compose_config

    monkeypatch.setattr(dag, "check_disk", lambda cfg, model_dir: None)  # the estimate would stop it: the disk fills
    outputs = small_disk / "outputs"
    cfg = compose_config(full_finetune(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, outputs))
    with pytest.raises(SystemExit) as exit_:
        run(cfg)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error")] or [err[-3000:]]
    assert line.startswith("error: stage finetune ran out of disk writing checkpoints/checkpoint-1/"), line
    assert "the run FAILED and left no cache entry" in line and "paths.outputs" in line
    left = [p.name for p in (outputs / "cache" / "finetune").iterdir() if p.suffix != ".lock"]
    assert left == [], "a finetune output or partial dir was left"
    assert (outputs / "cache" / "baseline").is_dir()  # what was computed before stays
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert r.info.status == "FAILED" and "ran out of disk" in r.data.tags["error"]


def test_the_estimate_counts_adamw_states_and_the_checkpoint_written_before_the_oldest_goes(
    tmp_path, tiny_model, tiny_qa, tiny_nanobeir
):
    """A full fine-tune of the tiny BERT: the model is every parameter in fp32 (counted here by torch, apart from the
    safetensors headers the estimate reads); a checkpoint adds AdamW's exp_avg and exp_avg_sq; with 3 saves and
    save_total_limit=1, two checkpoints exist at once (the Trainer writes the next before it deletes the oldest)."""
    from sentence_transformers import SentenceTransformer

    from pipeline.disk import estimate
    from tests.conftest import compose_config

    params = sum(p.numel() for p in SentenceTransformer(str(tiny_model), device="cpu").parameters())
    other = sum(p.stat().st_size for p in tiny_model.rglob("*") if p.is_file() and p.suffix != ".safetensors")
    overrides = [o for o in tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) if "finetune." not in o]
    steps = ["train.max_steps=6", "train.save_steps=2", "train.save_total_limit=1"]
    need = estimate(compose_config([*overrides, "finetune=full", *steps]), tiny_model)
    assert need.model == 4 * params + other
    assert need.checkpoint == need.model + 2 * 4 * params
    assert need.checkpoints == 2
    assert need.total == need.model + 2 * need.checkpoint
