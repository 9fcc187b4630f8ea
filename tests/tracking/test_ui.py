"""`python -m pipeline.tracking.ui` end to end: the MLflow UI over a DB holding a small sweep, opened in headless Chromium.

Needs Debian's `chromium` and `chromium-driver` (apt) and `selenium` (the dev extra); skipped, saying which is
missing, elsewhere. The browser only talks to the server on 127.0.0.1 (server and browser: tests/mlflow_view.py, which
also takes the README's screenshot). The screenshot lands in outputs/ui/mlflow_runs.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.tracking.ui import (
    KIND_TAG,
    NDCG,
    NOTE_HASH_TAG,
    NOTE_TAG,
    VIEW_KEY,
    VIEW_NAME,
    VIEW_TAG,
    browse_host,
    comparison_state,
    comparison_url,
    describe_experiment,
    is_loopback,
)
from tests.mlflow_view import CHROMEDRIVER, CHROMIUM, ROOT, WAIT_S, chromium, free_port, serve_ui

SCREENSHOT = ROOT / "outputs" / "ui" / "mlflow_runs.png"

# name, method, r, alpha, NDCG@10 (None: the job failed): a small sweep, in the shape pipeline.sweep.callbacks leaves in MLflow
JOBS = [
    ("lora-r4-a8", "lora", 4, 8, 0.4123),
    ("lora-r64-a128", "lora", 64, 128, None),
    ("lora-r8-a16", "lora", 8, 16, 0.4567),
    ("full", "full", 64, 128, 0.4890),  # r / alpha: the config's defaults, meaningless for a full fine-tune
]
BEST_FIRST = ["full", "lora-r8-a16", "lora-r4-a8", "lora-r64-a128"]  # by NDCG@10; the failed job, without one, last
BASELINE = 0.3456
VERDICT = {  # the tags make decide sets on the sweep's parent run
    "verdict": "equivalent",
    "verdict.sentence": "Equivalent: lora-r8-a16 vs full, Δ = -0.0012 NDCG@10, 90% repeated CI [-0.0061, +0.0037]",
    "verdict.target": "benchmark",
    "verdict.seeds_adapter": "13,14,15",
    "verdict.seeds_full": "13,14,15",
    "verdict.looks": "1",
}


def _missing_browser() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        return f"needs {' and '.join(missing)} (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[dev]')"
    return None


MISSING = _missing_browser()
browser_test = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def make_sweep_db(tmp: Path) -> tuple[str, str]:
    """A DB like the pipeline's: experiment lora-vs-full, described, with a sweep of four jobs, one failed."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("lora-vs-full", artifact_location=(tmp / "mlartifacts").as_uri())
    describe_experiment(client, exp_id)
    parent = client.create_run(
        exp_id, run_name="sweep-s1", tags={"sweep_id": "s1", "pipeline.role": "sweep"}
    ).info.run_id
    for name, method, r, alpha, ndcg in JOBS:
        run_id = client.create_run(
            exp_id, run_name=name, tags={"sweep_id": "s1", "mlflow.parentRunId": parent, "method": method}
        ).info.run_id
        params = {"finetune.method": method, "finetune.r": str(r), "finetune.alpha": str(alpha)}
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        if ndcg is None:
            client.set_tag(run_id, "error", "OutOfMemoryError: CUDA out of memory")
            client.set_terminated(run_id, "FAILED")
            continue
        trainable = 22_000_000 if method == "full" else 2 * 6 * 384 * r * 2
        metrics = {
            NDCG: ndcg,
            f"baseline_{NDCG}": BASELINE,
            "nanobeir_scifact_ndcg_at_10": ndcg + 0.01,
            "nanobeir_msmarco_ndcg_at_10": ndcg - 0.01,
            "trainable_params": trainable,
        }
        client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])
        client.set_terminated(run_id, "FINISHED")
    for key, value in VERDICT.items():
        client.set_tag(parent, key, value)
    client.set_terminated(parent, "FINISHED")
    describe_experiment(client, exp_id)  # as make decide does once the verdict is set: the parent run pinned
    return uri, exp_id


# ---------------------------------------------------------------- without a browser


def test_comparison_url():
    url = comparison_url("http://127.0.0.1:5000/", "7")
    assert url.startswith(f"http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey={VIEW_KEY}")


@pytest.mark.parametrize(
    "host, loopback, browse",
    [("127.0.0.1", True, "127.0.0.1"), ("localhost", True, "localhost"), ("::1", True, "[::1]"),
     ("0.0.0.0", False, "127.0.0.1"), ("::", False, "[::1]"), ("192.168.1.5", False, "192.168.1.5")],
)  # fmt: skip
def test_hosts(host, loopback, browse):
    assert is_loopback(host) is loopback and browse_host(host) == browse


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory) -> tuple[Path, str, str]:
    """One DB for the module (creating an MLflow DB takes seconds); other tests add experiments of their own."""
    tmp = tmp_path_factory.mktemp("ui")
    uri, exp_id = make_sweep_db(tmp)
    return tmp, uri, exp_id


