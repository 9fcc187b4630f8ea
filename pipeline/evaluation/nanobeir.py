"""NanoBEIR's dataset names: the 13 sets, and the extra `Nano<Name>` splits a local dir in its layout may hold.

The table is sentence-transformers' own (`nano_beir.DATASET_NAME_TO_HUMAN_READABLE`; a test keeps the two equal),
held here so that config validation can name the allowed values without importing sentence-transformers and torch:
a typo fails in a second.
"""

from __future__ import annotations

from pathlib import Path

NANOBEIR = {  # short name -> human-readable name (the split is Nano<human name>)
    "climatefever": "ClimateFEVER",
    "dbpedia": "DBPedia",
    "fever": "FEVER",
    "fiqa2018": "FiQA2018",
    "hotpotqa": "HotpotQA",
    "msmarco": "MSMARCO",
    "nfcorpus": "NFCorpus",
    "nq": "NQ",
    "quoraretrieval": "QuoraRetrieval",
    "scidocs": "SCIDOCS",
    "arguana": "ArguAna",
    "scifact": "SciFact",
    "touche2020": "Touche2020",
}
NANOBEIR_DATASETS = list(NANOBEIR)


def local_dataset_names(dataset_id: str) -> dict[str, str]:
    """Short name -> human-readable name of the `Nano<Name>` splits of a local dir in the NanoBEIR layout."""
    corpus = Path(dataset_id) / "corpus"
    if not corpus.is_dir():
        return {}
    splits = sorted(p.stem for p in corpus.glob("Nano*.parquet"))
    return {split[len("Nano") :].lower(): split[len("Nano") :] for split in splits}


def dataset_table(dataset_id: str) -> dict[str, str]:
    """Short name -> human name of every set `dataset_id` can hold: NanoBEIR's 13, plus a local dir's own splits."""
    return {**local_dataset_names(dataset_id), **NANOBEIR}
