"""Content fingerprints: caches and provenance key on what an input holds, not on its name.

- A local dir is keyed on its bytes (`dir_fingerprint`): `datasets` caches a local dir by path and mtime, so a dir
  rebuilt in place would be served stale; keying the stage cache (and the `datasets` cache dir) on a content hash
  makes a rebuilt dir a new input. Each file's digest is remembered by path, size, mtime, ctime and inode (in memory
  and in `<outputs>/cache/fingerprints.json`), so a multi-GB model dir is read once, not once per run.
- A Hub id is keyed on the commit SHA its revision resolves to at run start (`hub_revision`; offline: the SHA of the
  cached snapshot), so a repo that moves on is a new input, and the run loads exactly that commit (`pinned_config`).
- The code is keyed too (`code_version`): a hash of the pipeline modules a stage runs and of the library versions.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import re
from contextlib import contextmanager
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig

from pipeline.models import model_source

PACKAGE_ROOT = Path(__file__).resolve().parent
# Libraries whose version can change a stage's numbers
LIBRARIES = ("torch", "transformers", "sentence-transformers", "peft", "datasets", "mteb", "pytrec-eval-terrier")
SHA = re.compile(r"[0-9a-f]{40}")
_FILE_DIGESTS: dict[str, list] = {}  # in-process memo: abs path -> [size, mtime_ns, ctime_ns, inode, digest]


def _file_digest(file: Path, memo: dict[str, list]) -> str:
    st = file.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]  # ctime: a rewrite that keeps mtime still shows
    known = memo.get(str(file))
    if known is not None and known[:4] == stamp:
        return known[4]
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    memo[str(file)] = [*stamp, digest.hexdigest()]
    return digest.hexdigest()


def dir_fingerprint(path: str | os.PathLike, memo_file: str | os.PathLike | None = None) -> str:
    """sha256 over the relative paths and content digests of every file below `path` (dot-files and caches excluded).

    A file's digest is reused while its size, mtime, ctime and inode are unchanged: in this process, and across
    processes through `memo_file` (a JSON file, updated under a file lock).
    """
    root = Path(path).resolve()
    files = [(root.name, root)] if root.is_file() else []  # a data file (.jsonl, .csv, .parquet) stands alone
    for file in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
        rel = file.relative_to(root).as_posix()
        if not any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            files.append((rel, file))
    memo = _FILE_DIGESTS
    if memo_file is not None and files:
        memo_path = Path(memo_file)
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(memo_path) + ".lock"):
            try:
                memo.update(json.loads(memo_path.read_text()))
            except (OSError, ValueError):
                pass
            before = {rel: memo.get(str(file)) for rel, file in files}
            digests = [(rel, _file_digest(file, memo)) for rel, file in files]
            if any(memo.get(str(file)) != before[rel] for rel, file in files):
                for gone in [p for p in memo if not os.path.exists(p)]:  # files deleted since: forgotten
                    del memo[gone]
                tmp = memo_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(memo))
                os.replace(tmp, memo_path)
    else:
        digests = [(rel, _file_digest(file, memo)) for rel, file in files]
    total = hashlib.sha256()
    for rel, digest in digests:
        total.update(rel.encode() + b"\0" + digest.encode() + b"\0")
    return total.hexdigest()[:16]


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def cached_snapshot(repo_id: str, kind: str, revision: str | None = None) -> Path | None:
    """The dir of `repo_id`'s cached snapshot at `revision` (a branch, tag or SHA; default main), if cached."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=kind)
    revision = revision or "main"
    sha = revision if SHA.fullmatch(revision) else None
    if sha is None:
        ref = repo / "refs" / revision
        sha = ref.read_text().strip() if ref.is_file() else None
    snapshot = repo / "snapshots" / sha if sha else None
    return snapshot if snapshot is not None and snapshot.is_dir() else None


def hub_revision(repo_id: str, kind: str, revision: str | None = None) -> str:
    """The commit SHA that `revision` (default main) of a Hub repo resolves to: asked of the Hub, or, offline or
    when the Hub does not answer, the SHA of the cached snapshot. A SHA is itself."""
    if revision and SHA.fullmatch(revision):
        return revision
    cached = cached_snapshot(repo_id, kind, revision)
    if not _offline():
        from huggingface_hub import HfApi

        api = HfApi()
        try:
            info = (api.model_info if kind == "model" else api.dataset_info)(repo_id, revision=revision, timeout=10)
            return info.sha
        except Exception:  # noqa: BLE001 - unreachable: fall back to the cache
            if cached is None:
                raise
    if cached is None:
        raise FileNotFoundError(f"{repo_id}@{revision or 'main'} is not in the Hugging Face cache (offline)")
    return cached.name


