"""pipeline.report end to end on sweeps built here with MlflowClient, in the shape a real sweep leaves in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pipeline.protocol import VERDICTS
from pipeline.report import REPORT_FILES, compare, main
from pipeline.report.applied import apply
from pipeline.report.load import load_arms
from pipeline.report.stats import bootstrap_ci, nanobeir_mean, paired_test
from pipeline.statistics.family import SPREAD_BOUND

N = 2000  # resamples: enough for the checks, fast
DATASETS = {"scifact": 12, "msmarco": 10}
BASE = 22_000_000


def per_query(rng: np.random.Generator, base: dict | None, gain: float) -> dict[str, dict[str, float]]:
    if base is None:
        return {d: {f"{d}-q{i}": float(rng.uniform(0.3, 0.6)) for i in range(k)} for d, k in DATASETS.items()}
    return {
        d: {q: float(np.clip(v + gain + rng.normal(0, 0.02), 0, 1)) for q, v in qs.items()} for d, qs in base.items()
    }


def metrics_of(pq: dict, prefix: str = "") -> dict[str, float]:
    values = {f"{prefix}nanobeir_mean_ndcg_at_10": nanobeir_mean(pq)}
    values.update({f"{prefix}nanobeir_{d}_ndcg_at_10": sum(s.values()) / len(s) for d, s in pq.items()})
    return values


def log_json(client: MlflowClient, run_id: str, data: dict, artifact_path: str, tmp: Path) -> None:
    local = tmp / run_id / artifact_path / "per_query.json"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(data))
    client.log_artifact(run_id, str(local), artifact_path)


def make_sweep(client, exp_id: str, sweep_id: str, start: int, jobs: list[dict], tmp: Path, seed: int = 0) -> str:
    """A parent run and one child per job: {name, method, r, alpha, lr, seed, dev, gain} or {..., failed: message}."""
    rng = np.random.default_rng(seed)
    parent = client.create_run(
        exp_id, start_time=start, run_name=f"sweep-{sweep_id}", tags={"sweep_id": sweep_id, "pipeline.role": "sweep"}
    ).info.run_id
    baseline = per_query(rng, None, 0)
    base_test = {"test": {f"t{i}": float(rng.uniform(0.3, 0.6)) for i in range(40)}}  # the in-domain test set
    for i, job in enumerate(jobs):
        run_id = client.create_run(
            exp_id,
            start_time=start + i + 1,
            run_name=job["name"],
            tags={"sweep_id": sweep_id, "mlflow.parentRunId": parent, "method": job["method"]},
        ).info.run_id
        params = {
            "finetune.method": job["method"],
            "finetune.r": "64",
            "finetune.alpha": "128",
            "finetune.dropout": "0.1",
            "train.lr": str(job.get("lr", 2e-5)),
            "train.seed": str(job.get("seed", 12)),
        }
        if job["method"] == "lora":
            params.update({"finetune.r": str(job["r"]), "finetune.alpha": str(job["alpha"])})
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        if "failed" in job:
            client.set_tag(run_id, "error", job["failed"])
            client.set_terminated(run_id, "FAILED")
            continue
        pq = per_query(rng, baseline, job["gain"])
        trainable = BASE if job["method"] == "full" else 2 * 6 * 384 * job["r"] * 2
        values = {**metrics_of(pq), **metrics_of(baseline, "baseline_"), "baseline_dev_ndcg_at_10": 0.5}
        if "dev" in job:
            values.update(dev_ndcg_at_10=job["dev"], dev_delta_vs_base=job["dev"] - 0.5)
            values["nanobeir_delta_vs_base"] = values["nanobeir_mean_ndcg_at_10"] - nanobeir_mean(baseline)
        values.update(trainable_params=trainable, total_params=BASE + (trainable if job["method"] == "lora" else 0))
        values["weights_mb"] = trainable * 4 / 2**20
        client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in values.items()])
        if not job.get("no_artifacts"):
            log_json(client, run_id, pq, "evaluation", tmp)
            log_json(client, run_id, baseline, "evaluation/baseline", tmp)
        if "in_domain_gain" in job:  # scored on an in-domain test set (data.test_size) too
            test = per_query(rng, base_test, job["in_domain_gain"])
            log_json(client, run_id, test, "evaluation/test", tmp)
            log_json(client, run_id, base_test, "evaluation/test_baseline", tmp)
            delta = nanobeir_mean(test) - nanobeir_mean(base_test)
            client.log_batch(run_id, metrics=[Metric("test_delta_vs_base", delta, 0, 0)])
            job["in_domain"] = test
        client.set_terminated(run_id, "FINISHED")
        job["per_query"], job["baseline"] = pq, baseline
    client.set_terminated(parent, "FINISHED")
    return parent


def job(method, seed, dev, gain, r=None, alpha=None, lr=None, **extra):
    lr = lr or (2e-4 if method == "lora" else 2e-5)
    name = (f"lora-r{r}-a{alpha}" if method == "lora" else "full") + f"-lr{lr:g}-s{seed}"
    return {
        "name": name,
        "method": method,
        "r": r,
        "alpha": alpha,
        "lr": lr,
        "seed": seed,
        "dev": dev,
        "gain": gain,
        **extra,
    }


# The protocol's shape: a grid at seed 12, then the selected configuration of each method at seeds 13 and 14.
# lora-r8-a16 has the best NanoBEIR (test) score but not the best dev score: it must not be selected.
JOBS = [
    job("full", 12, dev=0.70, gain=0.10),
    job("full", 12, dev=0.66, gain=0.12, lr=5e-5),
    job("lora", 12, dev=0.71, gain=0.08, r=16, alpha=32),
    job("lora", 12, dev=0.0, gain=0.0, r=64, alpha=128, failed="OutOfMemoryError: CUDA out of memory"),
    job("lora", 12, dev=0.65, gain=0.15, r=8, alpha=16),
    job("full", 13, dev=0.69, gain=0.10),
    job("full", 14, dev=0.70, gain=0.10),
    job("lora", 13, dev=0.70, gain=0.08, r=16, alpha=32),
    job("lora", 14, dev=0.71, gain=0.08, r=16, alpha=32),
]
SELECTED_LORA, SELECTED_FULL = "lora-r16-a32-lr0.0002", "full-lr2e-05"


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Three sweeps: s-old and s-new in lora-vs-full (s-new newest overall), s-other in between, in another one."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/m.db"
    client = MlflowClient(uri)
    main_exp = client.create_experiment("lora-vs-full", artifact_location=(tmp / "artifacts").as_uri())
    other_exp = client.create_experiment("other", artifact_location=(tmp / "artifacts-other").as_uri())
    jobs = [dict(job) for job in JOBS]
    no_artifacts = job("lora", 12, dev=0.6, gain=0.03, r=4, alpha=8, no_artifacts=True)
    old_jobs = [dict(JOBS[4]), no_artifacts]
    parents = {
        "s-old": make_sweep(client, main_exp, "s-old", 1_000_000, old_jobs, tmp, seed=1),  # no full arm
        "s-other": make_sweep(client, other_exp, "s-other", 1_500_000, [dict(JOBS[0])], tmp, seed=2),
        "s-new": make_sweep(client, main_exp, "s-new", 2_000_000, jobs, tmp, seed=3),
    }
    result = compare(uri, out_dir=tmp / "report", n_resamples=N)  # the default: the newest sweep
    jobs_by_name = {j["name"]: j for j in jobs}
    return {
        "uri": uri,
        "tmp": tmp,
        "client": client,
        "jobs": jobs_by_name,  # of s-new
        "no_artifacts": no_artifacts,  # of s-old
        "parents": parents,
        "result": result,
    }


def test_default_picks_the_newest_sweep(sweeps):
    assert sweeps["result"]["sweep_id"] == "s-new"
    assert sweeps["result"]["parent_run_id"] == sweeps["parents"]["s-new"]


def test_report_files_exist(sweeps):
    out = sweeps["tmp"] / "report"
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    for name in (n for n in REPORT_FILES if n.endswith(".png")):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "comparison.json").read_text())["rows"] == sweeps["result"]["rows"]


def test_table_rows_order_and_failed_job(sweeps):
    rows = sweeps["result"]["rows"]
    assert [r["name"] for r in rows] == [
        "baseline",
        "lora-r8-a16-lr0.0002-s12",
        "lora-r16-a32-lr0.0002-s12",
        "lora-r16-a32-lr0.0002-s13",
        "lora-r16-a32-lr0.0002-s14",
        "lora-r64-a128-lr0.0002-s12",
        "full-lr2e-05-s12",
        "full-lr2e-05-s13",
        "full-lr2e-05-s14",
        "full-lr5e-05-s12",
    ]
    failed = rows[5]
    assert failed["status"] == "FAILED" and failed["error"] == "OutOfMemoryError: CUDA out of memory"
    assert failed["ndcg_at_10"] is None and failed["delta_vs_full"] is None
    assert (failed["r"], failed["alpha"]) == (64, 128)
    assert rows[6]["r"] is None and rows[6]["alpha"] is None  # r/alpha mean nothing for a full fine-tune
    report = (sweeps["tmp"] / "report" / "report.md").read_text()
    table = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    assert table["lora-r64-a128-lr0.0002-s12"].rstrip(" |").endswith("FAILED")
    assert "**lora-r64-a128-lr0.0002-s12**" in report and "CUDA out of memory" in report
    header = [c.strip() for c in table["run"].strip("|").split("|")]
    assert {"scifact", "msmarco", "p (run vs run)", "dev NDCG@10", "lr", "seed", "status"} <= set(header)
    full_cells = [c.strip() for c in table["full-lr2e-05-s12"].strip("|").split("|")]
    assert full_cells[header.index("p (run vs run)")] == "" and full_cells[header.index("Δ vs full run [95% CI]")] == ""


def test_numbers_match_the_statistics_called_directly(sweeps):
    jobs, rows = sweeps["jobs"], {r["name"]: r for r in sweeps["result"]["rows"]}
    for name in ("lora-r8-a16-lr0.0002-s12", "lora-r16-a32-lr0.0002-s12", "lora-r16-a32-lr0.0002-s13"):
        pq, seed = jobs[name]["per_query"], jobs[name]["seed"]
        full = jobs[f"full-lr2e-05-s{seed}"]["per_query"]  # the selected full fine-tune's run at the same seed
        assert rows[name]["delta_vs_full"] == paired_test(pq, full, n=N, seed=0)._asdict(), name
        assert rows[name]["ndcg_at_10"] == bootstrap_ci(pq, n=N, seed=0)._asdict(), name
        assert rows[name]["per_dataset_ndcg_at_10"] == pytest.approx(
            {d: np.mean(list(s.values())) for d, s in pq.items()}
        )
    assert rows["full-lr2e-05-s12"]["delta_vs_full"] is None
    assert rows["lora-r16-a32-lr0.0002-s12"]["trainable_params"] == 2 * 6 * 384 * 16 * 2
    # Holm over the adapter configurations the grid trained, on configuration-level p-values (seed variance in)
    configs = {c["name"]: c for c in sweeps["result"]["configurations"]}
    grid = ["lora-r8-a16-lr0.0002", SELECTED_LORA]
    raw = [configs[name]["vs_full"]["p_value"] for name in grid]
    assert [configs[name]["p_holm"] for name in grid] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    full = [nanobeir_mean(jobs[f"{SELECTED_FULL}-s{s}"]["per_query"]) for s in (12, 13, 14)]
    selected = [nanobeir_mean(jobs[f"{SELECTED_LORA}-s{s}"]["per_query"]) for s in (12, 13, 14)]
    one_seed = configs["lora-r8-a16-lr0.0002"]["vs_full"]  # borrows the selected LoRA's seed variance, x 2^2
    se = np.sqrt(SPREAD_BOUND**2 * np.var(selected, ddof=1) + np.var(full, ddof=1) / 3)
    assert one_seed["borrowed"] and one_seed["se"] == pytest.approx(se)


def test_selection_reads_dev_and_the_verdict_compares_the_selected_configurations(sweeps):
    result = sweeps["result"]
    configs = {c["name"]: c for c in result["configurations"]}
    assert {name for name, c in configs.items() if c["selected"]} == {SELECTED_LORA, SELECTED_FULL}
    assert configs[SELECTED_LORA]["seeds"] == [12, 13, 14] and configs["lora-r8-a16-lr0.0002"]["seeds"] == [12]
    # selection used the seed every LoRA configuration has (12), not the replicates' seeds
    assert configs[SELECTED_LORA]["dev_ndcg_at_10"] == pytest.approx(0.71)
    verdict = result["verdict"]
    assert (verdict["adapter"], verdict["full"]) == (SELECTED_LORA, SELECTED_FULL)
    # fresh seeds only: the grid's seed 12 (the selection run) is not in Δ; the default target is the benchmark
    adapter = [nanobeir_mean(sweeps["jobs"][f"{SELECTED_LORA}-s{s}"]["per_query"]) for s in (13, 14)]
    full = [nanobeir_mean(sweeps["jobs"][f"{SELECTED_FULL}-s{s}"]["per_query"]) for s in (13, 14)]
    delta = np.mean(adapter) - np.mean(full)
    se = np.sqrt(np.var(adapter, ddof=1) / 2 + np.var(full, ddof=1) / 2)
    df = se**4 / ((np.var(adapter, ddof=1) / 2) ** 2 + (np.var(full, ddof=1) / 2) ** 2)
    t90 = stats.t.ppf(0.95, df)  # the interval the equivalence test reads, computed apart from the code
    assert verdict["delta"] == pytest.approx(delta)
    assert verdict["ci90"] == pytest.approx([delta - t90 * se, delta + t90 * se])
    assert verdict["label"] in VERDICTS and verdict["seeds"] == {"adapter": 2, "full": 2}
    assert verdict["fresh_seeds"] == {"adapter": [13, 14], "full": [13, 14]} and verdict["grid_seeds"] == [12]
    assert verdict["target"] == "benchmark" and "on this benchmark" in verdict["sentence"]
    report = (sweeps["tmp"] / "report" / "report.md").read_text()
    assert f"selection run (won on dev, not in Δ): {SELECTED_LORA}-s12" in report


def test_scrambled_test_scores_leave_the_selection_unchanged(sweeps):
    """Selection never reads NanoBEIR: shuffle every run's test scores and metrics across runs, same selection."""
    client = sweeps["client"]
    parent = client.get_run(sweeps["parents"]["s-new"])
    arms, _ = load_arms(client, parent, [])
    chosen = apply(arms, n_resamples=200)
    # the test set would have chosen otherwise: r8 has the best NanoBEIR score of the LoRA grid
    best_test = max(
        (a for a in arms if a.method == "lora" and a.seed == 12 and a.per_query),
        key=lambda a: nanobeir_mean(a.per_query),
    )
    assert best_test.name.startswith("lora-r8") and chosen.adapter.name == SELECTED_LORA
    finished = [a for a in arms if a.per_query is not None]
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = rng.permutation(len(finished))
        scores = [(finished[i].per_query, finished[i].per_dataset, finished[i].ndcg) for i in order]
        for arm, (pq, per_dataset, ndcg) in zip(finished, scores, strict=True):
            arm.per_query, arm.per_dataset, arm.ndcg = pq, per_dataset, ndcg
        scrambled = apply(arms, n_resamples=200)
        assert (scrambled.adapter.key, scrambled.full.key) == (chosen.adapter.key, chosen.full.key)


