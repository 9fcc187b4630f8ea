"""The precision a fine-tuned model is scored in (`eval.precision`, pipeline.config.EvalPrecision)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from pipeline.config import EvalPrecision


def merged_for(precision: EvalPrecision | str) -> bool:
    """Whether an adapter is merged into the base weights before scoring: in fp32 (the same embeddings within rounding,
    faster); not under autocast, where a script scores its in-memory model with the adapter attached."""
    return EvalPrecision(precision) == EvalPrecision.fp32


@contextmanager
def scoring_precision(precision: EvalPrecision | str, device: torch.device) -> Iterator[None]:
    """fp32: as the model is; autocast: under bf16 autocast on the model's device, as accelerate leaves a model trained
    with bf16=True (the published scripts' final `evaluator(model)` ran so)."""
    if EvalPrecision(precision) == EvalPrecision.autocast:
        context = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        context = nullcontext()
    with context:
        yield
