"""hub.push: off by default; checked before any training (one line, nothing computed lost); pushes the saved adapter
or model with its completed card through sentence-transformers' push_to_hub."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import ModelCard
from mlflow.tracking import MlflowClient

from pipeline.app import run
from pipeline.dag import run_dag
from pipeline.tracking.identity import run_key
from pipeline.tracking.uri import tracking_uri
from tests.conftest import ROOT, tiny_overrides


def _cli(overrides: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _tree(path: Path) -> dict[str, int]:
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.integration
def test_push_offline_fails_in_one_line_before_training_and_keeps_what_was_computed(
    tmp_path, tiny_model, tiny_qa, tiny_nanobeir, tiny_cfg
):
    overrides = tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir)
    run_dag(tiny_cfg(["run.until=prepare_data"]))  # something already computed
    cache = tmp_path / "outputs" / "cache"
    before = _tree(cache)
    proc = _cli([*overrides, "hub.push=true", "hub.repo_id=me/my-adapter"], {"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: hub.push=true") and "HF_HUB_OFFLINE" in lines[0], lines
    assert _tree(cache) == before  # nothing computed is lost, and nothing trained
    assert not (cache / "finetune").exists() and not (tmp_path / "mlflow.db").exists()  # no run opened


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "needs a Hugging Face token"),
        ({"HF_TOKEN": "hf_not_a_real_token", "HF_ENDPOINT": "http://127.0.0.1:9"}, "Hub is unreachable"),
    ],
    ids=["no token", "no network"],
)
@pytest.mark.integration
def test_push_without_token_or_network_fails_in_one_line(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, env, expected):
    overrides = tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir)
    home = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN": "", **env}
    proc = _cli([*overrides, "hub.push=true", "hub.repo_id=me/my-adapter"], home)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_push_is_off_by_default(tiny_cfg):
    cfg = tiny_cfg()
    assert cfg.hub.push is False and cfg.hub.repo_id is None


@pytest.mark.integration
def test_push_uploads_the_saved_adapter_with_its_completed_card(tiny_cfg, monkeypatch, tmp_path):
    calls = {}

    def create_repo(self, repo_id, private=None, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, "private": private}
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["files"] = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        calls["card"] = (folder / "README.md").read_text()
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    cfg = tiny_cfg(["hub.push=true", "hub.repo_id=me/my-adapter", "hub.private=true"])
    run(cfg)  # validate() is the CLI's: here the network check is stood in for by the mock
    assert calls["create_repo"] == {"repo_id": "me/my-adapter", "private": True}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= calls["files"]
    assert "model.safetensors" not in calls["files"]  # the adapter alone
    card = ModelCard(calls["card"])
    assert card.data.base_model_relation == "adapter" and "## Evaluation: base model vs fine-tuned" in card.text
    assert 'SentenceTransformer("me/my-adapter")' in card.text  # the usage example loads the pushed repo
    client = MlflowClient(tracking_uri(cfg))
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert r.data.tags["hub.commit_url"] == "https://huggingface.co/me/my-adapter/commit/abc123"
    assert r.data.tags["hub.repo_id"] == "me/my-adapter"
    assert r.data.params["hub.repo_id"] == "me/my-adapter"  # shown in the UI, yet no part of the run's identity
    assert r.data.tags["pipeline.config_hash"] == run_key(tiny_cfg())


class _NoSuchRepo(http.server.BaseHTTPRequestHandler):
    """A Hub stand-in: every repo is missing; the paths it was asked for are in `asked`."""

    asked: list[str] = []

    def _missing(self):
        self.asked.append(self.path)
        self.send_response(404)
        self.send_header("X-Error-Code", "RepositoryNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b'{"error": "Repository not found"}')

    do_GET = do_HEAD = _missing

    def log_message(self, *args):  # the server's own access log stays out of the test's output
        pass


@pytest.mark.parametrize("logger_name", ["httpx2", f"client{uuid.uuid4().hex[:8]}"], ids=["httpx2", "random name"])
@pytest.mark.integration
def test_no_http_request_lines_in_a_runs_output(logger_name, tmp_path, tiny_qa, tiny_nanobeir, tiny_model):
    """The Hub client's per-request INFO line is dropped by what it says, whatever its logger is called: the client's
    logger is renamed to a fresh random name in the run's process, and the run asks the Hub stand-in for its model."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    overrides = tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir) + ["model.name=nobody/no-such-model"]
    rename = (
        "import logging, runpy, sys, httpx2._client as c; "
        f"c.logger = logging.getLogger({logger_name!r}); "
        "sys.argv = ['pipeline', *sys.argv[1:]]; runpy.run_module('pipeline', run_name='__main__')"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
    }
    env.pop("HYDRA_FULL_ERROR", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", rename, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        server.shutdown()
    output = proc.stdout + proc.stderr
    assert any("no-such-model" in path for path in _NoSuchRepo.asked), _NoSuchRepo.asked  # the stand-in was asked
    assert "HTTP Request" not in output and "127.0.0.1" not in output, output
    assert [line for line in output.splitlines() if line.strip()] == [proc.stderr.strip()]  # the error alone
