"""Stage 4: the model card sentence-transformers writes on save, completed with what it lacks for adapters.

The YAML front matter gets what the Hub links a model by: `base_model` (the Hub id, never a local path; with
`base_model_revision` where known) and `base_model_relation` (`adapter` for an adapter, `finetune` for a full
fine-tune). The text gets the method and its hyper-parameters, its size, and the evaluation: the in-domain dev set and
NanoBEIR before and after, and how it was measured.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import ModelCard

from pipeline.adapter_configs import METHODS, hyperparameters
from pipeline.config import DataConfig, FinetuneConfig, Method, ModelConfig
from pipeline.models import display_name, hub_model_id
from pipeline.peft_methods import MERGEABLE

UNKNOWN_BASE = "<!-- - **Base model:** [Unknown](https://huggingface.co/unknown) -->"  # sentence-transformers' text


def card_values(model_cfg: ModelConfig, data_cfg: DataConfig, ft: FinetuneConfig) -> dict[str, str]:
    """The card's language, license and title: set on the model before training, and re-applied here, so that card
    text can change without retraining (the finetune stage's key leaves it out)."""
    adapter = Method(ft.method) != Method.full
    data = Path(data_cfg.path)
    if data.parent.name == "snapshots":  # a Hub dataset read from its cached snapshot: named by its repo
        data = Path(data.parent.parent.name.split("--")[-1])
    name = model_cfg.card_model_name or (
        f"{display_name(model_cfg.name)} {Method(ft.method).value + ' adapter ' if adapter else ''}finetuned on {data.name} pairs"
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
    adapter = Method(ft.method) != Method.full
    # 1. The card sentence-transformers wrote, with this run's card values (a reused fine-tune was written with
    #    others), parsed: YAML front matter (card.data) and markdown (card.text)
    text = (finetune_dir / "model" / "README.md").read_text()
    if card_text is not None:
        text = _recard(text, trained.get("card", {}), card_text)
    card = ModelCard(text, ignore_metadata_errors=True)
    base = front_matter_base(card, model_cfg, relation="adapter" if adapter else "finetune")
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
        f"| Base model revision | `{trained.get('base_revision') or 'as loaded (local dir)'}` |",
        f"| Method | {METHODS[Method(ft.method)].title} |",
    ]
    if adapter:
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
        f"| Trained weights' dtype | {trained['trainable_dtype']} (loaded as `model.dtype={trained['dtype']}`) |",
        f"| Prompts (training and evaluation) | {_prompts(trained['prompts'])} |",
    ]
    # 3. The evaluation: the in-domain dev set, NanoBEIR before and after, and how it was measured
    lines += evaluation_section(baseline, finetuned, dev_baseline, dev_finetuned)

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


def evaluation_section(baseline: dict, finetuned: dict, dev_baseline: dict, dev_finetuned: dict) -> list[str]:
    dev, base_dev = dev_finetuned["ndcg_at_10"], dev_baseline["ndcg_at_10"]
    benchmark = finetuned.get("benchmark", "NanoBEIR")  # the general benchmark (pipeline.evaluation.benchmark.label)
    lines = [
        "",
        "## Evaluation: base model vs fine-tuned",
        "",
        f"In-domain dev set (pairs held out of the training data as a retrieval task: {dev_finetuned['queries']} "
        f"queries, {dev_finetuned['corpus']} documents): NDCG@10 {dev:.4f} (base model {base_dev:.4f}, "
        f"{dev - base_dev:+.4f}). Sweeps select learning rates and adapter settings on this set; {benchmark} below is "
        "the test set.",
        "",
        f"### {benchmark} NDCG@10 ({finetuned['score_function']} similarity)",
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
        f"How this was measured: the base model and the fine-tuned model were evaluated on the same {benchmark} queries "
        f"and corpora, with the same evaluator ({backend} {finetuned.get('backend_version', '')}".rstrip()
        + "), by the lora-vs-full pipeline that trained this model. NDCG@10 is the mean over each dataset's "
        "queries, and the mean row is the unweighted mean over datasets. The pipeline's comparison protocol "
        "(`make sweep`, `python -m pipeline.report`) selects each method's learning rate and settings on the dev set, "
        f"trains the selected adapter and the selected full fine-tune with several seeds, and tests their {benchmark} "
        "difference within a stated margin, with intervals over seeds and queries.",
    ]
    return lines


def _value(value) -> str:
    if value is None:
        return "peft's default for the architecture"
    return ", ".join(value) if isinstance(value, list) else str(value)


def _prompts(prompts: dict | None) -> str:
    """The query and document prompts a run trained and was evaluated with, as the card shows them."""
    shown = {side: text for side, text in (prompts or {}).items() if text}
    return "; ".join(f"{side}: `{text!r}`" for side, text in shown.items()) or "none"
