"""The `finetune` group's typed configs: one dataclass per method, with peft's documented defaults.

`finetune=<method>` picks `conf/finetune/<method>.yaml`, which starts from the method's schema registered here: a key
the method does not have (`finetune=ia3 finetune.r=8`) or a wrong type fails at compose time. `METHODS` is the one
list of methods: each one's schema, peft config, card title and parameter count. The non-prompt peft
methods that `SentenceTransformer.add_adapter` injects and that save and load back as adapter-only dirs are here;
the ones that cannot are refused, with the reason, in `REFUSED` (checked before Hydra composes anything).

Light on purpose (no torch, no peft): config validation and the sweep's grid import it.
"""

from __future__ import annotations

from collections.abc import Callable
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
    # None: peft's default for the architecture (BERT: query, value; IA3: key, value, output.dense; all-linear where
    # peft has none); "all-linear": every linear layer (the LoRA family's YAMLs); or module names (name suffixes)
    target_modules: Any = None


@dataclass
class LoraFinetune(AdapterFinetune):
    """peft.LoraConfig: W + (alpha / r) B A, with A (r x in) and B (out x r) trained, B zero at start."""

    method: Method = Method.lora
    target_modules: Any = (
        ALL_LINEAR  # the protocol's default (attention-only LoRA learns less: it would tilt the verdict)
    )
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
    target_modules: Any = ALL_LINEAR
    r: int = 8
    alpha: int = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0


@dataclass
class LoKrFinetune(AdapterFinetune):
    """peft.LoKrConfig: the update is a Kronecker product W1 (x) (B A) of a small full block and a low-rank one."""

    method: Method = Method.lokr
    target_modules: Any = ALL_LINEAR
    r: int = 8
    alpha: int = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    decompose_both: bool = False  # also factor the left Kronecker block into low rank
    decompose_factor: int = -1  # -1: the factorisation closest to square


@dataclass(frozen=True)
class MethodInfo:
    """What the pipeline knows of a method beside its schema. Adding a method: its schema above, one entry in
    `METHODS` and `conf/finetune/<method>.yaml` (tests/test_adapter_configs.py checks that nothing else lists them)."""

    schema: type[FinetuneConfig]
    title: str  # the model card's "Method" row
    trains: str  # what it trains, in words (`python -m pipeline.tools.method_table`)
    peft_class: str | None = None  # the peft config class `SentenceTransformer.add_adapter` takes; None: full
    peft_options: Callable[[Any], dict[str, Any]] | None = None  # that class's own arguments, from the config
    mergeable: bool = False  # peft's merge_and_unload() folds the adapter into the base weights
    # trainable parameters on one targeted (out x in) weight at rank r (`feedforward`: an IA3 feedforward module),
    # for the disk estimate; None: every parameter of the model
    per_weight: Callable[[int, int, int, bool], int] | None = None

    @property
    def peft_type(self) -> str | None:
        """peft's type name, as a saved adapter_config.json's `peft_type` holds it (LoraConfig: LORA)."""
        return self.peft_class.removesuffix("Config").upper() if self.peft_class else None


def _lora(ft, dora: bool = False, rslora: bool = False) -> dict[str, Any]:
    return {"r": ft.r, "lora_alpha": ft.alpha, "lora_dropout": ft.dropout, "use_dora": dora, "use_rslora": rslora}


def _low_rank(ft) -> dict[str, Any]:
    return {"r": ft.r, "alpha": ft.alpha, "rank_dropout": ft.rank_dropout, "module_dropout": ft.module_dropout}


