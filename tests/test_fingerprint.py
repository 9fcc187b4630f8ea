"""No stale inputs: a local dir rebuilt in place is read anew, Hub ids are pinned to commit SHAs (offline: the cached
snapshot's), a pre-downloaded Hub dataset loads offline, fingerprints are cheap the second time, `run.force` recomputes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

import pipeline.fingerprint as fp
from pipeline.dag import run_dag
from tests.conftest import ROOT, write_nanobeir_dir, write_qa_dir

SHA_A, SHA_B = "a" * 40, "b" * 40


def _rebuild_in_place(path: Path, write) -> None:
    """Rewrite every file of `path` with new content, then put the old mtimes back (as `cp -p`, rsync -t, or a
    rebuild within the filesystem's mtime resolution leave them): `datasets` keys its cache on path and mtime."""
    stamps = {p: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}
    write(path)
    for p, ns in stamps.items():
        os.utime(p, ns=ns)


def test_an_eval_set_rebuilt_in_place_is_evaluated_on_its_new_content(tiny_cfg, tmp_path):
    evals = write_nanobeir_dir(tmp_path / "nano", seed=0)
    overrides = [f"eval.dataset_id={evals}", "run.until=baseline"]
    first = run_dag(tiny_cfg(overrides))["baseline"].result
    _rebuild_in_place(evals, lambda p: write_nanobeir_dir(p, seed=1))
    again = run_dag(tiny_cfg(overrides))["baseline"]
    fresh = run_dag(tiny_cfg([*overrides, f"paths.outputs={tmp_path}/fresh"]))["baseline"].result
    assert again.status == "ran"  # the key follows the content
    assert fresh["per_dataset_ndcg_at_10"] != first["per_dataset_ndcg_at_10"]  # the rebuild changed the numbers
    assert again.result["per_dataset_ndcg_at_10"] == fresh["per_dataset_ndcg_at_10"]
    assert again.result["ndcg_at_10"] == fresh["ndcg_at_10"]


def test_training_pairs_rebuilt_in_place_are_read_anew(tiny_cfg, tmp_path):
    qa = write_qa_dir(tmp_path / "qa", seed=0)
    overrides = [f"data.path={qa}", "run.until=prepare_data"]
    run_dag(tiny_cfg(overrides))
    _rebuild_in_place(qa, lambda p: write_qa_dir(p, seed=1))
    again = run_dag(tiny_cfg(overrides))["prepare_data"]
    fresh = run_dag(tiny_cfg([*overrides, f"paths.outputs={tmp_path}/fresh"]))["prepare_data"]
    rows = load_from_disk(str(again.dir / "dataset"))["train"]["question"]
    assert rows == load_from_disk(str(fresh.dir / "dataset"))["train"]["question"]


def test_run_force_recomputes_the_stage_and_what_follows(tiny_cfg):
    cfg = tiny_cfg(["run.until=prepare_data"])
    assert run_dag(cfg)["prepare_data"].status == "ran"
    assert run_dag(cfg)["prepare_data"].status == "cached"
    forced = run_dag(tiny_cfg(["run.until=prepare_data", "run.force=prepare_data"]))["prepare_data"]
    assert forced.status == "ran" and (forced.dir / "dataset").is_dir()
    assert run_dag(tiny_cfg(["run.until=prepare_data", "run.force=all"]))["prepare_data"].status == "ran"


def test_a_fingerprint_reads_each_file_once_and_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path, monkeypatch):
    data = tmp_path / "model"
    data.mkdir()
    (data / "weights.bin").write_bytes(b"x" * 4096)
    (data / "config.json").write_text("{}")
    memo = tmp_path / "memo.json"
    first = fp.dir_fingerprint(data, memo)
    # a new process: nothing in memory, the digests come from the memo file, no file is read
    monkeypatch.setattr(fp, "_FILE_DIGESTS", {})
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: reads.append(str(f)) or real_open(f, *a, **k))
    assert fp.dir_fingerprint(data, memo) == first
    monkeypatch.undo()
    assert not [r for r in reads if r.startswith(str(data))], reads
    # same size, same mtime, other bytes: the ctime shows it
    stat = (data / "weights.bin").stat()
    (data / "weights.bin").write_bytes(b"y" * 4096)
    os.utime(data / "weights.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fp.dir_fingerprint(data, memo) != first


def _hub_cache(root: Path) -> Path:
    """A Hugging Face cache as `hf download` leaves it: a tiny Q/A dataset at two commits (main at the second)."""
    repo = root / "hub" / "datasets--org--qa"
    for seed, sha in ((0, SHA_A), (1, SHA_B)):
        write_qa_dir(repo / "snapshots" / sha, rows=48, seed=seed)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA_B)
    return root


