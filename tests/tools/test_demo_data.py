"""The offline demo data (pipeline/tools/demo_data.py): layouts the pipeline loads, sizes, train/eval disjointness,
determinism across processes and hash seeds, and that an existing output is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset

from pipeline.config import EvalConfig
from pipeline.fingerprint import datasets_cache
from pipeline.stages.prepare_data import prepare_data
from pipeline.tools import demo_data

ROOT = Path(__file__).resolve().parents[2]
SPLIT = demo_data.SPLIT


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """Both datasets where `experiment=demo` looks for them: <paths.outputs>/demo_data/."""
    return demo_data.generate(tmp_path_factory.mktemp("outputs") / "demo_data")


def _load(path: Path, config: str | None, split: str, cache: Path):
    return load_dataset(str(path), config, split=split, cache_dir=str(cache)).to_pandas()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_qa_loads_like_gooaq(demo, tmp_path):
    qa = _load(demo["pydocs-qa"], None, "train", tmp_path)
    assert list(qa.columns) == ["question", "answer"]
    assert 800 <= len(qa) <= 3000
    assert qa.question.is_unique and qa.answer.is_unique
    assert qa.answer.str.len().between(demo_data.MIN_BODY, demo_data.MAX_ANSWER).all()
    assert qa.question.str.len().between(12, 200).all()
    # The question is the summary sentence: it is not repeated verbatim in its answer
    assert not any(q in a for q, a in zip(qa.question, qa.answer, strict=True))


def test_nanobeir_layout_and_qrels(demo, tmp_path):
    path = demo["nanobeir-pydocs"]
    corpus, queries, qrels = (_load(path, c, SPLIT, tmp_path) for c in ("corpus", "queries", "qrels"))
    assert list(corpus.columns) == ["_id", "text"] and list(queries.columns) == ["_id", "text"]
    assert list(qrels.columns) == ["query-id", "corpus-id"]
    assert (len(queries), len(corpus), len(qrels)) == (demo_data.EVAL_QUERIES, demo_data.EVAL_CORPUS, 50)
    assert corpus._id.is_unique and queries._id.is_unique and corpus.text.is_unique
    assert qrels["query-id"].is_unique  # exactly one relevant document per query
    assert set(qrels["query-id"]) == set(queries._id)
    assert set(qrels["corpus-id"]) <= set(corpus._id)


def test_train_and_eval_are_disjoint(demo, tmp_path):
    assert not set(demo_data.TRAIN_MODULES) & set(demo_data.EVAL_MODULES)
    qa = _load(demo["pydocs-qa"], None, "train", tmp_path)
    corpus = _load(demo["nanobeir-pydocs"], "corpus", SPLIT, tmp_path)
    queries = _load(demo["nanobeir-pydocs"], "queries", SPLIT, tmp_path)
    train_text = "\n".join(qa.answer)
    # A document's text without its first line (the qualified name and signature): the docstring itself
    assert not [d for d in corpus.text if d.partition("\n\n")[2][:200] in train_text]
    assert not set(queries.text) & set(qa.question)
    held_out = tuple(f"{m}." for m in demo_data.EVAL_MODULES)
    assert not [a for a in qa.answer if a.startswith(held_out)]
    assert all(doc_id.startswith(held_out) or doc_id in demo_data.EVAL_MODULES for doc_id in corpus._id)


@pytest.mark.integration
def test_same_files_in_another_process_and_hash_seed(demo, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "1", "PIPELINE_OUTPUTS": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.demo_data"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"pydocs-qa: {len(_load(demo['pydocs-qa'], None, 'train', tmp_path))} pairs" in done.stdout
    for name, path in demo.items():
        assert _files(tmp_path / "demo_data" / name) == _files(path), name


def test_existing_output_is_kept_unless_forced(tmp_path, capsys):
    paths = demo_data.generate(tmp_path)
    capsys.readouterr()
    files = [p for path in paths.values() for p in sorted(path.rglob("*"))]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    demo_data.generate(tmp_path)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == before
    assert capsys.readouterr().out.count("(existing, kept;") == 2

    parquet = paths["pydocs-qa"] / "data" / "train.parquet"
    content = parquet.read_bytes()
    demo_data.generate(tmp_path, force=True)
    assert parquet.stat().st_ino != before[parquet][0] and parquet.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nanobeir-pydocs", "pydocs-qa"]  # no temp dirs left

    (paths["nanobeir-pydocs"] / "README.md").unlink()  # an incomplete output is rebuilt
    capsys.readouterr()
    demo_data.generate(tmp_path)
    assert (paths["nanobeir-pydocs"] / "README.md").is_file()
    assert capsys.readouterr().out.count("(existing, kept;") == 1


def test_build_evaluator_loads_it(demo, tmp_path):
    from pipeline.evaluation.st_backend import build_evaluator

    with datasets_cache(tmp_path):
        evaluator = build_evaluator(EvalConfig(dataset_id=str(demo["nanobeir-pydocs"]), datasets=["pydocs"]))
    [ir] = evaluator.evaluators
    assert ir.name == SPLIT
    assert (len(ir.queries), len(ir.corpus)) == (demo_data.EVAL_QUERIES, demo_data.EVAL_CORPUS)
    assert all(len(docs) == 1 for docs in ir.relevant_docs.values())


def test_demo_experiment_config_reads_it(demo, tmp_path):
    from conftest import compose_config

    cfg = compose_config(["experiment=demo", f"paths.outputs={demo['pydocs-qa'].parents[1]}"])
    assert Path(cfg.data.path) == demo["pydocs-qa"] and Path(cfg.eval.dataset_id) == demo["nanobeir-pydocs"]
    assert cfg.eval.datasets == ["pydocs"]
    summary = prepare_data(cfg.data, tmp_path / "prepared", cache_dir=tmp_path / "cache")
    assert (summary["train_rows"], summary["eval_rows"]) == (cfg.data.train_size, cfg.data.eval_size)
