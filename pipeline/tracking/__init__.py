"""Tracking: the MLflow run of a pipeline run, the sweep callbacks, the UI's saved view, the trainer's logging callback."""
