"""What a run cost: MLflow's system metrics (CPU and memory, GPU where pynvml finds one, disk, network) on the run.

The pipeline logs through an explicit client and run id (no active run), so it starts MLflow's own monitor for its
run instead of `mlflow.enable_system_metrics_logging()`. Sampled every 10 s
(`MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` overrides), logged as `system/...` metrics per sample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

SAMPLING_INTERVAL_S = 10.0


@contextmanager
def system_metrics(tracking_uri: str, run_id: str, enabled: bool = True, resumed: bool = False) -> Iterator[None]:
    """Sample system metrics into `run_id` while inside; a resumed run continues its steps after the last logged one."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # "Skip logging GPU metrics" on a machine without one is no news
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SAMPLING_INTERVAL_S, resume_logging=resumed, tracking_uri=tracking_uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()  # joins the sampling thread and flushes what it sampled, before the run is terminated
