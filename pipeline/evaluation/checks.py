"""The general benchmark's config checks (`eval`), run by `pipeline.validate` before any model loads: NanoBEIR's
local dir (its layout and sets) or Hub id, or an MTEB task list (known single-subset retrieval tasks, local copies or a
reachable Hub). Each failure is one line (`ConfigError`) naming the bad value and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from pipeline.config import ConfigError
from pipeline.evaluation.nanobeir import dataset_table
from pipeline.hub_checks import check_hub, looks_local

NANOBEIR_LAYOUT = ("corpus", "queries", "qrels")


def check_eval(cfg: DictConfig) -> None:
    """The general benchmark of `cfg.eval`: NanoBEIR's dir or Hub id and its sets, or an MTEB task list."""
    ev = cfg.eval
    if ev.tasks is not None:
        _check_tasks(ev)
        return
    if ev.task_dirs:
        raise ConfigError(
            f"eval.task_dirs names {sorted(ev.task_dirs)} but eval.tasks is null (NanoBEIR): list them in eval.tasks"
        )
    local = os.path.isdir(ev.dataset_id)
    if not local and looks_local(ev.dataset_id):
        raise ConfigError(
            f"eval.dataset_id={ev.dataset_id} does not exist: give a local NanoBEIR-layout dir or a Hub id"
        )
    if local:
        missing = [sub for sub in NANOBEIR_LAYOUT if not (Path(ev.dataset_id) / sub).is_dir()]
        if missing:
            raise ConfigError(
                f"eval.dataset_id={ev.dataset_id} is not in the NanoBEIR layout: missing {missing} "
                "(expected corpus/, queries/, qrels/ with one Nano<Name>.parquet each per dataset)"
            )
    table = dataset_table(ev.dataset_id)
    names = [n.lower() for n in ev.datasets] if ev.datasets else None
    unknown = [n for n in names or [] if n not in table]
    if unknown:
        raise ConfigError(f"eval.datasets has unknown name(s) {unknown}; allowed: {', '.join(table)}")
    if names == []:
        raise ConfigError("eval.datasets=[] is not allowed: name at least one dataset, or null for all 13")
    if not local:
        check_hub("dataset", ev.dataset_id, "eval.dataset_id", revision=ev.get("revision"))
        return
    root = Path(ev.dataset_id)
    absent = [
        n
        for n in names or list(table)
        if not all((root / sub / f"Nano{table[n]}.parquet").is_file() for sub in NANOBEIR_LAYOUT)
    ]
    if absent:
        found = sorted({p.stem for p in (root / "corpus").glob("Nano*.parquet")})
        raise ConfigError(
            f"eval.dataset_id={ev.dataset_id} lacks corpus/queries/qrels for {absent}; it holds: {', '.join(found) or 'none'}"
        )


def _check_tasks(ev: DictConfig) -> None:
    """An MTEB task list: at least one task, no NanoBEIR set names beside it, each task a known single-subset retrieval
    task (mteb names the closest), each local copy an existing dir of a listed task, all before any model loads."""
    if len(ev.tasks) == 0:
        raise ConfigError("eval.tasks=[] is not allowed: name at least one MTEB retrieval task, or null for NanoBEIR")
    if ev.datasets is not None:
        raise ConfigError(
            f"eval.datasets={list(ev.datasets)} names NanoBEIR sets, but eval.tasks={list(ev.tasks)} replaces NanoBEIR: "
            "set eval.datasets=null"
        )
    unlisted = sorted(set(ev.task_dirs) - set(ev.tasks))
    if unlisted:
        raise ConfigError(f"eval.task_dirs names {unlisted}, which eval.tasks does not list; listed: {list(ev.tasks)}")
    for task, path in ev.task_dirs.items():
        if not os.path.isdir(path):
            raise ConfigError(
                f"eval.task_dirs.{task}={path} is not a directory: give a local copy of the task's Hub dataset"
            )
    from pipeline.evaluation.mteb_backend import retrieval_task

    for task in ev.tasks:
        try:
            dataset = retrieval_task(task).metadata.dataset
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if task not in ev.task_dirs:  # mteb reads it from the Hub: cached, or the Hub answers
            try:
                check_hub("dataset", dataset["path"], f"eval.tasks: {task}'s dataset", revision=dataset["revision"])
            except ConfigError as e:
                raise ConfigError(f"{e}; or give a local copy: +eval.task_dirs.{task}=DIR") from None
