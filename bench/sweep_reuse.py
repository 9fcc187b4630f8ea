"""Sweep reuse: an N-job LoRA sweep vs the same N jobs as independent runs, and a re-run of the finished sweep.

Goals: the sweep computes the stages its jobs share (prepare_data, baseline) once; a re-run of a finished sweep costs
≤ 3% of the first run (every stage is reused from the cache).

    python -m bench.sweep_reuse [--jobs 2] [--steps 2] [--batch 16] [--reruns 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import (
    MINILM,
    PYTHON,
    BenchResult,
    Row,
    bench_env,
    markdown_table,
    median,
    msmarco_subset,
    quiet,
    run_measured,
    scratch_dir,
    stage_statuses,
    verdict,
)
from bench.overhead import EXPERIMENT, import_seconds, pipeline_overrides, pipeline_timeline, warm_up

RERUN_GOAL = 0.03
SHARED = ("prepare_data", "baseline")
RANKS = (4, 8, 16, 32, 64, 2, 128, 256)


def ran_counts(stderr: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, status, _ in stage_statuses(stderr):
        counts.setdefault(name, 0)
        counts[name] += status == "ran"
    return counts


def run(
    jobs: int = 2,
    steps: int = 2,
    batch: int = 16,
    docs: int | None = 160,
    reruns: int = 2,
    model: str = MINILM,
    queries: int | None = 8,
) -> BenchResult:
    started = time.perf_counter()
    work = scratch_dir("bench-sweep-")
    eval_dir = msmarco_subset(work / "msmarco", docs, queries)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    warm_up(bench_env(work / "warmup"), tracking_uri)
    ranks = RANKS[:jobs]

    def overrides(outputs: Path) -> list[str]:
        return pipeline_overrides(eval_dir, outputs, tracking_uri, steps, batch, model, ("finetune.alpha=8",))

    # Independent runs first, then the sweep (independent runs share nothing: a stage cache each)
    independent = []
    for i, r in enumerate(ranks):
        scratch = work / f"independent-{i}"
        cmd = [PYTHON, "-m", "pipeline", *overrides(scratch / "outputs"), f"finetune.r={r}"]
        independent.append(run_measured(cmd, env=bench_env(scratch)).check())
    sweep_scratch = work / "sweep"
    sweep_cmd = [
        PYTHON,
        "-m",
        "pipeline",
        "-m",
        *overrides(sweep_scratch / "outputs"),
        f"finetune.r={','.join(map(str, ranks))}",
    ]
    env = bench_env(sweep_scratch)
    first = run_measured(sweep_cmd, env=env).check()
    again = [run_measured(sweep_cmd, env=env).check() for _ in range(reruns)]
    start_s = import_seconds(env)
    timelines = [pipeline_timeline(m) for m in again]
    timeline = {k: median([t[k] for t in timelines if k in t]) for k in timelines[0]}
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in timeline.items() if k != "wall")

    independent_s = sum(m.wall_s for m in independent)
    sweep_ratio = first.wall_s / independent_s
    counts = ran_counts(first.stderr)
    shared_once = all(counts.get(name) == 1 for name in SHARED)
    per_job = {name: counts.get(name, 0) for name in ("finetune", "evaluate", "model_card")}
    rerun_s = median([m.wall_s for m in again])
    rerun_ratio = rerun_s / first.wall_s
    rerun_counts = [ran_counts(m.stderr) for m in again]
    all_cached = all(sum(c.values()) == 0 for c in rerun_counts)
    rerun_stage_s = median([sum(s for _, _, s in stage_statuses(m.stderr)) for m in again])

    rows = [
        Row(
            "sweep reuse",
            f"{jobs}-job LoRA sweep vs {jobs} independent runs",
            f"sweep {first.wall_s:.1f}s vs independent {independent_s:.1f}s; stages run in the sweep: "
            + ", ".join(f"{k} {v}×" for k, v in counts.items()),
            sweep_ratio,
            "shared stages once; < 1×",
            verdict(sweep_ratio, at_most=0.999) if shared_once else "MISS",
            "none needed: prepare_data and baseline keys do not depend on the LoRA hyper-parameters, so the sweep's "
            f"jobs reuse them (computed once, {'as measured' if shared_once else 'NOT as measured'}); "
            f"{jobs} independent runs compute them {jobs}×, and pay {jobs} process starts.",
        ),
        Row(
            "sweep reuse",
            "re-run of the finished sweep vs its first run",
            f"re-run {rerun_s:.1f}s (median of {reruns}) vs first {first.wall_s:.1f}s; every stage cached: "
            f"{all_cached}; cached stages took {rerun_stage_s:.1f}s, importing the pipeline alone {start_s:.1f}s; "
            f"re-run timeline: {parts}",
            rerun_ratio,
            f"≤ {RERUN_GOAL}×",
            verdict(rerun_ratio, at_most=RERUN_GOAL) if all_cached else "MISS",
            (
                "Within goal."
                if rerun_ratio <= RERUN_GOAL
                else "Above goal, but not from recomputation: every stage is reused (cached stages "
                f"{rerun_stage_s:.1f}s in all). The re-run's cost is fixed: the process start (importing torch, "
                f"transformers, sentence-transformers, MLflow, Hydra: {start_s:.1f}s), config validation and a new "
                f"MLflow run per job; against a first run of {first.wall_s:.0f}s it cannot reach 3%. It would on a "
                "sweep whose first run takes ≥ 33× that fixed cost (minutes of training per job)."
            ),
        ),
    ]
    details = {
        "how": (
            f"{jobs} LoRA jobs (r = {', '.join(map(str, ranks))}, alpha 8, {steps} steps × batch {batch}, "
            f"NanoMSMARCO {queries or 'all'} queries / {docs or 'all'} passages): first as {jobs} independent "
            "`python -m pipeline` processes with a stage cache each, then as one `python -m pipeline -m` sweep "
            f"with a fresh stage cache, then that same sweep command {reruns} more times (median); wall time of "
            "each process; stage statuses (ran / cached) from the pipeline's status lines. One MLflow DB for all, "
            "created by an excluded warm-up."
        ),
        "independent_s": [m.wall_s for m in independent],
        "sweep_s": first.wall_s,
        "rerun_s": [m.wall_s for m in again],
        "sweep_ran_counts": counts,
        "per_job_ran": per_job,
        "rerun_ran_counts": rerun_counts,
        "rerun_stage_s": rerun_stage_s,
        "import_s": start_s,
        "rerun_timelines_s": timelines,
        "config": {
            "jobs": jobs,
            "steps": steps,
            "batch": batch,
            "docs": docs,
            "reruns": reruns,
            "model": model,
            "experiment": EXPERIMENT,
        },
    }
    return BenchResult("sweep_reuse", rows, details, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--docs", type=int, default=160, help="NanoMSMARCO passages kept (0: all 2000)")
    parser.add_argument("--queries", type=int, default=8, help="NanoMSMARCO queries kept (0: all 36)")
    parser.add_argument("--reruns", type=int, default=2)
    parser.add_argument("--model", default=MINILM)
    args = parser.parse_args(argv)
    quiet()
    result = run(args.jobs, args.steps, args.batch, args.docs or None, args.reruns, args.model, args.queries or None)
    result.save()
    print(markdown_table(result.rows))
    return result


if __name__ == "__main__":
    main()
