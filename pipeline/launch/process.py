"""Which process runs a run or a sweep (host, pid, when the process started), tagged on its MLflow run, and whether
that process is gone: a run or sweep left RUNNING by a process that no longer lives can be marked KILLED."""

from __future__ import annotations

import socket

import psutil

SAME_START_S = 1.0  # a process's start time as read twice may differ by clock ticks


def process_tags(prefix: str) -> dict[str, str]:
    """`<prefix>.host`, `<prefix>.pid` and `<prefix>.pid_started` (seconds since the epoch) of this process."""
    me = psutil.Process()
    return {
        f"{prefix}.host": socket.gethostname(),
        f"{prefix}.pid": str(me.pid),
        f"{prefix}.pid_started": str(me.create_time()),
    }


def process_gone(tags: dict[str, str], prefix: str) -> bool:
    """Whether the process the tags name is gone: on this host, no live process has its pid, or the one that has it
    started at another time (the pid was reused). False where nothing here can tell (another host, no tags)."""
    if tags.get(f"{prefix}.host") != socket.gethostname() or f"{prefix}.pid_started" not in tags:
        return False
    try:
        process = psutil.Process(int(tags[f"{prefix}.pid"]))
        started = process.create_time()
        alive = process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    return not alive or abs(started - float(tags[f"{prefix}.pid_started"])) > SAME_START_S
