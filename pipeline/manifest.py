"""A stage's cached output is complete only with its manifest (`_SUCCESS.json`): the stage's result and every file it
wrote, with its size. `pipeline.dag` writes it last, before renaming `<key>.partial/` to `<key>/`, so a partial or
damaged output is never used."""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "_SUCCESS.json"


def is_complete(path: Path) -> bool:
    """A stage dir counts only with its manifest, and with every file the manifest lists, at its size."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((path / rel).is_file() and (path / rel).stat().st_size == size for rel, size in files.items())


def write_manifest(path: Path, result: dict) -> None:
    files = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (path / MANIFEST).write_text(json.dumps({"result": result, "files": files}, indent=2, default=str))


def read_result(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())["result"]
