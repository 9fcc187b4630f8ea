"""eval.backend=mteb: the same NanoBEIR NDCG@10 as sentence-transformers on the same data, with no stale mteb cache.

Every systematic difference listed in `pipeline.evaluation.mteb_backend`'s docstring is exercised here on the tiny BERT.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

from pipeline.config import EvalBackend, EvalConfig
from pipeline.dag import StageOutput
from pipeline.evaluation import crosscheck
from pipeline.evaluation.benchmark import evaluate
from pipeline.evaluation.mteb_backend import HUB_NANOBEIR, MTEB_TASKS, build_tasks, load_layout_split, mteb_version
from pipeline.evaluation.nanobeir import NANOBEIR
from pipeline.tracking.stage_logs import PipelineRun
from tests.conftest import ROOT, SHARED_DATA, requires_shared_data, write_nanobeir_dir

TOL = crosscheck.TOLERANCE
SUMMARY_KEYS = {
    "ndcg_at_10",
    "per_dataset_ndcg_at_10",
    "score_function",
    "dataset_id",
    "benchmark",  # its label: pipeline.evaluation.benchmark
    "queries",
    "backend",
    "backend_version",
}


def _cfg(dataset_id: Path, backend: EvalBackend, datasets=("scifact", "msmarco")) -> EvalConfig:
    return EvalConfig(dataset_id=str(dataset_id), datasets=list(datasets), batch_size=16, backend=backend)


def _both(model, dataset_id: Path, out: Path, datasets=("scifact", "msmarco")) -> tuple[dict, dict]:
    cfg = _cfg(dataset_id, EvalBackend.sentence_transformers, datasets)
    st = evaluate(model, cfg, out / "st", out / "cache")
    mt = evaluate(model, replace(cfg, backend=EvalBackend.mteb), out / "mteb", out / "cache")
    return st, mt


def _per_query(out: Path) -> dict:
    return json.loads((out / "per_query.json").read_text())


def _assert_agree(st: dict, mt: dict, st_dir: Path, mt_dir: Path) -> None:
    assert set(st) == set(mt) == SUMMARY_KEYS
    assert st["per_dataset_ndcg_at_10"].keys() == mt["per_dataset_ndcg_at_10"].keys()
    for name, score in st["per_dataset_ndcg_at_10"].items():
        assert abs(mt["per_dataset_ndcg_at_10"][name] - score) <= TOL, name
    assert abs(mt["ndcg_at_10"] - st["ndcg_at_10"]) <= TOL
    assert mt["queries"] == st["queries"]
    assert mt["score_function"] == st["score_function"]
    st_pq, mt_pq = _per_query(st_dir), _per_query(mt_dir)
    assert st_pq.keys() == mt_pq.keys()
    for name in st_pq:
        assert st_pq[name].keys() == mt_pq[name].keys(), name
        for q, score in st_pq[name].items():
            assert mt_pq[name][q] == pytest.approx(score, abs=1e-12), (name, q)


@pytest.fixture(scope="module")
def tiny_both(tiny_model, tiny_nanobeir, tmp_path_factory):
    out = tmp_path_factory.mktemp("both")
    st, mt = _both(SentenceTransformer(str(tiny_model)), tiny_nanobeir, out)
    return st, mt, out


def test_backends_agree_per_dataset_and_per_query(tiny_both):
    st, mt, out = tiny_both
    _assert_agree(st, mt, out / "st", out / "mteb")
    # the same files in the same shapes, whatever the backend
    for backend in ("st", "mteb"):
        assert (out / backend / "metrics.json").is_file()
        per_query = _per_query(out / backend)
        assert set(per_query) == {"scifact", "msmarco"}
        assert all(isinstance(v, float) for scores in per_query.values() for v in scores.values())


def test_summary_carries_backend_and_version(tiny_both):
    import mteb

    st, mt, _ = tiny_both
    assert (st["backend"], st["backend_version"]) == ("sentence_transformers", sentence_transformers.__version__)
    assert (mt["backend"], mt["backend_version"]) == ("mteb", mteb.__version__) == ("mteb", mteb_version())


def test_mteb_rounds_its_reported_scores_and_the_backend_does_not(tiny_both):
    """mteb's own ndcg_at_10 (metrics.json) is round(mean, 5); the summary keeps the unrounded mean."""
    _, mt, out = tiny_both
    metrics = json.loads((out / "mteb" / "metrics.json").read_text())
    for short, score in mt["per_dataset_ndcg_at_10"].items():
        reported = metrics[f"{MTEB_TASKS[short]}_ndcg_at_10"]
        assert reported == round(score, 5)
        assert abs(reported - score) <= 5e-6
    assert not any(k.startswith(("NanoSciFactRetrieval_nauc", "NanoBEIR_mean_nauc")) for k in metrics)


