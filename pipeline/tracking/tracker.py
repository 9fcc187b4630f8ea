"""The MLflow side of a run, in a process of its own, so that the run's process never imports MLflow.

Importing MLflow and opening a sqlite store (SQLAlchemy's models, MLflow's schema check) cost about 2 s of CPU that a
bare sentence-transformers script does not spend (bench/overhead.py). `python -m pipeline` starts a `Tracker` right
after validating the config: it imports MLflow and opens the store on another core while the run's process imports
torch, then logs what the run's process sends it (each stage's output, the trainer's logs) while the next stage
computes. Where the run's process has imported MLflow already (the jobs of a sweep that Hydra runs in its own
process: its callback did), the tracker is a thread of that process instead: there is no import left to hide, and
the logging still overlaps the stages.

The MLflow run is `pipeline.tracking.run.pipeline_run`'s, unchanged: FINISHED; FAILED with the error and its
traceback; KILLED on Ctrl-C, SIGTERM or a SLURM requeue. Signals are the run's process's to handle (the tracker ignores
them) and it tells the tracker how the run ended. A run's process killed by SIGKILL closes its end of the pipe: the
tracker exits at once and leaves the run RUNNING, as a killed in-process run would, for the next start of the same
config to resume.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError

IGNORED_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")  # Ctrl-C, scancel, SLURM's and submitit's warnings
JOIN_S = 30.0  # after its last reply the tracker only exits


class TrackingError(RuntimeError):
    """The tracker could not open or log the run (the run is FAILED with the reason where it was opened), or died."""


@dataclass(frozen=True)
class StageRecord:
    """What the tracker logs of a stage's output (`pipeline.dag.StageOutput` without the DAG's imports)."""

    name: str
    status: str
    dir: Path
    result: dict[str, Any]


class Tracker:
    """The run's process's handle on its tracker: started (it opens the store), `check_store`, then `run(...)` around
    the DAG."""

    def __init__(self, uri: str, experiment: str, in_process: bool | None = None) -> None:
        """Start the tracker and have it open the store at `uri` (creating a sqlite DB once) and `experiment`, without
        waiting. `in_process`: a thread of this process instead; by default where this process imported MLflow already
        (the jobs of a sweep that Hydra runs in its own process: its callback did), as there is no import to hide."""
        self.run_id: str | None = None
        self._opened = False
        if in_process is None:
            in_process = "mlflow" in sys.modules
        self._thread: threading.Thread | None = None
        if in_process:
            self._conn, theirs = Pipe()
            self._thread = threading.Thread(target=serve, args=(theirs,), name="pipeline-tracker", daemon=True)
            self._thread.start()
        else:
            self._conn = self._start_process()
        self._conn.send(("store", uri, experiment))

    def _start_process(self) -> Connection:
        # A fresh interpreter (no torch threads or locks inherited, whatever launched this process: Hydra's joblib
        # workers set a start method of their own) in a session of its own (Ctrl-C is this process's to handle), joined
        # by a socket pair that only it and this process hold: when this process dies, the tracker reads EOF.
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking.tracker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        theirs.close()
        return Connection(ours.detach())  # multiprocessing's framing of pickled messages, over the socket

    def check_store(self) -> None:
        """Wait until the store is open: a `ConfigError` naming the URI where MLflow cannot open it."""
        kind, message = self._receive()
        if kind != "ok":
            raise ConfigError(message)

    @contextmanager
    def run(self, cfg: DictConfig, found_sources: dict[str, str], tags: dict[str, str]) -> Iterator[Tracker]:
        """The MLflow run around the DAG: opened in the tracker while the first stage computes, ended with how the
        DAG ended (an exception: FAILED with it; Ctrl-C, SIGTERM or a requeue: KILLED)."""
        resolved = copy.deepcopy(cfg)
        OmegaConf.resolve(resolved)  # the tracker has no Hydra runtime to resolve `${hydra:...}` with
        self._conn.send(("open", resolved, found_sources, tags))
        with _sigterm_as_interrupt():
            try:
                yield self
                self._wait_opened()
            except (KeyboardInterrupt, SystemExit):  # SystemExit: submitit's requeue before a SLURM time limit
                self._end_quietly("killed")
                raise
            except BaseException as error:
                line = f"{type(error).__name__}: {error}"
                self._end_quietly(("failed", line, traceback.format_exc()))
                raise
            else:
                self._end(None)

    def on_stage(self, output) -> None:
        """Log a stage's output (`pipeline.dag.StageOutput`); the DAG goes on while the tracker logs it."""
        self._send("stage", StageRecord(output.name, output.status, output.dir, output.result))

    def on_pushed(self, pushed: dict) -> None:
        self._send("pushed", {k: str(v) for k, v in pushed.items()})

    def log(self, logs: dict, step: int) -> None:
        """The trainer's logs at a logging step (loss, learning rate, in-training evaluation)."""
        self._send("log", dict(logs), step)  # log_step, in the tracker, keeps the numbers

    def close(self) -> None:
        """Stop a tracker that opened no run (the config failed validation); a no-op once its run ended."""
        if self._exit_code() is None:
            try:
                self._conn.send(("close",))
            except OSError:
                pass
            self._wait()
        self._conn.close()

    def _send(self, *message) -> None:
        self._wait_opened()
        if self._conn.poll():  # the tracker failed to log something earlier: its run is FAILED, fail this one too
            kind, text = self._receive()
            raise TrackingError(text)
        self._conn.send(message)

    def _wait_opened(self) -> None:
        if not self._opened:
            kind, value = self._receive()
            self._opened = True
            if kind != "ok":
                raise TrackingError(value)
            self.run_id = value

    def _end(self, ending) -> None:
        """Tell the tracker how the run ended; wait for it to log everything sent before and end the MLflow run."""
        error = None
        try:
            self._wait_opened()
        except TrackingError as failed:  # the tracker still waits for the end, to answer it
            error = str(failed)
        self._conn.send(("end", ending))
        while True:
            kind, value = self._receive()
            if kind == "ended":
                break
            error = value  # what it failed to log since this process last looked
        self._wait()
        if error is not None:
            raise TrackingError(error)

    def _end_quietly(self, ending) -> None:
        """End the run on an exception of the DAG: that exception propagates, not a tracking one."""
        try:
            self._end(ending)
        except (TrackingError, OSError) as error:
            print(f"warning: the MLflow run could not record how this run ended: {error}", file=sys.stderr)

    def _receive(self) -> tuple[str, Any]:
        while not self._conn.poll(1.0):
            if self._exit_code() is not None:
                raise TrackingError(f"the tracker exited (exit code {self._exit_code()})")
        try:
            return self._conn.recv()
        except EOFError:
            self._wait()
            raise TrackingError(f"the tracker exited (exit code {self._exit_code()})") from None

    def _exit_code(self) -> int | None:
        """None while the tracker runs (a thread that ended: 0)."""
        if self._thread is not None:
            return None if self._thread.is_alive() else 0
        return self._process.poll()

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join(JOIN_S)
            return
        try:
            self._process.wait(JOIN_S)
        except subprocess.TimeoutExpired:
            self._process.kill()


