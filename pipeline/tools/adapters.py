"""Many LoRA adapters on one base model, with sentence-transformers' adapter methods (its PEFT page).

`load_adapter` attaches a saved adapter under a name, `set_adapter` / `enable_adapters` pick the one that runs,
`disable_adapters` gives back the base model, `get_adapter_state_dict` holds an adapter's weights alone.
"""

from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from pathlib import Path

from sentence_transformers import SentenceTransformer

from pipeline.config import EvalConfig, ModelConfig
from pipeline.evaluation.st_backend import build_evaluator, evaluate
from pipeline.fingerprint import datasets_cache
from pipeline.models import load_model

BASELINE = "baseline"


def evaluate_adapters(
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    adapters: dict[str, Path],
    out: Path,
    cache_dir: Path | None = None,
) -> dict[str, dict]:
    """NanoBEIR of the base model and of each adapter on it: one base in memory, one evaluator, outputs `out/<name>`.

    Returns {"baseline": summary, name: summary, ...}, each summary as `pipeline.stages.evaluate.evaluate` gives it.
    """
    if BASELINE in adapters:
        raise ValueError(f"{BASELINE!r} names the base model's results; rename that adapter")
    # 1. Load the base model once, and attach every adapter to it under its own name
    model = load_model(model_cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Already found a `peft_config`")  # several adapters is the point
        for name, adapter_dir in adapters.items():
            model.load_adapter(str(adapter_dir), adapter_name=name)
    # 2. Build the evaluator once: the datasets load once, whatever the number of adapters
    with datasets_cache(cache_dir) if cache_dir else nullcontext():
        evaluator = build_evaluator(eval_cfg, write_predictions=True)
    # 3. The base model: every adapter disabled
    model.disable_adapters()
    results = {BASELINE: evaluate(model, eval_cfg, out / BASELINE, cache_dir, evaluator=evaluator)}
    # 4. Each adapter in turn: enabled, and the only one active
    model.enable_adapters()
    for name in adapters:
        model.set_adapter(name)
        results[name] = evaluate(model, eval_cfg, out / name, cache_dir, evaluator=evaluator)
    return results


def saved_max_seq_length(model_dir: str | Path) -> int | None:
    """The max_seq_length a saved sentence-transformers dir loads with (its tokenizer's `model_max_length`)."""
    for file, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        path = Path(model_dir) / file
        value = json.loads(path.read_text()).get(key) if path.is_file() else None
        if isinstance(value, int) and value < 1_000_000:  # tokenizers without a limit say 1e30
            return value
    return None


def load_with_local_base(
    adapter_dir: str | Path, base_path: str | Path, adapter_name: str = "default"
) -> SentenceTransformer:
    """An adapter on a local copy of its base, whatever base (Hub id) its adapter_config.json records.

    `SentenceTransformer(adapter_dir)` would fetch the recorded base; here the base loads from `base_path` and the
    adapter is attached to it, with the sequence length the adapter dir was saved with.
    """
    model = SentenceTransformer(str(base_path))
    model.load_adapter(str(adapter_dir), adapter_name=adapter_name)
    if (max_seq_length := saved_max_seq_length(adapter_dir)) is not None:
        model.max_seq_length = max_seq_length
    return model
