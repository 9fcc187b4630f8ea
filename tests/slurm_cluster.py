"""A live single-node SLURM cluster for tests: munged, slurmctld and slurmd started by hand under a temp dir.

Debian's `slurm-wlm` and `munge` (`.ci/run` installs them); a slurm.conf generated for this host (proctrack/linuxproc,
task/none, select/cons_tres; CPUs and memory from `slurmd -C`; no GPUs), its own ports, munge socket and state dir,
so it touches nothing system-wide and several can run side by side. `python -m tests.slurm_cluster DIR` starts one
and prints the `SLURM_CONF` to export (Ctrl-C stops it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")


def missing_tools() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF: what a client (sbatch, the sweep) needs
    partition: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    def stop(self, timeout: float = 30) -> list[str]:
        """Cancel every job, wait for its steps to end (SIGKILL what is left after `timeout`: slurmd kills a step KillWait=10 s after its SIGTERM), stop the daemons.

        Returns the processes of this cluster still alive after that (none, unless one resists SIGKILL): the job steps
        (slurmstepd), srun and the job's script ignore SIGTERM, and outlive daemons stopped before slurmd kills them."""
        jobs = self.run("squeue", "-h", "-o", "%A", check=False).split() if self._daemons_up() else []
        if jobs:
            self.run("scancel", *jobs, check=False)
        deadline = time.monotonic() + timeout
        while self.job_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        _kill(self.job_processes())
        for proc in reversed(self.processes):  # only the daemons started here, by their pid
            proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        _kill(self.job_processes())  # a step that started while the daemons stopped
        return [f"{p.pid} {' '.join(p.cmdline())}" for p in self.job_processes()]

    def _daemons_up(self) -> bool:
        return all(proc.poll() is None for proc in self.processes)

    def job_processes(self) -> list[psutil.Process]:
        """The processes of this cluster's jobs, the daemons and this process left out: a job's (srun, its script,
        what it runs) by this cluster's SLURM_CONF in their environment (sbatch hands the submitter's to the job), a
        slurmstepd (its environment cleared) by the file of this cluster it holds open (slurmd's log)."""
        conf, root = self.env["SLURM_CONF"], str(self.root) + os.sep
        mine = {os.getpid(), *(proc.pid for proc in self.processes)}
        for proc in self.processes:  # slurmctld's own helper (slurmscriptd) is a daemon, not a job: it ends with it
            if Path(proc.args[0]).name == "slurmctld":
                try:
                    mine.update(child.pid for child in psutil.Process(proc.pid).children())
                except psutil.NoSuchProcess:  # slurmctld already stopped: its helper goes with the jobs' SIGKILL
                    pass
        found = []
        for process in psutil.process_iter():
            try:
                if process.pid in mine or process.status() == psutil.STATUS_ZOMBIE:
                    continue
                if process.environ().get("SLURM_CONF") == conf or any(
                    f.path.startswith(root) for f in process.open_files()
                ):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )


def start(root: Path, timeout: float = 60) -> Cluster:
    """Start munged, slurmctld and slurmd under `root`; return once the node accepts jobs."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key, munge_socket = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    subprocess.run([_tool("mungekey"), "--create", "--keyfile", str(key), "--force"], check=True, capture_output=True)
    os.chmod(key, 0o600)

    node = socket.gethostname().split(".")[0]
    # the node's real CPUs / memory, as slurmd sees them: "NodeName=vm CPUs=2 ... RealMemory=24105"
    hardware = subprocess.run([_tool("slurmd"), "-C"], check=True, capture_output=True, text=True).stdout
    node_line = next(line for line in hardware.splitlines() if line.startswith("NodeName="))
    partition = "debug"
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=lvf{uuid.uuid4().hex[:6]}
SlurmctldHost={node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={os.environ.get("USER", "root") if os.geteuid() else "root"}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
DefMemPerCPU=1024
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
{node_line}
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root, env, partition)
    daemons = [
        [_tool("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
         f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
         f"--seed-file={root / 'munge' / 'munged.seed'}"],
        [_tool("slurmctld"), "-D", "-i", "-f", str(conf)],
        [_tool("slurmd"), "-D", "-f", str(conf), "-N", node],
    ]  # fmt: skip
    try:
        for cmd in daemons:
            out = open(root / f"{Path(cmd[0]).name}.out", "w")  # noqa: SIM115 - the daemon keeps it
            cluster.processes.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            if cmd[0].endswith("munged"):
                _wait(lambda: munge_socket.exists(), timeout, "munged's socket")
        _wait(lambda: _node_idle(cluster), timeout, f"node {node} to be idle")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(cluster: Cluster) -> bool:
    for proc in cluster.processes:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}):\n{cluster.logs()}")
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=cluster.env, capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "idle"


def _wait(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


if __name__ == "__main__":
    cluster = start(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/slurm"))
    print(f"export SLURM_CONF={cluster.env['SLURM_CONF']}  # Ctrl-C stops the cluster", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        left = cluster.stop()
        if left:
            sys.exit(f"still running: {left}")
