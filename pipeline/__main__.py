"""`python -m pipeline`: compose the config, validate it, run the DAG inside one MLflow run, return its scores.

The return value (`pipeline.sweep.scores.JobScores`) is what a sweep's job hands the sweeper: the run id, the dev score
that sweepers select on and optimise (`float(scores)`, never the benchmark's test score) and the scores the verdict
compares.
"""

from __future__ import annotations

import gc
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.config import register_configs
from pipeline.overrides import check_group_options, precompose, relative_alpha_as_sweep
from pipeline.signals import interrupt
from pipeline.validate import ConfigError, validate

register_configs()
CONF = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):  # -> JobScores: what a sweep's job hands the sweeper (`pipeline.sweep.scores`)
    from pipeline.sweep.callbacks import finished_job, sweep_of_this_job
    from pipeline.tracking.uri import tracking_uri

    if (finished := finished_job(cfg)) is not None:  # a sweep's job that already finished: reused, torch not imported
        from pipeline.sweep.scores import from_run

        return from_run(finished, tracking_uri(cfg))
    from pipeline.tracking.store import open_store

    try:
        validate(cfg)
        store = open_store(tracking_uri(cfg), cfg.tracking.experiment)  # one that MLflow cannot open: a ConfigError
    except ConfigError as error:
        if sweep_of_this_job() is not None:  # one bad job of a sweep: a FAILED run, and the other jobs go on
            from pipeline.app import bad_job

            return bad_job(cfg, error)
        _remove_empty_run_dir()
        fail(error)
    from pipeline.app import run

    return run(cfg, store)


def fail(error: Exception) -> None:
    """One line naming the bad value and what is allowed; the traceback only with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print("error: " + " ".join(str(error).split()), file=sys.stderr)
    sys.exit(2)


def _remove_empty_run_dir() -> None:
    """Hydra made the job's output dir before the task ran; a config error leaves nothing behind."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if run_dir.is_dir() and all(p.name in (".hydra", "__main__.log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)
        try:
            os.removedirs(run_dir.parent)  # and the runs/ and outputs/ dirs this run created, if empty
        except OSError:
            pass


def interrupted(stop: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM: the run (and a sweep's parent run) ended KILLED; one line on what was kept and how to
    resume, no traceback; exit 130."""
    from pipeline.sweep.callbacks import end_interrupted_sweep

    sweep = end_interrupted_sweep()  # e.g. "sweep S ended KILLED after 2 finished jobs (kept: reused on resume)"
    tracked = sys.modules.get("pipeline.tracking.run")  # loaded once a run can have opened
    run_id = stop.run_id if tracked is not None and isinstance(stop, tracked.RunInterrupted) else None
    kept = [sweep] if sweep else []
    if run_id is not None:
        running = "the running job's MLflow run" if sweep else "MLflow run"
        kept.append(f"{running} {run_id} ended KILLED, keeping its metrics, finished stages and last checkpoint")
    if sweep:
        kept.append("jobs not started were not started")
    what = "; ".join(kept) if kept else "no MLflow run had opened"
    command = shlex.join(["python", "-m", "pipeline", *sys.argv[1:]])
    if "tqdm" in sys.modules:  # the trainer's bar, left mid-line: closed first, so that the line stands on its own
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    print(f"interrupted: {what}. Resume with the same command: {command}", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupt)  # `kill` or a scheduler ends the run (and a sweep) as Ctrl-C does
    try:
        check_group_options(CONF, sys.argv[1:])
        precompose(CONF, sys.argv[1:])
        sys.argv[1:] = relative_alpha_as_sweep(sys.argv[1:])  # Hydra's main reads sys.argv
    except ConfigError as error:
        fail(error)
    try:
        main()
    except KeyboardInterrupt as stop:
        interrupted(stop)
    # The work is done and logged: exempt the ~800k objects of torch, transformers and MLflow from the cycle
    # collections the interpreter runs at exit, which took 4 s of a 50 s run (bench/overhead.py measures it)
    gc.freeze()
