"""Content fingerprints: caches and provenance key on what a local dir holds, not on its path.

`datasets` caches a local dir by path, so a dataset rebuilt in place would be served stale; keying the stage cache
(and the `datasets` cache dir) on a content hash makes a rebuilt dir a new input.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.models import model_source


def dir_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the relative paths and bytes of every file below `path` (dot-files and caches excluded)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            continue
        digest.update(rel.encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def source_fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """A local dir's content hash, or the Hub id with its revision (the Hub pins content by revision)."""
    if os.path.isdir(name_or_path):
        return f"local:{dir_fingerprint(name_or_path)}"
    return f"hub:{name_or_path}@{revision or 'main'}"


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def datasets_cache(cache_dir: str | os.PathLike):
    """Point `datasets`' cache at `cache_dir` (keyed on a content fingerprint by the caller) while inside.

    For loaders that call `load_dataset` themselves with no `cache_dir` argument (NanoBEIREvaluator does).
    """
    import datasets

    previous = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = Path(cache_dir)
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = previous


def sources(cfg: DictConfig, groups: tuple[str, ...] = ("data", "eval", "model")) -> dict[str, str]:
    """Content fingerprints of the local dirs the config's `groups` read (a Hub id stands for itself, at its revision)."""
    found = {}
    if "data" in groups:
        found["data"] = source_fingerprint(cfg.data.path, cfg.data.revision)
    if "eval" in groups:
        found["eval"] = source_fingerprint(cfg.eval.dataset_id)
    if "model" in groups:
        found["model"] = source_fingerprint(model_source(cfg.model.name), cfg.model.revision)
    return found