class _Client:
    """Just enough of MlflowClient for PipelineRun._log_evaluation."""

    def __init__(self):
        self.tags, self.metrics = {}, {}

    def set_tag(self, run_id, key, value):
        self.tags[key] = value

    def log_batch(self, run_id, metrics=(), params=()):
        self.metrics.update({m.key: m.value for m in metrics})

    def log_artifact(self, *args, **kwargs):
        pass

    def log_inputs(self, run_id, datasets=()):
        self.inputs = list(datasets)


def test_tracking_tags_backend_and_version(tiny_both):
    from omegaconf import OmegaConf

    st, mt, out = tiny_both
    client = _Client()
    cfg = OmegaConf.create({"eval": {"dataset_id": "sentence-transformers/NanoBEIR-en", "tasks": None}})
    run = PipelineRun(client, "run", cfg=cfg, found_sources={"eval": "hub:sentence-transformers/NanoBEIR-en@main"})
    run._log_evaluation(StageOutput("baseline", "k", out / "st", st, "ran", 0.0), "baseline_", "evaluation/baseline")
    run._log_evaluation(StageOutput("evaluate", "k", out / "mteb", mt, "ran", 0.0), "", "evaluation")
    assert client.tags["baseline_eval.backend"] == "sentence_transformers"
    assert client.tags["baseline_eval.backend_version"] == sentence_transformers.__version__
    assert client.tags["eval.backend"] == "mteb"
    assert client.tags["eval.backend_version"] == mt["backend_version"]
    assert client.metrics["nanobeir_mean_ndcg_at_10"] == mt["ndcg_at_10"]


def test_pipeline_baseline_through_mteb_is_tagged_in_mlflow(tiny_cfg):
    """`eval.backend=mteb` from the command line: the DAG's baseline stage runs mteb and the run is tagged so."""
    from mlflow.tracking import MlflowClient

    from pipeline.app import run
    from pipeline.tracking.uri import tracking_uri
    from tests.conftest import compose_config

    runs = {}
    for backend in ("sentence_transformers", "mteb"):
        cfg = tiny_cfg([f"eval.backend={backend}", "run.until=baseline", f"tracking.run_name={backend}"])
        assert cfg.eval.backend == EvalBackend(backend)
        run(cfg)
        client = MlflowClient(tracking_uri(cfg))
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        found = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{backend}'")
        runs[backend] = found[0].data
    st, mt = runs["sentence_transformers"], runs["mteb"]
    assert st.tags["baseline_eval.backend"] == "sentence_transformers"
    assert (mt.tags["baseline_eval.backend"], mt.tags["baseline_eval.backend_version"]) == ("mteb", mteb_version())
    for key in ("baseline_nanobeir_mean_ndcg_at_10", "baseline_nanobeir_scifact_ndcg_at_10"):
        assert abs(mt.metrics[key] - st.metrics[key]) <= TOL
    with pytest.raises(Exception, match="backend"):
        compose_config(["eval.backend=bm25"])


def test_no_stale_mteb_results_for_a_changed_model_of_the_same_name(tmp_path, tiny_model, tiny_nanobeir):
    """Model A, then a different model B saved in the same dir: B gets its own scores, not A's.

    The control shows the hazard is real: with mteb's result cache, B is served A's scores (the cache keys on the
    model's name and revision, which are the same for both).
    """
    import mteb

    path = tmp_path / "model"
    shutil.copytree(tiny_model, path)
    cfg = _cfg(tiny_nanobeir, EvalBackend.mteb)
    model_a = SentenceTransformer(str(path))
    a = evaluate(model_a, cfg, tmp_path / "a")

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model_a.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    shutil.rmtree(path)
    model_a.save(str(path))
    model_b = SentenceTransformer(str(path))
    b = evaluate(model_b, cfg, tmp_path / "b")
    b_st = evaluate(model_b, replace(cfg, backend=EvalBackend.sentence_transformers), tmp_path / "b_st")

    assert b["per_dataset_ndcg_at_10"] != a["per_dataset_ndcg_at_10"]
    for name, score in b_st["per_dataset_ndcg_at_10"].items():
        assert abs(b["per_dataset_ndcg_at_10"][name] - score) <= TOL

    cache = mteb.ResultCache(tmp_path / "mteb_cache")
    tasks = {s: MTEB_TASKS[s] for s in ("scifact", "msmarco")}

    def cached_scores(model):
        built = build_tasks(str(tiny_nanobeir), list(tasks), NANOBEIR)
        result = mteb.evaluate(model, list(built.values()), cache=cache, encode_kwargs={"batch_size": 16})
        return {r.task_name: r.scores["train"][0]["ndcg_at_10"] for r in result.task_results}

    served_a = cached_scores(SentenceTransformer(str(tiny_model)))
    served_b = cached_scores(model_b)
    assert served_b == served_a  # mteb's cache: B is served A's numbers
    assert served_b != {MTEB_TASKS[s]: round(v, 5) for s, v in b["per_dataset_ndcg_at_10"].items()}


