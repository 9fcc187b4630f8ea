"""The sweep report: which LoRA rank/alpha, and how far from a full fine-tune?

    python -m pipeline.compare [--sweep-id ID | --experiment NAME] [--tracking-uri URI] [--out DIR]

Reads MLflow only (never the pipeline's cache): the sweep's parent run (tag `pipeline.role=sweep`), its child runs
(one per job: params `finetune.*`, NanoBEIR metrics, `evaluation/per_query.json` and
`evaluation/baseline/per_query.json`). Writes `report.md`, `comparison.json` and three PNG plots to the output dir,
and logs them on the parent run under `report/` with summary metrics and a `best_lora_run` tag.

Statistics (pipeline.stats) are over queries: the CI of a run's NanoBEIR mean is a stratified bootstrap, and each
run is compared with the full fine-tune on the same queries (paired bootstrap CI, sign-flip permutation p-value).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.stats import Estimate, PairedTest, bootstrap_ci, paired_test
from pipeline.sweep import sweep_runs
from pipeline.tracking import METRIC, all_experiments, search_all_runs

DATASET_METRIC = re.compile(r"^nanobeir_(?P<name>.+)_ndcg_at_10$")
PER_QUERY = "evaluation/per_query.json"
BASELINE_PER_QUERY = "evaluation/baseline/per_query.json"
REPORT_FILES = ("report.md", "comparison.json", "ndcg_vs_r.png", "ndcg_vs_params.png", "per_dataset.png")
SHOWN_SWEEP_IDS = 5


class SweepNotFound(LookupError):
    """No sweep matches the request; the message says what exists instead."""


@dataclass
class Arm:
    """One row of the report: a child run of the sweep, or the base model."""

    name: str
    method: str
    status: str
    run_id: str | None = None
    start_time: int = 0
    r: int | None = None
    alpha: int | None = None
    dropout: float | None = None
    error: str | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    weights_mb: float | None = None
    per_query: dict | None = None
    per_dataset: dict[str, float] = field(default_factory=dict)
    ndcg: Estimate | None = None
    delta: PairedTest | None = None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "run_id": self.run_id,
            "method": self.method,
            "status": self.status,
            "error": self.error,
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "weights_mb": self.weights_mb,
            "ndcg_at_10": _no_nan(self.ndcg._asdict()) if self.ndcg else None,  # no CI without per-query scores
            "per_dataset_ndcg_at_10": self.per_dataset,
            "delta_vs_full": self.delta._asdict() if self.delta else None,
        }


def _no_nan(values: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def default_outputs() -> Path:
    return Path(os.environ.get("PIPELINE_OUTPUTS") or "outputs").resolve()


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the pipeline's default DB: sqlite:///<PIPELINE_OUTPUTS or outputs>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_outputs() / 'mlflow.db'}"


def sweep_id_of(run: Run) -> str:
    return run.data.tags.get("sweep_id") or (run.info.run_name or run.info.run_id).removeprefix("sweep-")


def list_sweeps(client: MlflowClient, experiment_ids: list[str] | None = None) -> list[Run]:
    """Parent runs of sweeps (tag `pipeline.role=sweep`), newest first, across all experiments unless given."""
    return search_all_runs(client, "tags.`pipeline.role` = 'sweep'", experiment_ids, ["attributes.start_time DESC"])


def find_sweep(client: MlflowClient, sweep_id: str | None = None, experiment: str | None = None) -> Run:
    """The sweep's parent run: by id, else the newest sweep (in `experiment` if given, else in any experiment)."""
    experiment_ids = None
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = ", ".join(e.name for e in all_experiments(client)) or "none"
            raise SweepNotFound(f"no experiment named {experiment!r}; existing experiments: {names}")
        experiment_ids = [found.experiment_id]
    sweeps = list_sweeps(client, experiment_ids)
    where = f" in experiment {experiment!r}" if experiment is not None else ""
    if sweep_id is None:
        if not sweeps:
            raise SweepNotFound(f"no sweep{where} (no run tagged pipeline.role=sweep); run a sweep first")
        return sweeps[0]
    for run in sweeps:
        if sweep_id_of(run) == sweep_id:
            return run
    ids = [sweep_id_of(run) for run in sweeps]
    shown = ", ".join(ids[:SHOWN_SWEEP_IDS]) + (
        f" (and {len(ids) - SHOWN_SWEEP_IDS} more)" if len(ids) > SHOWN_SWEEP_IDS else ""
    )
    raise SweepNotFound(f"no sweep with id {sweep_id!r}{where}; existing sweep ids, newest first: {shown or 'none'}")


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
    client = _client(uri)
    parent = find_sweep(client, sweep_id, experiment)
    sweep = sweep_id_of(parent)
    out = Path(out_dir) if out_dir is not None else default_outputs() / "reports" / sweep
    out.mkdir(parents=True, exist_ok=True)

    warnings: list[str] = []
    arms, baseline = _load_arms(client, parent, warnings)
    rows = [baseline, *_ordered(arms)] if baseline else _ordered(arms)
    for arm in rows:
        if arm.per_query is not None:
            arm.ndcg = bootstrap_ci(arm.per_query, n=n_resamples, seed=seed, level=level)
    full = _full_arm(arms, warnings)
    if full is not None and full.per_query is not None:
        for arm in rows:
            if arm is full or arm.per_query is None:
                continue
            try:
                arm.delta = paired_test(arm.per_query, full.per_query, n=n_resamples, seed=seed, level=level)
            except ValueError as error:
                warnings.append(f"{arm.name}: no paired test against {full.name}: {error}")
    best = _best_lora(arms)
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
    _plot_ndcg_vs_r(out / "ndcg_vs_r.png", arms, baseline, full, level)
    _plot_ndcg_vs_params(out / "ndcg_vs_params.png", arms, baseline, level)
    _plot_per_dataset(out / "per_dataset.png", baseline, best, full, datasets, n_resamples, seed, level)
    if log_to_mlflow:
        _log_on_parent(client, parent.info.run_id, out, best, full)
    result["out_dir"] = str(out)
    return result


