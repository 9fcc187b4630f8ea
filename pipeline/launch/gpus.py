"""GPUs per job on one machine: local parallel sweep jobs take `launch.processes_per_job` free GPUs each from a pool,
or wait for them.

Hydra's joblib launcher starts jobs in parallel processes that would all land on GPU 0. Each job of a local sweep
takes, before torch initialises CUDA, the first GPUs whose locks (`<outputs>/locks/gpu-<host>-<id>.lock`) are free,
holds them for the job and sets `CUDA_VISIBLE_DEVICES` to them; when too few are free it waits. The pool is the GPUs
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


def acquire_gpus(
    pool: list[str],
    lock_dir: Path,
    count: int = 1,
    poll_s: float = 1.0,
    on_wait: Callable[[], None] | None = None,
    first: str | None = None,
) -> tuple[list[str], list[FileLock]]:
    """`count` GPUs of `pool` whose locks are free (`first` among them where given), and their held locks; waits while
    fewer are free, holding none meanwhile (two jobs that each hold half of what they need would wait for ever)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    order = ([first] if first is not None else []) + [gpu for gpu in pool if gpu != first]
    waited = False
    while True:
        held: list[tuple[str, FileLock]] = []
        for gpu in order:
            lock = FileLock(str(lock_dir / f"gpu-{host}-{gpu}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if gpu == first:
                    break  # this process's CUDA context lives there: without it, nothing else will do
                continue
            held.append((gpu, lock))
            if len(held) == count:
                return [gpu for gpu, _ in held], [lock for _, lock in held]
        for _, lock in held:
            lock.release()
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        time.sleep(poll_s)


@contextmanager
def gpu_of_this_job(lock_dir: Path, in_local_sweep: bool, count: int = 1) -> Iterator[str | None]:
    """Around a sweep job on this machine: its own `count` GPUs (`CUDA_VISIBLE_DEVICES`, e.g. "2" or "2,3", what it
    yields), or None where nothing is pinned."""
    global _process_gpu
    pool = visible_gpus() if in_local_sweep and "SLURM_JOB_ID" not in os.environ else []
    if not pool:
        yield None
        return

    def waiting() -> None:
        print(f"[pipeline] the GPUs {','.join(pool)} are busy with other jobs: waiting for {count}", file=sys.stderr)

    # a process's CUDA context cannot move: a worker reused for a later job takes the same first GPU again
    taken, locks = acquire_gpus(pool, lock_dir, count, on_wait=waiting, first=_process_gpu)
    devices = ",".join(taken)
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    _process_gpu = taken[0]
    print(f"[pipeline] this job runs on GPU {devices} (CUDA_VISIBLE_DEVICES={devices})", file=sys.stderr)
    try:
        yield devices
    finally:
        for lock in locks:
            lock.release()
