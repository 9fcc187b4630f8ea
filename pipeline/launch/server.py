"""`make server`: an MLflow tracking server, for jobs that run on other machines (a SLURM cluster) or many at once.

Jobs log over HTTP (`tracking.uri=http://HOST:PORT`) instead of writing a sqlite file themselves, which is unsafe on
the network filesystems clusters share. The server keeps runs in a backend store on its own local disk (a sqlite
file, default `<outputs>/server/mlflow.db`) or in a database (`--backend-store-uri postgresql://...`), and serves the
artifacts (`--artifacts-destination`, default `<outputs>/server/mlartifacts`): jobs upload them over HTTP too.
Bound to 127.0.0.1 unless `--host` says otherwise.

    python -m pipeline.launch.server [--host 127.0.0.1] [--port 5001] [--backend-store-uri URI]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def server_command(
    host: str, port: int, backend_store_uri: str, artifacts_destination: str, workers: int = 1
) -> list[str]:
    """`mlflow server` serving the artifacts itself; on another host than loopback, that host's name is allowed in
    the Host header (MLflow's DNS-rebinding guard refuses the others)."""
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host,
        "--port", str(port),
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination", artifacts_destination,
        # one worker: a sqlite store serialises writes anyway, and one process holds no competing write locks
        "--workers", str(workers),
    ]  # fmt: skip
    if host not in ("127.0.0.1", "localhost"):
        command += ["--allowed-hosts", "*"]  # jobs reach it by whatever name the cluster gives this node
    return command


def default_stores(outputs: str | Path) -> tuple[str, str]:
    server = Path(outputs).resolve() / "server"
    return f"sqlite:///{server / 'mlflow.db'}", str(server / "mlartifacts")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.launch.server", description=__doc__.split("\n\n")[0])
    outputs = os.environ.get("PIPELINE_OUTPUTS", "outputs")
    backend, artifacts = default_stores(outputs)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--backend-store-uri", default=backend, help=f"default {backend}")
    parser.add_argument("--artifacts-destination", default=artifacts, help=f"default {artifacts}")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.backend_store_uri.startswith("sqlite:///"):
        Path(args.backend_store_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    Path(args.artifacts_destination).mkdir(parents=True, exist_ok=True)
    command = server_command(args.host, args.port, args.backend_store_uri, args.artifacts_destination, args.workers)
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"[pipeline] MLflow tracking server: jobs log with tracking.uri=http://{url_host}:{args.port}", flush=True)
    # MLflow's job runner (GenAI scorer jobs: seven task-queue consumers) serves nothing this pipeline logs
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
