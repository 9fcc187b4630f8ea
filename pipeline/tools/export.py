"""Merge an adapter (LoRA, DoRA, rsLoRA, IA3, LoHa, LoKr) into its base: a standalone sentence-transformers dir.

    python -m pipeline.tools.export ADAPTER_DIR OUT_DIR [--base LOCAL_BASE_DIR]

peft's `merge_and_unload()` folds the adapter into the weights it adapts (LoRA adds B·A·alpha/r), so the merged model
computes what the adapter model computed, at the base model's cost, and loads without peft. An adapter type peft
cannot merge is refused in one line (`pipeline.peft_methods.MERGEABLE`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sentence_transformers import SentenceTransformer

from pipeline.models import merge_adapter_into
from pipeline.peft_methods import check_mergeable
from pipeline.tools.adapters import load_with_local_base

SENTENCES = [
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "How do I sort a list in Python?",
    "sorted(xs) returns a new list; xs.sort() sorts in place.",
]


def load_adapter_model(adapter_dir: str | Path, base_path: str | Path | None = None) -> SentenceTransformer:
    """The adapter on its base: the base recorded in adapter_config.json, or the local copy `base_path`."""
    if base_path is not None:
        return load_with_local_base(adapter_dir, base_path)
    return SentenceTransformer(str(adapter_dir))


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_path: str | Path | None = None) -> dict:
    """Save base + adapter, merged, as a sentence-transformers dir with `model.safetensors` and no adapter files.

    Returns where it wrote and the max embedding difference between the saved merged model and the adapter model.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_mergeable(adapter_dir)
    if (out_dir / "adapter_config.json").exists() or out_dir.resolve() == adapter_dir.resolve():
        raise FileExistsError(f"{out_dir} holds an adapter: merge into a new dir")
    # 1. Load the adapter model: its modules, tokenizer and sequence length come from the adapter dir
    model = load_adapter_model(adapter_dir, base_path)
    reference = model.encode(SENTENCES, convert_to_tensor=True)
    # 2. A fresh copy of the same base weights, to merge B·A into
    adapted = model.transformers_model
    base = type(adapted).from_pretrained(adapted.name_or_path, dtype=adapted.dtype)
    # 3. Put the merged transformers model in the Transformer module's place and save, safetensors only
    model[0].model = merge_adapter_into(base, adapter_dir).to(adapted.device)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # 4. Check: the saved merged model embeds as the adapter model did
    reloaded = SentenceTransformer(str(out_dir), device=str(reference.device))
    diff = (reloaded.encode(SENTENCES, convert_to_tensor=True) - reference).abs().max().item()
    return {"path": str(out_dir), "max_abs_diff": diff, "sentences": len(SENTENCES)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.export", description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir", help="a saved sentence-transformers adapter dir (adapter_config.json)")
    parser.add_argument("out_dir", help="where to write the merged sentence-transformers model")
    parser.add_argument("--base", default=None, help="a local copy of the base model, instead of the recorded one")
    args = parser.parse_args(argv)
    try:
        result = merge_adapter(args.adapter_dir, args.out_dir, args.base)
    except ValueError as error:  # not mergeable: one line, no traceback
        parser.exit(2, f"error: {error}\n")
    print(f"wrote merged model to {result['path']}")
    print(f"max |merged - adapter| embedding diff on {result['sentences']} sentences: {result['max_abs_diff']:.3g}")
    return result


if __name__ == "__main__":
    main()
