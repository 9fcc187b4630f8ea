"""What a run prints while it trains: the trainer's bar, with one short line per log instead of its raw dicts."""

from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

SHOWN = ("loss", "learning_rate", "grad_norm", "eval_loss", "train_runtime", "train_samples_per_second")


class CompactProgress(ProgressCallback):
    """The trainer's tqdm bar; each log becomes `step 8/16: loss 0.43, lr 5e-05, NanoBEIR NDCG@10 0.7525`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        parts = [f"{k.replace('learning_rate', 'lr')} {v:.4g}" for k, v in logs.items() if k in SHOWN]
        parts += [
            f"NanoBEIR NDCG@10 {v:.4f}"
            for k, v in logs.items()
            if k.startswith("eval_NanoBEIR_mean") and "ndcg@10" in k
        ]
        if parts:
            self.training_bar.write(f"step {state.global_step}/{state.max_steps}: " + ", ".join(parts))
