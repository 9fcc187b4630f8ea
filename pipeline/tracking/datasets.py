"""The data a run read, as MLflow dataset inputs: the runs table's Datasets column, with each set's role.

Each input names where the data loads from (`load_dataset`'s path, config, split and revision: a Hub id, or a local
dir) and carries a digest of what the run used: the content fingerprint of the source (`pipeline.fingerprint`: a
local dir's bytes, or a Hub id at its revision) together with the selection the run made of it (split sizes, seed,
datasets). MLflow's own Hugging Face digest hashes only the first 10,000 rows; this one covers every byte of a local
dir, and two selections of one source never share a digest.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipeline.fingerprint import config_hash

CONTEXTS = ("training", "dev", "test", "evaluation")  # test: the in-domain test set; evaluation: NanoBEIR


@dataclass(frozen=True)
class DataInput:
    """One dataset a run read, and what for."""

    name: str  # what the UI shows, e.g. "medquad-qa" or "NanoBEIR-en"
    path: str  # a Hub id or a local dir, as `datasets.load_dataset` takes it
    context: str  # training / dev / test / evaluation
    fingerprint: str  # pipeline.fingerprint.source_fingerprint(path, revision)
    revision: str | None = None
    config_name: str | None = None
    split: str | None = None
    selection: dict[str, Any] = field(default_factory=dict)  # what of the source the run used: part of the digest
    profile: dict[str, Any] = field(default_factory=dict)  # shown with the dataset (rows, queries, ...)

    @property
    def digest(self) -> str:
        return config_hash({"source": self.fingerprint, "selection": self.selection})


class _Described(MetaDataset):
    """A dataset known by its source and digest (the data itself is not logged), with a profile."""

    def __init__(self, source, name: str, digest: str, profile: dict[str, Any]):
        self._profile = profile or None
        super().__init__(source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any] | None:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        if self._profile:
            config["profile"] = json.dumps(self._profile)
        return config


def source_of(path: str, revision: str | None = None, config_name: str | None = None, split: str | None = None):
    """How the data loads back: `load_dataset(path, config_name, split=split, revision=revision)`. A local dir is
    recorded by its absolute path, a Hub id as is, with its revision ('main' when none was pinned)."""
    local = os.path.isdir(path)
    return HuggingFaceDatasetSource(
        path=str(Path(path).resolve()) if local else path,
        config_name=config_name,
        split=split,
        revision=None if local else (revision or "main"),
    )


def log_data_inputs(client: MlflowClient, run_id: str, inputs: list[DataInput]) -> None:
    """Log `inputs` on the run as MLflow dataset inputs, each tagged with its context (training / dev / test / evaluation)."""
    entries = []
    for item in inputs:
        if item.context not in CONTEXTS:
            raise ValueError(f"dataset context {item.context!r}: use one of {', '.join(CONTEXTS)}")
        source = source_of(item.path, item.revision, item.config_name, item.split)
        dataset = _Described(source, name=item.name, digest=item.digest, profile=item.profile)
        entries.append(
            DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=item.context)])
        )
    for attempt in range(3):
        try:
            if entries:
                client.log_inputs(run_id, datasets=entries)
            return
        except MlflowException as error:
            # Two jobs logging the same new dataset at once: MLflow's get-or-create of the dataset row races, and the
            # loser gets a UNIQUE constraint error (seen through a tracking server); the row exists now, so retry
            if "UNIQUE constraint" not in str(error) or attempt == 2:
                raise
            time.sleep(0.5 * (attempt + 1))


def logged_inputs(run) -> list[dict[str, Any]]:
    """The dataset inputs of a fetched run, as plain dicts (name, digest, source, context, profile)."""
    found = []
    for entry in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in entry.tags}
        found.append(
            {
                "name": entry.dataset.name,
                "digest": entry.dataset.digest,
                "source_type": entry.dataset.source_type,
                "source": json.loads(entry.dataset.source),
                "context": tags.get(MLFLOW_DATASET_CONTEXT),
                "profile": json.loads(entry.dataset.profile) if entry.dataset.profile else None,
            }
        )
    return found


def dataset_name(path: str) -> str:
    """A Hub id as is; a local dir by its name (its full path is the input's source)."""
    return Path(path).resolve().name if os.path.isdir(path) else path


def training_input(data, fingerprint: str, rows: int) -> DataInput:
    """The training pairs prepare_data selected from `data.path` (a `DataConfig`): its split sizes and seed."""
    return _split_input(data, fingerprint, rows, part="train", context="training")


def dev_input(data, fingerprint: str, rows: int, split: str = "dev") -> DataInput:
    """The pairs prepare_data held out of `data.path` (`split`: the in-domain dev set, or the in-domain test set of
    the last `data.test_size` of them): same source, another part of it."""
    return _split_input(
        data, fingerprint, rows, part="held-out" if split == "dev" else f"held-out {split}", context=split
    )


def _split_input(data, fingerprint: str, rows: int, part: str, context: str) -> DataInput:
    return DataInput(
        name=dataset_name(data.path),
        path=data.path,
        context=context,
        fingerprint=fingerprint,
        revision=data.revision,
        config_name=data.name,
        split=data.split,
        selection={
            "part": part,  # the training rows and the held-out rows of one source are two datasets
            "columns": [data.question_column, data.answer_column, *(data.negative_columns or [])],
            "eval_size": data.eval_size,
            "train_size": data.train_size,
            "test_size": data.test_size,  # the last test_size held-out pairs are the test set's, the rest the dev set's
            "seed": data.seed,
        },
        profile={"num_rows": rows},
    )


def evaluation_inputs(eval_cfg, fingerprint: str, result: dict) -> list[DataInput]:
    """The general benchmark's sets an evaluate stage read (`result`: its summary, per-set NDCG@10 and query counts):
    the NanoBEIR sets as one dataset, or each MTEB task's data as its own (`fingerprint`: `benchmark_fingerprint`'s)."""
    if not eval_cfg.tasks:
        return [
            DataInput(
                name=dataset_name(eval_cfg.dataset_id),
                path=eval_cfg.dataset_id,
                context="evaluation",
                fingerprint=fingerprint,
                selection={"datasets": sorted(result["per_dataset_ndcg_at_10"])},
                profile={"queries": result.get("queries", {})},
            )
        ]
    prints = dict(part.split("=", 1) for part in fingerprint.split(";"))
    return [
        DataInput(
            name=task,
            path=result["tasks"][task],
            context="evaluation",
            fingerprint=prints[task],
            selection={"mteb_task": task},
            profile={"queries": result["queries"][task]},
        )
        for task in eval_cfg.tasks
    ]
