"""Evaluation: encode throughput of a LoRA adapter model, the same adapter merged into its base (what the evaluate
stage encodes with: `load_model(..., merge=True)`), and the base model; and N adapters on one base vs N separate loads.
Goals: merged ≥ 0.97× the base model's speed; merged embeddings equal the adapter model's within 1e-5.

In one process: the base MiniLM, the same base with a LoRA adapter attached (r 64, alpha 128, query/value, lora_B
randomised so it changes the embeddings), and that adapter merged by `load_model(merge=True)`; each warmed up on one
batch, then `encode` of the same passages alternated base/adapter/merged, passages/s medians. N adapters: one base + N
`load_adapter` + `set_adapter` and encode, vs N `load_model(merge=True)` and encode, alternated; weights held =
parameter bytes if all were in memory.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from bench.common import (
    MINILM,
    NANOBEIR_MINI,
    PASS,
    REPORT,
    BenchResult,
    Row,
    alternate,
    how,
    median,
    scratch_dir,
    timed,
    verdict,
)

GOAL = 0.97
MERGE_TOLERANCE = 1e-5


def passages(count: int, source: Path = NANOBEIR_MINI, split: str = "NanoMSMARCO") -> list[str]:
    import pandas as pd

    return pd.read_parquet(source / "corpus" / f"{split}.parquet")["text"].astype(str).tolist()[:count]


def make_adapter(base_path: str, out: Path, seed: int, r: int = 64, alpha: int = 128, targets=None) -> Path:
    """A LoRA adapter as `finetune=lora` makes it (default r 64, alpha 128, peft's default targets), its lora_B
    given random values (zeros at init) so that it changes the embeddings, as a trained one does."""
    import torch
    from peft import LoraConfig, TaskType
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base_path)
    model.add_adapter(
        LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            r=r,
            lora_alpha=alpha,
            lora_dropout=0.1,
            target_modules=list(targets) if targets else None,
        )
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.transformers_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(str(out))
    return out


def encode_rate(model, texts: list[str], batch_size: int) -> float:
    """Texts per second of `model.encode` (sentence-transformers sorts by length before batching)."""
    return len(texts) / timed(lambda: model.encode(texts, batch_size=batch_size, convert_to_tensor=True))


def max_abs_diff(a, b, texts: list[str], batch_size: int = 32) -> float:
    ea = a.encode(texts, batch_size=batch_size, convert_to_tensor=True)
    eb = b.encode(texts, batch_size=batch_size, convert_to_tensor=True)
    return float((ea - eb).abs().max())


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def throughput(model_cfg, adapter_dir: Path, texts: list[str], batch_size: int, reps: int) -> dict:
    """Base, adapter (unmerged) and merged models, alternated; texts/s medians and the merge's embedding error."""
    from pipeline.models import load_model

    models = {
        "base": load_model(model_cfg),
        "adapter": load_model(model_cfg, str(adapter_dir), merge=False),
        "merged": load_model(model_cfg, str(adapter_dir), merge=True),
    }
    for model in models.values():  # warm-up: thread pool, allocator, first-call paths
        model.encode(texts[:batch_size], batch_size=batch_size)
    check = texts[: min(32, len(texts))]
    merge_diff = max_abs_diff(models["merged"], models["adapter"], check)
    adapter_effect = max_abs_diff(models["adapter"], models["base"], check)
    samples = alternate({name: (lambda m=m: encode_rate(m, texts, batch_size)) for name, m in models.items()}, reps)
    return {
        "texts_per_s": {name: median(v) for name, v in samples.items()},
        "samples": samples,
        "merge_max_abs_diff": merge_diff,
        "adapter_vs_base_max_abs_diff": adapter_effect,
        "lora_layers_in_merged": sum("lora" in n for n, _ in models["merged"].named_parameters()),
        "checked_texts": len(check),
    }


def many_adapters(model_cfg, adapter_dirs: list[Path], texts: list[str], batch_size: int, reps: int) -> dict:
    """N adapters: one base with every adapter attached (`pipeline.tools.adapters.evaluate_adapters`' way) vs N separate
    loads of base + adapter merged (the evaluate stage's way), each encoding `texts` per adapter."""
    from pipeline.models import load_model

    loads: dict[str, list[float]] = {"one_base": [], "separate": []}
    memory: dict[str, int] = {}

    def one_base() -> float:
        start = time.perf_counter()
        model = load_model(model_cfg)
        for i, path in enumerate(adapter_dirs):
            model.load_adapter(str(path), adapter_name=f"adapter{i}")
        loads["one_base"].append(time.perf_counter() - start)
        memory["one_base"] = param_bytes(model)
        for i in range(len(adapter_dirs)):
            model.set_adapter(f"adapter{i}")
            model.encode(texts, batch_size=batch_size, convert_to_tensor=True)
        del model
        gc.collect()
        return time.perf_counter() - start

    def separate() -> float:
        start, load_s, total_bytes = time.perf_counter(), 0.0, 0
        for path in adapter_dirs:
            tick = time.perf_counter()
            model = load_model(model_cfg, str(path), merge=True)
            load_s += time.perf_counter() - tick
            total_bytes += param_bytes(model)
            model.encode(texts, batch_size=batch_size, convert_to_tensor=True)
            del model
            gc.collect()
        loads["separate"].append(load_s)
        memory["separate"] = total_bytes
        return time.perf_counter() - start

    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Already found a `peft_config`")
        samples = alternate({"one_base": one_base, "separate": separate}, reps)
    return {
        "total_s": {k: median(v) for k, v in samples.items()},
        "load_s": {k: median(v) for k, v in loads.items()},
        "param_mb_if_all_held": {k: v / 1e6 for k, v in memory.items()},
        "samples": samples,
    }


def run(docs=96, reps=4, adapters=3, docs_per_adapter=32, batch_size=64, model=MINILM, max_seq_length=128, texts=None):
    import warnings

    from omegaconf import OmegaConf

    from pipeline.config import ModelConfig
    from pipeline.models import model_source

    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    started = time.perf_counter()
    work = scratch_dir("bench-evaluation-")
    model_cfg = OmegaConf.structured(ModelConfig(name=model, max_seq_length=max_seq_length))
    base_path = model_source(model)
    texts = texts if texts is not None else passages(max(docs, docs_per_adapter))
    dirs = [make_adapter(base_path, work / f"adapter{i}", seed=i) for i in range(max(1, adapters))]

    tp = throughput(model_cfg, dirs[0], texts[:docs], batch_size, reps)
    rate = tp["texts_per_s"]
    merged_ratio, adapter_ratio = rate["merged"] / rate["base"], rate["adapter"] / rate["base"]
    adapter_vs_merged = rate["adapter"] / rate["merged"]
    merge_ok = tp["merge_max_abs_diff"] <= MERGE_TOLERANCE and tp["lora_layers_in_merged"] == 0
    many = many_adapters(model_cfg, dirs, texts[:docs_per_adapter], batch_size, min(2, reps))
    many_ratio = many["total_s"]["one_base"] / many["total_s"]["separate"]
    mem = many["param_mb_if_all_held"]
    # Separate merged loads pay (load_separate - load_one_base) / N more loading per adapter; one base pays the
    # unmerged adapter's slowdown on every text: past this many seconds of (merged) encoding per adapter, separate
    # merged loads finish sooner
    extra_load = max(0.0, many["load_s"]["separate"] - many["load_s"]["one_base"]) / len(dirs)
    slowdown = rate["merged"] / rate["adapter"] - 1
    break_even = extra_load / slowdown if slowdown > 0 else float("inf")

    size = f"{docs} NanoMSMARCO passages, batch {batch_size}, max_seq_length {max_seq_length}, median of {reps}"
    rows = [
        Row(
            "evaluation",
            "evaluated LoRA model (merged) vs base model, encode throughput",
            f"merged {rate['merged']:.1f} vs base {rate['base']:.1f} passages/s ({size})",
            merged_ratio,
            f"≥ {GOAL}×",
            verdict(merged_ratio, at_least=GOAL),
            "evaluate stage: load_model(..., merge=True) merges the adapter (peft merge_and_unload) before "
            "encoding; it encoded with the adapter attached before (row below).",
        ),
        Row(
            "evaluation",
            "LoRA adapter attached (unmerged) vs base model, encode throughput",
            f"adapter {rate['adapter']:.1f} vs base {rate['base']:.1f} passages/s; adapter vs merged "
            f"{adapter_vs_merged:.3f}×",
            adapter_ratio,
            "report (was what evaluation used)",
            REPORT,
            f"the adapter's r=64 low-rank matmuls on query/value run on every token: "
            f"{100 * (1 - adapter_vs_merged):.1f}% slower than merged"
            + (
                " (> 3%: merging called for)"
                if adapter_vs_merged < 0.97
                else " (≤ 3%: merging is still exact and free)"
            ),
        ),
        Row(
            "evaluation",
            "merged vs adapter model embeddings, max |diff|",
            f"{tp['merge_max_abs_diff']:.2e} on {tp['checked_texts']} passages (the adapter itself moves them by "
            f"{tp['adapter_vs_base_max_abs_diff']:.2e}); LoRA layers left after merging: {tp['lora_layers_in_merged']}",
            None,
            f"≤ {MERGE_TOLERANCE:g}",
            PASS if merge_ok else "MISS",
            "tests/bench/test_common.py::test_merged_load_matches_adapter (and tests/tools/test_adapters.py::test_merge_adapter)",
        ),
        Row(
            "evaluation",
            f"{len(dirs)} adapters on one base vs {len(dirs)} separate (merged) loads",
            f"one base {many['total_s']['one_base']:.1f}s (loads {many['load_s']['one_base']:.1f}s) vs separate "
            f"{many['total_s']['separate']:.1f}s (loads {many['load_s']['separate']:.1f}s), {docs_per_adapter} "
            f"passages each; weights held: {mem['one_base']:.0f} MB vs {mem['separate']:.0f} MB "
            f"({mem['one_base'] / mem['separate']:.2f}×)",
            many_ratio,
            "report",
            REPORT,
            "none: evaluate_adapters keeps one base and switches adapters (set_adapter): one base load, and "
            f"{mem['one_base'] / mem['separate']:.2f}× the weights in memory; but each adapter encodes unmerged "
            f"({adapter_ratio:.2f}× base speed): once an adapter's evaluation encodes for more than ~{break_even:.0f}s "
            "(a NanoBEIR set of 2000 passages does), separate merged loads finish sooner.",
        ),
    ]
    details = {"how": how(__doc__), "throughput": tp, "many_adapters": many, "break_even_encode_s": break_even}
    return BenchResult("evaluation", rows, details, time.perf_counter() - started)
