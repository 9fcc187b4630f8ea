"""Optional stage (`data.mine.enabled=true`), between prepare_data and finetune: hard negatives for the training rows,
mined with the base model by sentence-transformers' own `mine_hard_negatives`.

Each training question's candidates are the training answers, ranked by the base model as published: its own query and
document prompts where it has them (the library's `encode_query` / `encode_document`), whatever `train.prompts` says,
so the mined rows depend on the model and `data.mine` alone. Its own answer (and any answer of the same question) and
the question itself are never candidates.
`data.mine` passes the library's filters (range_min / range_max, absolute_margin / relative_margin, max_score) and
sampling (top / random, seed `data.seed`); the output is the library's n-tuple, (question, answer, negative_1, ...,
negative_n), the layout prepare_data gives a dataset's own negatives (pipeline.negatives). A question with fewer
candidates than num_negatives passing the filters is dropped, as the library does: the summary counts them. The
held-out rows stay as prepare_data wrote them: the dev set never holds mined negatives.
"""

from __future__ import annotations

import random
from pathlib import Path

from datasets import DatasetDict, load_from_disk

from pipeline.config import DataConfig, ModelConfig, SamplingStrategy
from pipeline.models import load_model

SCORES = "scores"  # the library's [positive, negative_1, ..., negative_n] similarities per row (output_scores=True)


def mine_negatives(model_cfg: ModelConfig, data: DataConfig, data_dir: Path, out: Path) -> dict:
    from sentence_transformers.util import mine_hard_negatives

    mine = data.mine
    dataset = load_from_disk(str(data_dir / "dataset"))
    train = dataset["train"]
    model = load_model(model_cfg)
    random.seed(data.seed)  # sampling_strategy=random draws with Python's random module
    mined = mine_hard_negatives(
        train,
        model,
        anchor_column_name=data.question_column,
        positive_column_name=data.answer_column,
        range_min=mine.range_min,
        range_max=mine.range_max,
        max_score=mine.max_score,
        absolute_margin=mine.absolute_margin,
        relative_margin=mine.relative_margin,
        num_negatives=mine.num_negatives,
        sampling_strategy=SamplingStrategy(mine.sampling_strategy).value,
        output_format="n-tuple",
        output_scores=True,
        batch_size=mine.batch_size,
        verbose=False,
    )
    if len(mined) == 0:
        raise RuntimeError(
            f"mine_negatives kept none of the {len(train)} training rows: no question has "
            f"data.mine.num_negatives={mine.num_negatives} candidates passing the filters; loosen "
            "data.mine.relative_margin / absolute_margin / max_score, raise range_max, or mine fewer"
        )
    scores = mined[SCORES]
    mined = mined.remove_columns(SCORES)
    negatives = [text for column in mined.column_names[2:] for text in mined[column]]
    DatasetDict(train=mined, eval=dataset["eval"]).save_to_disk(out / "dataset")
    return {
        "train_rows_in": len(train),
        "train_rows": len(mined),
        "dropped_rows": len(train) - len(mined),  # too few candidates passed the filters
        "num_negatives": mine.num_negatives,
        "distinct_negatives": len(set(negatives)),  # shared negatives keep their rows out of one batch (NO_DUPLICATES)
        "positive_score_mean": sum(row[0] for row in scores) / len(scores),
        "negative_score_mean": sum(s for row in scores for s in row[1:]) / (len(scores) * mine.num_negatives),
        "device": str(model.device),
    }