def test_hub_ids_resolve_to_the_cached_commit_offline(tmp_path, monkeypatch, tiny_cfg):
    from huggingface_hub import constants

    from pipeline.fingerprint import pinned_config, sources
    from pipeline.tracking.identity import run_key

    home = _hub_cache(tmp_path / "hf")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    assert fp.hub_revision("org/qa", "dataset") == SHA_B
    assert fp.hub_revision("org/qa", "dataset", "main") == SHA_B
    assert fp.hub_revision("org/qa", "dataset", SHA_A) == SHA_A
    with pytest.raises(FileNotFoundError, match="org/nothing"):
        fp.hub_revision("org/nothing", "dataset")
    cfg = tiny_cfg(["data.path=org/qa"])
    found = sources(cfg)
    assert found["data"] == f"hub:org/qa@{SHA_B}"
    pinned = pinned_config(cfg, found)  # offline: the snapshot dir, which `datasets` can read
    assert pinned.data.path == str(home / "hub" / "datasets--org--qa" / "snapshots" / SHA_B)
    # main moves on: a new input for the stages and the run identity
    (home / "hub" / "datasets--org--qa" / "refs" / "main").write_text(SHA_A)
    moved = sources(cfg)
    assert moved["data"] == f"hub:org/qa@{SHA_A}"
    assert run_key(cfg, moved) != run_key(cfg, found)


@pytest.mark.integration
def test_a_predownloaded_hub_dataset_trains_offline(tmp_path, tiny_model, tiny_nanobeir):
    home = _hub_cache(tmp_path / "hf")
    outputs = tmp_path / "outputs"
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    args = [
        f"model.name={tiny_model}",
        "data.path=org/qa",
        "data.eval_size=8",
        "data.test_size=2",
        "data.train_size=16",
        "train.batch_size=8",
        f"eval.dataset_id={tiny_nanobeir}",
        "eval.datasets=[scifact]",
        f"paths.outputs={outputs}",
        "run.until=prepare_data",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (stage,) = list((outputs / "cache" / "prepare_data").glob("*/_SUCCESS.json"))
    result = json.loads(stage.read_text())["result"]
    assert result["train_rows"] == 16
    train = load_from_disk(str(stage.parent / "dataset"))["train"]["question"]
    main_rows = set(
        __import__("pandas").read_parquet(home / f"hub/datasets--org--qa/snapshots/{SHA_B}/data/train.parquet").question
    )
    assert set(train) <= main_rows  # the commit main points at
    shutil.rmtree(outputs)


@pytest.mark.integration
def test_a_hub_model_is_pinned_to_its_commit_in_the_run_the_card_and_the_adapter(
    tmp_path, tiny_model, tiny_qa, tiny_nanobeir
):
    """A Hub base model (here from a populated cache, offline) trains at the SHA main points to, and that SHA is in
    the run's tags, the adapter's config and the model card."""
    from mlflow.tracking import MlflowClient

    home = tmp_path / "hf"
    shutil.copytree(tiny_model, home / "hub" / "models--org--tiny" / "snapshots" / SHA_A)
    (home / "hub" / "models--org--tiny" / "refs").mkdir()
    (home / "hub" / "models--org--tiny" / "refs" / "main").write_text(SHA_A)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    args = [
        "model.name=org/tiny",
        "model.max_seq_length=32",
        f"data.path={tiny_qa}",
        "data.eval_size=8",
        "data.test_size=2",
        "data.train_size=16",
        "train.batch_size=8",
        "train.max_steps=1",
        "train.warmup_ratio=0",  # one step at the learning rate: a step inside the warmup (lr 0) trains nothing
        "train.eval_steps=null",
        "finetune.r=2",
        "finetune.alpha=4",
        f"eval.dataset_id={tiny_nanobeir}",
        "eval.datasets=[scifact]",
        f"paths.outputs={tmp_path}/outputs",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("lora-vs-full").experiment_id])
    assert run.data.tags["source.model"] == f"hub:org/tiny@{SHA_A}"
    model_dir = Path(client.download_artifacts(run.info.run_id, "model", str(tmp_path / "dl")))
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "org/tiny" and adapter["revision"] == SHA_A
    assert SHA_A in (model_dir / "README.md").read_text()