@contextmanager
def _sigterm_as_interrupt():
    """A scheduler's SIGTERM (preemption, scancel) ends the run KILLED, like Ctrl-C, instead of leaving it RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the tracker process -------------------------------------------------------------------------------------------


def serve(conn: Connection) -> None:
    """The tracker's main: import MLflow, open the store when asked, then log one run until it is told how it ended."""
    own_process = threading.current_thread() is threading.main_thread()  # else a thread of the run's process
    if own_process:
        for name in IGNORED_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    # All of MLflow this process needs, imported while the run's process imports torch
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - the sqlite store's SQLAlchemy models, mapped once

    import pipeline.tracking.run  # noqa: F401 - the MLflow run and its dataset inputs (`datasets`): used by _track
    from pipeline.tracking.store import client_for, experiment_id

    for logger in ("mlflow", "alembic"):  # a new DB's "Creating initial MLflow database tables" and the like
        logging.getLogger(logger).setLevel(logging.WARNING)

    while True:
        kind, *args = _next(conn)
        if kind == "store":
            uri, experiment = args
            try:
                experiment_id(client_for(uri), uri, experiment)
            except Exception as error:  # noqa: BLE001 - whatever stops MLflow from opening it
                conn.send(("error", f"tracking.uri={uri} cannot be opened ({type(error).__name__}: {error})"))
            else:
                conn.send(("ok", None))
        elif kind == "open":
            _track(conn, *args)
            break
        else:  # "close"
            break
    if own_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # everything is written; MLflow's exit hooks have nothing left to do


def _track(conn: Connection, cfg: DictConfig, found_sources: dict[str, str], tags: dict[str, str]) -> None:
    """Log one run: `pipeline_run` around the messages of the run's process, until it says how the run ended."""
    from pipeline.tracking.run import RunError, pipeline_run
    from pipeline.tracking.store import log_step

    try:
        with pipeline_run(cfg, found_sources, tags) as tracked:
            conn.send(("ok", tracked.run_id))
            while True:
                kind, *args = _next(conn)
                if kind == "stage":
                    tracked.on_stage(args[0])
                elif kind == "log":
                    log_step(tracked.client, tracked.run_id, *args)
                elif kind == "pushed":
                    tracked.on_pushed(args[0])
                elif args[0] == "killed":  # "end"
                    raise KeyboardInterrupt
                elif args[0] is not None:
                    raise RunError(*args[0][1:])
                else:
                    break
    except (KeyboardInterrupt, RunError):
        pass  # the run's own ending: recorded by pipeline_run
    except Exception as error:  # noqa: BLE001 - opening or logging failed: the run (if opened) is FAILED with it
        conn.send(("error", f"MLflow tracking failed: {type(error).__name__}: {error}"))
        while _next(conn)[0] != "end":  # the run's process goes on until it reads the error, then ends the run
            pass
    try:
        conn.send(("ended", None))
    except OSError:  # nobody left to tell
        pass


def _next(conn: Connection) -> tuple:
    try:
        return conn.recv()
    except EOFError:
        if threading.current_thread() is threading.main_thread():  # the run's process is gone (SIGKILL)
            os._exit(0)  # its run stays RUNNING, to be resumed
        return ("end", "killed")  # a thread whose Tracker was dropped mid-run: the run stopped


if __name__ == "__main__":  # Tracker() starts `python -m pipeline.tracking.tracker FD`
    from pipeline.tracking import tracker  # this module by its name, not `__main__`: one StageRecord class, not two

    tracker.serve(Connection(int(sys.argv[1])))