def _rewrite(path: Path, split: str, corpus: pd.DataFrame, queries: pd.DataFrame, qrels: pd.DataFrame) -> None:
    corpus.to_parquet(path / "corpus" / f"{split}.parquet")
    queries.to_parquet(path / "queries" / f"{split}.parquet")
    qrels.to_parquet(path / "qrels" / f"{split}.parquet")


def _quirky_dir(path: Path) -> Path:
    """NanoBEIR data with what the backends could treat differently, but no two identical documents.

    empty document (relevant to q5) and empty query, a whitespace-only and a whitespace-padded document, a repeated
    document id, a document whose id is a query's id (and whose text is that query's), graded qrels, a query without
    qrels and a qrels row for a query that does not exist.
    """
    write_nanobeir_dir(path, splits=("NanoSciFact",), queries=6, docs=20, seed=3)
    split = "NanoSciFact"
    corpus = pd.read_parquet(path / "corpus" / f"{split}.parquet")
    queries = pd.read_parquet(path / "queries" / f"{split}.parquet")
    qrels = pd.read_parquet(path / "qrels" / f"{split}.parquet")
    corpus.loc[5, "text"] = ""
    corpus.loc[7, "text"] = "   "
    corpus.loc[8, "text"] = "  " + corpus.loc[8, "text"] + "  \n"
    extra_docs = pd.DataFrame({"_id": ["d9", "q1"], "text": ["heart lung kidney liver", queries.loc[1, "text"]]})
    corpus = pd.concat([corpus, extra_docs], ignore_index=True)
    extra_queries = pd.DataFrame({"_id": ["q6", "q7"], "text": ["", "blood bone skin"]})
    queries = pd.concat([queries, extra_queries], ignore_index=True)
    extra_qrels = pd.DataFrame({"query-id": ["q6", "q0", "q99"], "corpus-id": ["d6", "d10", "d11"]})
    qrels = pd.concat([qrels, extra_qrels], ignore_index=True)
    qrels["score"] = [2 if i % 2 else 1 for i in range(len(qrels))]
    _rewrite(path, split, corpus, queries, qrels)
    return path


def test_backends_agree_on_empty_texts_whitespace_grades_and_overlapping_ids(tmp_path, tiny_model):
    data = _quirky_dir(tmp_path / "quirky")
    split = load_layout_split(str(data), "SciFact")
    assert "d5" not in split.corpus and "q6" not in split.queries  # empty texts dropped, as sentence-transformers
    assert split.corpus["d9"] == "heart lung kidney liver"  # a repeated id keeps its last text
    assert split.qrels["q0"] == {"d0", "d10"}  # binary: grades ignored
    st, mt = _both(SentenceTransformer(str(tiny_model)), data, tmp_path, datasets=("scifact",))
    _assert_agree(st, mt, tmp_path / "st", tmp_path / "mteb")
    assert mt["queries"] == {"scifact": 6}  # q0..q5: q6 is empty, q7 has no qrels, q99 no text


def test_backends_agree_with_dot_product_and_a_short_max_seq_length(tmp_path, tiny_model, tiny_nanobeir):
    model = SentenceTransformer(str(tiny_model))
    model.similarity_fn_name = "dot"
    model.max_seq_length = 6
    st, mt = _both(model, tiny_nanobeir, tmp_path)
    _assert_agree(st, mt, tmp_path / "st", tmp_path / "mteb")
    assert mt["score_function"] == "dot"
    default, _ = _both(SentenceTransformer(str(tiny_model)), tiny_nanobeir, tmp_path / "default")
    assert st["per_dataset_ndcg_at_10"] != default["per_dataset_ndcg_at_10"]  # both settings took effect


