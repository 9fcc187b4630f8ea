"""Stage 4: the model card sentence-transformers writes on save, completed with what it lacks for adapters."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.adapter_configs import hyperparameters
from pipeline.config import DataConfig, FinetuneConfig, Method, ModelConfig
from pipeline.peft_methods import MERGEABLE

METHOD_NAMES = {
    Method.lora: "LoRA adapter (peft LoraConfig)",
    Method.dora: "DoRA adapter (peft LoraConfig, use_dora=True)",
    Method.rslora: "rsLoRA adapter (peft LoraConfig, use_rslora=True)",
    Method.ia3: "(IA)³ adapter (peft IA3Config)",
    Method.loha: "LoHa adapter (peft LoHaConfig)",
    Method.lokr: "LoKr adapter (peft LoKrConfig)",
    Method.full: "full fine-tuning",
}


def card_values(model_cfg: ModelConfig, data_cfg: DataConfig, ft: FinetuneConfig) -> dict[str, str]:
    """The card's language, license and title: set on the model before training, and re-applied here, so that card
    text can change without retraining (the finetune stage's key leaves it out)."""
    adapter = Method(ft.method) != Method.full
    data = Path(data_cfg.path)
    if data.parent.name == "snapshots":  # a Hub dataset read from its cached snapshot: named by its repo
        data = Path(data.parent.parent.name.split("--")[-1])
    name = model_cfg.card_model_name or (
        f"{model_cfg.name} {Method(ft.method).value + ' adapter ' if adapter else ''}finetuned on {data.name} pairs"
    )
    return {"language": model_cfg.card_language, "license": model_cfg.card_license, "model_name": name}


def _recard(card: str, written: dict[str, str], wanted: dict[str, str]) -> str:
    """The card sentence-transformers wrote with `written` values, with the `wanted` ones instead."""
    if written.get("language") != wanted["language"]:
        card = re.sub(r"(?m)^language:\n- .*$", f"language:\n- {wanted['language']}", card, count=1)
    if written.get("license") != wanted["license"]:
        card = re.sub(r"(?m)^license: .*$", f"license: {wanted['license']}", card, count=1)
    if written.get("model_name") and written["model_name"] != wanted["model_name"]:
        card = card.replace(written["model_name"], wanted["model_name"])
    return card


def model_card(
    model_cfg: ModelConfig,
    ft: FinetuneConfig,
    finetune_dir: Path,
    trained: dict,
    baseline: dict,
    finetuned: dict,
    dev_baseline: dict,
    dev_finetuned: dict,
    out: Path,
    card_text: dict[str, str] | None = None,
) -> dict:
    card = (finetune_dir / "model" / "README.md").read_text()
    if card_text is not None:  # this run's card values, where the reused fine-tune was written with others
        card = _recard(card, trained.get("card", {}), card_text)
    lines = [
        "",
        "## Fine-tuning method",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{model_cfg.name}` |",
        f"| Base model revision | `{trained.get('base_revision') or 'as loaded (local dir)'}` |",
        f"| Method | {METHOD_NAMES[Method(ft.method)]} |",
    ]
    if ft.method != Method.full:
        lines += [f"| `finetune.{k}` | {_value(v)} |" for k, v in hyperparameters(ft).items() if k != "target_modules"]
        lines.append(f"| Target modules | {', '.join(trained['target_modules'])} (`{_value(ft.target_modules)}`) |")
        mergeable = trained.get("peft_type") in MERGEABLE
        lines.append(
            f"| Merge into the base | {'yes: `python -m pipeline.tools.export ADAPTER_DIR OUT_DIR`' if mergeable else 'no'} |"
        )
    lines += [
        f"| Trainable parameters | {trained['trainable_params']:,} ({trained['trainable_percent']:.2f}% of "
        f"{trained['total_params']:,}) |",
        f"| `{trained['weights_file']}` | {trained['weights_mb']:.2f} MB |",
        f"| Device / precision | {trained['device']} / {trained['precision']} |",
        "",
        f"## NanoBEIR NDCG@10 ({finetuned['score_function']} similarity)",
        "",
        "| Dataset | Queries | Base model | Fine-tuned | Δ |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, score in finetuned["per_dataset_ndcg_at_10"].items():
        base = baseline["per_dataset_ndcg_at_10"][name]
        lines.append(f"| {name} | {finetuned['queries'][name]} | {base:.4f} | {score:.4f} | {score - base:+.4f} |")
    mean, base_mean = finetuned["ndcg_at_10"], baseline["ndcg_at_10"]
    lines.append(f"| **mean** | | {base_mean:.4f} | {mean:.4f} | {mean - base_mean:+.4f} |")
    dev, base_dev = dev_finetuned["ndcg_at_10"], dev_baseline["ndcg_at_10"]
    lines += [
        "",
        "## In-domain dev NDCG@10",
        "",
        f"Held-out pairs of the training data as a retrieval task ({dev_finetuned['queries']} queries, "
        f"{dev_finetuned['corpus']} documents): base model {base_dev:.4f}, fine-tuned {dev:.4f} ({dev - base_dev:+.4f}). "
        "Sweeps select learning rates and adapter settings on this set; NanoBEIR above is the test set.",
    ]

    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(card.rstrip() + "\n" + "\n".join(lines) + "\n")
    return {"path": "README.md"}


def _value(value) -> str:
    if value is None:
        return "peft's default for the architecture"
    return ", ".join(value) if isinstance(value, list) else str(value)
