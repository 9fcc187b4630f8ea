"""Calls that tests/launch/test_torchrun.py runs under torchrun: its workers import them by module path (`tests.…`), which
a pytest test module's own functions do not have."""

from __future__ import annotations

from pipeline.config import RunError


def fail_on_rank_one(kind: str) -> str:
    """Called in each process by the tests below (importable by torchrun's workers): rank 1 fails."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    if dist.get_rank() == 1:
        raise (RunError if kind == "run" else ValueError)(f"planted failure\nof {kind}")
    return f"rank {dist.get_rank()} done"
