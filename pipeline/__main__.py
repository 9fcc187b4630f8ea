"""`python -m pipeline`: compose the config, validate it, run the DAG inside one MLflow run, return the metric.

The return value (the fine-tuned model's in-domain dev NDCG@10, never the NanoBEIR test score) is what Hydra sweepers
select on and optimise.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.config import register_configs
from pipeline.overrides import check_group_options, precompose
from pipeline.validate import ConfigError, validate

register_configs()
CONF = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from pipeline.sweep.callbacks import finished_job, sweep_of_this_job

    if (finished := finished_job(cfg)) is not None:  # a sweep's job that already finished: reused, torch not imported
        from pipeline.tracking.run import SELECTION_METRIC

        return finished.data.metrics.get(SELECTION_METRIC)
    from pipeline.tracking.tracker import Tracker, TrackingError
    from pipeline.tracking.uri import tracking_uri

    tracker = None
    try:
        validate(cfg)
        # MLflow in a process of its own: it opens the store while this process imports torch
        tracker = Tracker(tracking_uri(cfg), cfg.tracking.experiment)
        from pipeline.app import run

        tracker.check_store()
    except (ConfigError, TrackingError) as error:
        if tracker is not None:
            tracker.close()
        if sweep_of_this_job() is not None:  # one bad job of a sweep: a FAILED run, and the other jobs go on
            from pipeline.app import bad_job

            return bad_job(cfg, error)
        if isinstance(error, TrackingError):  # the tracker could not start: not the config's fault
            raise
        _remove_empty_run_dir()
        fail(error)
    return run(cfg, tracker)


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


if __name__ == "__main__":
    try:
        check_group_options(CONF, sys.argv[1:])
        precompose(CONF, sys.argv[1:])
    except ConfigError as error:
        fail(error)
    main()
    # The work is done and logged: exempt the ~800k objects of torch, transformers and MLflow from the cycle
    # collections the interpreter runs at exit, which took 4 s of a 50 s run (bench/overhead.py measures it)
    gc.freeze()
