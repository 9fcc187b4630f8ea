"""Tracking: the tracker process that logs a pipeline run to MLflow (`tracker`; the run's own process never imports
MLflow), the MLflow run, the sweep callbacks, the UI's saved view, the trainer's logging callback."""

import os

# MLflow's usage telemetry off unless the user turned it on: runs are tracked on the user's own store, and a process
# no longer starts a thread that fetches a config from the network (0.2-0.4 s of a run that imports MLflow, measured)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