def test_verdict_and_summary_logged_on_the_parent(sweeps):
    client, result = sweeps["client"], sweeps["result"]
    parent = client.get_run(result["parent_run_id"])
    logged = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == set(REPORT_FILES)
    assert parent.data.tags["verdict"] == result["verdict"]["label"]
    assert parent.data.tags["verdict.target"] == "benchmark" and parent.data.tags["verdict.looks"] == "1"
    assert parent.data.tags["verdict.seeds_adapter"] == "13,14" and parent.data.tags["verdict.seeds_full"] == "13,14"
    assert parent.data.tags["verdict.rank"] in ("none", "16", "8")
    assert parent.data.tags["mlflow.note.content"] == result["verdict"]["sentence"]
    report = (sweeps["tmp"] / "report" / "report.md").read_text().splitlines()
    assert report[2] == result["verdict"]["sentence"]  # the report opens with the verdict
    assert result["verdict"]["sentence"].startswith(f"**{result['verdict']['label'].capitalize()}**")
    adapter = np.mean([nanobeir_mean(sweeps["jobs"][f"{SELECTED_LORA}-s{s}"]["per_query"]) for s in (12, 13, 14)])
    assert parent.data.metrics["adapter_nanobeir_mean_ndcg_at_10"] == pytest.approx(adapter)
    assert parent.data.metrics["verdict_margin"] == 0.01