def _tied_dir(path: Path) -> Path:
    """8 documents (all in every top 10) plus exact duplicates of d0 and d1 under ids sorting after / before them."""
    write_nanobeir_dir(path, splits=("NanoSciFact",), queries=4, docs=8, seed=5)
    split = "NanoSciFact"
    corpus = pd.read_parquet(path / "corpus" / f"{split}.parquet")
    dups = pd.DataFrame({"_id": ["e0", "c1"], "text": [corpus.loc[0, "text"], corpus.loc[1, "text"]]})
    corpus = pd.concat([corpus, dups], ignore_index=True)
    queries = pd.read_parquet(path / "queries" / f"{split}.parquet")
    qrels = pd.read_parquet(path / "qrels" / f"{split}.parquet")
    _rewrite(path, split, corpus, queries, qrels)
    return path


class _Quantize(torch.nn.Module):
    """Embeddings on a 1/128 grid: dot products are then exact in float32, whatever the kernel's summation order.

    Needed to make a tie certain: two copies of one text embedded in one batch can differ in the last bit of their
    similarity (e.g. 0.95861053 vs 0.95861048 here), as the matrix kernels treat rows and columns at different
    positions differently; such near-ties are ranked alike by both backends, as they see the same scores.
    """

    def forward(self, features):
        features["sentence_embedding"] = torch.round(features["sentence_embedding"].clamp(-4, 4) * 128) / 128
        return features


def test_tied_documents_are_the_one_systematic_difference(tmp_path, tiny_model):
    """Exactly tied documents: sentence-transformers puts the lower id first, mteb (pytrec_eval) the higher.

    The backend keeps mteb's order, so q0 (relevant d0 tied with e0) and q1 (relevant d1 tied with c1) score
    differently; the cross-check explains both as tie order, and passes.
    """
    data = _tied_dir(tmp_path / "tied")
    model = SentenceTransformer(str(tiny_model))
    model.append(_Quantize())
    model.similarity_fn_name = "dot"
    rows, report = crosscheck.crosscheck(model, str(data), ["scifact"], batch_size=16, out=tmp_path / "x")
    st_pq = _per_query(tmp_path / "x" / "sentence_transformers")["scifact"]
    mt_pq = _per_query(tmp_path / "x" / "mteb")["scifact"]
    differing = {q for q in st_pq if abs(st_pq[q] - mt_pq[q]) > 1e-9}
    assert differing == {"q0", "q1"}, report
    # d0 < e0 and c1 < d1: sentence-transformers ranks d0 and c1 first, mteb e0 and d1
    assert mt_pq["q0"] < st_pq["q0"] and mt_pq["q1"] > st_pq["q1"]
    (c,) = rows
    assert (sorted(c.tie_order), c.unexplained, c.ok(TOL)) == (["q0", "q1"], [], True), report
    assert abs(c.diff) > 1e-3 and abs(c.residual) <= TOL
    assert "tie-order q: queries whose NDCG@10 differs only because tied documents" in report
    assert not c.ok(TOL, strict=True)  # --strict: tie order counts as a difference


def test_compare_dataset_classifies_differences():
    qrels = {"q0": {"a"}, "q1": {"b"}}
    st_rank = {"q0": [("a", 0.9), ("b", 0.9), ("c", 0.1)], "q1": [("b", 0.8), ("a", 0.7), ("c", 0.1)]}
    tie_swapped = {"q0": [("b", 0.9), ("a", 0.9), ("c", 0.1)], "q1": st_rank["q1"]}
    st = {"q0": 1.0, "q1": 1.0}
    # q0's relevant doc lost a tie in mteb's order: explained
    c = crosscheck.compare_dataset("x", st, {"q0": 0.6309297535714575, "q1": 1.0}, st_rank, tie_swapped, qrels)
    assert (c.tie_order, c.unexplained, c.ok(TOL)) == (["q0"], [], True)
    assert c.diff < -0.1 and c.residual == 0.0
    # a genuinely different ranking (no tie): unexplained, fails
    other = {"q0": st_rank["q0"], "q1": [("a", 0.9), ("b", 0.8), ("c", 0.1)]}
    c = crosscheck.compare_dataset("x", st, {"q0": 1.0, "q1": 0.6309297535714575}, st_rank, other, qrels)
    assert (c.tie_order, c.unexplained, c.ok(TOL)) == ([], ["q1"], False)
    # unexplained differences that cancel in the mean still fail
    swapped = {"q0": [("b", 0.9), ("a", 0.8), ("c", 0.1)], "q1": [("b", 0.8), ("a", 0.7), ("c", 0.1)]}
    st_swapped = {"q0": 0.6309297535714575, "q1": 1.0}
    c = crosscheck.compare_dataset("x", st_swapped, {"q0": 1.0, "q1": 0.6309297535714575}, swapped, other, qrels)
    assert c.unexplained == ["q0", "q1"] and abs(c.residual) <= TOL and not c.ok(TOL)
    # different query sets: not the same data
    c = crosscheck.compare_dataset("x", st, {"q0": 1.0}, st_rank, st_rank, qrels)
    assert c.problems and not c.ok(TOL)


