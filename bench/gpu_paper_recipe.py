"""The paper recipe, shortened, on whatever accelerator is here: samples/s and peak memory of the LoRA and full arms.

The recipe of experiment=paper_lora / paper_full (batch 1024, CachedMNRL with mini-batches of 32, lr 2e-5, warmup 0.1,
NO_DUPLICATES, precision from the hardware: bf16 on a GPU that has it) for a few steps, through the pipeline's own
prepare_data / finetune / evaluate stages. Where the Hub is unreachable, the model is bert-base-uncased's architecture
built here with random weights (the same shapes, so the same compute and memory; not its scores) and the data is a
local question/answer dir, both passed on the command line.

  python bench/gpu_paper_recipe.py --tokenizer DIR --data QA_DIR --eval NANOBEIR_DIR --out OUT [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pipeline.adapter_configs import FullFinetune, LoraFinetune
from pipeline.config import DataConfig, EvalConfig, Method, ModelConfig, TrainConfig
from pipeline.evaluation.st_backend import evaluate
from pipeline.models import device_and_precision, device_name, load_model
from pipeline.stages.finetune import finetune
from pipeline.stages.prepare_data import prepare_data


def build_bert_base(tokenizer_dir: Path, out: Path, hidden: int, layers: int) -> Path:
    """bert-base-uncased's architecture (BertConfig's defaults) with random weights, as a sentence-transformers dir."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    tokenizer = BertTokenizerFast.from_pretrained(str(tokenizer_dir))
    heads = max(1, hidden // 64)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
    )
    BertModel(config).save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    transformer = Transformer(str(out / "hf"))
    SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")]).save(
        str(out / "st")
    )
    return out / "st"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--data", required=True, help="a question/answer dir in the GooAQ layout")
    parser.add_argument("--eval", required=True, help="a NanoBEIR-layout dir")
    parser.add_argument("--datasets", default="msmarco,scifact")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=None, help="None: the model's 512, as the recipe")
    parser.add_argument("--methods", default="lora,full", help="arms, in the order they run (the first pays warm-up)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()

    device, precision = device_and_precision("auto")
    report = {"device": device_name(device), "precision": precision, "torch": torch.__version__, "arms": {}}
    print(json.dumps(report), flush=True)
    model_dir = build_bert_base(args.tokenizer, args.out / "model", args.hidden, args.layers)
    model_cfg = OmegaConf.structured(ModelConfig(name=str(model_dir), max_seq_length=args.max_seq_length))
    data_cfg = OmegaConf.structured(DataConfig(path=args.data, eval_size=256, train_size=args.steps * args.batch_size))
    eval_cfg = OmegaConf.structured(
        EvalConfig(dataset_id=args.eval, datasets=args.datasets.split(","), batch_size=256, during_training=False)
    )
    train_cfg = OmegaConf.structured(
        TrainConfig(
            max_steps=args.steps,
            batch_size=args.batch_size,
            eval_batch_size=args.batch_size,
            mini_batch_size=args.mini_batch_size,
            lr=2e-5,
            warmup_ratio=0.1,
            eval_steps=None,
            save_steps=None,
            logging_steps=1,
        )
    )
    prepare_data(data_cfg, args.out / "data")

    for method in [Method(m) for m in args.methods.split(",")]:
        ft_cfg = OmegaConf.structured(
            LoraFinetune(r=64, alpha=128, dropout=0.1) if method == Method.lora else FullFinetune()
        )
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        summary = finetune(model_cfg, data_cfg, ft_cfg, train_cfg, eval_cfg, args.out / "data", args.out / method.value)
        train_s = time.perf_counter() - start
        peak_train = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = load_model(model_cfg, str(args.out / method.value / "model"))
        start = time.perf_counter()
        result = evaluate(model, eval_cfg, args.out / f"eval-{method.value}")
        eval_s = time.perf_counter() - start
        corpus = sum(2000 for _ in result["per_dataset_ndcg_at_10"])
        report["arms"][method.value] = {
            "steps": summary["global_step"],
            "samples": summary["global_step"] * args.batch_size,
            "trainer_samples_per_second": summary["train_samples_per_second"],
            "stage_seconds": round(train_s, 1),
            "peak_gpu_memory_gib_train": peak_train,
            "peak_gpu_memory_gib_eval": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            "trainable_params": summary["trainable_params"],
            "eval_seconds": round(eval_s, 1),
            "eval_docs_per_second_approx": round(corpus / eval_s, 1),
            "ndcg_at_10_random_init": result["ndcg_at_10"],
        }
        print(json.dumps({method.value: report["arms"][method.value]}), flush=True)
    (args.out / "gpu_paper_recipe.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