def test_sweep_without_full_arm_has_no_verdict(sweeps, tmp_path):
    result = compare(sweeps["uri"], sweep_id="s-old", out_dir=tmp_path, n_resamples=N, log_to_mlflow=False)
    assert result["verdict"] is None
    assert [r["name"] for r in result["rows"]] == ["baseline", "lora-r4-a8-lr0.0002-s12", "lora-r8-a16-lr0.0002-s12"]
    assert all(r["delta_vs_full"] is None for r in result["rows"])
    assert (tmp_path / "report.md").read_text().splitlines()[2].startswith("**No verdict**")
    # a finished run without per_query.json: its logged mean, no CI, and a warning; the JSON stays strict
    strict = json.loads((tmp_path / "comparison.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    no_artifacts = strict["rows"][1]
    expected = nanobeir_mean(sweeps["no_artifacts"]["per_query"])
    assert no_artifacts["ndcg_at_10"] == {"mean": pytest.approx(expected), "low": None, "high": None}
    assert any("lora-r4-a8" in w and "per_query.json" in w for w in strict["warnings"])
    assert all((tmp_path / name).is_file() for name in REPORT_FILES)
    assert result["parent_run_id"] == sweeps["parents"]["s-old"]
    assert sweeps["client"].list_artifacts(result["parent_run_id"]) == []  # nothing logged


def test_cli_rejects_a_bad_margin_in_one_line(sweeps, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--tracking-uri", sweeps["uri"], "--margin", "0", "--no-log"])
    assert exit_.value.code == 2
    assert "--margin 0.0 is not allowed" in capsys.readouterr().err


def test_cli_experiment_picks_its_newest_sweep(sweeps, tmp_path, capsys):
    args = ["--tracking-uri", sweeps["uri"], "--experiment", "other", "--out", str(tmp_path), "--resamples", "500"]
    assert main([*args, "--no-log"]) == 0
    assert json.loads((tmp_path / "comparison.json").read_text())["sweep_id"] == "s-other"
    assert "| full-lr2e-05-s12 |" in capsys.readouterr().out


def test_cli_defaults_from_environment(sweeps, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweeps["uri"])
    monkeypatch.setenv("PIPELINE_OUTPUTS", str(tmp_path))
    assert main(["--resamples", "500", "--no-log"]) == 0
    assert (tmp_path / "reports" / "s-new" / "report.md").is_file()


def test_cli_unknown_sweep_id_names_it_and_lists_existing(sweeps, capsys):
    assert main(["--tracking-uri", sweeps["uri"], "--sweep-id", "nope"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'nope'" in err and "s-new, s-other, s-old" in err


def test_cli_no_sweep(tmp_path, capsys):
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/absent.db"]) != 0
    assert "no MLflow database" in capsys.readouterr().err
    MlflowClient(f"sqlite:///{tmp_path}/empty.db").search_experiments()  # creates an empty store
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db"]) != 0
    assert "no sweep" in capsys.readouterr().err
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db", "--experiment", "nope"]) != 0
    assert "no experiment named 'nope'" in capsys.readouterr().err


def test_a_decided_sweep_reports_its_looks_fresh_seeds_and_target(tmp_path):
    """make decide's shape: a grid at seed 12 (recorded as sweep.grid_seeds), then fresh seeds of the selected
    configurations in rounds under a recorded design; the report replays the looks on the fresh seeds only."""
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("decide", artifact_location=(tmp_path / "artifacts").as_uri())
    jobs = [job("full", 12, dev=0.70, gain=0.10), job("lora", 12, dev=0.71, gain=0.10, r=16, alpha=32)]
    jobs += [job("lora", 12, dev=0.60, gain=0.10, r=8, alpha=16)]
    jobs += [job(m, s, dev=0.7, gain=0.10, **({"r": 16, "alpha": 32} if m == "lora" else {}))
             for s in range(20, 27) for m in ("full", "lora")]  # fmt: skip
    parent = make_sweep(client, exp, "s-decide", 3_000_000, jobs, tmp_path, seed=5)
    for key, value in {"sweep.grid_seeds": "12", "decide.first": "3", "decide.step": "2", "decide.budget": "7"}.items():
        client.set_tag(parent, key, value)
    result = compare(f"sqlite:///{tmp_path}/m.db", out_dir=tmp_path / "r", n_resamples=200)
    verdict = result["verdict"]
    seeds = [x["seeds_adapter"] for x in verdict["looks"]]
    assert seeds == [3, 5, 7][: len(seeds)] and verdict["looks"][-1]["stop"]
    assert 12 not in verdict["fresh_seeds"]["adapter"] and verdict["grid_seeds"] == [12]
    tags = client.get_run(parent).data.tags
    assert tags["verdict.looks"] == str(len(seeds)) and tags["verdict.seeds_adapter"].startswith("20,21,22")
    assert tags["verdict.rank"] in ("none", "16", "8")
    queries = compare(f"sqlite:///{tmp_path}/m.db", out_dir=tmp_path / "q", n_resamples=200, target="queries")
    assert "for queries like these" in queries["verdict"]["sentence"] and queries["verdict"]["target"] == "queries"
    with pytest.raises(ValueError, match="target='nope'"):
        compare(f"sqlite:///{tmp_path}/m.db", out_dir=tmp_path / "x", n_resamples=200, target="nope")
    client.set_tag(parent, "decide.target", "queries")  # make decide looked on queries like these: so does the report
    recorded = compare(f"sqlite:///{tmp_path}/m.db", out_dir=tmp_path / "d", n_resamples=200)
    assert (
        recorded["verdict"]["target"] == "queries" and client.get_run(parent).data.tags["verdict.target"] == "queries"
    )


def test_make_decide_owns_the_verdict_tags_and_the_report_checks_them(tmp_path):
    """One writer per tag: on a sweep make decide tagged, the report leaves its `verdict*` tags as they are and says
    where its own replay disagrees; it still logs its files, description and metrics."""
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("decide", artifact_location=(tmp_path / "artifacts").as_uri())
    jobs = [job(m, s, dev=0.7, gain=0.10, **({"r": 16, "alpha": 32} if m == "lora" else {}))
            for s in (12, 20, 21, 22) for m in ("full", "lora")]  # fmt: skip
    parent = make_sweep(client, exp, "s-tagged", 3_000_000, jobs, tmp_path, seed=5)
    tagged = {"sweep.grid_seeds": "12", "verdict": "inferior", "verdict.sentence": "Inferior: made up.",
              "verdict.looks": "9", "verdict.seeds_adapter": "20,21,22", "verdict.target": "benchmark"}  # fmt: skip
    for key, value in tagged.items():
        client.set_tag(parent, key, value)
    result = compare(f"sqlite:///{tmp_path}/m.db", out_dir=tmp_path / "r", n_resamples=200)
    tags = client.get_run(parent).data.tags
    assert {k: tags[k] for k in tagged} == tagged and result["verdict"]["label"] != "inferior"
    assert (
        f"make decide tagged this sweep verdict=inferior; this report's replay says {result['verdict']['label']}"
        in (" ".join(result["warnings"]))
    )
    assert tags["mlflow.note.content"] == result["verdict"]["sentence"]  # the report's own


def test_a_decided_sweeps_ranks_are_read_at_its_last_look_as_its_verdict_rank(tmp_path):
    """Under make decide's design every rank is read as the sweeper reads it for `verdict.rank`: its repeated
    interval at the last look taken, on that look's seeds — not a fixed-design interval, which is narrower and would
    let the report call a rank equivalent that the sequential rule did not."""
    from pipeline.statistics.sequential import Design, benchmark_difference, look

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("decide", artifact_location=(tmp_path / "artifacts").as_uri())
    jobs = [job("full", 12, dev=0.70, gain=0.10), job("lora", 12, dev=0.71, gain=0.10, r=16, alpha=32)]
    jobs += [job("lora", 12, dev=0.69, gain=0.10, r=8, alpha=16)]
    jobs += [job(m, s, dev=0.7, gain=0.10, **kw) for s in range(20, 27)
             for m, kw in (("full", {}), ("lora", {"r": 16, "alpha": 32}), ("lora", {"r": 8, "alpha": 16}))]  # fmt: skip
    parent = make_sweep(client, exp, "s-ranks", 3_000_000, jobs, tmp_path, seed=7)
    for key, value in {"sweep.grid_seeds": "12", "decide.first": "3", "decide.step": "2", "decide.budget": "7"}.items():
        client.set_tag(parent, key, value)
    result = compare(f"sqlite:///{tmp_path}/m.db", out_dir=tmp_path / "r", n_resamples=200)
    last = result["verdict"]["looks"][-1]
    (row,) = [row for row in result["verdict"]["ranks"] if row["rank"] == 8]
    runs = {r.info.run_name: r for r in client.search_runs([exp])}

    def means(name: str) -> list[float]:
        return [
            runs[f"{name}-s{s}"].data.metrics["nanobeir_mean_ndcg_at_10"] for s in range(20, 20 + last["seeds_adapter"])
        ]

    estimate = benchmark_difference(means("lora-r8-a16-lr0.0002"), means("full-lr2e-05"))
    expected = look(Design(first=3, step=2, budget=7), estimate, last["index"])
    assert row["label"] == expected.label and row["seeds"] == last["seeds_adapter"]
    assert (row["low"], row["high"]) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_the_rank_sequence_starts_at_the_selected_rank_not_the_grids_largest():
    """r=8 wins on dev over r=16 and r=4; r=8 and r=4 have fresh seeds, both equivalent to full; r=16 (above the
    selection, it lost on dev) has only its grid run, whose query-only row reads "no verdict". The sequence starts at
    the selected rank, as make decide's: r=4 suffices. Counting r=16 would stop it at once (no rank)."""
    from pipeline.report.load import Arm

    rng = np.random.default_rng(7)
    base = {d: {f"{d}-q{i}": float(rng.uniform(0.3, 0.7)) for i in range(k)} for d, k in DATASETS.items()}

    def scores(shift: float) -> dict:
        return {d: {q: v + shift + float(rng.normal(0, 0.002)) for q, v in qs.items()} for d, qs in base.items()}

    arms, start = [], 0
    for name, method, r, dev, seeds in (
        ("lora-r16-a32-lr1e-4", "lora", 16, 0.85, [12]),
        ("lora-r8-a16-lr1e-4", "lora", 8, 0.90, [12, 13, 14, 15, 16]),
        ("lora-r4-a8-lr1e-4", "lora", 4, 0.80, [12, 13, 14, 15, 16]),
        ("full-lr1e-5", "full", None, 0.80, [12, 13, 14, 15, 16]),
    ):
        for seed in seeds:
            start += 1
            arms.append(
                Arm(f"{name}-s{seed}", method, "FINISHED", run_id=f"{name}-{seed}", start_time=start, r=r,
                    seed=seed, configuration=name, dev=dev, per_query=scores(float(rng.normal(0, 0.001))))
            )  # fmt: skip
    protocol = apply(arms, n_resamples=200, grid_seeds={12})
    assert protocol.adapter.name == "lora-r8-a16-lr1e-4" and protocol.verdict.label == "equivalent"
    labels = {row.rank: row.label for row in protocol.ranks}
    assert labels == {16: "no verdict", 8: "equivalent", 4: "equivalent"}  # r=16 is drawn, above the selection
    assert protocol.rank == 4


def test_learn_and_forget_get_two_verdicts_that_can_disagree(tmp_path):
    """Full learns the domain far better (in-domain gain 0.20 vs 0.05) while both keep NanoBEIR alike (0.10 each): the
    in-domain verdict says inferior, the general one equivalent, on the same selection and fresh seeds; the answer for
    both halves is inferior, and each is tagged on the parent run. Selection reads dev alone: lora r=8 has the best
    in-domain test score of the grid and the lower dev score, and is selected by neither verdict."""
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("halves", artifact_location=(tmp_path / "artifacts").as_uri())
    jobs = [
        job("full", 12, dev=0.80, gain=0.10, in_domain_gain=0.20),
        job("lora", 12, dev=0.70, gain=0.10, r=16, alpha=32, in_domain_gain=0.05),
        job("lora", 12, dev=0.65, gain=0.10, r=8, alpha=16, in_domain_gain=0.3),
    ]
    # fmt: skip
    for seed in (13, 14, 15, 16):
        jobs += [job("full", seed, dev=0.80, gain=0.10, in_domain_gain=0.20),
                 job("lora", seed, dev=0.70, gain=0.10, r=16, alpha=32, in_domain_gain=0.05)]  # fmt: skip
    parent = make_sweep(client, exp, "halves", 1_000, jobs, tmp_path, seed=4)
    client.set_tag(parent, "sweep.grid_seeds", "12")
    # each half its own margin: 0.03 in general, 0.01 in domain
    result = compare(
        uri, sweep_id="halves", out_dir=tmp_path / "report", n_resamples=N, margin=0.03, in_domain_margin=0.01
    )
    assert result["verdicts"] == {"general": "equivalent", "in_domain": "inferior", "combined": "inferior"}
    general, in_domain = result["verdict"], result["in_domain_verdict"]
    assert general["adapter"] == in_domain["adapter"] == SELECTED_LORA and general["full"] == in_domain["full"]
    assert general["fresh_seeds"] == in_domain["fresh_seeds"] == {"adapter": [13, 14, 15, 16], "full": [13, 14, 15, 16]}
    # the in-domain Δ is the difference of the fresh seeds' in-domain test means, not NanoBEIR's
    fresh = {m: [j for j in jobs if j["method"] == m and j["seed"] != 12] for m in ("lora", "full")}
    expected = np.mean([nanobeir_mean(j["in_domain"]) for j in fresh["lora"]]) - np.mean(
        [nanobeir_mean(j["in_domain"]) for j in fresh["full"]]
    )
    assert in_domain["delta"] == pytest.approx(expected) and in_domain["delta"] < -0.1
    tags = client.get_run(parent).data.tags
    # each half's label, and `verdict` the answer for both
    assert (tags["verdict.in_domain"], tags["verdict.general"], tags["verdict"]) == (
        "inferior",
        "equivalent",
        "inferior",
    )
    report = (tmp_path / "report" / "report.md").read_text()
    opening = report.splitlines()[2:6]
    assert opening[0].startswith("**Both halves: inferior**")
    assert opening[2].startswith("- **In domain**") and in_domain["sentence"] in opening[2]
    assert opening[3].startswith("- **General** (NanoBEIR)") and general["sentence"] in opening[3]
    evidence = report[report.index("## The verdict's evidence (in domain)") :]
    assert "selection run (won on dev, not in Δ): full-lr2e-05-s12, in-domain test 0." in evidence
    assert "Cochran" not in evidence.split("## The rank")[0]  # one set: no heterogeneity across datasets
    table = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    header = [c.strip() for c in table["run"].strip("|").split("|")]
    cells = [c.strip() for c in table["full-lr2e-05-s13"].strip("|").split("|")]
    assert float(cells[header.index("in-domain test NDCG@10")]) == pytest.approx(
        nanobeir_mean(next(j for j in jobs if j["name"] == "full-lr2e-05-s13")["in_domain"]), abs=5e-5
    )
    assert (general["margin"], in_domain["margin"]) == (0.03, 0.01)
