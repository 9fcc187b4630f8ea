"""Published vs ours: a recipe's published NanoBEIR mean NDCG@10 (the `published:` block of its config,
pipeline.config.PublishedConfig, logged as `published.*` params) beside the published-recipe runs of a sweep, with each
run's settings that differ from the publication (`published.recipe.*`).

Reads MLflow only. `make reproduce` puts this table first in its report, above the protocol's verdict.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline import schema
from pipeline.report.load import SweepNotFound, is_adapter, sweep_id_of
from pipeline.sweep.callbacks import sweep_runs

NDCG = "published.ndcg."  # published.ndcg.<finetune.method>: the published NanoBEIR mean NDCG@10
RECIPE = "published.recipe."  # published.recipe.<our config key>: the publication's value of that setting
SOURCE = "published.source"


@dataclass
class RecipeRun:
    """One published-recipe run beside its published number."""

    name: str
    run_id: str
    method: str
    status: str
    loss: str
    seed: str
    ours: float | None  # NanoBEIR mean NDCG@10 of the run (None: not finished)
    published: float | None  # the publication's number for this method (None: it published none)
    differences: list[str]  # "key: ours X, published Y" for each recipe setting the run does not share

    def to_json(self) -> dict:
        return dict(self.__dict__)


def is_recipe_run(run: Run) -> bool:
    """A run of a config with a `published:` block (a protocol run logs `published=None`)."""
    return any(key.startswith(NDCG) for key in run.data.params)


def recipe_runs(client: MlflowClient, parent: Run) -> list[Run]:
    return [run for run in sweep_runs(client, parent.info.run_id) if is_recipe_run(run)]


def published_table(client: MlflowClient, parent: Run) -> dict:
    """The published-vs-ours table of a sweep of published-recipe runs; SweepNotFound when it holds none."""
    runs = recipe_runs(client, parent)
    if not runs:
        raise SweepNotFound(
            f"sweep {sweep_id_of(parent)} has no published-recipe runs (runs of a config with a published: block, "
            "such as experiment=paper_lora_mnrl,paper_full_mnrl)"
        )
    rows = sorted((_row(run) for run in runs), key=lambda r: (not is_adapter(r.method), r.method, r.seed, r.name))
    return {
        "sweep_id": sweep_id_of(parent),
        "parent_run_id": parent.info.run_id,
        "source": runs[0].data.params.get(SOURCE, ""),
        "rows": [row.to_json() for row in rows],
        "delta": _delta(rows),
    }


def _row(run: Run) -> RecipeRun:
    params = run.data.params
    method = params.get("finetune.method", "")
    published = params.get(f"{NDCG}{method}")
    ours = (
        run.data.metrics.get(schema.benchmark_mean(run.data.tags.get(schema.BENCHMARK, schema.NANOBEIR)))
        if run.info.status == "FINISHED"
        else None
    )
    return RecipeRun(
        name=run.info.run_name or run.info.run_id,
        run_id=run.info.run_id,
        method=method,
        status=run.info.status,
        loss=params.get("train.loss", ""),
        seed=params.get("train.seed", ""),
        ours=ours,
        published=None if published in (None, "None") else float(published),
        differences=differences(params),
    )


def differences(params: dict[str, str]) -> list[str]:
    """`key: ours X, published Y` for each published setting the run has (a full fine-tune has no finetune.r) and
    does not share; both sides are flattened the same way (pipeline.tracking.identity.flat_params)."""
    found = []
    for key, theirs in sorted(params.items()):
        ours_key = key.removeprefix(RECIPE)
        if key.startswith(RECIPE) and ours_key in params and not _same(params[ours_key], theirs):
            found.append(f"{ours_key}: ours {params[ours_key]}, published {theirs}")
    return found


def _same(ours: str, theirs: str) -> bool:
    try:
        return math.isclose(float(ours), float(theirs), rel_tol=1e-9)
    except ValueError:
        return ours == theirs


def _delta(rows: list[RecipeRun]) -> dict | None:
    """Adapter minus full fine-tune, published and ours (each method's mean over its finished runs); None unless the
    sweep has one adapter method and the full fine-tune."""
    adapters = {r.method for r in rows if is_adapter(r.method)}
    if len(adapters) != 1 or not any(r.method == "full" for r in rows):
        return None
    (adapter,) = adapters

    def mean(method: str, field: str) -> float | None:
        values = [getattr(r, field) for r in rows if r.method == method and getattr(r, field) is not None]
        return sum(values) / len(values) if values else None

    delta = {}
    for field in ("published", "ours"):
        a, f = mean(adapter, field), mean("full", field)
        delta[field] = None if a is None or f is None else a - f
    return {"adapter": adapter, **delta}


def render_published(table: dict) -> list[str]:
    """Markdown lines: the table, then each run's settings that differ from the publication, one line per run."""

    def num(x: float | None, sign: bool = False) -> str:
        return "—" if x is None else (f"{x:+.4f}" if sign else f"{x:.4f}")

    lines = [
        f"# Published vs ours: NanoBEIR mean NDCG@10 (sweep {table['sweep_id']})",
        "",
        f"Published: {table['source']}.",
        "",
        "| run | method | loss | seed | published | ours | ours − published |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in table["rows"]:
        ours = num(r["ours"]) if r["status"] == "FINISHED" else r["status"]
        gap = None if r["ours"] is None or r["published"] is None else r["ours"] - r["published"]
        lines.append(
            f"| {r['name']} | {r['method']} | {r['loss']} | {r['seed']} | {num(r['published'])} | {ours} | "
            f"{num(gap, sign=True)} |"
        )
    delta = table["delta"]
    if delta is not None:
        gap = None if delta["ours"] is None or delta["published"] is None else delta["ours"] - delta["published"]
        lines.append(
            f"| Δ {delta['adapter']} − full | | | | {num(delta['published'], True)} | {num(delta['ours'], True)} | "
            f"{num(gap, sign=True)} |"
        )
    lines += ["", "Settings that differ from the publication:", ""]
    for r in table["rows"]:
        lines.append(f"- {r['name']}: {'; '.join(r['differences']) if r['differences'] else 'none'}")
    return lines + [""]


def recipe_sweep(client: MlflowClient, parent: Run) -> bool:
    """Whether every run of the sweep is a published-recipe run (make reproduce's first step)."""
    runs = sweep_runs(client, parent.info.run_id)
    return bool(runs) and all(is_recipe_run(run) for run in runs)


def recipe_report(client: MlflowClient, parent, out: Path, uri: str, log_to_mlflow: bool) -> dict:
    """A sweep of published-recipe runs alone (make reproduce's first step): its published-vs-ours table; one run per
    method and seed is no protocol sweep (no fresh seeds, no interval), so no verdict."""
    table = published_table(client, parent)
    result = {
        "sweep_id": table["sweep_id"],
        "parent_run_id": parent.info.run_id,
        "experiment_id": parent.info.experiment_id,
        "tracking_uri": uri,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "published": table,
        "verdict": None,
        "configurations": [],
        "rows": [],
        "warnings": [],
    }
    note = (
        "This sweep holds published-recipe runs only: no protocol verdict (it needs fresh seeds of configurations "
        "selected on dev: `make reproduce` runs `make decide` on the recipe next and puts this table atop its report)."
    )
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text("\n".join(render_published(table) + [note, ""]))
    if log_to_mlflow:
        for name in ("report.md", "comparison.json"):
            client.log_artifact(parent.info.run_id, str(out / name), schema.REPORT)
    result["out_dir"] = str(out)
    return result
