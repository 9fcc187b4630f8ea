"""The MLflow UI over the pipeline's DB, opened on the LoRA-vs-full comparison.

`python -m pipeline.tracking.ui [--host 127.0.0.1] [--port 5000] [--tracking-uri URI] [--experiment NAME] [--workers N]`
(`make ui`) serves `mlflow server` over `sqlite:///<PIPELINE_OUTPUTS or outputs>/mlflow.db`, bound to 127.0.0.1
unless told otherwise, and prints the URL of the comparison view of each experiment that holds pipeline runs.
Arguments it does not know are passed on to `mlflow server`.

The comparison view is an MLflow *saved view* (MLflow >= 3.17): an experiment tag `mlflow.sharedViewState.<key>` that
the runs page loads from `#/experiments/<id>/runs?viewStateShareKey=<key>` and lists under *Views*. It holds the
search facets (every run: the fine-tune runs and the sweeps' parent runs that carry the verdicts; best
`nanobeir_mean_ndcg_at_10` first, which also flattens the sweep parent / child nesting and lists the parent runs,
without a score, after the jobs) and the visible columns (the NDCG metric, the verdict, method, r, alpha, trainable
parameters, sweep id, then the verdict's sentence, target and seeds). The newest verdict's sentence, target and seeds
also head the experiment's description, above the table. (MLflow's saved views do not keep pinned runs, and its search
has no OR: a filter cannot pick the jobs plus only the parents with a verdict.)
`describe_experiment` writes it, with the experiment's description (`mlflow.note.content`) and its kind (a model
training experiment: MLflow opens it on its runs, not on GenAI traces). The URL also picks the *Model training* sidebar
(`workflowType=machine_learning`).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import schema
from pipeline.tracking.uri import default_db_uri, sqlite_path

NDCG = schema.BENCHMARK_MEAN
DEV = schema.DEV
VIEW_KEY = "lora-vs-full"  # the share key in the URL, and the tag suffix
VIEW_NAME = "LoRA vs full (NDCG@10)"  # as listed under Views
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
NOTE_TAG = "mlflow.note.content"
KIND_TAG = "mlflow.experimentKind"
NOTE_HASH_TAG = "pipeline.note_sha1"  # of the note written here: a note the user wrote or edited is never overwritten
PIPELINE_RUNS = f"tags.{schema.METHOD} LIKE '%'"  # every pipeline run has a `method` tag; a sweep's parent run has none
VERDICTS = (
    f"tags.`{schema.ROLE}` = 'sweep' AND tags.{schema.VERDICT} LIKE '%'"  # the sweeps' parent runs with a verdict
)
HEALTH_TIMEOUT_S = 60.0
COLUMNS = {  # column id: width in pixels (None: MLflow's), in this order across the Metrics / Parameters groups
    "attributes.`Run Name`": 160,  # lora-r<r>-a<alpha>-lr<lr>-s<seed> / full-lr<lr>-s<seed>
    f"metrics.`{NDCG}`": 190,
    f"metrics.`{schema.benchmark_mean('MTEB')}`": 170,  # a sweep scored on MTEB tasks (eval.tasks) instead
    "params.`finetune.method`": 115,
    "params.`finetune.r`": 80,
    "params.`finetune.alpha`": 100,
    f"tags.`{schema.VERDICT}`": 95,  # on the sweeps' parent runs: equivalent / non-inferior / superior / inferior / ...
    f"tags.`{schema.VERDICT_IN_DOMAIN}`": 110,  # with an in-domain test set: what it learned (verdict: the answer for both)
    f"tags.`{schema.VERDICT_GENERAL}`": 110,  # ... and what it kept (NanoBEIR)
    f"metrics.`{DEV}`": 130,
    "params.`train.lr`": 90,
    "params.`train.seed`": 90,
    "metrics.`trainable_params`": 130,
    f"tags.`{schema.SWEEP_ID}`": 110,
    f"tags.`{schema.VERDICT_SENTENCE}`": 420,  # what the verdict claims, with its interval and margin
    f"tags.`{schema.VERDICT_TARGET}`": 110,  # benchmark: these fixed queries, over training seeds; queries: queries like these
    f"tags.`{schema.seeds_tag('adapter')}`": 120,  # the fresh seeds whose runs make up the difference
    f"tags.`{schema.seeds_tag('full')}`": 120,
    f"tags.`{schema.VERDICT_LOOKS}`": 90,
    f"tags.`{schema.VERDICT_RANK}`": 100,  # the smallest rank that sufficed, or none
    "runDateAndNestInfo": 115,  # "Created"
    "duration": None,
}

NOTE = f"""\
### Is a LoRA adapter as good as a full fine-tune, and at which rank?

