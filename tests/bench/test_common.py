"""The benchmarks' measuring helpers on the tiny BERT (seconds, nothing slow): sane numbers (ratios > 0, RSS > 0),
FLOP counts against the analytic formula, the merged model's embeddings against the adapter model's, and the
columns of the results table that `make bench` writes to docs/benchmarks.md.
"""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from bench import evaluation, sweep_reuse, training
from bench.__main__ import size
from bench.common import (
    COLUMNS,
    MISS,
    PASS,
    BenchResult,
    Row,
    alternate,
    gemm_peak,
    how,
    machine_info,
    markdown_table,
    msmarco_subset,
    pipeline_overrides,
    run_measured,
    stage_statuses,
    verdict,
    write_doc,
)
from bench.overhead import pipeline_ndcg, resolved_config
from pipeline.config import ModelConfig
from pipeline.models import load_model
from pipeline.tools.export import SENTENCES
from tests.conftest import SHARED_DATA, requires_shared_data

STDERR = """[pipeline] device cpu, precision fp32; MLflow sqlite:///x.db (make ui)
[pipeline] prepare_data  running  key abc
[pipeline] prepare_data  ran      1.5s
[pipeline] baseline      cached   0.0s
[pipeline] finetune      ran      12.25s
"""


def tiny_cfg(tiny_model):
    return OmegaConf.structured(ModelConfig(name=str(tiny_model), max_seq_length=32))


