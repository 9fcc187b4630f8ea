"""Stage 2: fine-tune a sentence-transformers model with a peft adapter (LoRA, DoRA, IA3, ...) or fully, one recipe.

Reads like sentence-transformers' training_gooaq_lora.py, with the values from the config.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
from datasets import load_from_disk
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerModelCardData,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from transformers import set_seed
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from pipeline.adapter_configs import hyperparameters
from pipeline.config import (
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    LossName,
    Method,
    ModelConfig,
    ModelDtype,
    RunError,
    TrainConfig,
    mini_batch_size,
)
from pipeline.console import CompactProgress
from pipeline.evaluation.st_backend import build_evaluator
from pipeline.fingerprint import datasets_cache
from pipeline.losses import AutoCachedMNRL
from pipeline.models import (
    adapter_facts,
    device_and_precision,
    load_model,
    model_kwargs,
    model_source,
    prompts_of,
    training_prompts,
)
from pipeline.peft_methods import peft_config, save_adapter_fixes
from pipeline.stages.model_card import card_values


def finetune(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    ft: FinetuneConfig,
    train: TrainConfig,
    eval_cfg: EvalConfig,
    data_dir: Path,
    out: Path,
    callbacks: list | None = None,
    cache_dir: Path | None = None,
    fsdp: bool = False,
) -> dict:
    """Train and save; returns the run's summary. Under torchrun (pipeline.launch.torchrun) each of the job's
    processes calls it: the first one saves and returns the summary, the others return None."""
    set_seed(train.seed)  # the adapter's initialisation and the data order
    adapter = ft.method != Method.full
    device, precision = device_and_precision(train.precision.value)
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's: the job's processes, one per GPU
    gpu = f"cuda:{os.environ['LOCAL_RANK']}" if device == "cuda" and processes > 1 else device  # this process's
    card = card_values(model_cfg, data_cfg, ft)  # language, license, title: the model_card stage can change them

    # 1. Load a model to finetune with 2. model card data
    model = SentenceTransformer(
        model_source(model_cfg.name),
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        device=gpu,
        model_card_data=SentenceTransformerModelCardData(**card),
        model_kwargs=model_kwargs(model_cfg),  # model.dtype (fp32 master weights by default), attn_implementation
    )
    if model_cfg.max_seq_length:
        model.max_seq_length = model_cfg.max_seq_length
    total_params = sum(p.numel() for p in model.parameters())
    prompts = prompts_of(train.prompts, model)  # the strings every evaluator prepends too

    # 3. Create an adapter (LoraConfig, IA3Config, ... from finetune.method) & add it (the full arm trains every weight)
    if adapter:
        model.add_adapter(peft_config(ft, model.transformers_model))
    initial_adapter = {k: v.detach().clone() for k, v in model.get_adapter_state_dict().items()} if adapter else {}
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # 4. Load the prepared (question, answer[, negatives]) rows; a few of them probe whether training changed anything
    dataset = load_from_disk(str(data_dir / "dataset"))
    train_dataset, eval_dataset = dataset["train"], dataset["eval"]
    probe = probe_texts(train_dataset)
    initial_embeddings = model.encode(probe, convert_to_tensor=True)  # every adapter here starts as the identity

    # 5. Define a loss function: in-batch negatives, gathered from every process of the job when it has several
    gather = processes > 1  # one process: nothing to gather (the library warns when asked to)
    mini_batch = mini_batch_size(train.mini_batch_size)
    if train.loss == LossName.cached_mnrl and mini_batch is None:  # auto: cache only where memory needs it
        fp32 = precision == "fp32" and ModelDtype(model_cfg.dtype) == ModelDtype.float32  # activations' width
        loss = AutoCachedMNRL(model, dtype_bytes=4 if fp32 else 2, gather_across_devices=gather)
    elif train.loss == LossName.cached_mnrl:
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch, gather_across_devices=gather)
    else:
        loss = MultipleNegativesRankingLoss(model, gather_across_devices=gather)

    # 6. Specify training arguments
    column_prompts = training_prompts(prompts, train_dataset.column_names)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,  # -1: the epochs decide
        per_device_train_batch_size=train.batch_size // processes,  # train.batch_size is the job's global batch
        per_device_eval_batch_size=-(-(train.eval_batch_size or train.batch_size) // processes),
        learning_rate=train.lr,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a fraction of the training steps
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # MNRL: duplicate texts in a batch would be false negatives
        eval_strategy="steps" if train.eval_steps else "no",
        eval_steps=train.eval_steps,
        save_strategy="steps" if train.save_steps else "no",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        seed=train.seed,
        prompts=column_prompts,  # the query prompt on questions, the document prompt on answers and negatives
        gradient_checkpointing=train.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},  # reentrant would leave LoRA untrained (peft #1142)
        dataloader_pin_memory=device == "cuda",  # pinning only helps host-to-GPU copies
        use_cpu=device == "cpu",  # several CPU processes (tests) train under DDP with gloo only when this says CPU
        **fsdp_arguments(fsdp, model),  # the full shard of weights, gradients and AdamW states, or DDP
        report_to="none",  # tracking is the pipeline's (MLflow), through `callbacks`
    )

    # 7. Create an evaluator & evaluate during training, as the recipe does
    evaluator = None
    if eval_cfg.during_training and train.eval_steps and not eval_cfg.tasks:  # NanoBEIR's: MTEB tasks have none
        with datasets_cache(cache_dir) if cache_dir else nullcontext():
            evaluator = build_evaluator(eval_cfg, prompts)

    # 8. Create a trainer & train (resuming from the last checkpoint of an interrupted run)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=callbacks,
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgress)  # the bar, with short log lines instead of raw metric dicts
    if fsdp and not trainer.is_fsdp_enabled:  # accelerate shards across GPUs only; never DDP in its place, unsaid
        raise RunError(f"FSDP was asked for and accelerate did not enable it ({trainer.accelerator.distributed_type})")
    last_checkpoint = last_complete_checkpoint(Path(args.output_dir), args.world_size)
    result = trainer.train(resume_from_checkpoint=last_checkpoint)
    if fsdp:  # every process takes part in gathering the shards; the first one gets the whole trained model
        model = unsharded(trainer, model, ft, model_cfg)
    if not trainer.is_world_process_zero():
        return None  # the first process checks, saves and reports

    check_trained(model, initial_adapter, probe, initial_embeddings)  # a run that changed nothing ends FAILED

    # 9. Save the trained model: the adapter alone for an adapter method, every weight for the full arm
    model.save_pretrained(str(out / "model"))  # safetensors
    if adapter:
        save_adapter_fixes(out / "model")  # DoRA's magnitudes under the key transformers' load_adapter reads
        portable_adapter_config(out / "model", model_cfg)
    reload_diff = _reload_difference(
        model, model_cfg, out / "model", train_dataset[: min(2, len(train_dataset))], precision
    )
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2))
    shutil.rmtree(args.output_dir, ignore_errors=True)  # checkpoints only serve a resume; the model is saved

    weights = out / "model" / ("adapter_model.safetensors" if adapter else "model.safetensors")
    summary = {
        "method": ft.method.value,
        "card": card,
        "base_revision": model_cfg.revision,  # the commit SHA a Hub base model was pinned to; None: a local dir
        "device": device,
        "precision": precision,
        "processes": processes,
        "fsdp": fsdp,
        "dtype": ModelDtype(model_cfg.dtype).value,
        "trainable_dtype": ",".join(
            sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})
        ),
        "prompts": prompts,
        "gradient_checkpointing": train.gradient_checkpointing,
        "total_params": total_params,
        "trainable_params": trainable_params,
        "trainable_percent": 100.0 * trainable_params / total_params,
        "weights_file": weights.name,
        "weights_mb": weights.stat().st_size / 1e6,
        "weights_file_mb": weights.stat().st_size / 1e6,
        "global_step": trainer.state.global_step,
        "resumed_from": Path(last_checkpoint).name if last_checkpoint else None,
        "reload_max_abs_diff": reload_diff,
        "train_seconds": result.metrics.get("train_runtime"),
        "peak_memory_mb": peak_memory_mb(device),  # GPU memory on CUDA, the process's peak RSS on CPU
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_loss": result.metrics.get("train_loss"),
    }
    if isinstance(loss, AutoCachedMNRL):  # what auto chose: steps without the gradient cache, and with it
        summary.update(
            uncached_steps=loss.plan.uncached_steps,
            cached_steps=loss.plan.cached_steps,
            recomputed_token_fraction=loss.plan.recomputed_fraction,
            activation_budget_mb=loss.plan.budget_bytes / 1e6,
        )
    if adapter:  # adapter facts from the adapter's own state dict (get_adapter_state_dict)
        facts = adapter_facts(model)
        summary.update(
            trainable_params=facts["adapter_params"],
            trainable_percent=facts["adapter_percent"],
            adapter_params=facts["adapter_params"],
            weights_mb=facts["adapter_mb"],
            target_modules=facts["target_modules"],
            peft_type=facts["peft_type"],
            hyperparameters=hyperparameters(ft),
        )
    return summary


def fsdp_arguments(fsdp: bool, model: SentenceTransformer) -> dict:
    """The Trainer's FSDP arguments (FSDP2, full shard: each process keeps 1/N of the weights, gradients and AdamW
    states), each transformer layer a unit; none for DDP. The layer class is the model's own `_no_split_modules`:
    the Trainer's fallback looks for it on the SentenceTransformer, which has none."""
    if not fsdp:
        return {}
    layers = list(getattr(model.transformers_model, "_no_split_modules", None) or [])
    return {
        "fsdp": True,
        "fsdp_config": {"version": 2, "reshard_after_forward": True, "transformer_layer_cls_to_wrap": layers},
    }


