"""The `finetune` group's typed configs: one dataclass per method, with peft's documented defaults.

`finetune=<method>` picks `conf/finetune/<method>.yaml`, which starts from the method's schema registered here: a key
the method does not have (`finetune=ia3 finetune.r=8`) or a wrong type fails at compose time. The non-prompt peft
methods that `SentenceTransformer.add_adapter` injects and that save and load back as adapter-only dirs are here;
the ones that cannot are refused, with the reason, in `REFUSED` (checked before Hydra composes anything).

Light on purpose (no torch, no peft): config validation and the sweep's grid import it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Method(str, Enum):
    lora = "lora"
    dora = "dora"  # LoRA with use_dora: weight-decomposed, a magnitude vector per adapted layer
    rslora = "rslora"  # LoRA with use_rslora: scaling alpha / sqrt(r) instead of alpha / r
    ia3 = "ia3"
    loha = "loha"
    lokr = "lokr"
    full = "full"


ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the output layer


@dataclass
class FinetuneConfig:
    method: Method = MISSING


@dataclass
class FullFinetune(FinetuneConfig):
    """Every weight trained; nothing to configure."""

    method: Method = Method.full


@dataclass
class AdapterFinetune(FinetuneConfig):
    # None: peft's default for the architecture (BERT: query, value; IA3: key, value, output.dense);
    # "all-linear": every linear layer; or a list of module names (matched as name suffixes)
    target_modules: Any = None


@dataclass
class LoraFinetune(AdapterFinetune):
    """peft.LoraConfig: W + (alpha / r) B A, with A (r x in) and B (out x r) trained, B zero at start."""

    method: Method = Method.lora
    r: int = 8
    alpha: int = 8  # lora_alpha
    dropout: float = 0.0  # lora_dropout


@dataclass
class DoraFinetune(LoraFinetune):
    """LoRA with use_dora=True: the adapted weight's direction from LoRA, its per-column magnitude trained apart."""

    method: Method = Method.dora


@dataclass
class RsLoraFinetune(LoraFinetune):
    """LoRA with use_rslora=True: rank-stabilised scaling alpha / sqrt(r)."""

    method: Method = Method.rslora


@dataclass
class IA3Finetune(AdapterFinetune):
    """peft.IA3Config: a learned vector rescales each target's output (its input, for feedforward modules)."""

    method: Method = Method.ia3
    feedforward_modules: list[str] | None = None  # None: peft's default for the architecture (BERT: output.dense)


@dataclass
class LoHaFinetune(AdapterFinetune):
    """peft.LoHaConfig: the update is the Hadamard product of two rank-r products, (B1 A1) * (B2 A2)."""

    method: Method = Method.loha
    r: int = 8
    alpha: int = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0


@dataclass
class LoKrFinetune(AdapterFinetune):
    """peft.LoKrConfig: the update is a Kronecker product W1 (x) (B A) of a small full block and a low-rank one."""

    method: Method = Method.lokr
    r: int = 8
    alpha: int = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    decompose_both: bool = False  # also factor the left Kronecker block into low rank
    decompose_factor: int = -1  # -1: the factorisation closest to square


SCHEMAS: dict[Method, type[FinetuneConfig]] = {
    Method.lora: LoraFinetune,
    Method.dora: DoraFinetune,
    Method.rslora: RsLoraFinetune,
    Method.ia3: IA3Finetune,
    Method.loha: LoHaFinetune,
    Method.lokr: LoKrFinetune,
    Method.full: FullFinetune,
}

# Asked for, and refused in one line with the reason (pipeline.validate). The message is the "why".
REFUSED = {
    "vera": "peft 0.21's inject_adapter_in_model (what add_adapter and load_adapter call) refuses VeRA: its "
    "shared random projections live on a PeftModel tuner, not in the layers, so it cannot be added to or "
    "loaded into a SentenceTransformer",
    "adalora": "AdaLoRA reallocates ranks through update_and_allocate() after every optimizer step, which "
    "SentenceTransformerTrainer never calls: it would silently train as plain LoRA",
    "pissa": "PiSSA initialises the adapter from the base weights' SVD and changes the base weights: an "
    "adapter-only save does not reproduce the trained model on the original base",
    "olora": "OLoRA initialises the adapter from a QR decomposition of the base weights and changes the base weights: an "
    "adapter-only save does not reproduce the trained model on the original base",
    "prompt_tuning": "prompt-learning methods add virtual tokens, which add_adapter does not inject "
    "(non-prompt methods only)",
    "prefix_tuning": "prompt-learning methods add virtual tokens, which add_adapter does not inject "
    "(non-prompt methods only)",
    "p_tuning": "prompt-learning methods add virtual tokens, which add_adapter does not inject (non-prompt methods only)",
}


def keys_of(method: str) -> set[str]:
    """The `finetune.*` keys a method has (`method` itself included)."""
    return {f.name for f in fields(SCHEMAS[Method(method)])}


def hyperparameters(ft) -> dict[str, Any]:
    """A method's hyper-parameters (every key but `method`), as plain values: for run names, tags and the card."""
    values = {}
    for name in sorted(keys_of(ft.method) - {"method"}):
        value = ft[name] if hasattr(ft, "__getitem__") else getattr(ft, name)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            value = list(value)
        values[name] = value
    return values


def run_name(ft) -> str:
    """`lora-r16-a32`, `dora-r8-a8`, `ia3`, `lokr-r8-a8-all-linear`, `full`."""
    method = Method(ft.method).value
    parts = [method]
    keys = keys_of(method)
    if "r" in keys:
        parts.append(f"r{ft.r}")
    if "alpha" in keys:
        parts.append(f"a{ft.alpha}")
    targets = ft.target_modules if "target_modules" in keys else None
    if targets is not None:
        parts.append(targets if isinstance(targets, str) else "+".join(targets))
    return "-".join(parts)


def register_adapter_configs(store: ConfigStore) -> None:
    """Each method's schema, for `conf/finetune/<method>.yaml` to start from (`/finetune_schema@_here_: <method>`)."""
    for method, schema in SCHEMAS.items():
        store.store(group="finetune_schema", name=method.value, node=schema)
