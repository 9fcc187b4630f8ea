"""Pipeline overhead: a LoRA run of `python -m pipeline` vs bench/bare_lora.py, the same training and evaluations
(NanoBEIR and the in-domain dev set, before and after) in plain sentence-transformers with the same config. Goal: the
pipeline's fixed cost over the bare script ≤ 1.5 s, end to end.

Both arms are subprocesses timed end to end (imports included), alternated (pipeline, bare, bare, pipeline, ...),
each with a fresh stage cache and a fresh `datasets` cache, so neither reuses the other's or its own earlier work. The
MLflow DB is created once beforehand (a user's exists already: creating it is a one-off, not a per-run cost).

    python -m bench.overhead [--reps 5] [--steps 4] [--batch 16] [--docs 160] [--queries 8]
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from bench.common import (
    MEDQUAD,
    MINILM,
    PYTHON,
    ROOT,
    BenchResult,
    Measured,
    Row,
    alternate,
    bench_env,
    markdown_table,
    median,
    msmarco_subset,
    pipeline_run_parser,
    quiet,
    run_measured,
    scratch_dir,
    stage_statuses,
    verdict,
)

GOAL_S = 1.5  # seconds of fixed cost over the bare script
EXPERIMENT = "bench"


def pipeline_overrides(
    eval_dir: Path, outputs: Path, tracking_uri: str, steps: int, batch: int, model: str = MINILM, extra: tuple = ()
) -> list[str]:
    """The run both arms do: MiniLM + LoRA on `steps × batch` MedQuAD pairs, NanoBEIR on the msmarco subset."""
    return [
        "finetune=lora",
        f"model.name={model}",
        f"data.path={MEDQUAD}",
        f"data.train_size={steps * batch}",
        "data.eval_size=64",
        f"eval.dataset_id={eval_dir}",
        "eval.datasets=[msmarco]",
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        f"tracking.experiment={EXPERIMENT}",
        f"tracking.uri={tracking_uri}",
        f"paths.outputs={outputs}",
        *extra,
    ]


def resolved_config(overrides: list[str]) -> dict:
    """The config `python -m pipeline <overrides>` runs with, resolved, plus the dir the model loads from."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from pipeline.config import register_configs
    from pipeline.models import model_source

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container["model_path"] = model_source(container["model"]["name"])
    return container


def warm_up(env: dict, tracking_uri: str) -> float:
    """Excluded from the timings: imports (page cache, the .pyc files of every pipeline module: bare's libraries are
    compiled already) and the one-off creation of the MLflow DB."""
    code = (
        "import sys, pipeline.app, pipeline.__main__; from pipeline.tracking.run import client_for, experiment_id; "
        f"u = sys.argv[1]; experiment_id(client_for(u), u, {EXPERIMENT!r})"
    )
    return run_measured([PYTHON, "-c", code, tracking_uri], env=env).check().wall_s


MARGINAL = """
import json, sys, time
start = time.perf_counter()
exec(compile(open(sys.argv[1]).read().split("def main", 1)[0], "bare_lora", "exec"))  # the bare script's imports
libraries = time.perf_counter()
import pipeline.__main__, pipeline.app
pipeline_imports = time.perf_counter()
from pipeline.tracking.store import client_for
client_for(sys.argv[2])
print(json.dumps({"bare_imports": libraries - start, "pipeline_imports": pipeline_imports - libraries,
                  "tracking_store": time.perf_counter() - pipeline_imports}))
"""


def marginal_seconds(env: dict, tracking_uri: str) -> dict[str, float]:
    """In one process, after the bare script's imports: what importing the run's process's pipeline modules adds
    (Hydra, its own modules; no MLflow), and what importing MLflow and opening its store costs (sqlite: SQLAlchemy's
    mappers and MLflow's schema check), which the tracker process pays on another core."""
    cmd = [PYTHON, "-c", MARGINAL, str(ROOT / "bench" / "bare_lora.py"), tracking_uri]
    return run_measured(cmd, env=env).check().last_json()


def import_seconds(env: dict, reps: int = 1) -> float:
    """What a `python -m pipeline` process pays to import the pipeline and its libraries (torch, transformers,
    sentence-transformers, datasets, Hydra; MLflow is its tracker's) before any work."""
    return median([run_measured([PYTHON, "-c", "import pipeline.app"], env=env).check().wall_s for _ in range(reps)])


