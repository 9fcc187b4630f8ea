"""The finetune config turned into the `PeftConfig` that `SentenceTransformer.add_adapter` takes, and what each saved
adapter needs to load back exactly.

One function per concern: `peft_config` (config -> PeftConfig), `save_adapter_fixes` (a saved dir made loadable by
transformers' `load_adapter`), `MERGEABLE` (the peft types whose adapters merge into the base weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
from peft import PeftConfig, TaskType
from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
from torch import nn

from pipeline.adapter_configs import ALL_LINEAR, METHODS, Method, peft_default_targets

# peft types whose adapters `merge_and_unload()` folds into the base weights (checked by tests/test_adapter_configs.py
# and by `python -m pipeline.tools.method_table`, which merges each method and compares embeddings)
MERGEABLE = {info.peft_type for info in METHODS.values() if info.mergeable}  # LORA, IA3, LOHA, LOKR


def peft_config(ft, model: nn.Module) -> PeftConfig:
    """The PeftConfig of `ft` (a finetune config of an adapter method) for `model` (the transformers model)."""
    method = Method(ft.method)
    targets = _targets(ft.target_modules, method, model)
    common = {"task_type": TaskType.FEATURE_EXTRACTION, "inference_mode": False, "target_modules": targets}
    info = METHODS[method]  # the method's peft class and arguments
    if info.peft_class is None:
        raise ValueError(f"finetune={method.value} is not an adapter method")
    options = info.peft_options(ft)
    if "feedforward_modules" in options and targets == ALL_LINEAR:  # IA3: peft checks feedforward ⊆ targets on
        targets = linear_modules(model)  # names: give both as full module names
        suffixes = options["feedforward_modules"] or TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(
            model.config.model_type, []
        )
        options["feedforward_modules"] = [name for name in targets if any(_matches(name, s) for s in suffixes)]
        common["target_modules"] = targets
    return getattr(peft, info.peft_class)(**options, **common)


def _targets(value, method: Method, model: nn.Module):
    """The targets as peft takes them: a list, "all-linear", or None for peft's default for the architecture, which
    becomes all-linear where peft has none (ModernBERT in peft 0.21): a run, not a peft error."""
    if value is None:
        return None if peft_default_targets(method.value, model.config.model_type) else ALL_LINEAR
    return value if isinstance(value, str) else list(value)


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def linear_modules(model: nn.Module) -> list[str]:
    """Every nn.Linear of the model but its output layer: what peft's `all-linear` selects."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module is not output]


def save_adapter_fixes(model_dir: Path) -> None:
    """Make a saved DoRA adapter load back through transformers' `load_adapter` (SentenceTransformer(dir) uses it).

    peft saves DoRA's magnitude vectors as `<layer>.lora_magnitude_vector`; transformers 5.23's key mapping renames
    that to `...lora_magnitude_vector.default`, while the parameter is `...lora_magnitude_vector.default.weight`, so
    the magnitudes silently stay at their initial values. Saved as `<layer>.lora_magnitude_vector.weight`, they load
    right through transformers and through peft's own `PeftModel.from_pretrained` (tests/test_adapter_configs.py).
    """
    config = json.loads((model_dir / "adapter_config.json").read_text())
    weights = model_dir / "adapter_model.safetensors"
    if not config.get("use_dora") or not weights.is_file():
        return
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    if any(key.endswith(".lora_magnitude_vector") for key in state):
        state = {key + (".weight" if key.endswith(".lora_magnitude_vector") else ""): t for key, t in state.items()}
        save_file(state, weights, metadata={"format": "pt"})


def peft_type_of(adapter_dir: str | Path) -> str:
    return str(json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("peft_type", "unknown"))


def check_mergeable(adapter_dir: str | Path) -> None:
    """Refuse, in one line, an adapter whose type peft cannot merge into the base weights."""
    peft_type = peft_type_of(adapter_dir)
    if peft_type not in MERGEABLE:
        raise ValueError(
            f"{adapter_dir} is a {peft_type} adapter, which peft cannot merge into the base weights "
            f"(mergeable: {', '.join(sorted(MERGEABLE))}); load it with its base instead"
        )
