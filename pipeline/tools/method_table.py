"""The table of adapter methods (docs/adapter_methods.md), computed: trainable parameters, adapter MB, whether it merges.

    python -m pipeline.tools.method_table [--out docs/adapter_methods]

For each `finetune=<method>` at its default config (conf/finetune/<method>.yaml, composed as a run composes it) and
with `target_modules=all-linear`, on all-MiniLM-L6-v2 (the packaged copy) and on bert-base-uncased's architecture
(`BertConfig()` defaults, random weights: the Hub is not reachable here; parameter counts and sizes depend on the
shapes only): the adapter is added with the pipeline's own `peft_config`, saved, and measured; then its weights are
perturbed (a fresh adapter is the identity), merged with peft's `merge_and_unload`, and the merged model's output
compared with the attached adapter's. Writes `<out>.md` and `<out>.json`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from peft import PeftModel
from transformers import AutoModel, BertConfig, BertModel

from pipeline.adapter_configs import ALL_LINEAR, METHODS, Method, hyperparameters
from pipeline.config import register_configs
from pipeline.models import model_source
from pipeline.peft_methods import peft_config, save_adapter_fixes

CONF = Path(__file__).resolve().parents[2] / "conf"
MODELS = {
    "all-MiniLM-L6-v2": lambda: AutoModel.from_pretrained(model_source("sentence-transformers/all-MiniLM-L6-v2")),
    "bert-base-uncased (BertConfig(), random weights)": lambda: BertModel(BertConfig()),
}


def finetune_config(method: str, targets: str | None):
    register_configs()
    GlobalHydra.instance().clear()
    overrides = [f"finetune={method}"] + ([f"finetune.target_modules={targets}"] if targets else [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides).finetune


def measure(make_model, ft) -> dict:
    """Trainable parameters, adapter file MB and merge error of one method's adapter on a fresh base model."""
    torch.manual_seed(0)
    model = make_model().eval()
    total = sum(p.numel() for p in model.parameters())
    if ft.method == Method.full:
        return {
            "trainable_params": total,
            "percent": 100.0,
            "mb": total * 4 / 1e6,
            "mergeable": None,
            "merge_max_abs_diff": None,
        }
    model.add_adapter(peft_config(ft, model))
    model.eval()  # the adapter's new dropout modules start in training mode
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh adapter is the identity: move it, so that the merge check compares a change
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    inputs = {"input_ids": torch.randint(1000, 5000, (2, 16), generator=generator)}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        save_adapter_fixes(Path(tmp))  # as the finetune stage saves
        mb = (Path(tmp) / "adapter_model.safetensors").stat().st_size / 1e6
        with torch.no_grad():
            attached = model(**inputs).last_hidden_state
            try:
                torch.manual_seed(0)  # the same base weights again (bert-base's are random)
                merged_model = PeftModel.from_pretrained(make_model().eval(), tmp).merge_and_unload()
                merged = merged_model(**inputs).last_hidden_state
                diff, mergeable = (merged - attached).abs().max().item(), True
            except (ValueError, NotImplementedError, AttributeError) as error:  # peft's "cannot merge"
                diff, mergeable = f"{type(error).__name__}: {error}", False
    if isinstance(diff, float) and diff > 1e-3:
        mergeable = False
    return {
        "trainable_params": trainable,
        "percent": 100.0 * trainable / total,
        "mb": mb,
        "mergeable": mergeable,
        "merge_max_abs_diff": diff,
    }


def build_table() -> list[dict]:
    rows = []
    for method in [m.value for m in Method]:
        for targets in (None, ALL_LINEAR) if method != "full" else (None,):
            ft = finetune_config(method, targets)
            row = {
                "method": method,
                "hyperparameters": hyperparameters(ft),
                "trains": METHODS[Method(method)].trains,
                "models": {},
            }
            for name, make_model in MODELS.items():
                row["models"][name] = measure(make_model, ft)
            rows.append(row)
            print(method, targets or "default targets", {k: v["trainable_params"] for k, v in row["models"].items()})
    return rows


def render(rows: list[dict]) -> str:
    names = list(MODELS)
    header = ["`finetune=`", "config", "what it trains"]
    for name in names:
        short = name.split(" ")[0]
        header += [f"{short} trainable", f"{short} adapter MB"]
    header.append("merges into the base")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (2 * len(names)) + "---|"]
    for row in rows:
        params = row["hyperparameters"]
        config = ", ".join(
            f"{k}={'default' if v is None else v}" for k, v in params.items() if k not in ("feedforward_modules",)
        )
        cells = [row["method"], config or "—", row["trains"]]
        for name in names:
            m = row["models"][name]
            cells += [f"{m['trainable_params']:,} ({m['percent']:.2f}%)", f"{m['mb']:.2f}"]
        merge = {m["mergeable"] for m in row["models"].values()}
        cells.append("— (no adapter)" if merge == {None} else "yes" if merge == {True} else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.method_table", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/adapter_methods", help="writes <out>.md and <out>.json")
    args = parser.parse_args(argv)
    rows = build_table()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    note = (
        "Computed by `python -m pipeline.tools.method_table` (trainable parameters as `requires_grad` counts them "
        "after `add_adapter`; adapter MB: the saved `adapter_model.safetensors`, fp32; full: the fp32 weights; "
        "merge: peft's `merge_and_unload` reproduces the attached adapter's output within 1e-3, perturbed "
        "adapter weights). bert-base-uncased: `BertConfig()` defaults with random weights (no Hub here).\n\n"
    )
    out.with_suffix(".md").write_text(note + render(rows))
    print(render(rows))
    return rows


if __name__ == "__main__":
    main()