def pipeline_timeline(measured: Measured) -> dict[str, float]:
    """Where a pipeline process's wall time went, from the arrival times of its `[pipeline]` status lines.

    boot: start → the `device` line (imports, Hydra compose, config validation, waiting for the tracker's store);
    open_run: → the first stage starts (its content fingerprints, the first stage key: the tracker opens the MLflow run
    meanwhile); stages: the stages' own seconds; between: the rest of the
    time between the first stage's start and the last stage's end (stage keys with their content fingerprints; the
    tracker logs each stage meanwhile); tail: the last stage's end → exit (waiting for the tracker to log the last
    stages and end the MLflow run, status table, teardown).
    """
    device = next((t for t, line in measured.stamps if line.startswith("[pipeline] device")), None)
    marks = [(t, line.split()) for t, line in measured.stamps if line.startswith("[pipeline] ")]
    starts = [t for t, parts in marks if len(parts) > 2 and parts[2] in ("running", "ran", "cached")]
    ends = [t for t, parts in marks if len(parts) == 4 and parts[2] in ("ran", "cached")]
    stage_s = sum(s for _, _, s in stage_statuses(measured.stderr))
    if device is None or not starts or not ends:
        return {"wall": measured.wall_s}
    return {
        "boot": device,
        "open_run": starts[0] - device,
        "stages": stage_s,
        "between": max(0.0, ends[-1] - starts[0] - stage_s),
        "tail": measured.wall_s - ends[-1],
        "wall": measured.wall_s,
    }


def pipeline_ndcg(stdout: str, metric: str = "nanobeir_mean_ndcg_at_10") -> float | None:
    match = re.search(rf"^{metric} = ([0-9.]+)", stdout, re.MULTILINE)
    return float(match.group(1)) if match else None


