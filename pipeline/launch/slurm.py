"""Jobs on SLURM (hydra-submitit-launcher): which job a run is, and coming back after a preemption.

A SLURM job sent SIGTERM mid-run (preemption, `scancel --signal=TERM`) ends its MLflow run KILLED (the pipeline maps
SIGTERM to an interrupt), then asks SLURM to requeue it, as submitit does on its own preemption signal: the requeued
job runs the same pickled submission again, i.e. the same config, which resumes training from its last complete
checkpoint into that same MLflow run. A job already being requeued or preempted by SLURM itself (`scontrol
requeue`, PreemptMode=REQUEUE) comes back without help; a cancelled job (`scancel`) is not requeued.

The interrupt leaves the process as a KeyboardInterrupt, which submitit does not turn into a result: the sweeping
process goes on waiting for the job's requeued attempt instead of reading a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in, when submitit launched it (None elsewhere)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return os.environ.get("SLURM_JOB_ID")


def slurm_tags() -> dict[str, str]:
    """Where a run ran, for its MLflow tags: the SLURM job, its array task and how often it was restarted."""
    job = slurm_job_id()
    if job is None:
        return {}
    tags = {"slurm.job_id": job, "slurm.restart_count": os.environ.get("SLURM_RESTART_COUNT", "0")}
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        tags["slurm.array_job"] = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return tags


def job_state(job: str) -> str | None:
    """SLURM's state of `job` (RUNNING, PENDING, CANCELLED, ...), None when scontrol cannot say."""
    try:
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return None


def requeue(job: str) -> bool:
    """Requeue `job` if it is still RUNNING (only signalled); True when it will come back."""
    state = job_state(job)
    if state != "RUNNING":  # being requeued or preempted by SLURM already (comes back), or cancelled (must not)
        return state in ("REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "PREEMPTED", "PENDING")
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        print(f"warning: could not requeue SLURM job {job}: {done.stderr.strip()}", file=sys.stderr)
        return False
    return True


@contextmanager
def requeue_when_interrupted() -> Iterator[None]:
    """Around a run: in a SLURM job, an interrupt (SIGTERM) requeues the job; elsewhere nothing changes."""
    try:
        yield
    except KeyboardInterrupt:
        job = slurm_job_id()
        if job is not None and requeue(job):
            print(
                f"[pipeline] interrupted: SLURM job {job} requeued; it resumes from its last checkpoint",
                file=sys.stderr,
            )
        raise
