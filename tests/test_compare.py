"""pipeline.report end to end on sweeps built here with MlflowClient, in the shape a real sweep leaves in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.report import REPORT_FILES, compare, main
from pipeline.report.stats import bootstrap_ci, nanobeir_mean, paired_test

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
    """A parent run and one child per job: {name, method, r, alpha, gain} or {..., failed: message}."""
    rng = np.random.default_rng(seed)
    parent = client.create_run(
        exp_id, start_time=start, run_name=f"sweep-{sweep_id}", tags={"sweep_id": sweep_id, "pipeline.role": "sweep"}
    ).info.run_id
    baseline = per_query(rng, None, 0)
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
        values = {**metrics_of(pq), **metrics_of(baseline, "baseline_")}
        values.update(trainable_params=trainable, total_params=BASE + (trainable if job["method"] == "lora" else 0))
        values["weights_mb"] = trainable * 4 / 2**20
        client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in values.items()])
        if not job.get("no_artifacts"):
            log_json(client, run_id, pq, "evaluation", tmp)
            log_json(client, run_id, baseline, "evaluation/baseline", tmp)
        client.set_terminated(run_id, "FINISHED")
        job["per_query"], job["baseline"] = pq, baseline
    client.set_terminated(parent, "FINISHED")
    return parent


JOBS = [
    {"name": "full", "method": "full", "gain": 0.10},
    {"name": "lora-r16-a32", "method": "lora", "r": 16, "alpha": 32, "gain": 0.08},
    {
        "name": "lora-r64-a128",
        "method": "lora",
        "r": 64,
        "alpha": 128,
        "failed": "OutOfMemoryError: CUDA out of memory",
    },
    {"name": "lora-r8-a16", "method": "lora", "r": 8, "alpha": 16, "gain": 0.05},
]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Three sweeps: s-old and s-new in lora-vs-full (s-new newest overall), s-other in between, in another one."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/m.db"
    client = MlflowClient(uri)
    main_exp = client.create_experiment("lora-vs-full", artifact_location=(tmp / "artifacts").as_uri())
    other_exp = client.create_experiment("other", artifact_location=(tmp / "artifacts-other").as_uri())
    jobs = [dict(job) for job in JOBS]
    no_artifacts = {"name": "lora-r4-a8", "method": "lora", "r": 4, "alpha": 8, "gain": 0.03, "no_artifacts": True}
    old_jobs = [dict(JOBS[3]), no_artifacts]
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
    for name in ("ndcg_vs_r.png", "ndcg_vs_params.png", "per_dataset.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "comparison.json").read_text())["rows"] == sweeps["result"]["rows"]


def test_table_rows_order_and_failed_job(sweeps):
    rows = sweeps["result"]["rows"]
    assert [r["name"] for r in rows] == ["baseline", "lora-r8-a16", "lora-r16-a32", "lora-r64-a128", "full"]
    failed = rows[3]
    assert failed["status"] == "FAILED" and failed["error"] == "OutOfMemoryError: CUDA out of memory"
    assert failed["ndcg_at_10"] is None and failed["delta_vs_full"] is None
    assert (failed["r"], failed["alpha"]) == (64, 128)
    assert rows[4]["r"] is None and rows[4]["alpha"] is None  # r/alpha mean nothing for a full fine-tune
    report = (sweeps["tmp"] / "report" / "report.md").read_text()
    table = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    assert table["lora-r64-a128"].rstrip(" |").endswith("FAILED")
    assert "**lora-r64-a128**" in report and "CUDA out of memory" in report
    header = [c.strip() for c in table["run"].strip("|").split("|")]
    assert {"scifact", "msmarco", "p", "status"} <= set(header)
    full_cells = [c.strip() for c in table["full"].strip("|").split("|")]
    assert full_cells[header.index("p")] == "" and full_cells[header.index("Δ vs full [95% CI]")] == ""


def test_numbers_match_the_statistics_called_directly(sweeps):
    jobs, rows = sweeps["jobs"], {r["name"]: r for r in sweeps["result"]["rows"]}
    full = jobs["full"]["per_query"]
    arms = {name: jobs[name]["per_query"] for name in ("lora-r8-a16", "lora-r16-a32")}
    arms["baseline"] = jobs["full"]["baseline"]
    for name, pq in arms.items():
        assert rows[name]["delta_vs_full"] == paired_test(pq, full, n=N, seed=0)._asdict(), name
        assert rows[name]["ndcg_at_10"] == bootstrap_ci(pq, n=N, seed=0)._asdict(), name
        assert rows[name]["per_dataset_ndcg_at_10"] == pytest.approx(
            {d: np.mean(list(s.values())) for d, s in pq.items()}
        )
    assert rows["full"]["ndcg_at_10"] == bootstrap_ci(full, n=N, seed=0)._asdict()
    assert rows["full"]["delta_vs_full"] is None
    assert rows["lora-r16-a32"]["trainable_params"] == 2 * 6 * 384 * 16 * 2


def test_summary_and_artifacts_logged_on_the_parent(sweeps):
    client, result = sweeps["client"], sweeps["result"]
    parent = client.get_run(result["parent_run_id"])
    logged = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == set(REPORT_FILES)
    finished_lora = [job for job in sweeps["jobs"].values() if job["method"] == "lora" and "per_query" in job]
    means = {job["name"]: nanobeir_mean(job["per_query"]) for job in finished_lora}
    best = max(means, key=means.get)
    assert result["best_lora_run"] == best == parent.data.tags["best_lora_run"]
    assert parent.data.metrics["best_lora_nanobeir_mean_ndcg_at_10"] == pytest.approx(means[best])
    full = nanobeir_mean(sweeps["jobs"]["full"]["per_query"])
    assert parent.data.metrics["full_nanobeir_mean_ndcg_at_10"] == pytest.approx(full)


def test_sweep_without_full_arm_leaves_delta_blank(sweeps, tmp_path):
    result = compare(sweeps["uri"], sweep_id="s-old", out_dir=tmp_path, n_resamples=N, log_to_mlflow=False)
    assert result["full_run"] is None
    assert [r["name"] for r in result["rows"]] == ["baseline", "lora-r4-a8", "lora-r8-a16"]
    assert all(r["delta_vs_full"] is None for r in result["rows"])
    # a finished run without per_query.json: its logged mean, no CI, and a warning; the JSON stays strict
    strict = json.loads((tmp_path / "comparison.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    no_artifacts = strict["rows"][1]
    expected = nanobeir_mean(sweeps["no_artifacts"]["per_query"])
    assert no_artifacts["ndcg_at_10"] == {"mean": pytest.approx(expected), "low": None, "high": None}
    assert any("lora-r4-a8" in w and "per_query.json" in w for w in strict["warnings"])
    assert all((tmp_path / name).is_file() for name in REPORT_FILES)
    assert result["parent_run_id"] == sweeps["parents"]["s-old"]
    assert sweeps["client"].list_artifacts(result["parent_run_id"]) == []  # nothing logged


def test_cli_experiment_picks_its_newest_sweep(sweeps, tmp_path, capsys):
    args = ["--tracking-uri", sweeps["uri"], "--experiment", "other", "--out", str(tmp_path), "--resamples", "500"]
    assert main([*args, "--no-log"]) == 0
    assert json.loads((tmp_path / "comparison.json").read_text())["sweep_id"] == "s-other"
    assert "| full |" in capsys.readouterr().out


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