def run(
    reps: int = 5,
    steps: int = 4,
    batch: int = 16,
    docs: int | None = 160,
    queries: int | None = 8,
    model: str = MINILM,
) -> BenchResult:
    started = time.perf_counter()
    work = scratch_dir("bench-overhead-")
    eval_dir = msmarco_subset(work / "msmarco", docs, queries)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    warm_up(bench_env(work / "warmup"), tracking_uri)
    config_file = work / "config.json"
    config_file.write_text(
        json.dumps(resolved_config(pipeline_overrides(eval_dir, work / "unused", tracking_uri, steps, batch, model)))
    )
    runs: dict[str, list] = {"pipeline": [], "bare": []}
    counter = iter(range(1000))

    def pipeline_arm() -> float:
        scratch = work / f"pipeline-{next(counter)}"
        cmd = [
            PYTHON,
            "-m",
            "pipeline",
            *pipeline_overrides(eval_dir, scratch / "outputs", tracking_uri, steps, batch, model),
        ]
        measured = run_measured(cmd, env=bench_env(scratch)).check()
        runs["pipeline"].append(measured)
        return measured.wall_s

    def bare_arm() -> float:
        scratch = work / f"bare-{next(counter)}"
        cmd = [PYTHON, str(ROOT / "bench" / "bare_lora.py"), str(config_file), str(scratch / "out")]
        measured = run_measured(cmd, env=bench_env(scratch)).check()
        runs["bare"].append(measured)
        return measured.wall_s

    samples = alternate({"pipeline": pipeline_arm, "bare": bare_arm}, reps=reps)
    pipe_s, bare_s = median(samples["pipeline"]), median(samples["bare"])
    ratio = pipe_s / bare_s
    differences = [p - b for p, b in zip(samples["pipeline"], samples["bare"], strict=True)]  # paired by round
    fixed_s = median(differences)

    # Where the pipeline's time goes: its stages (from its status lines) and the rest (start, validation, MLflow)
    stages: dict[str, list[float]] = {}
    for measured in runs["pipeline"]:
        for name, _, seconds in stage_statuses(measured.stderr):
            stages.setdefault(name, []).append(seconds)
    stage_s = {name: median(v) for name, v in stages.items()}
    bare_phases = [m.last_json() for m in runs["bare"]]
    phase_s = {k: median([p["phases"][k] for p in bare_phases]) for k in bare_phases[0]["phases"]}
    pipe_other = pipe_s - sum(stage_s.values())
    timelines = [pipeline_timeline(m) for m in runs["pipeline"]]
    timeline = {k: median([t[k] for t in timelines if k in t]) for k in timelines[0]}
    imports_s = import_seconds(bench_env(work / "imports"))
    marginal = marginal_seconds(bench_env(work / "marginal"), tracking_uri)
    ndcg_pipe = pipeline_ndcg(runs["pipeline"][-1].stdout)
    ndcg_bare = bare_phases[-1]["ndcg_at_10"]

    value = (
        f"fixed cost {fixed_s:.1f}s (median of the {reps} rounds' differences, which ranged {min(differences):+.1f} "
        f"to {max(differences):+.1f}s): pipeline {pipe_s:.1f}s vs bare "
        f"{bare_s:.1f}s ({ratio:.3f}×; medians of {reps}; {steps} steps × batch {batch}, NanoMSMARCO {queries or 'all'} "
        f"queries / {docs or 'all'} passages; dev set {bare_phases[-1]['dev_queries']} queries); NDCG@10 {ndcg_pipe} "
        f"vs {ndcg_bare:.4f}, dev NDCG@10 {pipeline_ndcg(runs['pipeline'][-1].stdout, 'dev_ndcg_at_10')} vs "
        f"{bare_phases[-1]['dev_ndcg_at_10']:.4f}"
    )
    breakdown = (
        f"pipeline: stages {', '.join(f'{k} {v:.1f}s' for k, v in stage_s.items())}; outside the stages "
        f"{pipe_other:.1f}s = {', '.join(f'{k} {v:.1f}s' for k, v in timeline.items() if k not in ('stages', 'wall'))}"
        f" (importing pipeline.app alone: {imports_s:.1f}s; after the bare script's imports, importing the pipeline adds "
        f"{marginal['pipeline_imports']:.1f}s; importing MLflow and opening its store, which the tracker process does "
        f"on the other core, {marginal['tracking_store']:.1f}s); bare: "
        f"{', '.join(f'{k} {v:.1f}s' for k, v in phase_s.items())}"
    )
    changed = (
        "gc.freeze() at exit (was ~4 s of cycle collections); the finetune stage's reload check encodes 2 pairs (was "
        "8); stage code versions parse each module once; MLflow's usage telemetry off (no config-fetch thread); "
        "MLflow in a tracker process of its own (pipeline/tracking/tracker.py), started after validation: it imports "
        "MLflow and opens the store on the other core while the run's process imports torch, and logs each stage "
        "while the next one computes, so the run's process never imports MLflow (was 2.0 s: its import and the "
        "sqlite store's setup, on the critical path). "
        + (
            "Within goal: what is left is Hydra, validation that reads the data, the content fingerprints, the "
            "reload check, the tracker's last logging and the run's end. "
            if fixed_s <= GOAL_S
            else "Above goal: see the breakdown below (Hydra, validation that reads the data, the content "
            "fingerprints, the reload check, the tracker's last logging and the run's end). "
        )
        + breakdown
    )
    rows = [
        Row(
            "overhead",
            "pipeline LoRA run vs bare sentence-transformers script: fixed cost, seconds",
            value,
            ratio,
            f"fixed cost ≤ {GOAL_S} s",
            verdict(fixed_s, at_most=GOAL_S),
            changed,
        ),
    ]
    details = {
        "how": (
            "`python -m pipeline` (finetune=lora, fresh stage cache) vs `bench/bare_lora.py` with the same resolved "
            "config (data split, seed, LoRA r/alpha/dropout, the loss (MNRL where the pipeline's auto embeds once), "
            "NO_DUPLICATES, lr, warmup; the base model's and the fine-tuned model's NanoBEIR and dev NDCG@10), each a "
            "subprocess timed end to end, imports included, "
            "alternated pipeline/bare/bare/pipeline, each with fresh `datasets` caches; a warm-up process (imports, "
            "MLflow DB creation) excluded."
        ),
        "pipeline_s": samples["pipeline"],
        "bare_s": samples["bare"],
        "ratio": ratio,
        "fixed_s": fixed_s,
        "fixed_s_by_round": differences,
        "marginal_s": marginal,
        "pipeline_stage_s": stage_s,
        "pipeline_other_s": pipe_other,
        "pipeline_timeline_s": timeline,
        "pipeline_import_s": imports_s,
        "bare_phase_s": phase_s,
        "ndcg_pipeline": ndcg_pipe,
        "ndcg_bare": ndcg_bare,
        "peak_rss_mb": {k: [m.max_rss_mb for m in v] for k, v in runs.items()},
        "config": {"reps": reps, "steps": steps, "batch": batch, "docs": docs, "queries": queries, "model": model},
    }
    return BenchResult("overhead", rows, details, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> BenchResult:
    parser = pipeline_run_parser(__doc__, steps=4)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    quiet()
    result = run(args.reps, args.steps, args.batch, args.docs or None, args.queries or None, args.model)
    result.save()
    print(markdown_table(result.rows))
    return result


if __name__ == "__main__":
    main()
