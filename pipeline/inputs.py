"""What a user hands in, read and checked before any model loads: data files and their content, model dirs, LoRA
target modules. Each check returns the one line to show (or None); `pipeline.validate` raises it.

torch is never imported here: a model's module names come from its safetensors header.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset

# A data file is read by the `datasets` builder of its type (`load_dataset("json", data_files=...)`)
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def load_source(path: str, name: str | None, split: str, revision: str | None, cache_dir: Path | None) -> Dataset:
    """`split` of a Hub dataset id, a local dir in the Hub layout, or a single data file (.jsonl, .json, .csv, .tsv,
    .parquet: read as that one split)."""
    from datasets import load_dataset

    suffix = Path(path).suffix.lower()
    if os.path.isfile(path) and suffix in DATA_FILE_BUILDERS:
        extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
        return load_dataset(
            DATA_FILE_BUILDERS[suffix], data_files={split: path}, split=split, cache_dir=cache_dir, **extra
        )
    return load_dataset(path, name, split=split, revision=revision, cache_dir=cache_dir)


def pair_problems(dataset: Dataset, key: str, columns: list[str], batch_size: int, train_rows: int) -> str | None:
    """The first problem of (question, answer) pairs: a column that is not text, empty or missing values, fewer
    training rows than one batch. None when the pairs can train."""
    import pyarrow.compute as pc

    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    for column in columns:
        kind = str(dataset.features[column].dtype) if hasattr(dataset.features[column], "dtype") else "nested"
        if kind not in ("string", "large_string"):
            return f"{key} column '{column}' holds {kind}, not text: both columns must be strings"
        values = table.column(column)
        nulls = values.null_count
        empty = int(pc.sum(pc.equal(pc.utf8_length(values), 0)).as_py() or 0)
        if nulls or empty:
            first = next(i for i, v in enumerate(values.to_pylist()) if v is None or v == "")
            return (
                f"{key} column '{column}' has {nulls} null and {empty} empty value(s) (first at row {first}): "
                "every question and answer must be non-empty text; drop or fill those rows"
            )
    if train_rows < batch_size:
        return (
            f"train.batch_size={batch_size} is larger than the {train_rows} training rows of {key}: "
            "use a batch size <= the training rows (in-batch negatives need full batches)"
        )
    return None


def duplicate_count(dataset: Dataset, column: str) -> int:
    """Rows whose `column` text repeats an earlier row's (legitimate, but the NO_DUPLICATES sampler skips them)."""
    import pyarrow.compute as pc

    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    values = table.column(column)
    return len(values) - values.null_count - pc.count_distinct(values).as_py()


def model_dir_problem(path: str, key: str) -> str | None:
    """A local dir must be a sentence-transformers or transformers model dir."""
    root = Path(path)
    if (root / "modules.json").is_file() or (root / "config.json").is_file():
        return None
    found = ", ".join(sorted(p.name for p in root.iterdir())[:6]) or "nothing"
    return (
        f"{key}={path} is a dir but not a model: it has no modules.json (sentence-transformers) or config.json "
        f"(transformers); it holds {found}"
    )


def weight_modules(model_dir: str | Path) -> set[str] | None:
    """Dotted names of the modules with a 2-D weight (Linear layers, embeddings), read from the safetensors headers
    of a model dir (no torch); None when it holds no safetensors."""
    files = [p for p in Path(model_dir).rglob("*.safetensors") if "adapter" not in p.name]
    if not files:
        return None
    modules = set()
    for file in files:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        modules.update(
            name[: -len(".weight")]
            for name, info in header.items()
            if name.endswith(".weight") and isinstance(info, dict) and len(info.get("shape", [])) == 2
        )
    return modules


def target_module_problem(model_dir: str | Path, targets: list[str], key: str) -> str | None:
    """peft matches a target name against the end of each module name: every target must match one module."""
    modules = weight_modules(model_dir)
    if modules is None:
        return None
    unmatched = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
    if not unmatched:
        return None
    leaves = sorted({m.rsplit(".", 1)[-1] for m in modules})
    return f"{key}={list(targets)} has {unmatched} matching no module of the model; its layers: {', '.join(leaves)}"
