"""Tracking: the MLflow store and run of a pipeline run (logged in the run's own process), its dataset inputs and
system metrics, the UI's saved view, the trainer's logging callback, the Model Registry."""

import os

# MLflow's usage telemetry off unless the user turned it on: runs are tracked on the user's own store, and a process
# no longer starts a thread that fetches a config from the network (0.2-0.4 s of a run that imports MLflow, measured)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
