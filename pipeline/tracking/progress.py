"""The trainer's logs (loss, learning rate, in-training NanoBEIR) live in the run's MLflow metrics as it trains."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from transformers.trainer_callback import TrainerCallback

from pipeline.tracking.store import log_step


class MLflowTrainerCallback(TrainerCallback):
    """Training loss, learning rate and in-training NanoBEIR metrics, logged to the run at each logging step."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def on_log(self, args, state, control, logs=None, **kwargs):
        log_step(self.client, self.run_id, logs or {}, state.global_step)
