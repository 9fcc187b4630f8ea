"""pipeline.hub_checks.check_hub: a missing repo, a missing revision, a missing file and an unreachable Hub each get
their own one-line error (the Hub itself is replaced by fakes that raise what huggingface_hub raises)."""

from __future__ import annotations

import httpx2
import huggingface_hub
import pytest
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from pipeline.config import ConfigError
from pipeline.hub_checks import check_hub

URL = "https://huggingface.co/api/models/google-bert/bert-base-uncased"


def _http(error_type, status: int = 404):
    request = httpx2.Request("GET", URL)
    return error_type(f"{status} Client Error", response=httpx2.Response(status, request=request))


def _not_cached(*args, **kwargs):
    raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")


def _answers(info_error=None, file_error=None):
    """A Hub whose repo info call raises `info_error` and whose file metadata call raises `file_error` (None: answer)."""

    def info(self, repo_id, revision=None, timeout=None):
        if info_error is not None:
            raise info_error
        return object()

    def metadata(url, timeout=None):
        if file_error is not None:
            raise file_error
        return object()

    return info, metadata


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _not_cached)

    def set_hub(info_error=None, file_error=None):
        info, metadata = _answers(info_error, file_error)
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", info)
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)

    return set_hub


def _line(revision=None):
    with pytest.raises(ConfigError) as error:
        check_hub("model", "google-bert/bert-base-uncased", "model.name", revision=revision, filename="config.json")
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_missing_revision_is_named_not_reported_as_an_unreachable_hub(hub):
    hub(info_error=_http(RevisionNotFoundError))
    message = _line(revision="v9")
    assert "no revision 'v9'" in message and "unreachable" not in message and "retry" not in message


def test_a_missing_file_is_named(hub):
    hub(file_error=_http(RemoteEntryNotFoundError))
    message = _line()
    assert "has no file config.json" in message and "unreachable" not in message


def test_a_missing_repository_is_named(hub):
    hub(info_error=_http(RepositoryNotFoundError))
    message = _line()
    assert "not a model on the Hugging Face Hub" in message and "unreachable" not in message


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: httpx2.ConnectError("no route to host"),
        lambda: httpx2.ReadTimeout("timed out"),
        lambda: _http(huggingface_hub.errors.HfHubHTTPError, 503),
    ],
    ids=["connect", "timeout", "http-503"],
)
def test_an_unreachable_hub_is_named(hub, make_error):
    error = make_error()
    hub(info_error=error)
    message = _line()
    assert "the Hugging Face Hub is unreachable" in message and type(error).__name__ in message


def test_a_repo_that_answers_with_its_file_passes(hub):
    hub()
    check_hub("model", "google-bert/bert-base-uncased", "model.name", filename="config.json")
