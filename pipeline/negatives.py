"""Hard negatives: a dataset's own negative columns, checked and laid out as the losses read them.

MultipleNegativesRankingLoss and CachedMNRL take (anchor, positive, negative_1, ..., negative_n): every column after
the first is a candidate document for every anchor of the batch. `prepare_data` keeps the question and answer columns,
then `data.negative_columns` in their order, each a text column (one negative) or a column of lists of text (one
negative per item, the same count in every row, as in query/pos/neg datasets), renamed negative_1..n. The
`mine_negatives` stage writes the same layout (sentence-transformers' "n-tuple" output). A prepared dataset's columns
are therefore always: question, answer, then its negatives.

torch is never imported here: `pipeline.validate` checks a local dataset's negatives before any model loads.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset

    from pipeline.config import DataConfig

# Column names that look like negatives: a dataset that has them and is cut to pairs says so (prepare_data warns)
NEGATIVE_LIKE = re.compile(r"(hard_?)?neg(ative)?s?(_?\d+)?", re.IGNORECASE)


def negative_names(count: int) -> list[str]:
    """The prepared dataset's negative columns: negative_1..negative_count (the library's n-tuple names)."""
    return [f"negative_{i}" for i in range(1, count + 1)]


def negative_columns(column_names: list[str]) -> list[str]:
    """The negative columns of a prepared dataset (prepare_data's or mine_negatives' output), in the loss's order."""
    return list(column_names[2:])


def unused_negative_like(column_names: list[str], data: DataConfig) -> list[str]:
    """Columns that look like hard negatives but that `data.negative_columns` leaves out."""
    used = {data.question_column, data.answer_column, *(data.negative_columns or [])}
    return [c for c in column_names if c not in used and NEGATIVE_LIKE.fullmatch(c)]


def _kind(feature) -> str:
    """'text', 'list' (of text) or what the column holds instead."""
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return "text"
    inner = getattr(feature, "feature", None)  # datasets' List / LargeList / Sequence of a Value
    if inner is not None:
        inner_dtype = getattr(inner, "dtype", type(inner).__name__)
        return "list" if inner_dtype in ("string", "large_string") else f"lists of {inner_dtype}"
    return str(dtype) if dtype is not None else type(feature).__name__


def negatives_problem(dataset: Dataset, data: DataConfig, key: str) -> str | None:
    """The first problem of `data.negative_columns` in `dataset` (one line), or None: a name that is missing, repeated or
    the question/answer column, a column that is neither text nor lists of text, null or empty negatives, lists of
    varying length, a negative equal to its row's answer."""
    import pyarrow.compute as pc

    names = data.negative_columns
    if names is None:
        return None
    names = list(names)
    if not names:
        return "data.negative_columns=[] is not allowed: name the negative columns, or null for pairs only"
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return f"data.negative_columns={names} names {repeated} more than once: each column once"
    pair = [n for n in names if n in (data.question_column, data.answer_column)]
    if pair:
        return f"data.negative_columns={names} holds {pair}, the question or answer column: negatives are other columns"
    missing = [n for n in names if n not in dataset.column_names]
    if missing:
        return f"data.negative_columns has {missing}, not a column of {key}; columns found: {dataset.column_names}"
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    answers = table.column(data.answer_column).combine_chunks()
    for name in names:
        kind = _kind(dataset.features[name])
        if kind not in ("text", "list"):
            return f"{key} column '{name}' (data.negative_columns) holds {kind}: a negative column holds text or lists of text"
        values = table.column(name).combine_chunks()
        rows = pc.list_parent_indices(values) if kind == "list" else None
        if kind == "list":
            lengths = pc.list_value_length(values)
            low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
            if values.null_count or low != high or not high:
                first = next((i for i, n in enumerate(lengths.to_pylist()) if n is None or n != high), 0)
                return (
                    f"{key} column '{name}' (data.negative_columns) holds lists of {low} to {high} negatives "
                    f"({values.null_count} null; row {first} differs): every row needs the same number, >= 1 (the loss "
                    "reads one column per negative); trim the lists to a common length or drop those rows"
                )
            values = pc.list_flatten(values)
        empty = values.null_count + int(pc.sum(pc.equal(pc.utf8_length(values), 0)).as_py() or 0)
        if empty:
            first = next(i for i, v in enumerate(values.to_pylist()) if not v)
            row = rows[first].as_py() if rows is not None else first
            return (
                f"{key} column '{name}' (data.negative_columns) has {empty} null or empty negative(s) (first at row "
                f"{row}): every negative must be non-empty text; drop or fill those rows"
            )
        own = pc.take(answers, rows) if rows is not None else answers
        same = pc.equal(values, own)
        count = int(pc.sum(same).as_py() or 0)
        if count:
            first = same.to_pylist().index(True)
            row = rows[first].as_py() if rows is not None else first
            return (
                f"{key} column '{name}' (data.negative_columns) has {count} negative(s) equal to the row's answer "
                f"(first at row {row}): the loss would rank the positive against itself; drop those negatives"
            )
    return None


