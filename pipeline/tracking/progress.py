"""The trainer's logs (loss, learning rate, in-training NanoBEIR) live in the run's MLflow metrics as it trains."""

from __future__ import annotations

from collections.abc import Callable

from transformers.trainer_callback import TrainerCallback


class TrainerLogsCallback(TrainerCallback):
    """Training loss, learning rate and in-training NanoBEIR metrics, handed to `log(logs, step)` at each logging
    step (`Tracker.log`: the run's MLflow metrics)."""

    def __init__(self, log: Callable[[dict, int], None]):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.log(logs or {}, state.global_step)