# ---------------------------------------------------------------- reading MLflow


def _client(uri: str) -> MlflowClient:
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise SweepNotFound(
            f"no MLflow database at {uri[len('sqlite:///') :]}; run a sweep first or pass --tracking-uri"
        )
    return MlflowClient(uri)


def _load_arms(client: MlflowClient, parent: Run, warnings: list[str]) -> tuple[list[Arm], Arm | None]:
    """The sweep's child runs as arms, and the base model's arm from their baseline artifacts and metrics."""
    children = sweep_runs(client, parent.info.run_id)  # its jobs, and the finished runs it reused
    arms, baselines, baseline_metrics = [], [], {}
    for run in children:
        arm = _arm(run)
        arms.append(arm)
        if arm.status != "FINISHED":
            continue
        arm.per_query = _read_json(client, run.info.run_id, PER_QUERY)
        if arm.per_query is None:
            warnings.append(f"{arm.name}: no {PER_QUERY} artifact; mean from its metrics, without CI or test")
        else:
            arm.per_dataset = _per_dataset(arm.per_query)
        baseline_pq = _read_json(client, run.info.run_id, BASELINE_PER_QUERY)
        if baseline_pq is not None:
            baselines.append((arm.name, baseline_pq))
        baseline_metrics = baseline_metrics or _dataset_metrics(run.data.metrics, "baseline_")
    baseline = None
    if baselines:
        first_name, first = baselines[0]
        differing = [name for name, pq in baselines[1:] if pq != first]
        if differing:
            warnings.append(f"baseline per-query scores differ between {first_name} and {', '.join(differing)}")
        baseline = Arm("baseline", "none", "", per_query=first, per_dataset=_per_dataset(first))
    elif baseline_metrics:
        baseline = Arm("baseline", "none", "", per_dataset=baseline_metrics)
        warnings.append(f"no {BASELINE_PER_QUERY} artifact; baseline from metrics, without CI or test")
    if baseline is not None and baseline.per_query is None and METRIC in baseline.per_dataset:
        baseline.ndcg = Estimate(baseline.per_dataset.pop(METRIC), math.nan, math.nan)
    for arm in arms:
        if arm.per_query is None and METRIC in arm.per_dataset:
            arm.ndcg = Estimate(arm.per_dataset.pop(METRIC), math.nan, math.nan)
    return arms, baseline