def with_negatives(dataset: Dataset, data: DataConfig) -> Dataset:
    """(question, answer) or, with `data.negative_columns`, (question, answer, negative_1, ..., negative_n): each text
    column one negative, each column of lists one per item, in the configured order. Checked by `negatives_problem`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset
    from datasets.table import InMemoryTable

    pair = [data.question_column, data.answer_column]
    if data.negative_columns is None:
        return dataset.select_columns(pair)
    dataset = dataset.select_columns([*pair, *data.negative_columns]).flatten_indices()
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    columns = {name: table.column(name) for name in pair}
    negatives = []
    for name in data.negative_columns:
        values = table.column(name)
        if _kind(dataset.features[name]) == "text":
            negatives.append(values)
        else:
            width = pc.max(pc.list_value_length(values)).as_py()
            negatives.extend(pc.list_element(values, i) for i in range(width))
    columns.update(zip(negative_names(len(negatives)), negatives, strict=True))
    return Dataset(InMemoryTable(pa.table(columns)))


def mine_problem(data: DataConfig, until: str | None = None, force=None) -> str | None:
    """The first problem of `data.mine` (one line), or None. The library checks the same ranges, after the model has
    loaded and every training answer has been embedded: here they fail before anything loads."""
    mine = data.mine
    forced = [force] if isinstance(force, str) else list(force or [])
    if not mine.enabled:
        if until == "mine_negatives" or "mine_negatives" in forced:
            named = f"run.until={until}" if until == "mine_negatives" else f"run.force={force}"
            return f"{named} names the mine_negatives stage, which runs only with data.mine.enabled=true"
        return None
    if data.negative_columns is not None:
        return (
            f"data.mine.enabled=true with data.negative_columns={list(data.negative_columns)} is not allowed: train on "
            "the dataset's own negatives or on mined ones (data.mine.enabled=false or data.negative_columns=null)"
        )
    for key in ("num_negatives", "batch_size"):
        if getattr(mine, key) < 1:
            return f"data.mine.{key}={getattr(mine, key)} is not allowed: must be >= 1"
    if mine.range_min < 0:
        return f"data.mine.range_min={mine.range_min} is not allowed: must be >= 0 (candidates skipped from the top)"
    if mine.range_max is not None and mine.range_max - mine.range_min < mine.num_negatives:
        return (
            f"data.mine.range_max={mine.range_max} is not allowed with range_min={mine.range_min} and "
            f"num_negatives={mine.num_negatives}: the ranks between them must hold num_negatives candidates, "
            "or null for the library's"
        )
    for key in ("absolute_margin", "relative_margin"):
        if getattr(mine, key) is not None and getattr(mine, key) < 0:
            return f"data.mine.{key}={getattr(mine, key)} is not allowed: use a margin >= 0, or null for none"
    return None
