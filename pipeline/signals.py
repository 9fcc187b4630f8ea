"""SIGTERM ends work as Ctrl-C does: `kill`, a scheduler's preemption or `scancel` raise KeyboardInterrupt in the main
thread, so a run ends KILLED (and a SLURM job requeues, pipeline.launch.slurm) instead of being left RUNNING. The one
handler: `python -m pipeline` holds it for the whole command, an MLflow run for its own life (a sweep's job in a
process that `__main__` did not start: submitit's, joblib's)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while inside; the previous handler comes back after. Only the main thread may
    set a handler: elsewhere (a joblib thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
