"""Several processes per job: a job's training under torchrun (`torch.distributed.run`), one process per GPU.

The job's own process (the one that holds its MLflow run, its cache lock and its evaluation) calls
`run_processes(function, kwargs, N, folder)`: it pickles the call into `folder`, starts `torchrun --standalone
--nproc-per-node N -m pipeline.launch.torchrun folder`, and waits. torchrun starts N workers with RANK, WORLD_SIZE,
LOCAL_RANK and a free rendezvous port; each runs the same call (the Trainer sees the environment and trains under DDP
or FSDP, `gloo` on CPU, `nccl` on GPUs). The first process (rank 0) writes the call's return value; every process that
fails writes its one line. Back in the job's process:

- all succeeded: the value rank 0 returned;
- one failed: `ProcessFailed`, a `RunError` whose message is the first failure's line with its rank (the others
  usually fail after it, waiting for a peer that is gone), so the run ends FAILED with it;
- the job interrupted (Ctrl-C, SLURM's SIGTERM): torchrun is sent SIGTERM, which stops every worker, and the interrupt
  goes on (the run ends KILLED; a SLURM job requeues itself). Workers run in a session of their own, so a terminal's
  Ctrl-C reaches only the job's process, which stops them in order; a job's process killed outright takes torchrun
  with it (PR_SET_PDEATHSIG), and torchrun its workers.

Locally a job's GPUs are `CUDA_VISIBLE_DEVICES` (`pipeline.launch.gpus` hands a sweep job N of them); on SLURM the
job asked for N (`conf/hydra/launcher/slurm.yaml`). A resumed job finds the checkpoints of its interrupted attempt in
the same folder and every worker resumes from them.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import RunError

CALL, RESULT = "call.pkl", "result.pkl"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_S = 60  # how long torchrun gets to stop its workers after SIGTERM before it is killed


class ProcessFailed(RunError):
    """A process of a several-process job failed: the message is its rank and its one line."""


def run_processes(function: Callable[..., Any], kwargs: dict, processes: int, folder: Path) -> Any:
    """`function(**kwargs)` in `processes` processes under torchrun; the first process's return value."""
    shutil.rmtree(folder, ignore_errors=True)  # a previous attempt's errors and result are not this one's
    folder.mkdir(parents=True)
    (folder / CALL).write_bytes(pickle.dumps((function, kwargs)))
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone",  # one node, a free rendezvous port: several jobs can share a machine
        f"--nproc-per-node={processes}",
        "-m", "pipeline.launch.torchrun", str(folder),
    ]  # fmt: skip
    # torchrun would set each worker's OMP_NUM_THREADS to 1 (with a warning): the machine's cores, shared evenly
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // processes))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    torchrun = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_stop_with_parent)
    try:
        code = _wait(torchrun)
    except BaseException:  # KeyboardInterrupt (Ctrl-C, SIGTERM) or an error in this process: stop the workers first
        stop(torchrun)
        raise
    if code != 0:
        raise ProcessFailed(first_failure(folder, processes, code))
    return pickle.loads((folder / RESULT).read_bytes())


def _wait(process: subprocess.Popen) -> int:
    """`process.wait()` in short sleeps: a blocking waitpid is not woken by a Ctrl-C that the kernel delivers to
    another of this process's threads (MLflow's, tqdm's), so the interrupt would wait until training ends."""
    while True:
        try:
            return process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def _stop_with_parent() -> None:
    """In torchrun's process before it starts: SIGTERM when the job's process dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so that no worker outlives its job and trains on into a cache entry another attempt resumes."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop(torchrun: subprocess.Popen) -> None:
    """SIGTERM to torchrun, which forwards it to its workers and waits for them; SIGKILL to the group if it hangs."""
    if torchrun.poll() is not None:
        return
    torchrun.send_signal(signal.SIGTERM)
    try:
        torchrun.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(torchrun.pid, signal.SIGKILL)
        torchrun.wait()


def first_failure(folder: Path, processes: int, code: int) -> str:
    """The earliest failure's line, `process <rank> of <N>: <error>`; torchrun's exit code where no process wrote one
    (killed by a signal, out of memory)."""
    failures = [json.loads(p.read_text()) for p in folder.glob("rank-*.error.json")]
    if not failures:
        return f"the job's {processes} processes ended with exit code {code} and no error of their own (killed?)"
    first = min(failures, key=lambda f: f["time"])
    return f"process {first['rank']} of {processes}: {first['error']}"


def worker(folder: Path) -> None:
    """One process's side (started by torchrun): run the call; rank 0 keeps its result, a failure its line."""
    rank = int(os.environ["RANK"])
    try:
        function, kwargs = pickle.loads((folder / CALL).read_bytes())  # imports the function's module
        result = function(**kwargs)
    except Exception as error:  # written for the job's process to name, then raised: torchrun sees the failure
        line = " ".join(str(error).split())
        failure = {
            "time": time.time(),
            "rank": rank,
            "error": line if isinstance(error, RunError) else f"{type(error).__name__}: {line}",
        }
        (folder / f"rank-{rank}.error.json").write_text(json.dumps(failure))
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        partial = folder / (RESULT + ".partial")
        partial.write_bytes(pickle.dumps(result))
        os.replace(partial, folder / RESULT)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
