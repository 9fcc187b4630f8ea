"""The general benchmark as a choice (pipeline.evaluation.benchmark): NanoBEIR, or a list of MTEB retrieval tasks read
from local copies of their Hub datasets, evaluated by mteb and carried into the runs and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sentence_transformers import SentenceTransformer

from pipeline.config import EvalBackend, EvalConfig
from pipeline.evaluation.benchmark import evaluate, label
from pipeline.fingerprint import benchmark_fingerprint

# The tiny NanoBEIR dir's sets (tests/conftest.py) and the registered MTEB tasks they stand in for here
TASKS = {"SciFact": "NanoSciFact", "MSMARCO": "NanoMSMARCO"}


def write_task_copy(nanobeir: Path, split: str, dest: Path, split_name: str = "test") -> Path:
    """A local copy of an MTEB retrieval task's Hub dataset (as `huggingface-cli download mteb/scifact` leaves it):
    the `corpus`, `queries` and `default` (qrels, with a score) configs, one split each, holding `split` of a
    NanoBEIR-layout dir."""
    tables = {
        "corpus": pd.read_parquet(nanobeir / "corpus" / f"{split}.parquet"),
        "queries": pd.read_parquet(nanobeir / "queries" / f"{split}.parquet"),
        "default": pd.read_parquet(nanobeir / "qrels" / f"{split}.parquet").assign(score=1),
    }
    for config, table in tables.items():
        (dest / config).mkdir(parents=True, exist_ok=True)
        table.to_parquet(dest / config / f"{split_name}.parquet")
    configs = "".join(
        f"- config_name: {c}\n  data_files:\n  - split: {split_name}\n    path: {c}/{split_name}.parquet\n"
        for c in tables
    )
    (dest / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    return dest


@pytest.fixture
def task_dirs(tmp_path, tiny_nanobeir) -> dict[str, str]:
    return {task: str(write_task_copy(tiny_nanobeir, split, tmp_path / task)) for task, split in TASKS.items()}


def test_mteb_tasks_from_local_copies_score_query_by_query_as_the_same_sets_under_nanobeir(
    tmp_path, tiny_model, tiny_nanobeir, task_dirs
):
    """The same queries and documents, once as NanoBEIR sets through mteb and once as MTEB tasks from local copies:
    every query's NDCG@10 is the same, keyed by the task's name; the summary names where each task came from."""
    model = SentenceTransformer(str(tiny_model))
    nano = EvalConfig(str(tiny_nanobeir), datasets=["scifact", "msmarco"], batch_size=16, backend=EvalBackend.mteb)
    tasks = EvalConfig(tasks=list(TASKS), task_dirs=task_dirs, batch_size=16)
    by_nano = evaluate(model, nano, tmp_path / "nano")
    by_tasks = evaluate(model, tasks, tmp_path / "tasks")

    per_query = json.loads((tmp_path / "tasks" / "per_query.json").read_text())
    assert set(per_query) == set(TASKS) == set(by_tasks["per_dataset_ndcg_at_10"])
    nano_per_query = json.loads((tmp_path / "nano" / "per_query.json").read_text())
    for task, split in TASKS.items():
        assert per_query[task] == nano_per_query[split.removeprefix("Nano").lower()]
        assert 0 < by_tasks["per_dataset_ndcg_at_10"][task] < 1
    assert by_tasks["ndcg_at_10"] == pytest.approx(by_nano["ndcg_at_10"], abs=1e-12)
    assert by_tasks["tasks"] == task_dirs and by_tasks["backend"] == "mteb"
    metrics = json.loads((tmp_path / "tasks" / "metrics.json").read_text())
    assert metrics["MTEB_mean_ndcg_at_10"] == pytest.approx(by_tasks["ndcg_at_10"], abs=1e-5)
    assert label(tasks) == "MTEB (SciFact, MSMARCO)" and label(nano) == "NanoBEIR"


def test_a_task_copy_is_keyed_on_its_content_not_its_path(tmp_path, tiny_nanobeir, task_dirs):
    """Moving a local copy keeps its fingerprint (the cache reuses its scores); changing one query changes it."""
    from omegaconf import OmegaConf

    def fingerprint(dirs: dict[str, str]) -> str:
        return benchmark_fingerprint(OmegaConf.structured(EvalConfig(tasks=list(TASKS), task_dirs=dirs)))

    before = fingerprint(task_dirs)
    moved = {**task_dirs, "SciFact": str(write_task_copy(tiny_nanobeir, "NanoSciFact", tmp_path / "elsewhere"))}
    assert fingerprint(moved) == before
    queries = Path(moved["SciFact"]) / "queries" / "test.parquet"
    pd.read_parquet(queries).assign(text=lambda t: t.text + " changed").to_parquet(queries)
    assert fingerprint(moved) != before


@pytest.mark.slow
@pytest.mark.integration
def test_an_mteb_task_list_enters_the_runs_and_the_report(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, task_dirs):
    """A sweep scored on two MTEB tasks: each run's per-task scores and dataset inputs, its `benchmark` tag, and a
    report whose general half, per-task Δ and plots name the tasks."""
    from pipeline.report.compare import compare
    from tests.sweep.test_sweeper import _sweep

    dirs = [f"+eval.task_dirs.{task}={path}" for task, path in task_dirs.items()]  # Hydra adds a dict's keys with +
    grid = ("finetune=lora,full", "finetune.r=4", "finetune.alpha=8", "train.eval_steps=null")
    args = (*grid, "eval.datasets=null", "eval.tasks=[SciFact,MSMARCO]", *dirs)
    _, client, parent, children = _sweep(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, *args)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for run in children:
        assert run.data.tags["benchmark"] == "MTEB (SciFact, MSMARCO)"
        # the metrics are named after the benchmark: mteb_*, never nanobeir_*
        assert {f"mteb_{t}_ndcg_at_10" for t in TASKS} | {"mteb_mean_ndcg_at_10"} <= set(run.data.metrics)
        assert not [name for name in run.data.metrics if name.startswith(("nanobeir", "baseline_nanobeir"))]
        inputs = {(d.dataset.name, t.value) for d in run.inputs.dataset_inputs for t in d.tags}
        assert {(task, "evaluation") for task in TASKS} <= inputs
    report = compare(f"sqlite:///{tmp_path}/mlflow.db", parent.data.tags["sweep_id"], out_dir=tmp_path / "report")
    assert report["benchmark"] == "MTEB (SciFact, MSMARCO)" and report["datasets"] == sorted(TASKS)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "**General** (MTEB (SciFact, MSMARCO))" in text and "reported on MTEB (SciFact, MSMARCO)" in text
    assert "NanoBEIR" not in text.replace("nanobeir", "")