Each run fine-tunes the same base model either with a LoRA adapter (run name `lora-r<r>-a<alpha>-lr<lr>-s<seed>`) or
fully (`full-lr<lr>-s<seed>`), then evaluates it on NanoBEIR, the test set. **`{NDCG}`** is the mean NDCG@10 over the
NanoBEIR datasets (higher is better); `baseline_{NDCG}` is the base model before fine-tuning,
`nanobeir_<dataset>_ndcg_at_10` the per-dataset scores. **`{DEV}`** is NDCG@10 on the in-domain dev set held out from
the training data: what sweeps select learning rates and adapter settings on.

**The comparison:** *Views → {VIEW_NAME}* (the URL `make ui` prints) lists the fine-tune runs, best NDCG@10 first,
with the method, LoRA rank r and alpha (r and alpha mean nothing for `full`), trainable parameters and sweep id. Failed
runs come last, without a score. One sweep only: add `AND tags.sweep_id = '<id>'` to the search.
The runs named `sweep-<id>` are the sweeps' parent runs, listed after the jobs (they have no NDCG@10 of their own),
with the verdict, its sentence, its target and the seeds it spent (`make decide`: `verdict.*` tags, each look as a
`verdict.look.*` metric); `make compare` sets their `verdict` tag and description and logs the report (selection on
dev, fresh seeds only, the verdict within a margin for its stated target) under their `report/` artifacts.
"""


def comparison_state() -> dict:
    """The runs page state of the comparison view: search facets and UI state, as MLflow's UI saves them."""
    return {
        # search facets
        "searchFilter": "",  # every run: the jobs, and the parent runs that carry the verdicts
        "orderByKey": f"metrics.`{NDCG}`",  # not start_time: the runs are listed flat, not nested under the sweep
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        # UI state
        "selectedColumns": [c for c in COLUMNS if c.startswith(("metrics.", "params.", "tags."))],
        "columnOrder": list(COLUMNS),  # the NDCG, then what the runs vary
        "columnWidths": {c: w for c, w in COLUMNS.items() if w is not None},
        "runsHiddenMode": "FIRST_10_RUNS",  # the charts show the 10 best runs
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "groupBy": None,
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
    }


def comparison_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table in the comparison view (needs `describe_experiment` run on the experiment)."""
    query = f"viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"  # the sidebar of training, not GenAI
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def describe_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Make the experiment explain itself and open on the comparison: its kind, the saved view, a description.

    Idempotent (tags are only written when they change) and safe to call on every run; a description the user wrote
    is kept.
    """
    tags = client.get_experiment(experiment_id).tags
    state = json.dumps(comparison_state(), separators=(",", ":"))
    now = int(time.time() * 1000)
    try:
        old = json.loads(tags.get(VIEW_TAG, ""))
        created, unchanged = int(old["createdAt"]), old.get("state") == state and old.get("name") == VIEW_NAME
    except (ValueError, KeyError, TypeError):
        created, unchanged = now, False
    wanted = {}
    if not tags.get(KIND_TAG):
        wanted[KIND_TAG] = "custom_model_development"
    if not unchanged:
        view = {"name": VIEW_NAME, "createdAt": created, "updatedAt": now, "state": state}
        wanted[VIEW_TAG] = json.dumps(view, separators=(",", ":"))
    note, ours = tags.get(NOTE_TAG, ""), latest_verdict(client, experiment_id) + NOTE
    if not note.strip() or _sha1(note) == tags.get(NOTE_HASH_TAG):
        wanted.update({NOTE_TAG: ours, NOTE_HASH_TAG: _sha1(ours)})
    for key, value in wanted.items():
        if tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


