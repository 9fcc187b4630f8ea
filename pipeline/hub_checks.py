"""Checks that ask the Hugging Face Hub (or its local cache): a Hub id exists, a push can happen. Part of
`pipeline.validate`: run before any model loads, each failure one line."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from pipeline.config import ConfigError


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def check_hub(kind: str, repo_id: str, key: str, revision: str | None = None, filename: str | None = None) -> None:
    """A Hub id must be in the local HF cache or answer on the Hub; say which when neither works, in one line each:
    no such repo, no such revision, no such file (`filename`, e.g. a model's config.json), or no Hub to ask."""
    from httpx2 import HTTPError  # huggingface_hub's HTTP client: its transport errors (connect, timeout, proxy)
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, snapshot_download
    from huggingface_hub.errors import (
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        snapshot_download(repo_id, repo_type=kind, revision=revision, local_files_only=True)
        return  # cached: works offline
    except Exception:  # noqa: BLE001 - not cached; ask the Hub
        pass
    if hub_offline():
        raise ConfigError(
            f"{key}={repo_id} is not a local dir and not in the Hugging Face cache, and HF_HUB_OFFLINE is set: "
            "pass a local dir"
        )
    api = HfApi()
    at = f"@{revision}" if revision else ""
    try:
        (api.model_info if kind == "model" else api.dataset_info)(repo_id, revision=revision, timeout=10)
        if filename is not None:
            get_hf_file_metadata(hf_hub_url(repo_id, filename, repo_type=kind, revision=revision), timeout=10)
    except RevisionNotFoundError:  # the repo exists, the revision does not
        raise ConfigError(
            f"{key}={repo_id}: the {kind} has no revision {revision!r} on the Hugging Face Hub: "
            "give an existing branch, tag or commit SHA"
        ) from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{key}={repo_id} is not a local dir and not a {kind} on the Hugging Face Hub") from None
    except RemoteEntryNotFoundError:
        raise ConfigError(
            f"{key}={repo_id}{at} has no file {filename} on the Hugging Face Hub: not a {kind} this pipeline can load"
        ) from None
    except (HTTPError, OSError) as error:  # no answer: connection, timeout, proxy, DNS, another HTTP error
        raise ConfigError(
            f"{key}={repo_id} is not a local dir, and the Hugging Face Hub is unreachable "
            f"({type(error).__name__}): pass a local dir or retry with network"
        ) from error


def check_hub_push(cfg: DictConfig) -> None:
    """hub.push=true needs a valid repo id, the whole DAG, a token and the Hub: all checked before any training."""
    hub = cfg.hub
    if not hub.push:
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not hub.repo_id or "/" not in hub.repo_id:
        raise ConfigError(f"hub.push=true needs hub.repo_id=<user or org>/<name>; got hub.repo_id={hub.repo_id}")
    try:
        validate_repo_id(hub.repo_id)
    except HFValidationError as error:
        raise ConfigError(
            f"hub.repo_id={hub.repo_id} is not a valid Hub repo id: {str(error).splitlines()[0]}"
        ) from None
    if cfg.run.until is not None and cfg.run.until != "model_card":
        raise ConfigError(f"hub.push=true pushes the model with its card: run.until={cfg.run.until} stops before it")
    if _in_multirun():
        raise ConfigError(
            "hub.push=true in a sweep would push every arm to one repo: push the chosen arm with a single run"
        )
    if hub_offline():
        raise ConfigError("hub.push=true cannot push: HF_HUB_OFFLINE is set (unset it, or leave hub.push=false)")
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if token is None:
        raise ConfigError("hub.push=true needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")
    try:
        HfApi().whoami(token=token)
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise ConfigError(f"hub.push=true: the Hugging Face Hub rejects the token (HTTP {status})") from None
        raise ConfigError(f"hub.push=true: the Hugging Face Hub is unreachable ({type(error).__name__})") from None
    except Exception as error:  # noqa: BLE001 - network failures of every kind
        raise ConfigError(
            f"hub.push=true: the Hugging Face Hub is unreachable ({type(error).__name__}): retry with network"
        ) from None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def looks_local(name: str) -> bool:
    """A path-like name (absolute, ./, ../, ~ or more than one '/') cannot be a Hub id."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep + os.sep in name
