"""One GPU per job on one machine: local parallel sweep jobs take a free GPU each from a pool, or wait for one.

Hydra's joblib launcher starts jobs in parallel processes that would all land on GPU 0. Each job of a local sweep
takes, before torch initialises CUDA, the first GPU whose lock (`<outputs>/locks/gpu-<host>-<id>.lock`) is free,
holds it for the job and sets `CUDA_VISIBLE_DEVICES` to it; when every GPU is busy it waits. The pool is the GPUs
`CUDA_VISIBLE_DEVICES` lists, else those `nvidia-smi` sees; a CPU-only machine has none and nothing changes. A SLURM
job is left alone: SLURM gives it its own GPUs.

A process that ran a job keeps the GPU its CUDA context lives on: a worker reused for a later job (joblib's) waits
for that same GPU again.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

_process_gpu: str | None = None  # the GPU this process's CUDA context (if any) was created on


def visible_gpus() -> list[str]:
    """The GPUs jobs may use: `CUDA_VISIBLE_DEVICES` when set (even empty: none), else those nvidia-smi lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def acquire_gpu(
    pool: list[str], lock_dir: Path, poll_s: float = 1.0, on_wait: Callable[[], None] | None = None
) -> tuple[str, FileLock]:
    """The first GPU of `pool` whose lock is free, and its held lock; waits while every one is held."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    waited = False
    while True:
        for gpu in pool:
            lock = FileLock(str(lock_dir / f"gpu-{host}-{gpu}.lock"))
            try:
                lock.acquire(timeout=0)
                return gpu, lock
            except Timeout:
                continue
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        time.sleep(poll_s)


@contextmanager
def gpu_of_this_job(lock_dir: Path, in_local_sweep: bool) -> Iterator[str | None]:
    """Around a sweep job on this machine: its own GPU (`CUDA_VISIBLE_DEVICES`), or None where nothing is pinned."""
    global _process_gpu
    pool = visible_gpus() if in_local_sweep and "SLURM_JOB_ID" not in os.environ else []
    if _process_gpu is not None:
        pool = [_process_gpu]  # CUDA cannot move to another GPU in this process
    if not pool:
        yield None
        return

    def waiting() -> None:
        print(f"[pipeline] every GPU of {','.join(pool)} is busy with another job: waiting", file=sys.stderr)

    gpu, lock = acquire_gpu(pool, lock_dir, on_wait=waiting)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    _process_gpu = gpu
    print(f"[pipeline] this job runs on GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu})", file=sys.stderr)
    try:
        yield gpu
    finally:
        lock.release()