METHODS: dict[Method, MethodInfo] = {
    Method.lora: MethodInfo(
        LoraFinetune, "LoRA adapter (peft LoraConfig)", "A (r x in) and B (out x r) per target; update (alpha/r) B A",
        "LoraConfig", _lora, True, lambda out, inp, r, ff: r * (out + inp),
    ),
    Method.dora: MethodInfo(
        DoraFinetune, "DoRA adapter (peft LoraConfig, use_dora=True)",
        "LoRA's A and B, plus a magnitude vector (out) per target",
        "LoraConfig", lambda ft: _lora(ft, dora=True), True, lambda out, inp, r, ff: r * (out + inp) + out,
    ),
    Method.rslora: MethodInfo(
        RsLoraFinetune, "rsLoRA adapter (peft LoraConfig, use_rslora=True)", "LoRA's A and B; update (alpha/sqrt(r)) B A",
        "LoraConfig", lambda ft: _lora(ft, rslora=True), True, lambda out, inp, r, ff: r * (out + inp),
    ),
    Method.ia3: MethodInfo(
        IA3Finetune, "(IA)³ adapter (peft IA3Config)",
        "one scaling vector per target (its out size; in size for feedforward modules)",
        "IA3Config", lambda ft: {"feedforward_modules": list(ft.feedforward_modules or []) or None}, True,
        lambda out, inp, r, ff: inp if ff else out,
    ),
    Method.loha: MethodInfo(
        LoHaFinetune, "LoHa adapter (peft LoHaConfig)", "two rank-r pairs per target; update (B1 A1) * (B2 A2), elementwise",
        "LoHaConfig", _low_rank, True, lambda out, inp, r, ff: 2 * r * (out + inp),
    ),
    Method.lokr: MethodInfo(
        LoKrFinetune, "LoKr adapter (peft LoKrConfig)",
        "a small block W1 and a rank-r pair per target; update W1 (x) (B A), Kronecker",
        "LoKrConfig", lambda ft: {**_low_rank(ft), "decompose_both": ft.decompose_both,
                                  "decompose_factor": ft.decompose_factor},
        True, lambda out, inp, r, ff: r * (out + inp),  # counted as LoRA: an upper bound
    ),
    Method.full: MethodInfo(FullFinetune, "full fine-tuning", "every weight"),
}  # fmt: skip
SCHEMAS: dict[Method, type[FinetuneConfig]] = {method: info.schema for method, info in METHODS.items()}

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


def peft_default_targets(method: str, model_type: str | None) -> list[str]:
    """peft's default target modules of `method` for an architecture (`ia3_feedforward`: IA3's feedforward modules);
    [] where peft has none (then the pipeline targets all-linear). peft is imported here only, when called."""
    import peft.utils.constants as peft_defaults

    kind = "IA3_FEEDFORWARD_MODULES" if method == "ia3_feedforward" else f"{method.upper()}_TARGET_MODULES"
    table = getattr(peft_defaults, f"TRANSFORMERS_MODELS_TO_{kind}_MAPPING", None)
    if table is None:
        table = peft_defaults.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING  # DoRA and rsLoRA are LoRA's
    return list(table.get(model_type, []))


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
    """`lora-r16-a32` (the method's default targets: all-linear), `lora-r64-a128-query+value`, `dora-r8-a8`, `ia3`
    (peft's default), `ia3-all-linear`, `lora-r8-a8-peft-default`, `full`."""
    method = Method(ft.method).value
    parts = [method]
    keys = keys_of(method)
    if "r" in keys:
        parts.append(f"r{ft.r}")
    if "alpha" in keys:
        parts.append(f"a{ft.alpha}")
    targets = ft.target_modules if "target_modules" in keys else None
    if "target_modules" in keys and targets != _default(method, "target_modules"):  # the method's default: unnamed
        parts.append("peft-default" if targets is None else targets if isinstance(targets, str) else "+".join(targets))
    return "-".join(parts)


def _default(method: str, key: str) -> Any:
    return next(f.default for f in fields(SCHEMAS[Method(method)]) if f.name == key)


def register_adapter_configs(store: ConfigStore) -> None:
    """Each method's schema, for `conf/finetune/<method>.yaml` to start from (`/finetune_schema@_here_: <method>`)."""
    for method, schema in SCHEMAS.items():
        store.store(group="finetune_schema", name=method.value, node=schema)