def _arm(run: Run) -> Arm:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    method = tags.get("method") or params.get("finetune.method") or ("full" if run.info.run_name == "full" else "lora")
    lora = method == "lora"
    arm = Arm(
        name=run.info.run_name or run.info.run_id,
        method=method,
        status=run.info.status,
        run_id=run.info.run_id,
        start_time=run.info.start_time or 0,
        r=_number(params.get("finetune.r"), int) if lora else None,
        alpha=_number(params.get("finetune.alpha"), int) if lora else None,
        dropout=_number(params.get("finetune.dropout"), float) if lora else None,
        error=tags.get("error"),
        trainable_params=_number(metrics.get("trainable_params"), int),
        total_params=_number(metrics.get("total_params"), int),
        weights_mb=metrics.get("weights_mb"),
    )
    if arm.status == "FINISHED":
        arm.per_dataset = _dataset_metrics(metrics, "")  # replaced by the per-query means when those exist
    return arm


def _dataset_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """{dataset: ndcg@10} from `<prefix>nanobeir_<dataset>_ndcg_at_10` metrics, and the mean under METRIC."""
    found = {}
    for key, value in metrics.items():
        match = DATASET_METRIC.match(key[len(prefix) :]) if key.startswith(prefix) else None
        if match:
            found[METRIC if match["name"] == "mean" else match["name"]] = value
    return found


def _read_json(client: MlflowClient, run_id: str, path: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text())


def _per_dataset(per_query: dict) -> dict[str, float]:
    return {name: sum(scores.values()) / len(scores) for name, scores in sorted(per_query.items()) if scores}


def _number(value, kind):
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if kind is int and number.is_integer() else kind(number)


def _ordered(arms: list[Arm]) -> list[Arm]:
    """LoRA by r then alpha, then the full fine-tune(s), then anything else; ties by name."""
    order = {"lora": 0, "full": 1}

    def key(arm: Arm):
        r = arm.r if arm.r is not None else math.inf
        alpha = arm.alpha if arm.alpha is not None else math.inf
        return order.get(arm.method, 2), r, alpha, arm.name, arm.start_time

    return sorted(arms, key=key)


def _full_arm(arms: list[Arm], warnings: list[str]) -> Arm | None:
    full = [a for a in arms if a.method == "full" and a.status == "FINISHED" and a.ndcg is not None]
    if not full:
        return None
    full.sort(key=lambda a: a.start_time, reverse=True)
    if len(full) > 1:
        warnings.append(f"{len(full)} finished full fine-tunes; compared against the newest, {full[0].run_id}")
    return full[0]


def _best_lora(arms: list[Arm]) -> Arm | None:
    """The finished LoRA run with the highest NanoBEIR mean; on a tie, the one with fewer trainable parameters."""
    lora = [a for a in arms if a.method == "lora" and a.status == "FINISHED" and a.ndcg is not None]
    if not lora:
        return None
    return max(lora, key=lambda a: (a.ndcg.mean, -(a.trainable_params or 0)))


# ---------------------------------------------------------------- the table


def table_rows(rows: list[Arm], datasets: list[str], level: float) -> tuple[list[str], list[list[str]]]:
    percent = f"{level:.0%}"
    header = ["run", "method", "r", "alpha", "trainable params", "weights MB", f"NDCG@10 [{percent} CI]"]
    header += datasets + [f"Δ vs full [{percent} CI]", "p", "status"]
    body = []
    for arm in rows:
        line = [
            arm.name,
            arm.method,
            _text(arm.r),
            _text(arm.alpha),
            f"{arm.trainable_params:,}" if arm.trainable_params is not None else "",
            f"{arm.weights_mb:.1f}" if arm.weights_mb is not None else "",
            _estimate(arm.ndcg),
        ]
        line += [f"{arm.per_dataset[d]:.4f}" if d in arm.per_dataset else "" for d in datasets]
        line += [_delta(arm.delta), _p(arm.delta.p_value) if arm.delta else "", arm.status]
        body.append(line)
    return header, body


def render_markdown(
    result: dict, rows: list[Arm], baseline: Arm | None, best: Arm | None, full: Arm | None, level: float
) -> str:
    header, body = table_rows(rows, result["datasets"], level)
    stats = result["statistics"]
    lines = [f"# Sweep {result['sweep_id']}: LoRA vs full fine-tune on NanoBEIR", ""]
    lines += _answer(rows, baseline, best, full) + [""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < 2 or i == len(header) - 1 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in line) + " |" for line in body]
    failed = [a for a in rows if a.status not in ("FINISHED", "")]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- **{a.name}** ({a.run_id}): {a.status}: {_cell(a.error or 'no error recorded')}" for a in failed]
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    lines += [
        "",
        "## How to read this",
        "",
        "- NDCG@10 is the NanoBEIR mean: the unweighted mean over datasets of the per-dataset mean over queries.",
        f"- CIs: {stats['ci']} ({stats['resamples']:,} resamples, seed {stats['seed']}).",
        f"- Δ vs full: mean(run) − mean(full) on the same queries, paired bootstrap CI; p: {stats['p_value']}. "
        "p-values are per comparison, not adjusted for the number of runs compared.",
        f"- Parent run `{result['parent_run_id']}` in `{result['tracking_uri']}`.",
        "",
    ]
    return "\n".join(lines)


