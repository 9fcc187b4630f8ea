"""The pipeline's LoRA run without the pipeline: plain sentence-transformers, the same recipe and config, no caching,
no MLflow, no Hydra. The reference arm of bench/overhead.py.

    python bench/bare_lora.py CONFIG_JSON OUT_DIR

CONFIG_JSON: the pipeline's resolved config (as bench/overhead.py writes it, plus `model_path`). Does what a run of
`python -m pipeline` computes: the data split, the base model's NanoBEIR and in-domain dev NDCG@10 (the held-out
pairs as a retrieval task), the LoRA fine-tune, the saved adapter and the fine-tuned model's NanoBEIR and dev NDCG@10;
prints one JSON line with its phase times and scores.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import json  # noqa: E402 - the import time is part of what is measured
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from datasets import load_dataset  # noqa: E402
from peft import LoraConfig, TaskType  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import BatchSamplers  # noqa: E402
from sentence_transformers.sentence_transformer.evaluation import (  # noqa: E402
    InformationRetrievalEvaluator,
    NanoBEIREvaluator,
)
from sentence_transformers.sentence_transformer.losses import (  # noqa: E402
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from transformers import set_seed  # noqa: E402


def main(config_path: str, out_dir: str) -> dict:
    phases = {"import": time.perf_counter() - START}
    cfg = json.loads(Path(config_path).read_text())
    data, model_cfg, ft, train, ev = cfg["data"], cfg["model"], cfg["finetune"], cfg["train"], cfg["eval"]
    out = Path(out_dir)

    tick = time.perf_counter()
    dataset = load_dataset(data["path"], data["name"], split=data["split"])
    dataset = dataset.select_columns([data["question_column"], data["answer_column"]])
    splits = dataset.train_test_split(test_size=data["eval_size"], seed=data["seed"])
    train_dataset = splits["train"].select(range(data["train_size"]))
    # The dev set: the first held-out questions, each with its own answer, among the held-out answers (one id per text)
    heldout = splits["test"]
    questions, answers = heldout[data["question_column"]], heldout[data["answer_column"]]
    n_queries = min(data["dev_queries"], len(questions))
    doc_ids = {}
    for text in answers[: max(n_queries, min(data["dev_corpus"], len(answers)))]:
        doc_ids.setdefault(text, f"d{len(doc_ids)}")
    dev_evaluator = InformationRetrievalEvaluator(
        queries={f"q{i}": questions[i] for i in range(n_queries)},
        corpus={doc: text for text, doc in doc_ids.items()},
        relevant_docs={f"q{i}": {doc_ids[answers[i]]} for i in range(n_queries)},
        batch_size=ev["batch_size"],
        name="dev",
    )
    phases["data"] = time.perf_counter() - tick

    tick = time.perf_counter()
    set_seed(train["seed"])
    model = SentenceTransformer(cfg["model_path"])
    if model_cfg["max_seq_length"]:
        model.max_seq_length = model_cfg["max_seq_length"]
    evaluator = NanoBEIREvaluator(
        dataset_names=ev["datasets"], dataset_id=ev["dataset_id"], batch_size=ev["batch_size"]
    )
    baseline = evaluator(model)
    dev_baseline = dev_evaluator(model)
    phases["baseline_eval"] = time.perf_counter() - tick

    tick = time.perf_counter()
    model.add_adapter(
        LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            inference_mode=False,
            r=ft["r"],
            lora_alpha=ft["alpha"],
            lora_dropout=ft["dropout"],
            target_modules=ft["target_modules"],
        )
    )
    if train["loss"] == "cached_mnrl" and train["mini_batch_size"] != "auto":
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=int(train["mini_batch_size"]))
    else:  # auto: the pipeline's loss embeds once where the batch fits in memory, as MNRL does (at the bench's sizes)
        loss = MultipleNegativesRankingLoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=train["epochs"],
        max_steps=train["max_steps"] or -1,
        per_device_train_batch_size=train["batch_size"],
        per_device_eval_batch_size=train["eval_batch_size"] or train["batch_size"],
        learning_rate=train["lr"],
        warmup_steps=train["warmup_ratio"],
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=train["logging_steps"],
        logging_first_step=True,
        seed=train["seed"],
        dataloader_pin_memory=False,
        report_to="none",
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=splits["test"], loss=loss
    )
    trainer.train()
    model.save_pretrained(str(out / "model"))
    phases["train_and_save"] = time.perf_counter() - tick

    tick = time.perf_counter()
    finetuned = evaluator(model)
    dev_finetuned = dev_evaluator(model)
    phases["finetuned_eval"] = time.perf_counter() - tick
    return {
        "phases": phases,
        "baseline_ndcg_at_10": baseline[evaluator.primary_metric],
        "ndcg_at_10": finetuned[evaluator.primary_metric],
        "dev_baseline_ndcg_at_10": dev_baseline[dev_evaluator.primary_metric],
        "dev_ndcg_at_10": dev_finetuned[dev_evaluator.primary_metric],
        "dev_queries": n_queries,
        "global_step": trainer.state.global_step,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