def unsharded(trainer: SentenceTransformerTrainer, model: SentenceTransformer, ft: FinetuneConfig, model_cfg):
    """After FSDP training: the whole trained model on the first process (the shards gathered, a collective call
    every process makes), loaded into a fresh copy of the model (with the same adapter); `model` elsewhere."""
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # the full state dict, on rank 0 only
    if not trainer.is_world_process_zero():
        return model
    whole = load_model(model_cfg)
    if ft.method != Method.full:
        whole.add_adapter(peft_config(ft, whole.transformers_model))
    whole.load_state_dict(state)
    return whole.to(trainer.args.device)


class NotTrainedError(RunError):
    """Training ran and changed nothing that matters: the message names what did not change."""


def probe_texts(dataset) -> list[str]:
    """A few training texts (the first two rows, every column): what `check_trained` compares before and after."""
    rows = dataset[: min(2, len(dataset))]
    return [text for column in rows.values() for text in column if isinstance(text, str)]


def check_trained(model: SentenceTransformer, initial_adapter: dict, probe: list[str], initial_embeddings) -> None:
    """Refuse a fine-tune that did not train: an adapter none of whose weights moved from their initial values (a
    learning rate that rounds away, a frozen path), or a model whose embeddings of `probe` equal those it started with
    (the base model's: every adapter here starts as the identity)."""
    if initial_adapter:
        state = model.get_adapter_state_dict()
        unchanged = [name for name, before in initial_adapter.items() if torch.equal(state[name].cpu(), before.cpu())]
        if len(unchanged) == len(initial_adapter):
            raise NotTrainedError(
                f"the adapter did not train: all {len(unchanged)} of its weight tensors still equal their initial "
                "values (check train.lr, train.max_steps and the warmup, model.dtype, the target modules)"
            )
    after = model.encode(probe, convert_to_tensor=True)
    if torch.equal(after.float().cpu(), initial_embeddings.float().cpu()):
        raise NotTrainedError(
            f"the fine-tune did not train: its embeddings of {len(probe)} training texts equal the base model's "
            "exactly (check train.lr, train.max_steps and the warmup, model.dtype)"
        )