def _answer(rows: list[Arm], baseline: Arm | None, best: Arm | None, full: Arm | None) -> list[str]:
    lines = []
    if best is None:
        lines.append("- No LoRA run finished.")
    else:
        line = f"- Best LoRA: **{best.name}** (r={best.r}, alpha={best.alpha}), NDCG@10 {_estimate(best.ndcg)}"
        if best.delta is not None:
            line += f"; Δ vs full {_delta(best.delta)}, p = {_p(best.delta.p_value)}"
        if full is not None and best.trainable_params and full.trainable_params:
            line += f"; {best.trainable_params / full.trainable_params:.2%} of full's trainable parameters"
        if full is not None and best.weights_mb is not None and full.weights_mb is not None:
            line += f", {best.weights_mb:.1f} MB of weights vs {full.weights_mb:.1f} MB"
        lines.append(line + ".")
    lines.append(f"- Full fine-tune: **{full.name}**, NDCG@10 {_estimate(full.ndcg)}." if full else "- No full arm.")
    if baseline is not None and baseline.ndcg is not None:
        lines.append(f"- Base model: NDCG@10 {_estimate(baseline.ndcg)}.")
    failed = sum(a.status not in ("FINISHED", "") for a in rows)
    if failed:
        lines.append(f"- {failed} job(s) did not finish; see Failed jobs.")
    return lines


def _text(value) -> str:
    return "" if value is None else str(value)


def _estimate(e: Estimate | None) -> str:
    if e is None:
        return ""
    if math.isnan(e.low):
        return f"{e.mean:.4f}"
    return f"{e.mean:.4f} [{e.low:.4f}, {e.high:.4f}]"


def _delta(t: PairedTest | None) -> str:
    return "" if t is None else f"{t.delta:+.4f} [{t.low:+.4f}, {t.high:+.4f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _cell(text: str) -> str:
    text = " ".join(str(text).split())
    return (text[:300] + "…" if len(text) > 300 else text).replace("|", "\\|")


# ---------------------------------------------------------------- plots


def _plot_ndcg_vs_r(path: Path, arms: list[Arm], baseline: Arm | None, full: Arm | None, level: float) -> None:
    fig, ax = _figure()
    lora = [a for a in arms if a.method == "lora" and a.ndcg is not None and a.r is not None]
    alphas = sorted({a.alpha for a in lora}, key=lambda x: (x is None, x))
    for i, alpha in enumerate(alphas):
        points = sorted((a for a in lora if a.alpha == alpha), key=lambda a: a.r)
        shift = 2 ** (0.04 * (i - (len(alphas) - 1) / 2))  # side by side, so error bars do not overlap
        ax.errorbar(
            [a.r * shift for a in points],
            [a.ndcg.mean for a in points],
            yerr=_yerr(points),
            marker="o",
            capsize=3,
            label=f"LoRA alpha={alpha}",
        )
    _reference(ax, full, "full fine-tune", "tab:red", "-")
    _reference(ax, baseline, "base model", "gray", "--")
    if lora:
        ax.set_xscale("log", base=2)
        ranks = sorted({a.r for a in lora})
        ax.xaxis.set_major_locator(FixedLocator(ranks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(r) for r in ranks])
        ax.set_xlim(min(ranks) / 1.4, max(ranks) * 1.4)
    else:
        ax.text(0.5, 0.5, "no finished LoRA runs", transform=ax.transAxes, ha="center")
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("NanoBEIR mean NDCG@10")
    ax.set_title(f"NDCG@10 vs LoRA rank ({level:.0%} bootstrap CI)")
    _finish(fig, ax, path)