def test_describe_experiment_tags_and_idempotence(sweep_db):
    _, uri, exp_id = sweep_db
    client = MlflowClient(uri)
    tags = client.get_experiment(exp_id).tags
    assert tags[KIND_TAG] == "custom_model_development"
    assert NDCG in tags[NOTE_TAG] and NOTE_HASH_TAG in tags
    view = json.loads(tags[VIEW_TAG])  # the envelope MLflow's UI writes for a saved view
    assert view["name"] == VIEW_NAME and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert state == comparison_state()
    assert {f"tags.`{key}`" for key in VERDICT} <= set(state["selectedColumns"])
    # the verdict heads the description: its sentence, target and the seeds it spent
    head = tags[NOTE_TAG].split("###")[0]
    assert VERDICT["verdict.sentence"] in head and "target: benchmark" in head
    assert "adapter 13,14,15; full 13,14,15" in head
    assert state["orderByKey"] == f"metrics.`{NDCG}`" and state["orderByAsc"] is False
    assert {f"metrics.`{NDCG}`", "params.`finetune.r`", "params.`finetune.alpha`"} <= set(state["selectedColumns"])
    # the view's filter is valid MLflow search syntax and picks the jobs, best first, then the sweep's parent run
    runs = client.search_runs([exp_id], state["searchFilter"], order_by=[f"metrics.`{NDCG}` DESC"])
    assert [r.info.run_name for r in runs] == [*BEST_FIRST, "sweep-s1"]
    describe_experiment(client, exp_id)  # idempotent: nothing rewritten
    assert client.get_experiment(exp_id).tags == tags


def test_describe_experiment_keeps_what_the_user_set(sweep_db):
    client = MlflowClient(sweep_db[1])
    edited = client.create_experiment("edited-note")
    describe_experiment(client, edited)
    note = client.get_experiment(edited).tags[NOTE_TAG]
    client.set_experiment_tag(edited, NOTE_TAG, note + "\nmy own notes")
    describe_experiment(client, edited)
    assert client.get_experiment(edited).tags[NOTE_TAG] == note + "\nmy own notes"
    genai = client.create_experiment("genai", tags={KIND_TAG: "genai_development", NOTE_TAG: "mine"})
    describe_experiment(client, genai)
    tags = client.get_experiment(genai).tags
    assert tags[KIND_TAG] == "genai_development" and tags[NOTE_TAG] == "mine" and VIEW_TAG in tags


# ---------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def ui_server(sweep_db):
    """`python -m pipeline.tracking.ui --port <free>` over the sweep's DB, found as the default DB via PIPELINE_OUTPUTS."""
    tmp, _, exp_id = sweep_db
    port = free_port()
    with serve_ui(tmp, exp_id, port) as url:
        assert url == comparison_url(f"http://127.0.0.1:{port}", exp_id)
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


ROWS_JS = """
const rows = {};
for (const cell of document.querySelectorAll('.ag-row .ag-cell[col-id]')) {
  const row = cell.closest('.ag-row').getAttribute('row-index');
  const lines = cell.innerText.trim().split('\\n');  // the run name cell starts with its color swatch
  (rows[row] = rows[row] || {})[cell.getAttribute('col-id')] = lines[lines.length - 1].trim();
}
return rows;
"""
VISIBLE_JS = """
const grid = document.querySelector('.ag-root-wrapper').getBoundingClientRect();
const shown = {};
for (const cell of document.querySelectorAll('.ag-header-cell[col-id]')) {
  const r = cell.getBoundingClientRect();
  shown[cell.getAttribute('col-id')] = r.width > 0 && r.left >= grid.left - 1 && r.right <= grid.right + 1;
}
return shown;
"""
NAME, METHOD, R, ALPHA = (
    "attributes.`Run Name`",
    "params.`finetune.method`",
    "params.`finetune.r`",
    "params.`finetune.alpha`",
)
SCORE = f"metrics.`{NDCG}`"
VERDICT_COLUMN = "tags.`verdict`"


@pytest.mark.integration  # its module-scoped fixture trains / starts a process
@browser_test
def test_runs_table_shows_the_comparison(ui_server, browser):
    """The printed URL opens the runs table on the comparison: the jobs best first, NDCG, method, r, alpha in sight."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(ui_server)

    seen = []

    def table(driver):
        rows = driver.execute_script(ROWS_JS)
        seen[:] = [rows[k] for k in sorted(rows, key=int)]
        shown = [r.get(NAME) for r in seen] == [*BEST_FIRST, "sweep-s1"] and all(r.get(SCORE) for r in seen)
        return seen if shown else False

    try:
        rows = WebDriverWait(browser, WAIT_S, poll_frequency=0.5).until(table)
        time.sleep(1)  # let the column widths settle for the screenshot
    except TimeoutException:
        pytest.fail(
            f"within {WAIT_S} s the runs table did not list {BEST_FIRST} with {NDCG}, then the sweep; it showed {seen}"
        )
    finally:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
    jobs = {name: (method, r, alpha, ndcg) for name, method, r, alpha, ndcg in JOBS}
    *rows, parent = rows  # the sweep's parent run, without a score, last: it carries the verdict
    assert parent[VERDICT_COLUMN] == VERDICT["verdict"], parent
    assert (
        f"Latest verdict (run sweep-s1): {VERDICT['verdict.sentence']}"
        in browser.find_element(By.TAG_NAME, "body").text
    )
    for row in rows:
        method, r, alpha, ndcg = jobs[row[NAME]]
        assert (row[METHOD], row[R], row[ALPHA]) == (method, str(r), str(alpha)), row
        assert row[SCORE] == ("-" if ndcg is None else f"{ndcg:g}"), row
    visible = browser.execute_script(VISIBLE_JS)
    assert all(visible.get(c) for c in (NAME, SCORE, VERDICT_COLUMN, METHOD, R, ALPHA)), visible  # without scrolling
    headers = {e.get_attribute("col-id"): e.text for e in browser.find_elements(By.CSS_SELECTOR, ".ag-header-cell")}
    assert headers[SCORE] == NDCG and headers[R] == "finetune.r" and headers[ALPHA] == "finetune.alpha"
    # the page loaded nothing from anywhere but the local server
    base = ui_server.split("/#", 1)[0]
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith((base + "/", "data:", "blob:")) for u in loaded), loaded