def test_canonical_groups_near_ties_only_within_eps():
    ranking = [("b", 0.5), ("a", 0.5 - 1e-8), ("d", 0.4), ("c", 0.4)]
    assert crosscheck.canonical(ranking, 1e-6) == ["a", "b", "c", "d"]
    assert crosscheck.canonical(ranking, 0.0) == ["b", "a", "c", "d"]


def test_hub_default_uses_mteb_registered_nanobeir_tasks():
    """No download: get_task only builds the task objects."""
    tasks = build_tasks(HUB_NANOBEIR, list(NANOBEIR), NANOBEIR)
    assert set(tasks) == set(NANOBEIR) == set(MTEB_TASKS)
    for short, task in tasks.items():
        assert task.metadata.name == MTEB_TASKS[short]
        assert task.metadata.dataset["path"] == f"mteb/{MTEB_TASKS[short]}"
        assert list(task.metadata.eval_splits) == ["train"]
        assert not task.ignore_identical_ids and not task.skip_first_result  # the same protocol as the local tasks
    with pytest.raises(ValueError, match="no NanoBEIR task"):
        build_tasks(HUB_NANOBEIR, ["pydocs"], {"pydocs": "PyDocs"})


def test_local_set_unknown_to_mteb_gets_its_own_task(tmp_path, tiny_model):
    """The demo's `pydocs`: a NanoBEIR-layout set mteb has no task for still runs, as NanoPyDocsRetrieval."""
    data = write_nanobeir_dir(tmp_path / "pydocs", splits=("NanoPyDocs",), queries=4, docs=12)
    st, mt = _both(SentenceTransformer(str(tiny_model)), data, tmp_path, datasets=("pydocs",))
    _assert_agree(st, mt, tmp_path / "st", tmp_path / "mteb")
    assert "NanoPyDocsRetrieval_ndcg_at_10" in json.loads((tmp_path / "mteb" / "metrics.json").read_text())


@pytest.mark.integration
def test_crosscheck_cli(tmp_path, tiny_model, tiny_nanobeir):
    cmd = [
        sys.executable, "-m", "pipeline.evaluation.crosscheck", "--model", str(tiny_model), "--dataset-id", str(tiny_nanobeir),
        "--datasets", "scifact,msmarco", "--max-seq-length", "32", "--batch-size", "16",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = {
        line.split()[0]: line.split()
        for line in proc.stdout.splitlines()
        if line.split()[:1] in (["scifact"], ["msmarco"])
    }
    assert set(rows) == {"scifact", "msmarco"}
    for name, row in rows.items():
        st_score, mteb_score = float(row[2]), float(row[3])
        assert abs(st_score - mteb_score) <= TOL and row[-1] == "ok", name
    assert "max_seq_length 32" in proc.stdout and "OK: both backends agree" in proc.stdout


@pytest.mark.slow
@pytest.mark.integration
@requires_shared_data("nanobeir-mini")
def test_crosscheck_minilm_on_real_msmarco(tmp_path):
    """The packaged all-MiniLM-L6-v2 (max_seq_length 128) on real NanoMSMARCO: both backends agree (minutes)."""
    rows, report = crosscheck.crosscheck(
        "sentence-transformers/all-MiniLM-L6-v2",
        str(SHARED_DATA / "nanobeir-mini"),
        ["msmarco"],
        max_seq_length=128,
        out=tmp_path,
    )
    assert all(c.ok(TOL) for c in rows), report
    assert 0.4 < rows[0].st < 0.8, report  # the data README's 0.571 (at the model's own 256 tokens)
