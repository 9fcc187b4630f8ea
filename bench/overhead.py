"""Pipeline overhead: a LoRA run of `python -m pipeline` vs bench/bare_lora.py, the same training and evaluations
(NanoBEIR and the in-domain dev set, before and after) in plain sentence-transformers with the same config: the
pipeline's fixed cost over the bare script, in seconds (a number, no goal: a few seconds).

`python -m pipeline` (finetune=lora, fresh stage cache) vs `bench/bare_lora.py` with the same resolved config (data
split, seed, LoRA r/alpha/dropout, the loss (MNRL where the pipeline's auto embeds once), NO_DUPLICATES, lr, warmup;
the base model's and the fine-tuned model's NanoBEIR and dev NDCG@10), each a subprocess timed end to end, imports
included, alternated pipeline/bare/bare/pipeline, each with fresh `datasets` caches; a warm-up process (imports,
MLflow DB creation) excluded; the fixed cost is the median of the rounds' paired differences.
"""

from __future__ import annotations

import json
import re
import time

from bench.common import (
    MINILM,
    PYTHON,
    REPORT,
    ROOT,
    BenchResult,
    Row,
    alternate,
    bench_env,
    how,
    median,
    msmarco_subset,
    pipeline_overrides,
    run_measured,
    scratch_dir,
    stage_statuses,
    warm_up,
)


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


def pipeline_ndcg(stdout: str, metric: str = "nanobeir_mean_ndcg_at_10") -> float | None:
    match = re.search(rf"^{metric} = ([0-9.]+)", stdout, re.MULTILINE)
    return float(match.group(1)) if match else None


def run(reps=5, steps=4, batch=16, docs=160, queries=8, model=MINILM) -> BenchResult:
    started = time.perf_counter()
    work = scratch_dir("bench-overhead-")
    eval_dir = msmarco_subset(work / "msmarco", docs or None, queries or None)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    warm_up(bench_env(work / "warmup"), uri)
    config = work / "config.json"
    config.write_text(json.dumps(resolved_config(pipeline_overrides(eval_dir, work, uri, steps, batch, model))))
    runs: dict[str, list] = {"pipeline": [], "bare": []}

    def arm(name: str):
        def go() -> float:
            scratch = work / f"{name}-{len(runs[name])}"
            cmd = [PYTHON, "-m", "pipeline", *pipeline_overrides(eval_dir, scratch, uri, steps, batch, model)]
            if name == "bare":
                cmd = [PYTHON, str(ROOT / "bench" / "bare_lora.py"), str(config), str(scratch / "out")]
            runs[name].append(run_measured(cmd, env=bench_env(scratch)).check())
            return runs[name][-1].wall_s

        return go

    samples = alternate({"pipeline": arm("pipeline"), "bare": arm("bare")}, reps=reps)
    pipe_s, bare_s = median(samples["pipeline"]), median(samples["bare"])
    differences = [p - b for p, b in zip(samples["pipeline"], samples["bare"], strict=True)]  # paired by round
    fixed_s = median(differences)
    stages: dict[str, list[float]] = {}
    for measured in runs["pipeline"]:
        for name, _, seconds in stage_statuses(measured.stderr):
            stages.setdefault(name, []).append(seconds)
    stage_s = {name: median(v) for name, v in stages.items()}
    bare = [m.last_json() for m in runs["bare"]]
    phase_s = {k: median([p["phases"][k] for p in bare]) for k in bare[0]["phases"]}
    out = runs["pipeline"][-1].stdout
    value = (
        f"fixed cost {fixed_s:.1f}s (median of the {reps} rounds' differences, which ranged {min(differences):+.1f} "
        f"to {max(differences):+.1f}s): pipeline {pipe_s:.1f}s vs bare {bare_s:.1f}s (medians of {reps}; {steps} "
        f"steps × batch {batch}, NanoMSMARCO {queries or 'all'} queries / {docs or 'all'} passages; dev set "
        f"{bare[-1]['dev_queries']} queries); NDCG@10 {pipeline_ndcg(out)} vs {bare[-1]['ndcg_at_10']:.4f}, dev "
        f"NDCG@10 {pipeline_ndcg(out, 'dev_ndcg_at_10')} vs {bare[-1]['dev_ndcg_at_10']:.4f}"
    )
    breakdown = (
        f"pipeline: stages {', '.join(f'{k} {v:.1f}s' for k, v in stage_s.items())}, outside the stages (start, "
        f"Hydra, validation, MLflow) {pipe_s - sum(stage_s.values()):.1f}s; bare: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in phase_s.items())
    )
    row = Row(
        "overhead",
        "pipeline LoRA run vs bare sentence-transformers script: fixed cost, seconds",
        value,
        pipe_s / bare_s,
        "report (a few seconds)",
        REPORT,
        "gc.freeze() at exit (was ~4 s of cycle collections); the finetune stage's reload check encodes 2 pairs (was "
        "8); stage code versions parse each module once; MLflow's usage telemetry off. " + breakdown,
    )
    details = {"how": how(__doc__), "pipeline_s": samples["pipeline"], "bare_s": samples["bare"]}
    details.update(fixed_s=fixed_s, fixed_s_by_round=differences, pipeline_stage_s=stage_s, bare_phase_s=phase_s)
    details["peak_rss_mb"] = {k: [m.max_rss_mb for m in v] for k, v in runs.items()}
    return BenchResult("overhead", [row], details, time.perf_counter() - started)
