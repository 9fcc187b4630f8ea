"""Stage 4: the model card sentence-transformers writes on save, completed with what it lacks for adapters."""

from __future__ import annotations

from pathlib import Path

from pipeline.adapter_configs import hyperparameters
from pipeline.config import FinetuneConfig, Method, ModelConfig
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


def model_card(
    model_cfg: ModelConfig,
    ft: FinetuneConfig,
    finetune_dir: Path,
    trained: dict,
    baseline: dict,
    finetuned: dict,
    out: Path,
) -> dict:
    card = (finetune_dir / "model" / "README.md").read_text()
    lines = [
        "",
        "## Fine-tuning method",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{model_cfg.name}` |",
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

    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(card.rstrip() + "\n" + "\n".join(lines) + "\n")
    return {"path": "README.md"}


def _value(value) -> str:
    if value is None:
        return "peft's default for the architecture"
    return ", ".join(value) if isinstance(value, list) else str(value)
