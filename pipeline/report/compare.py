"""The sweep report: which LoRA rank/alpha, and how far from a full fine-tune?

    python -m pipeline.report [--sweep-id ID | --experiment NAME] [--tracking-uri URI] [--out DIR]

Reads MLflow only (never the pipeline's cache): the sweep's parent run (tag `pipeline.role=sweep`), its child runs
(one per job: params `finetune.*`, NanoBEIR metrics, `evaluation/per_query.json` and
`evaluation/baseline/per_query.json`). Writes `report.md`, `comparison.json` and three PNG plots to the output dir,
and logs them on the parent run under `report/` with summary metrics and a `best_lora_run` tag.

Statistics (pipeline.report.stats) are over queries: the CI of a run's NanoBEIR mean is a stratified bootstrap, and each
run is compared with the full fine-tune on the same queries (paired bootstrap CI, sign-flip permutation p-value).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.report.load import (
    Arm,
    SweepNotFound,
    best_lora,
    default_outputs,
    default_tracking_uri,
    find_sweep,
    full_arm,
    load_arms,
    open_client,
    ordered,
    sweep_id_of,
)
from pipeline.report.plots import plot_ndcg_vs_params, plot_ndcg_vs_r, plot_per_dataset
from pipeline.report.render import render_markdown
from pipeline.report.stats import bootstrap_ci, paired_test

REPORT_FILES = ("report.md", "comparison.json", "ndcg_vs_r.png", "ndcg_vs_params.png", "per_dataset.png")


def compare(
    tracking_uri: str | None = None,
    sweep_id: str | None = None,
    experiment: str | None = None,
    out_dir: str | Path | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    log_to_mlflow: bool = True,
) -> dict:
    """Build the report of one sweep; write it to `out_dir`, log it on the sweep's parent run; return comparison.json.

    `out_dir` defaults to <PIPELINE_OUTPUTS or outputs>/reports/<sweep_id>/. Raises SweepNotFound when there is no
    sweep to report on.
    """
    uri = tracking_uri or default_tracking_uri()
    client = open_client(uri)
    parent = find_sweep(client, sweep_id, experiment)
    sweep = sweep_id_of(parent)
    out = Path(out_dir) if out_dir is not None else default_outputs() / "reports" / sweep
    out.mkdir(parents=True, exist_ok=True)

    warnings: list[str] = []
    arms, baseline = load_arms(client, parent, warnings)
    rows = [baseline, *ordered(arms)] if baseline else ordered(arms)
    for arm in rows:
        if arm.per_query is not None:
            arm.ndcg = bootstrap_ci(arm.per_query, n=n_resamples, seed=seed, level=level)
    full = full_arm(arms, warnings)
    if full is not None and full.per_query is not None:
        for arm in rows:
            if arm is full or arm.per_query is None:
                continue
            try:
                arm.delta = paired_test(arm.per_query, full.per_query, n=n_resamples, seed=seed, level=level)
            except ValueError as error:
                warnings.append(f"{arm.name}: no paired test against {full.name}: {error}")
    best = best_lora(arms)
    datasets = sorted({d for arm in rows for d in arm.per_dataset})

    result = {
        "sweep_id": sweep,
        "parent_run_id": parent.info.run_id,
        "experiment_id": parent.info.experiment_id,
        "tracking_uri": uri,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "statistics": {
            "resamples": n_resamples,
            "seed": seed,
            "level": level,
            "ci": "stratified percentile bootstrap over queries within each dataset",
            "p_value": "two-sided paired sign-flip permutation test vs the full fine-tune, stratified by dataset",
        },
        "datasets": datasets,
        "best_lora_run": best.name if best else None,
        "full_run": full.name if full else None,
        "rows": [arm.to_json() for arm in rows],
        "warnings": warnings,
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(render_markdown(result, rows, baseline, best, full, level))
    plot_ndcg_vs_r(out / "ndcg_vs_r.png", arms, baseline, full, level)
    plot_ndcg_vs_params(out / "ndcg_vs_params.png", arms, baseline, level)
    plot_per_dataset(out / "per_dataset.png", baseline, best, full, datasets, n_resamples, seed, level)
    if log_to_mlflow:
        _log_on_parent(client, parent.info.run_id, out, best, full)
    result["out_dir"] = str(out)
    return result


def _log_on_parent(client: MlflowClient, run_id: str, out: Path, best: Arm | None, full: Arm | None) -> None:
    for name in REPORT_FILES:
        client.log_artifact(run_id, str(out / name), "report")
    now = int(time.time() * 1000)
    metrics = []
    if best is not None:
        metrics.append(Metric("best_lora_nanobeir_mean_ndcg_at_10", best.ndcg.mean, now, 0))
        client.set_tag(run_id, "best_lora_run", best.name)
        client.set_tag(run_id, "best_lora_run_id", best.run_id)
        if best.delta is not None:
            metrics.append(Metric("best_lora_delta_vs_full_ndcg_at_10", best.delta.delta, now, 0))
            metrics.append(Metric("best_lora_p_value_vs_full", best.delta.p_value, now, 0))
    if full is not None:
        metrics.append(Metric("full_nanobeir_mean_ndcg_at_10", full.ndcg.mean, now, 0))
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description="Compare the runs of a LoRA/full sweep from MLflow: tables, statistics, plots.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sweep-id", help="the sweep to report on (default: the newest sweep)")
    which.add_argument("--experiment", help="report on the newest sweep in this MLflow experiment")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///<outputs>/mlflow.db")
    parser.add_argument("--out", help="output dir (default: <PIPELINE_OUTPUTS or outputs>/reports/<sweep_id>/)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap and permutation resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-log", action="store_true", help="write the report files only, log nothing to MLflow")
    parser.add_argument(
        "--register",
        nargs="?",
        const="",
        metavar="NAME",
        help="register the winning arm in the MLflow Model Registry as a new version of NAME (default: the experiment)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        result = compare(
            args.tracking_uri,
            sweep_id=args.sweep_id,
            experiment=args.experiment,
            out_dir=args.out,
            n_resamples=args.resamples,
            seed=args.seed,
            log_to_mlflow=not args.no_log,
        )
    except SweepNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(result["out_dir"])
    print((out / "report.md").read_text())
    print(f"Report written to {out}/ ({', '.join(REPORT_FILES)})")
    if not args.no_log:
        print(f"Logged on the sweep's parent run {result['parent_run_id']} under report/")
    if args.register is not None:
        return _register(result, args.register)
    return 0


def winning_arm(result: dict) -> dict | None:
    """The arm to register: of the best LoRA arm and the full fine-tune, the higher NanoBEIR mean NDCG@10."""
    names = {result["best_lora_run"], result["full_run"]} - {None}
    candidates = [row for row in result["rows"] if row["name"] in names and row["run_id"] and row["ndcg_at_10"]]
    return max(candidates, key=lambda row: row["ndcg_at_10"]["mean"], default=None)


def _register(result: dict, name: str) -> int:
    from pipeline.tracking.registry import register_run_model

    winner = winning_arm(result)
    if winner is None:
        print("error: --register: the sweep has no finished arm with scores to register", file=sys.stderr)
        return 2
    client = open_client(result["tracking_uri"])
    name = name or client.get_experiment(result["experiment_id"]).name
    model_version = register_run_model(client, winner["run_id"], name)
    print(f"Registered {winner['name']} (run {winner['run_id']}) as model '{name}' version {model_version.version}")
    return 0
