"""Stage 4: the model card sentence-transformers writes on save, completed with what it lacks for adapters.

The YAML front matter gets what the Hub links a model by: `base_model` (the Hub id, never a local path; with
`base_model_revision` where known) and `base_model_relation` (`adapter` for a LoRA adapter, `finetune` for a full
fine-tune). The text gets the method, its size, and the evaluation: NanoBEIR before and after, and how it was measured.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from pipeline.config import FinetuneConfig, Method, ModelConfig
from pipeline.models import display_name, hub_model_id

UNKNOWN_BASE = "<!-- - **Base model:** [Unknown](https://huggingface.co/unknown) -->"  # sentence-transformers' text
REPOSITORY = "https://github.com/huggingface/sentence-transformers"


def model_card(
    model_cfg: ModelConfig,
    ft: FinetuneConfig,
    finetune_dir: Path,
    trained: dict,
    baseline: dict,
    finetuned: dict,
    out: Path,
) -> dict:
    lora = ft.method == Method.lora
    # 1. The card sentence-transformers wrote, parsed: YAML front matter (card.data) and markdown (card.text)
    card = ModelCard((finetune_dir / "model" / "README.md").read_text(), ignore_metadata_errors=True)
    base = front_matter_base(card, model_cfg, relation="adapter" if lora else "finetune")
    if base is not None:
        card.text = card.text.replace(UNKNOWN_BASE, f"- **Base model:** [{base}](https://huggingface.co/{base})")

    # 2. The method and what it trained
    lines = [
        "",
        "## Fine-tuning method",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{display_name(model_cfg.name)}` |",
        f"| Method | {'LoRA adapter (peft)' if lora else 'full fine-tuning'} |",
    ]
    if lora:
        lines += [
            f"| r / alpha / dropout | {ft.r} / {ft.alpha} / {ft.dropout} |",
            f"| Target modules | {', '.join(trained['target_modules'])} |",
        ]
    lines += [
        f"| Trainable parameters | {trained['trainable_params']:,} ({trained['trainable_percent']:.2f}% of "
        f"{trained['total_params']:,}) |",
        f"| `{trained['weights_file']}` | {trained['weights_mb']:.2f} MB |",
        f"| Device / precision | {trained['device']} / {trained['precision']} |",
    ]
    # 3. The evaluation: in-domain dev set where the run has one, NanoBEIR before and after, and how it was measured
    lines += evaluation_section(baseline, finetuned)

    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(str(card).rstrip() + "\n" + "\n".join(lines) + "\n")
    return {"path": "README.md", "base_model": base, "base_model_relation": card.data.base_model_relation}


def front_matter_base(card: ModelCard, model_cfg: ModelConfig, relation: str) -> str | None:
    """Set `base_model` (+ revision) and `base_model_relation` on the card's metadata; return the base's Hub id.

    A Hub id as configured wins; for a local dir, only what sentence-transformers verified on the Hub (else none).
    """
    data = card.data
    configured = hub_model_id(model_cfg.name)
    if configured is not None:
        # sentence-transformers resolves the revision to a commit when it reached the Hub: keep that one
        resolved = data.get("base_model_revision") if data.get("base_model") == configured else None
        data.base_model = configured
        data.base_model_revision = model_cfg.revision or resolved
    elif data.get("base_model") and hub_model_id(data.base_model) is None:
        data.base_model = data.base_model_revision = None  # never a path of this machine
    if data.get("base_model_revision") is None:
        data.pop("base_model_revision", None)
    data.base_model_relation = relation
    return data.get("base_model")


def evaluation_section(baseline: dict, finetuned: dict) -> list[str]:
    lines = ["", "## Evaluation: base model vs fine-tuned", ""]
    if finetuned.get("dev_ndcg_at_10") is not None:  # the in-domain dev set held out of the training data
        lines += [
            f"In-domain dev set (held out of the training data, {finetuned.get('dev_queries', '?')} queries): "
            f"NDCG@10 {finetuned['dev_ndcg_at_10']:.4f}"
            + (f" (base model {baseline['dev_ndcg_at_10']:.4f})" if baseline.get("dev_ndcg_at_10") is not None else "")
            + ".",
            "",
        ]
    lines += [
        f"### NanoBEIR NDCG@10 ({finetuned['score_function']} similarity)",
        "",
        "| Dataset | Queries | Base model | Fine-tuned | Δ |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, score in finetuned["per_dataset_ndcg_at_10"].items():
        base = baseline["per_dataset_ndcg_at_10"][name]
        lines.append(f"| {name} | {finetuned['queries'][name]} | {base:.4f} | {score:.4f} | {score - base:+.4f} |")
    mean, base_mean = finetuned["ndcg_at_10"], baseline["ndcg_at_10"]
    lines.append(f"| **mean** | | {base_mean:.4f} | {mean:.4f} | {mean - base_mean:+.4f} |")
    backend = finetuned.get("backend", "sentence_transformers")
    lines += [
        "",
        "How this was measured: the base model and the fine-tuned model were evaluated on the same NanoBEIR queries "
        f"and corpora, with the same evaluator ({backend} {finetuned.get('backend_version', '')}".rstrip()
        + "), by the lora-vs-full pipeline that trained this model. NDCG@10 is the mean over each dataset's "
        "queries, and the mean row is the unweighted mean over datasets. The pipeline's comparison "
        "(`python -m pipeline.report`) sets LoRA adapters against a full fine-tune trained with the same recipe, "
        "data and seed, on the same queries: a 95% stratified bootstrap confidence interval over queries, and a "
        "paired sign-flip permutation test.",
    ]
    return lines
