"""The sweep report: is the selected adapter as good as the selected full fine-tune, and at which rank?

    python -m pipeline.report [--sweep-id ID | --experiment NAME] [--margin 0.01] [--target benchmark|queries]
                              [--tracking-uri URI] [--out DIR]

Reads MLflow only (never the pipeline's cache): the sweep's parent run (tag `pipeline.role=sweep`), its child runs
(params, dev and NanoBEIR metrics, `evaluation/per_query.json` and `evaluation/baseline/per_query.json`). Applies
the comparison protocol (`pipeline.report.applied`: selection on dev, seed + query intervals, the verdict within a
margin, Holm-adjusted p-values over the adapter configurations). Writes `report.md` (verdict sentence first),
`comparison.json` and four PNG plots to the output dir, and logs them on the parent run under `report/`, with the
tag `verdict` and the verdict sentence as the run's description.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline import schema
from pipeline.report.applied import Protocol, apply
from pipeline.report.load import (
    Arm,
    SweepNotFound,
    default_tracking_uri,
    find_sweep,
    fresh_order_of,
    grid_seeds_of,
    load_arms,
    no_nan,
    none_if_nan,
    open_client,
    ordered,
    recorded,
    sweep_id_of,
)
from pipeline.report.plots import plot_learn_forget, plot_ndcg_vs_cost, plot_ndcg_vs_r, plot_per_dataset
from pipeline.report.published import published_table, recipe_report, recipe_sweep, render_published
from pipeline.report.render import render_markdown, verdict_sentence
from pipeline.report.stats import bootstrap_ci
from pipeline.statistics.sequential import TARGETS, Design, combined
from pipeline.sweep.callbacks import SWEEP_FILE, end_gone_sweeps, sweep_info
from pipeline.tracking.uri import default_outputs

REPORT_FILES = (
    "report.md",
    "comparison.json",
    "ndcg_vs_r.png",
    "ndcg_vs_cost.png",
    "per_dataset.png",
    "learn_vs_forget.png",
)


def benchmark_of(arms: list) -> str:
    """The general benchmark every run of the sweep was scored on (its `benchmark` tag); runs scored on different
    ones are no comparison: ValueError naming them."""
    found = sorted({arm.benchmark for arm in arms if arm.status == "FINISHED"}) or ["NanoBEIR"]
    if len(found) > 1:
        raise ValueError(
            f"the sweep's runs were scored on different general benchmarks ({'; '.join(found)}): "
            "compare the runs of one benchmark (one eval.tasks) in a sweep of their own"
        )
    return found[0]


def compare(
    tracking_uri: str | None = None,
    sweep_id: str | None = None,
    experiment: str | None = None,
    out_dir: str | Path | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    log_to_mlflow: bool = True,
    margin: float = 0.01,
    cost: str = "trainable_params",
    target: str | None = None,
    published_sweep_id: str | None = None,
    in_domain_margin: float | None = None,
) -> dict:
    """Build the report of one sweep; write it to `out_dir`, log it on the sweep's parent run; return comparison.json.

    `published_sweep_id`: a sweep of published-recipe runs (make reproduce's first step) whose published-vs-ours table
    opens the report (pipeline.report.published). A sweep that holds only such runs gets that table alone, no verdict.

    Two verdicts where the runs were scored on an in-domain test set (`data.test_size`): in domain (that set, margin
    `in_domain_margin`, None: `margin`) and general (NanoBEIR), each the same protocol on the same selection and fresh
    seeds, and their combination (`verdicts`).

    `out_dir` defaults to <PIPELINE_OUTPUTS or outputs>/reports/<sweep_id>/. Raises SweepNotFound when there is no
    sweep to report on. `target`: what the verdict claims, "benchmark" (this benchmark's fixed queries, over training
    seeds) or "queries" (queries like these); None: the one `make decide` took its looks on (tag `decide.target`),
    else "benchmark".
    """
    if target is not None and target not in TARGETS:
        raise ValueError(f"target={target!r} is not allowed: one of {', '.join(TARGETS)}")
    uri = tracking_uri or default_tracking_uri()
    client = open_client(uri)
    gone = end_gone_sweeps(client)  # parent runs left RUNNING by a sweep process that is gone: KILLED, not running
    parent = find_sweep(client, sweep_id, experiment)
    sweep = sweep_id_of(parent)
    target = target or parent.data.tags.get(schema.DESIGN + "target") or "benchmark"
    out = Path(out_dir) if out_dir is not None else default_outputs() / "reports" / sweep
    out.mkdir(parents=True, exist_ok=True)
    published = published_table(client, find_sweep(client, published_sweep_id)) if published_sweep_id else None
    if published is None and recipe_sweep(client, parent):
        return recipe_report(client, parent, out, uri, log_to_mlflow)

    warnings: list[str] = [gone[parent.info.run_id]] if parent.info.run_id in gone else []
    if parent.info.status == "RUNNING":
        warnings.append(f"sweep {sweep} is still running: this report covers the jobs that ended so far")
    arms, baseline = load_arms(client, parent, warnings)
    benchmark = benchmark_of(arms)
    rows = [baseline, *ordered(arms)] if baseline else ordered(arms)
    for arm in rows:
        if arm.per_query is not None:
            arm.ndcg = bootstrap_ci(arm.per_query, n=n_resamples, seed=seed, level=level)
    protocol = apply(
        arms, margin, level, n_resamples, seed, target, grid_seeds_of(parent), design_of(parent, margin, 1 - level),
        fresh_order_of(parent),
    )  # fmt: skip
    warnings += protocol.notes
    in_domain = None  # the same protocol on the in-domain test set's scores: the in-domain verdict
    if any(a.in_domain for a in arms):
        in_domain_margin = margin if in_domain_margin is None else in_domain_margin
        design = design_of(parent, in_domain_margin, 1 - level, schema.DESIGN + "in_domain_margin")
        in_domain = apply(
            in_domain_arms(arms), design.margin if design else in_domain_margin, level, n_resamples, seed, target,
            grid_seeds_of(parent), design, fresh_order_of(parent),
        )  # fmt: skip
        warnings += [f"in domain: {note}" for note in in_domain.notes if note not in protocol.notes]
    datasets = sorted({d for arm in rows for d in arm.per_dataset})
    halves = verdicts(protocol, in_domain)
    decided = parent.data.tags.get(schema.VERDICT) if schema.VERDICT_SENTENCE in parent.data.tags else None
    answer = halves.get("combined", halves["general"])
    if decided is not None and decided != answer:  # make decide owns the verdict tags; the report checks them
        warnings.append(
            f"make decide tagged this sweep {schema.VERDICT}={decided}; this report's replay says {answer} "
            "(another --target or --margin than make decide's?)"
        )

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
            "margin": margin,
            "selection": "each method's configuration with the best in-domain dev NDCG@10 (never a test set)",
            "ci": "per run: stratified percentile bootstrap over queries within each dataset; per configuration: "
            "Student t with Welch-Satterthwaite df over seed and query variance (pipeline.statistics.seeds)",
            "p_value": "per run (run vs run): two-sided paired sign-flip permutation test vs the selected full "
            "fine-tune's run at the same seed, stratified by dataset; per configuration: Welch's t over per-seed "
            "means, Holm-adjusted over the grid's adapter configurations (pipeline.statistics.family)",
            "verdict": "TOST-style reading of the (1 - 2 alpha) and (1 - alpha) intervals of adapter - full on fresh "
            "seeds within +-margin; repeated intervals over the looks of make decide (pipeline.statistics.sequential)",
            "target": target,
        },
        "benchmark": benchmark,
        "datasets": datasets,
        "verdict": _verdict_json(protocol),
        "verdicts": halves,
        "in_domain_verdict": None if in_domain is None else _verdict_json(in_domain),
        "configurations": [_configuration_json(c) for c in protocol.configurations],
        "rows": [arm.to_json() for arm in rows],
        "warnings": warnings,
        "published": published,
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    opening = "\n".join(render_published(published)) + "\n" if published else ""  # published vs ours, then the verdict
    (out / "report.md").write_text(opening + render_markdown(result, rows, protocol, level, in_domain))
    plot_ndcg_vs_r(out / "ndcg_vs_r.png", protocol, baseline, level, benchmark)
    plot_ndcg_vs_cost(out / "ndcg_vs_cost.png", protocol, baseline, cost, level, benchmark)
    plot_per_dataset(out / "per_dataset.png", baseline, protocol, datasets, n_resamples, seed, level, benchmark)
    plot_learn_forget(out / "learn_vs_forget.png", protocol, datasets, level, benchmark)
    if log_to_mlflow:
        _log_on_parent(client, parent.info.run_id, out, protocol, halves, benchmark, verdict_tags=decided is None)
    result["out_dir"] = str(out)
    return result


def recorded_sweeps(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    """(tracking URI, sweep id, published sweep id): with --sweep-dir / --published-sweep-dir, as the step that made
    the sweep recorded them in its sweep dir (sweep.json), so that the report reads that sweep, in its store."""
    uri, ids = args.tracking_uri, {"sweep": args.sweep_id, "published": args.published_sweep_id}
    dirs = (("sweep", "--sweep-dir", args.sweep_dir), ("published", "--published-sweep-dir", args.published_sweep_dir))
    for name, flag, folder in dirs:
        if folder is None:
            continue
        info = sweep_info(folder)
        if info is None:
            raise SweepNotFound(f"{flag} {folder} has no {SWEEP_FILE}: no sweep started in that dir (hydra.sweep.dir)")
        if uri is not None and uri != info["tracking_uri"]:
            raise SweepNotFound(
                f"{flag} {folder}: sweep {info['sweep_id']} is recorded in {info['tracking_uri']}, not in {uri} "
                "(--tracking-uri, or the other sweep dir's store)"
            )
        uri, ids[name] = info["tracking_uri"], info["sweep_id"]
    return uri, ids["sweep"], ids["published"]


def design_of(parent, margin: float, alpha: float, margin_key: str = schema.DESIGN + "margin") -> Design | None:
    """The sequential design `make decide` recorded on the parent run (`decide.first`, `decide.step`,
    `decide.budget`; `margin_key` (`decide.margin`, or the in-domain verdict's `decide.in_domain_margin`) and
    `decide.alpha` where recorded, as the looks were taken with them), None for a sweep without looks."""
    values = [recorded(parent, schema.DESIGN + k) for k in ("first", "step", "budget")]
    if any(v is None for v in values):
        return None
    first, step, budget = (int(float(v)) for v in values)
    margin = float(recorded(parent, margin_key) or margin)
    alpha = float(recorded(parent, schema.DESIGN + "alpha") or alpha)
    return Design(margin=margin, alpha=alpha, first=first, step=step, budget=budget)


def in_domain_arms(arms: list[Arm]) -> list[Arm]:
    """The same runs scored on the in-domain test set instead of NanoBEIR (one "dataset", `test`): the protocol applied
    to them selects on the same dev scores and reads the same fresh seeds. A run without test scores has none."""
    return [replace(a, per_query=a.in_domain, per_dataset={}, ndcg=None, delta=None) for a in arms]


def verdicts(general: Protocol, in_domain: Protocol | None) -> dict[str, str]:
    """{"general", "in_domain", "combined"}: each half's label and the answer for both (`combined`); without an
    in-domain test set, the general verdict alone."""
    label = {name: p.verdict.label if p is not None and p.verdict is not None else "no verdict"
             for name, p in (("general", general), ("in_domain", in_domain))}  # fmt: skip
    if in_domain is None:
        return {"general": label["general"]}
    return {**label, "combined": combined(label["in_domain"], label["general"])}


def _verdict_json(protocol: Protocol) -> dict | None:
    if protocol.verdict is None:
        return None
    v = protocol.verdict
    fresh = {arm: [a.seed for a in runs] for arm, runs in protocol.in_delta.items()}
    h = protocol.heterogeneity
    return {
        "label": v.label,
        "sentence": verdict_sentence(protocol),
        "adapter": protocol.adapter.name,
        "full": protocol.full.name,
        "margin": v.margin,
        "delta": v.delta,
        "ci90": list(v.ci90),
        "ci95": list(v.ci95),
        "p_tost": none_if_nan(v.p_tost),
        "p_noninferiority": none_if_nan(v.p_noninferiority),
        "target": v.target,
        "seeds": {"adapter": v.seeds_adapter, "full": v.seeds_full},
        "fresh_seeds": fresh,
        "grid_seeds": sorted(protocol.grid_seeds),
        "looks": [no_nan(x.__dict__) for x in protocol.looks],
        "reason": v.reason,
        "stopped": v.stopped,
        "worst_seed": protocol.worst,
        "per_dataset": None if h is None else [d._asdict() for d in h.datasets],
        "heterogeneity": None if h is None else no_nan({"q": h.q, "i2": h.i2, "tau2": h.tau2, "drivers": h.drivers}),
        "rank": protocol.rank,
        "ranks": [no_nan(r._asdict()) for r in protocol.ranks],
    }


def _configuration_json(c) -> dict:
    e = c.estimate
    return {
        "name": c.name,
        "method": c.method,
        "selected": c.selected,
        schema.DEV: none_if_nan(c.dev),
        "runs": [a.run_id for a in c.runs],
        "seeds": [a.seed for a in c.runs],
        "nanobeir": None if e is None else no_nan({**e._asdict(), "seed_means": list(e.seed_means)}),
        "vs_full": None if c.test is None else no_nan(c.test._asdict()),  # Welch over seeds
        "p_holm": c.p_holm,
    }


def _log_on_parent(
    client: MlflowClient,
    run_id: str,
    out: Path,
    protocol: Protocol,
    halves: dict[str, str],
    benchmark: str,
    verdict_tags: bool,
) -> None:
    """The report's files, its description and metrics on the sweep's parent run; the `verdict*` tags only with
    `verdict_tags` (a sweep `make decide` did not tag: one writer per tag, make decide's on its own sweeps)."""
    for name in REPORT_FILES:
        client.log_artifact(run_id, str(out / name), schema.REPORT)
    now = int(time.time() * 1000)
    metrics = []
    if protocol.verdict is not None:
        client.set_tag(run_id, "mlflow.note.content", verdict_sentence(protocol))  # the run's description in the UI
        client.set_tag(run_id, schema.VERDICT_ADAPTER, protocol.adapter.name)
        client.set_tag(run_id, schema.run_ids_tag("adapter"), ",".join(a.run_id for a in protocol.adapter.finished))
        client.set_tag(run_id, schema.run_ids_tag("full"), ",".join(a.run_id for a in protocol.full.finished))
        metrics += [
            Metric(schema.VERDICT_DELTA, protocol.verdict.delta, now, 0),
            Metric(schema.VERDICT_MARGIN, protocol.verdict.margin, now, 0),
        ]
    if verdict_tags:
        tags = {}
        if "in_domain" in halves:  # each half's label; `verdict` is the answer for both
            tags |= {schema.VERDICT_IN_DOMAIN: halves["in_domain"], schema.VERDICT_GENERAL: halves["general"]}
        if protocol.verdict is not None:
            fresh = [[str(a.seed) for a in protocol.in_delta[arm]] for arm in ("adapter", "full")]
            tags |= {
                schema.VERDICT: halves.get("combined", protocol.verdict.label),
                schema.VERDICT_TARGET: protocol.verdict.target,
                schema.seeds_tag("adapter"): ",".join(fresh[0]),
                schema.seeds_tag("full"): ",".join(fresh[1]),
                schema.VERDICT_LOOKS: str(protocol.verdict.looks),
            }
            if protocol.ranks:
                tags[schema.VERDICT_RANK] = "none" if protocol.rank is None else str(protocol.rank)
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    for config, arm in ((protocol.adapter, "adapter"), (protocol.full, "full")):
        if config is not None and config.estimate is not None:
            metrics.append(Metric(schema.arm_mean(arm, benchmark), config.estimate.mean, now, 0))
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
    which.add_argument("--sweep-dir", help="the sweep started in this hydra.sweep.dir (its sweep.json: id and store)")
    recipe = parser.add_mutually_exclusive_group()
    recipe.add_argument("--published-sweep-id", help="a sweep of published-recipe runs: its table opens the report")
    recipe.add_argument("--published-sweep-dir", help="the same, by the hydra.sweep.dir it started in")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///<outputs>/mlflow.db")
    parser.add_argument("--out", help="output dir (default: <PIPELINE_OUTPUTS or outputs>/reports/<sweep_id>/)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap and permutation resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--margin", type=float, default=0.01, help="equivalence margin in NDCG@10 points (default 0.01)"
    )
    parser.add_argument(
        "--in-domain-margin", type=float, default=None, help="the in-domain verdict's margin (default: --margin)"
    )
    parser.add_argument(
        "--target",
        choices=list(TARGETS),
        default=None,
        help="what the verdict claims: benchmark (this benchmark's fixed queries, over training seeds) or queries "
        "(queries like these: seeds and queries); default: the target make decide looked on, else benchmark",
    )
    parser.add_argument(
        "--cost", choices=schema.COST, default="trainable_params", help="x axis of the cost frontier plot"
    )
    parser.add_argument("--no-log", action="store_true", help="write the report files only, log nothing to MLflow")
    parser.add_argument(
        "--register",
        nargs="?",
        const="",
        metavar="NAME",
        help="register the winning arm in the MLflow Model Registry as a new version of NAME (default: the experiment)",
    )
    args = parser.parse_args(argv)
    if not args.margin > 0:
        parser.error(f"--margin {args.margin} is not allowed: the equivalence margin must be > 0 NDCG@10 (e.g. 0.01)")
    if args.in_domain_margin is not None and not args.in_domain_margin > 0:
        parser.error(f"--in-domain-margin {args.in_domain_margin} is not allowed: it must be > 0 NDCG@10 (e.g. 0.01)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        uri, sweep_id, published_sweep_id = recorded_sweeps(args)
        result = compare(
            uri,
            sweep_id=sweep_id,
            experiment=args.experiment,
            out_dir=args.out,
            n_resamples=args.resamples,
            seed=args.seed,
            log_to_mlflow=not args.no_log,
            margin=args.margin,
            cost=args.cost,
            target=args.target,
            published_sweep_id=published_sweep_id,
            in_domain_margin=args.in_domain_margin,
        )
    except SweepNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(result["out_dir"])
    print((out / "report.md").read_text())
    print(f"Report written to {out}/ ({', '.join(f for f in REPORT_FILES if (out / f).is_file())})")
    if not args.no_log:
        print(f"Logged on the sweep's parent run {result['parent_run_id']} under report/")
    if args.register is not None:
        return _register(result, args.register)
    return 0


def winning_arm(result: dict) -> tuple[dict | None, str]:
    """The configuration to register, and why: the verdict's winner (the adapter when it is equivalent, non-inferior or
    superior: as good for a fraction of the parameters; the full fine-tune when the adapter is inferior); none when the
    verdict is inconclusive. A sweep of one method has no verdict: its configuration selected on dev. The run
    registered is the configuration's first seed's, never one picked by its test score."""
    configs = {c["name"]: c for c in result["configurations"] if c["runs"]}
    verdict = result.get("verdict")
    if verdict is not None:
        if verdict["label"] in ("inconclusive", "no verdict"):
            return None, f"the verdict is inconclusive ({verdict['reason'] or 'see the report'}): no winner to register"
        name = verdict["full"] if verdict["label"] == "inferior" else verdict["adapter"]
        return configs.get(name), f"the verdict: {verdict['label']}"
    selected = [c for c in configs.values() if c["selected"]]
    if len({c["method"] for c in configs.values()}) == 1 and len(selected) == 1:
        return selected[0], "the only method's configuration selected on dev"
    return None, "no verdict (it needs a finished adapter and a finished full fine-tune): no winner to register"


def _register(result: dict, name: str) -> int:
    from pipeline.tracking.registry import register_run_model

    winner, why = winning_arm(result)
    if winner is None:
        print(f"error: --register: {why}", file=sys.stderr)
        return 2
    client = open_client(result["tracking_uri"])
    name = name or client.get_experiment(result["experiment_id"]).name
    run_id = winner["runs"][0]
    model_version = register_run_model(client, run_id, name)
    print(f"Registered {winner['name']} ({why}; run {run_id}) as model '{name}' version {model_version.version}")
    return 0
