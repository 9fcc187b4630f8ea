"""The trainer's logs (loss, learning rate, in-training NanoBEIR) live in the run's MLflow metrics as it trains."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from transformers.trainer_callback import TrainerCallback

from pipeline.tracking.store import log_step


class MLflowTrainerCallback(TrainerCallback):
    """Training loss, learning rate and in-training NanoBEIR metrics, logged to the run at each logging step, by one
    process (the first) of a job that trains in several (pipeline.launch.torchrun pickles it to each)."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            log_step(self.client, self.run_id, logs or {}, state.global_step)