def test_alternate_reverses_every_other_round_and_drops_warmups():
    calls = []
    arms = {"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}
    samples = alternate(arms, reps=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [1.0, 1.0], "b": [2.0, 2.0]}


@pytest.mark.integration
def test_run_measured_gives_each_child_its_own_peak_rss():
    big = run_measured(
        [sys.executable, "-c", "x = bytearray(80 * 2**20); x[::4096] = b'1' * len(x[::4096]); print('{\"ok\": 1}')"]
    ).check()
    small = run_measured([sys.executable, "-c", "pass"]).check()
    assert big.wall_s > 0 and small.wall_s > 0
    assert big.max_rss_mb > 80 > small.max_rss_mb > 0
    assert big.last_json() == {"ok": 1}
    with pytest.raises(RuntimeError, match="exited 3"):
        run_measured([sys.executable, "-c", "raise SystemExit(3)"]).check()


def test_gemm_peak_and_machine_info():
    peak = gemm_peak(n=128, reps=2)
    assert peak["flops_per_s"] >= peak["median_flops_per_s"] > 1e6
    info = machine_info()
    assert info["cores"] >= 1 and info["torch_threads"] >= 1 and info["cpu"] and info["date_utc"]


def test_verdict_and_status_lines():
    assert verdict(1.02, at_most=1.03) == PASS and verdict(1.04, at_most=1.03) == MISS
    assert verdict(0.98, at_least=0.97) == PASS and verdict(0.5, at_least=0.6) == MISS
    assert stage_statuses(STDERR) == [
        ("prepare_data", "ran", 1.5),
        ("baseline", "cached", 0.0),
        ("finetune", "ran", 12.25),
    ]
    assert sweep_reuse.ran_counts(STDERR) == {"prepare_data": 1, "baseline": 0, "finetune": 1}
    assert pipeline_ndcg("nanobeir_mean_ndcg_at_10 = 0.5712 (run abc)") == pytest.approx(0.5712)


def test_doc_writer_columns(tmp_path):
    rows = [
        Row("overhead", "pipeline vs bare", "10s vs 9.9s", 1.01, "≤ 1.03×", PASS, "merged adapters | noted"),
        Row("training", "FLOP/s vs peak", "x", 0.4, "≥ 0.6", MISS, "small matmuls"),
        Row("evaluation", "merge diff", "1e-7", None, "≤ 1e-05", PASS, ""),
    ]
    machine = {
        "cpu": "Test CPU",
        "cores": 2,
        "usable_cores": 2,
        "torch_threads": 2,
        "torch": "2.x",
        "memory_gb": 8.0,
        "python": "3.11",
        "date_utc": "2026-01-01 00:00 UTC",
    }
    result = BenchResult("overhead", rows, {"how": "two subprocesses"}, 12.0, date_utc="2026-01-01 00:00 UTC")
    text = write_doc([result], machine, tmp_path / "benchmarks.md")
    assert (tmp_path / "benchmarks.md").read_text() == text
    header = next(line for line in text.splitlines() if line.startswith("| benchmark"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    assert len(table) == 3 and all(line.count(" | ") == len(COLUMNS) - 1 for line in table)  # the | was escaped
    assert "1.010×" in text and "**MISS**" in text and "Test CPU" in text and "2 threads" in text
    assert "2026-01-01" in text and "two subprocesses" in text
    assert markdown_table(rows).splitlines()[0] == header


def test_set_sizes_and_how():
    assert size("batch=64") == ("batch", 64) and size("max-seq-length=1.5") == ("max_seq_length", 1.5)
    assert size("arms=auto,reference") == ("arms", "auto,reference")
    with pytest.raises(Exception, match="KEY=VALUE"):
        size("batch")
    assert how("Title.\n\nHow it\n  measures.\n\nMore.") == "How it measures."


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.integration
def test_measure_training_on_tiny_bert(method, tiny_model, tiny_qa, tmp_path):
    report = training.measure_training(
        method,
        tmp_path,
        model=str(tiny_model),
        data_path=tiny_qa,
        steps=3,
        batch=8,
        mini_batch=4,
        max_seq_length=32,
        gemm_n=128,
        r=4,
        alpha=8,
    )
    assert len(report["step_times_s"]) == 2 and report["step_s"] > 0
    assert report["rss_mb"]["train_peak"] >= report["rss_mb"]["train_begin"] > 0
    assert report["achieved_flops_per_s"] > 0 and report["fraction_of_peak"] > 0
    assert report["calls"] and any(grad for _, _, grad in report["calls"])
    assert any(not grad for _, _, grad in report["calls"])  # CachedMNRL's no-grad pass
    assert report["flops_executed"] >= report["flops_counted"] > 0
    assert report["achieved_flops_per_s"] == pytest.approx(report["flops_executed"] / report["step_s"])
    assert (report["trainable_params"] < 100_000) == (method == "lora")


def test_merged_load_matches_adapter(tiny_model, tmp_path):
    """load_model(merge=True), what the evaluate stage uses, embeds as the unmerged adapter model within 1e-5."""
    adapter = evaluation.make_adapter(str(tiny_model), tmp_path / "adapter", seed=0, r=4, alpha=8)
    cfg = tiny_cfg(tiny_model)
    attached = load_model(cfg, str(adapter))
    merged = load_model(cfg, str(adapter), merge=True)
    base = load_model(cfg)
    assert any("lora_" in name for name, _ in attached.named_parameters())
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert merged.max_seq_length == attached.max_seq_length == 32
    assert evaluation.max_abs_diff(merged, attached, SENTENCES) <= 1e-5
    assert evaluation.max_abs_diff(attached, base, SENTENCES) > 1e-4  # the adapter does change the embeddings
    assert evaluation.max_abs_diff(load_model(cfg), base, SENTENCES) == 0  # merging left the base's copy alone


def test_evaluation_bench_on_tiny_bert(tiny_model):
    texts = [f"{s} {i}" for i in range(4) for s in SENTENCES]
    result = evaluation.run(
        docs=16,
        reps=1,
        adapters=2,
        docs_per_adapter=8,
        batch_size=8,
        model=str(tiny_model),
        max_seq_length=32,
        texts=texts,
    )
    assert [row.bench for row in result.rows] == ["evaluation"] * 4
    assert all(row.ratio is None or row.ratio > 0 for row in result.rows)
    tp = result.details["throughput"]
    assert all(rate > 0 for rate in tp["texts_per_s"].values())
    assert tp["merge_max_abs_diff"] <= 1e-5 and result.rows[2].result == PASS
    memory = result.details["many_adapters"]["param_mb_if_all_held"]
    assert 0 < memory["one_base"] < memory["separate"]


@requires_shared_data("nanobeir-mini")
def test_msmarco_subset_keeps_every_judged_passage(tmp_path):
    out = msmarco_subset(tmp_path / "msmarco", docs=300, queries=12)
    corpus = pd.read_parquet(out / "corpus" / "NanoMSMARCO.parquet")
    qrels = pd.read_parquet(out / "qrels" / "NanoMSMARCO.parquet")
    queries = pd.read_parquet(out / "queries" / "NanoMSMARCO.parquet")
    source = pd.read_parquet(SHARED_DATA / "nanobeir-mini" / "queries" / "NanoMSMARCO.parquet")
    assert len(corpus) == 300 and list(queries["_id"]) == list(source["_id"][:12])
    assert set(qrels["query-id"].astype(str)) == set(queries["_id"].astype(str))
    assert set(qrels["corpus-id"].astype(str)) <= set(corpus["_id"].astype(str))  # every judged passage kept
    assert "config_name: corpus" in (out / "README.md").read_text()
    everything = msmarco_subset(tmp_path / "all", docs=None, queries=None)
    assert len(pd.read_parquet(everything / "corpus" / "NanoMSMARCO.parquet")) == 2000


def test_overhead_arms_share_one_config(tiny_model, tiny_qa, tiny_nanobeir, tmp_path):
    overrides = pipeline_overrides(tiny_nanobeir, tmp_path, f"sqlite:///{tmp_path}/m.db", 2, 8, str(tiny_model))
    cfg = resolved_config(overrides)
    assert cfg["model_path"] == str(tiny_model)
    assert cfg["finetune"]["method"] == "lora" and cfg["train"]["max_steps"] == 2
    assert cfg["data"]["train_size"] == 16 and cfg["eval"]["datasets"] == ["msmarco"]
    # every key bench/bare_lora.py reads
    for group, keys in {
        "data": ("path", "name", "split", "question_column", "answer_column", "eval_size", "seed"),
        "train": (
            "seed",
            "loss",
            "mini_batch_size",
            "epochs",
            "batch_size",
            "eval_batch_size",
            "lr",
            "warmup_ratio",
            "logging_steps",
        ),
        "finetune": ("r", "alpha", "dropout", "target_modules"),
        "eval": ("dataset_id", "batch_size"),
        "model": ("max_seq_length",),
    }.items():
        assert all(key in cfg[group] for key in keys), group


def test_model_flops_match_counted_flops_of_a_training_step(tiny_model):
    """bench/speed.py's MFU numerator: 6 × linear weights per token + attention, what FlopCounterMode counts for a
    forward and backward of unpadded rows (the embedding tables, which do no matmul, excluded)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from torch.utils.flop_counter import FlopCounterMode

    from bench.speed import model_flops, model_shape

    model = SentenceTransformer(str(tiny_model), device="cpu")
    model.train()
    feature = {k: v for k, v in model.tokenize(["heart lung kidney liver brain"] * 4).items() if torch.is_tensor(v)}
    lengths = feature["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) == 1  # no padding: every counted FLOP is useful
    with FlopCounterMode(display=False) as counter:
        model(feature)["sentence_embedding"].sum().backward()
    shape = model_shape(model)
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    assert shape["linear_params"] < sum(p.numel() for p in model.parameters()) - embeddings + 1
    assert model_flops(shape, lengths) == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_profile_bench_on_tiny_bert(tiny_no_dropout_model, tiny_qa, tmp_path):
    """bench/profiling.py: the reference embeds every token twice (without, then with gradients), auto once where the
    batch fits; the summary holds each arm's operator table."""
    from bench import profiling as profile

    doc = tmp_path / "profile.md"
    result = profile.run(str(tiny_no_dropout_model), 16, 4, 32, doc=doc, data=tiny_qa, work=tmp_path / "work")
    ref, ours = result.details["arms"]["reference"], result.details["arms"]["auto"]
    assert ref["tokens"]["padded_no_grad"] == ref["tokens"]["padded_with_grad"] > 0
    assert ref["tokens"]["real_no_grad"] == ref["tokens"]["real_with_grad"] == ours["tokens"]["real_with_grad"]
    assert ours["tokens"]["padded_no_grad"] == 0 and ours["embed_no_grad_s"] == 0 < ref["embed_no_grad_s"]
    assert (
        ours["tokens"]["real_with_grad"] <= ours["tokens"]["padded_with_grad"] < 2 * ref["tokens"]["padded_with_grad"]
    )
    assert ours["loss"] == pytest.approx(ref["loss"], abs=1e-5)  # same weights, same batch, no dropout
    assert 0 < ref["matmul_self_s"] < ref["self_cpu_s"]
    text = doc.read_text()
    assert text.count("Self CPU time total") == 2 and "### reference" in text and "### auto" in text
    (row,) = result.rows
    assert row.bench == "profile" and row.ratio == pytest.approx(ours["step_s"] / ref["step_s"])


def test_merge_refuses_when_the_other_benchmarks_have_no_saved_results(tmp_path, monkeypatch, capsys):
    """`--merge` keeps the other benchmarks' saved rows: with none saved, it stops in one line before measuring, and
    the table is left as it was (it used to rewrite the table with the measured benchmark's rows only)."""
    import bench.__main__ as entry
    from bench import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(entry, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(entry, "BENCHES", {**entry.BENCHES, "overhead": lambda **kw: pytest.fail("measured")})
    table = tmp_path / "benchmarks.md"
    table.write_text("the committed table\n")
    with pytest.raises(SystemExit):
        entry.main(["--only", "overhead", "--merge", "--out", str(table)])
    assert "has none for training, evaluation" in capsys.readouterr().err
    assert table.read_text() == "the committed table\n"
