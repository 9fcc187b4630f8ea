"""The MLflow UI's comparison view in headless Chromium: what tests/tracking/test_ui.py drives, and the README's screenshot.

    python -m tests.mlflow_view [--out docs/img/mlflow_view.png]

rebuilds the runs of the committed mini reproduction (`docs/mini_paper/comparison.json`: each run's method, r, alpha,
learning rate, seed, dev and NanoBEIR NDCG@10, trainable parameters) in a temporary MLflow store, in the shape the
sweep's callbacks leave them (a parent run `sweep-<id>`, one child per job), serves it with `python -m
pipeline.tracking.ui`, opens the URL it prints and saves the page. No training: the numbers are the report's. Needs
Debian's `chromium` and `chromium-driver` (apt) and `selenium` (the dev extra). The browser only talks to the server
on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.tracking.ui import NDCG, VIEW_KEY, describe_experiment

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "mini_paper" / "comparison.json"
SCREENSHOT = ROOT / "docs" / "img" / "mlflow_view.png"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or "/usr/bin/chromedriver"
WAIT_S = 60
ROWS_JS = "return document.querySelectorAll('.ag-row').length"
# the assistant's side panel and the "shared view" banner, closed so that the runs table has the width
CLOSE_JS = """
for (const label of ['Close', 'Hide banner']) document.querySelector(`button[aria-label="${label}"]`)?.click();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_ui(outputs: Path, experiment_id: str, port: int) -> Iterator[str]:
    """`python -m pipeline.tracking.ui` over `<outputs>/mlflow.db` (found via PIPELINE_OUTPUTS); yields the view's URL."""
    log = outputs / "ui.log"
    env = {**os.environ, "PIPELINE_OUTPUTS": str(outputs), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking.ui", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + WAIT_S
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            lines = log.read_text().splitlines()
            url = next((line.rsplit(" ", 1)[-1] for line in lines if f"/experiments/{experiment_id}/" in line), None)
            time.sleep(0.5)
        assert url is not None and VIEW_KEY in url, f"no comparison URL within {WAIT_S} s:\n{log.read_text()}"
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # pipeline.tracking.ui stops the server's process group
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def chromium(profile: Path):
    """Headless Chromium through its Debian driver (Selenium Manager, which downloads drivers, never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--metrics-recording-only",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # nothing but the local server resolves
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def mini_paper_store(outputs: Path, report: Path = REPORT) -> tuple[str, int]:
    """The report's runs as the sweep leaves them in `<outputs>/mlflow.db`; returns (experiment id, number of runs)."""
    comparison = json.loads(report.read_text())
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    exp_id = client.create_experiment("mini_paper", artifact_location=(outputs / "mlartifacts").as_uri())
    describe_experiment(client, exp_id)
    sweep_id = comparison["sweep_id"]
    parent = client.create_run(exp_id, run_name=f"sweep-{sweep_id}", tags={"sweep_id": sweep_id}).info.run_id
    client.set_tag(parent, "verdict", comparison["verdict"]["label"])
    runs = [row for row in comparison["rows"] if row["run_id"]]  # the baseline row is no run
    for row in runs:
        tags = {"sweep_id": sweep_id, "mlflow.parentRunId": parent, "method": row["method"]}
        run_id = client.create_run(exp_id, run_name=row["name"], tags=tags).info.run_id
        params = {"finetune.method": row["method"], "train.lr": row["lr"], "train.seed": row["seed"]}
        if row["r"] is not None:  # a full fine-tune logs no adapter keys
            params |= {"finetune.r": row["r"], "finetune.alpha": row["alpha"]}
        metrics = {NDCG: row["ndcg_at_10"]["mean"], "dev_ndcg_at_10": row["dev_ndcg_at_10"]}
        metrics |= {f"nanobeir_{name}_ndcg_at_10": v for name, v in row["per_dataset_ndcg_at_10"].items()}
        metrics["trainable_params"] = row["trainable_params"]
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(run_id, row["status"])
    client.set_terminated(parent, "FINISHED")
    return exp_id, len(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mlflow_view", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SCREENSHOT)
    parser.add_argument("--report", type=Path, default=REPORT, help="a report's comparison.json")
    args = parser.parse_args(argv)
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as tmp:
        outputs = Path(tmp)
        exp_id, n_runs = mini_paper_store(outputs, args.report)
        with serve_ui(outputs, exp_id, free_port()) as url, chromium(outputs / "profile") as browser:
            browser.get(url)
            WebDriverWait(browser, WAIT_S, poll_frequency=0.5).until(lambda b: b.execute_script(ROWS_JS) >= n_runs)
            browser.execute_script(CLOSE_JS)
            time.sleep(2)  # let the column widths settle
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
    print(f"{args.out}: {n_runs} runs of {args.report} in the comparison view ({url.split('/#', 1)[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