def latest_verdict(client: MlflowClient, experiment_id: str) -> str:
    """The head of the description: the newest sweep's verdict, its sentence, target and the seeds it spent."""
    runs = client.search_runs([experiment_id], VERDICTS, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return ""
    tags = runs[0].data.tags
    seeds = [f"{arm} {tags[schema.seeds_tag(arm)]}" for arm in ("adapter", "full") if schema.seeds_tag(arm) in tags]
    lines = [
        f"**Latest verdict** (run `{runs[0].info.run_name}`): "
        f"{tags.get(schema.VERDICT_SENTENCE) or tags[schema.VERDICT]}",
        f"target: {tags.get(schema.VERDICT_TARGET, 'not stated')}; fresh seeds: {'; '.join(seeds) or 'not recorded'}"
        + (f"; looks: {tags[schema.VERDICT_LOOKS]}" if schema.VERDICT_LOOKS in tags else ""),
    ]
    if schema.VERDICT_IN_DOMAIN in tags:  # two halves: `verdict` is the answer for both
        lines.append(
            f"in domain: {tags[schema.VERDICT_IN_DOMAIN]}; in general: {tags.get(schema.VERDICT_GENERAL, 'none')}"
        )
    return "\n\n".join(lines) + "\n\n"


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# ---------------------------------------------------------------- server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def browse_host(host: str) -> str:
    """Where a browser on this machine reaches a server bound to `host`."""
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def pipeline_experiments(client: MlflowClient, name: str | None = None) -> list:
    """The named experiment, else every active experiment that holds pipeline runs, newest first."""
    if name is not None:
        found = client.get_experiment_by_name(name)
        return [found] if found is not None else []
    experiments = client.search_experiments(order_by=["creation_time DESC"])
    return [e for e in experiments if client.search_runs([e.experiment_id], PIPELINE_RUNS, max_results=1)]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen) -> None:
    """Stop the server and its uvicorn workers: they share a process group of their own."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tracking.ui",
        description="The MLflow UI over the pipeline's DB; prints the URL of the LoRA-vs-full comparison view. "
        "Unknown arguments go to `mlflow server`.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--tracking-uri", help="default: sqlite:///<PIPELINE_OUTPUTS or outputs>/mlflow.db")
    parser.add_argument("--experiment", help="describe and link only this experiment (default: all pipeline ones)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (default: 1, plenty for one user)")
    args, extra = parser.parse_known_args(argv)

    uri = args.tracking_uri or default_db_uri()
    if not is_loopback(args.host):
        print(
            f"warning: --host {args.host} exposes the MLflow UI, which has no login and can modify and delete runs, "
            "to other machines; restrict who may connect with --allowed-hosts / --cors-allowed-origins",
            file=sys.stderr,
        )
    db = sqlite_path(uri)
    experiments = []
    if db is not None and not db.is_file():
        print(f"note: no MLflow DB at {db} yet; run the pipeline (make demo, make sweep) to fill it", file=sys.stderr)
    else:
        try:
            client = MlflowClient(uri)
            experiments = pipeline_experiments(client, args.experiment)
            for experiment in experiments:
                describe_experiment(client, experiment.experiment_id)
        except MlflowException as error:  # the UI is still worth serving
            print(f"warning: could not set up the comparison view: {error}", file=sys.stderr)

    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    if db is not None and "--artifacts-destination" not in extra:
        command += ["--artifacts-destination", str(db.parent / "mlartifacts")]  # beside the DB, as the pipeline's
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # no GenAI job runners for a runs table
    proc = subprocess.Popen([*command, *extra], env=env, start_new_session=True)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    base_url = f"http://{browse_host(args.host)}:{args.port}"
    try:
        if not wait_healthy(base_url, proc):
            if proc.poll() is not None:
                print(f"error: the MLflow server exited with code {proc.returncode}", file=sys.stderr)
                return proc.returncode or 1
            print(f"warning: {base_url}/health has not answered within {HEALTH_TIMEOUT_S:.0f} s", file=sys.stderr)
        print(f"MLflow UI on {base_url} over {uri} (Ctrl-C stops it)", flush=True)
        for experiment in experiments:
            print(f"LoRA vs full, experiment {experiment.name!r}: {comparison_url(base_url, experiment.experiment_id)}")
        if args.experiment is not None and not experiments:
            print(f"warning: no experiment named {args.experiment!r} in {uri}", file=sys.stderr)
        sys.stdout.flush()
        while proc.poll() is None:  # not proc.wait(): a Ctrl-C handled by another thread would not end a blocking wait
            time.sleep(0.5)
        return proc.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