def portable_adapter_config(model_dir: Path, model_cfg: ModelConfig) -> None:
    """Record the base model as configured (its Hub id), not the path of this machine's copy it was loaded from."""
    path = model_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = model_cfg.name
    config["revision"] = model_cfg.revision
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _reload_difference(
    model: SentenceTransformer, model_cfg: ModelConfig, saved: Path, rows: dict, precision: str
) -> float:
    """Largest embedding difference between the trained model and the saved dir loaded back: the save must be exact.

    After mixed-precision training, accelerate leaves the trained model's forward wrapped in autocast: the reloaded
    model is run under the same autocast, so that both sides compute alike (bf16 vs fp32 alone differs by ~1e-2).
    """
    texts = [text for column in rows.values() for text in column]
    before = model.encode(texts, convert_to_tensor=True)
    reloaded_model = load_model(model_cfg, str(saved)).to(model.device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(model.device.type, dtype=amp) if amp else nullcontext():
        reloaded = reloaded_model.encode(texts, convert_to_tensor=True)
    diff = float((before.float() - reloaded.float()).abs().max())
    if diff > (1e-3 if amp else 1e-4):
        raise RuntimeError(f"the saved model at {saved} does not reproduce the trained one (max |diff| {diff:.2e})")
    return diff


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e6
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def last_complete_checkpoint(checkpoints: Path, processes: int = 1) -> str | None:
    """The newest checkpoint a kill did not interrupt; half-written ones are removed.

    The Trainer writes trainer_state.json last: a process killed while saving leaves a checkpoint dir without it. With
    several `processes` each writes its own RNG state (rng_state_<rank>.pth), and the first one writes
    trainer_state.json without waiting for the others: a kill can leave another process's file missing or cut short
    (seen as an EOFError in process 1 of 2 on resuming), so each of them must load too.
    """
    if not checkpoints.is_dir():
        return None
    found = sorted(checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for checkpoint in reversed(found):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            for rank in range(processes if processes > 1 else 0):
                torch.load(checkpoint / f"rng_state_{rank}.pth", weights_only=False)
            return str(checkpoint)
        except (OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError):  # missing or cut short
            shutil.rmtree(checkpoint)
    return None