def _plot_ndcg_vs_params(path: Path, arms: list[Arm], baseline: Arm | None, level: float) -> None:
    fig, ax = _figure()
    points = [a for a in arms if a.ndcg is not None and a.trainable_params]
    for method, color in (("lora", "tab:blue"), ("full", "tab:red")):
        group = [a for a in points if a.method == method]
        if group:
            ax.errorbar(
                [a.trainable_params for a in group],
                [a.ndcg.mean for a in group],
                yerr=_yerr(group),
                fmt="o",
                color=color,
                capsize=3,
                label="LoRA" if method == "lora" else "full fine-tune",
            )
    frontier = efficiency_frontier(points)
    for a in points:  # only the frontier and the full fine-tune are named: the rest would overlap, the table has them
        if a in frontier or a.method == "full":
            ax.annotate(
                a.name, (a.trainable_params, a.ndcg.mean), textcoords="offset points", xytext=(5, 5), fontsize=7
            )
    if frontier:
        ax.plot(
            [a.trainable_params for a in frontier],
            [a.ndcg.mean for a in frontier],
            drawstyle="steps-post",
            color="black",
            linewidth=1,
            marker="o",
            markerfacecolor="none",
            markersize=11,
            label="efficiency frontier",
        )
    _reference(ax, baseline, "base model", "gray", "--")
    if points:
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no finished runs with trainable_params", transform=ax.transAxes, ha="center")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("NanoBEIR mean NDCG@10")
    ax.set_title(f"NDCG@10 vs trainable parameters ({level:.0%} bootstrap CI)")
    _finish(fig, ax, path)


def efficiency_frontier(arms: list[Arm]) -> list[Arm]:
    """The runs that no other run beats with as many or fewer trainable parameters, by parameters ascending."""
    frontier, best = [], -math.inf
    for arm in sorted(arms, key=lambda a: (a.trainable_params, -a.ndcg.mean)):
        if arm.ndcg.mean > best:
            frontier.append(arm)
            best = arm.ndcg.mean
    return frontier


def _plot_per_dataset(
    path: Path,
    baseline: Arm | None,
    best: Arm | None,
    full: Arm | None,
    datasets: list[str],
    n_resamples: int,
    seed: int,
    level: float,
) -> None:
    groups = [*datasets, "NanoBEIR mean"]
    series = [(a, label) for a, label in ((baseline, "base model"), (best, "best LoRA"), (full, "full fine-tune")) if a]
    fig, ax = _figure(max(9, 0.7 * len(groups) + 4))
    width = 0.8 / max(1, len(series))
    for i, (arm, label) in enumerate(series):
        values, errors = [], [[], []]
        for group in groups:
            if group == "NanoBEIR mean":
                estimate = arm.ndcg
            elif arm.per_query is not None and group in arm.per_query:
                estimate = bootstrap_ci({group: arm.per_query[group]}, n=n_resamples, seed=seed, level=level)
            else:
                estimate = Estimate(arm.per_dataset[group], math.nan, math.nan) if group in arm.per_dataset else None
            values.append(estimate.mean if estimate else math.nan)
            errors[0].append(_half(estimate, low=True))
            errors[1].append(_half(estimate, low=False))
        name = label if arm is baseline or arm.name == "full" else f"{label} ({arm.name})"
        x = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(x, values, width, yerr=errors, capsize=2, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"NDCG@10 per dataset ({level:.0%} bootstrap CI)")
    if not series:
        ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center")
    _finish(fig, ax, path)


def _yerr(arms: list[Arm]) -> list[list[float]]:
    return [[_half(a.ndcg, low=True) for a in arms], [_half(a.ndcg, low=False) for a in arms]]


def _half(e: Estimate | None, low: bool) -> float:
    if e is None or math.isnan(e.low):
        return 0.0
    return max(0.0, e.mean - e.low) if low else max(0.0, e.high - e.mean)


def _reference(ax, arm: Arm | None, label: str, color: str, style: str) -> None:
    """A horizontal line at the arm's NanoBEIR mean, with its CI as a band."""
    if arm is None or arm.ndcg is None:
        return
    ax.axhline(arm.ndcg.mean, color=color, linestyle=style, label=f"{label} {arm.ndcg.mean:.4f}")
    if not math.isnan(arm.ndcg.low):
        ax.axhspan(arm.ndcg.low, arm.ndcg.high, color=color, alpha=0.12, linewidth=0)


def _figure(width: float = 9, height: float = 4.5):
    """A figure on its own Agg canvas: no pyplot, no global backend state."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(fig, ax, path: Path) -> None:
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # outside the axes, so it never hides a point or a band
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- logging on the parent


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


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.compare",
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