def source_fingerprint(
    name_or_path: str, revision: str | None = None, kind: str = "dataset", memo_file: str | os.PathLike | None = None
) -> str:
    """`local:<content hash>` for a local dir or file, `hub:<id>@<commit SHA>` for a Hub id (pinned content)."""
    if os.path.isdir(name_or_path) or os.path.isfile(name_or_path):
        return f"local:{dir_fingerprint(name_or_path, memo_file)}"
    return f"hub:{name_or_path}@{hub_revision(name_or_path, kind, revision)}"


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


def digest_memo() -> Path:
    """Where the per-file digests of local inputs are remembered across runs (and shared by every outputs dir):
    `$PIPELINE_FINGERPRINTS`, else `$XDG_CACHE_HOME/lora-vs-full/fingerprints.json` (default ~/.cache)."""
    if os.environ.get("PIPELINE_FINGERPRINTS"):
        return Path(os.environ["PIPELINE_FINGERPRINTS"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "lora-vs-full" / "fingerprints.json"


def sources(cfg: DictConfig, groups: tuple[str, ...] = ("data", "eval", "model")) -> dict[str, str]:
    """Content fingerprints of what the config's `groups` read: a local dir's content, a Hub id's commit SHA."""
    found, memo = {}, digest_memo()
    if "data" in groups:
        found["data"] = source_fingerprint(cfg.data.path, cfg.data.revision, "dataset", memo)
    if "eval" in groups:
        found["eval"] = benchmark_fingerprint(cfg.eval, memo)
    if "model" in groups:
        found["model"] = source_fingerprint(model_source(cfg.model.name), cfg.model.revision, "model", memo)
    return found


def benchmark_fingerprint(ev: DictConfig, memo: Path | None = None) -> str:
    """What the general benchmark's sets hold: NanoBEIR's `dataset_id` (`source_fingerprint`), or per MTEB task its
    local copy's content or the Hub dataset and revision mteb pins for it."""
    if not ev.get("tasks"):
        return source_fingerprint(ev.dataset_id, ev.get("revision"), "dataset", memo)
    import mteb

    def one(task: str) -> str:
        if task in ev.task_dirs:
            return source_fingerprint(ev.task_dirs[task], None, "dataset", memo)
        dataset = mteb.get_task(task).metadata.dataset
        return f"hub:{dataset['path']}@{dataset['revision']}"

    return ";".join(f"{task}={one(task)}" for task in ev.tasks)


def eval_identity(cfg: DictConfig, found: dict[str, str]) -> str:
    """What the NanoBEIR numbers of a run are of: the evaluation config (its backend aside) and the sets' content."""
    from omegaconf import OmegaConf

    from pipeline.graph import benchmark_settings

    values = benchmark_settings(OmegaConf.to_container(cfg.eval, resolve=True, enum_to_str=True))
    return config_hash({"eval": {k: v for k, v in values.items() if k != "backend"}, "source": found.get("eval")})


def pinned_config(cfg: DictConfig, found: dict[str, str]) -> DictConfig:
    """The config the stages run with: every Hub id at the commit SHA its run was keyed on (`found`).

    Offline, a Hub dataset is read from its cached snapshot dir: `datasets` in offline mode does not read a Hub
    dataset from the hub file cache that `hf download` fills.
    """
    pinned = copy.deepcopy(cfg)
    for group, key, kind in (
        ("data", "path", "dataset"),
        ("eval", "dataset_id", "dataset"),
        ("model", "name", "model"),
    ):
        source = found.get(group, "")
        if not source.startswith("hub:"):
            continue
        sha = source.rsplit("@", 1)[1]
        pinned[group].revision = sha
        snapshot = cached_snapshot(cfg[group][key], kind, sha) if kind == "dataset" and _offline() else None
        if snapshot is not None:
            pinned[group][key] = str(snapshot)
            pinned[group].revision = None  # a local dir has no revision
    return pinned


@cache  # each stage's code version walks the same modules
def _imports(module: str) -> frozenset[str]:
    """The `pipeline.*` modules that `module`'s source imports (parsed, not imported: torch stays unloaded)."""
    path = PACKAGE_ROOT.parent / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = PACKAGE_ROOT.parent / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("pipeline") and _module_file(name) is not None:
                found.add(name)
    return frozenset(found)


def _module_file(module: str) -> Path | None:
    base = PACKAGE_ROOT.parent / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def code_version(*modules: str) -> str:
    """A hash of the source of `modules` and of every pipeline module they import (transitively), and of the
    versions of the libraries that compute the numbers: a change to any of them is a new stage key."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(module) - seen)
    digest = hashlib.sha256()
    for module in sorted(seen):
        digest.update(module.encode() + b"\0" + _module_file(module).read_bytes() + b"\0")
    for library in LIBRARIES:
        try:
            digest.update(f"{library}=={version(library)}\0".encode())
        except PackageNotFoundError:
            pass
    return digest.hexdigest()[:16]
