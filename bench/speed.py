"""Speed: the pipeline's loss (`train.mini_batch_size=auto`, pipeline.losses.AutoCachedMNRL) vs the reference
script's settings (training_gooaq_lora.py: CachedMultipleNegativesRankingLoss, mini-batch 32), side by side.

One process, two copies of the same model with the same weights, the same batches (the pipeline's prepare_data split
of local question/answer pairs, rows in order), alternated step by step (ref, auto, auto, ref, ...), so load that
comes and goes hits both; a step is the loss's forward and backward plus AdamW (lr 2e-5), timed, the first of each arm
excluded (warm-up). Reports samples/s, model FLOPs utilisation (`model_flops`: 6 × the encoder's linear weights per
real token plus 12 × layers × width × length² per sequence for attention, the embedding tables excluded, over this
machine's fp32 GEMM peak on CPU, the best of a 2048² matmul timed before and after, or `--peak-tflops` on a GPU),
peak GPU memory per arm, the loss of every step of both arms (dropout draws differ: equal in distribution, not to
rounding; tests/test_losses.py checks equality without dropout) and, with `--eval`, NanoBEIR NDCG@10 of both
trained models. The rest of the finetune stage (the Trainer, the data loader) is the same code for both arms; the
pipeline's fixed cost over a bare script is the overhead bench.

    python -m bench.speed [--batch 256] [--mini-batch 32] [--max-seq-length 256] [--steps 4]     (CPU, as make bench)
    python -m bench.speed --model DIR --batch 1024 --steps 12 --precision bf16 --eval NANOBEIR_DIR --out OUT.json
        (GPU: the paper recipe; bench/gpu_speed.sh builds bert-base's architecture and runs it)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from bench.common import MEDQUAD, MINILM, BenchResult, Row, gemm_peak, markdown_table, median, verdict

GOAL = {"cpu": 1.5, "cuda": 3.0}


def _batches(model_name: str, data: str, work: Path, batch: int, steps: int) -> list[tuple[list[str], list[str]]]:
    from omegaconf import OmegaConf

    from pipeline.config import DataConfig
    from pipeline.stages.prepare_data import prepare_data

    data_cfg = OmegaConf.structured(DataConfig(path=data, eval_size=16, train_size=steps * batch))
    prepare_data(data_cfg, work / "data", work / "hf_datasets")
    from datasets import load_from_disk

    train = load_from_disk(str(work / "data" / "dataset"))["train"]
    return [(train["question"][i : i + batch], train["answer"][i : i + batch]) for i in range(0, steps * batch, batch)]


def build_arms(args: argparse.Namespace, device: str, amp) -> dict:
    """{"reference": (model, loss, optimizer), "pipeline": ...}: two copies of the same weights, each with its loss."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from pipeline.losses import AutoCachedMNRL
    from pipeline.models import model_source

    arms = {}
    for name in ("reference", "pipeline"):
        torch.manual_seed(12)
        model = SentenceTransformer(model_source(args.model), device=device)
        model.max_seq_length = args.max_seq_length
        model.train()
        if name == "reference":  # training_gooaq_lora.py's loss
            loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.mini_batch)
        else:  # what pipeline/stages/finetune.py builds for train.mini_batch_size=auto
            loss = AutoCachedMNRL(model, dtype_bytes=4 if amp is None else 2)
        arms[name] = (model, loss, torch.optim.AdamW(model.parameters(), lr=2e-5))
    return arms


def train_step(arm: tuple, texts: tuple[list[str], list[str]], device: str, amp) -> tuple[float, list[dict]]:
    """One optimizer step as the Trainer takes it (tokenizing included, as in its collator): the loss and the
    tokenized columns."""
    import torch

    model, loss, optimizer = arm
    features = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model.tokenize(column).items()}
        for column in texts
    ]
    with torch.autocast(device, dtype=amp) if amp else nullcontext():
        value = loss(features, None)
    value.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(value.detach()), features


def measure(args: argparse.Namespace) -> dict:
    import torch

    from pipeline.models import device_and_precision, device_name

    device, precision = device_and_precision(args.precision)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    batches = _batches(args.model, args.data, args.work, args.batch, args.steps)
    arms = build_arms(args, device, amp)
    losses, times, peak_mem, flops = ({name: [] for name in arms} for _ in range(4))
    params = sum(p.numel() for p in arms["pipeline"][0].parameters())
    shape = model_shape(arms["pipeline"][0])
    peaks = [gemm_peak()["flops_per_s"]] if device == "cpu" else [args.peak_tflops * 1e12]

    def step(name: str, texts: tuple[list[str], list[str]]) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        value, features = train_step(arms[name], texts, device, amp)
        if device == "cuda":
            torch.cuda.synchronize()
            peak_mem[name].append(torch.cuda.max_memory_allocated() / 2**30)
        times[name].append(time.perf_counter() - start)
        losses[name].append(value)
        flops[name].append(sum(model_flops(shape, f["attention_mask"].sum(dim=1).tolist()) for f in features))
        print(f"[speed] step {len(times[name])} {name}: {times[name][-1]:.2f}s loss {value:.4f}", file=sys.stderr)

    for index, texts in enumerate(batches):
        for name in ("reference", "pipeline") if index % 2 == 0 else ("pipeline", "reference"):
            step(name, texts)
    if device == "cpu":  # a GEMM timed when the machine was busier underrates the peak: the best of two
        peaks.append(gemm_peak()["flops_per_s"])
    report = {
        "device": device_name(device),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "config": {k: str(v) for k, v in vars(args).items()},
        "params": params,
        "model_shape": shape,
        "peak_flops_per_s": max(peaks),
        "gemm_flops_per_s": peaks,
        "plan": {
            "uncached_steps": arms["pipeline"][1].plan.uncached_steps,
            "cached_steps": arms["pipeline"][1].plan.cached_steps,
            "recomputed_token_fraction": arms["pipeline"][1].plan.recomputed_fraction,
            "budget_mb": arms["pipeline"][1].plan.budget_bytes / 1e6,
        },
        "arms": {},
    }
    for name in arms:
        timed = times[name][1:] or times[name]
        samples_per_s = args.batch / median(timed)
        model_flops_per_s = sum(flops[name][1:] or flops[name]) / sum(timed)
        report["arms"][name] = {
            "step_s": times[name],
            "samples_per_s": samples_per_s,
            "model_flops_per_step": flops[name],
            "mfu": model_flops_per_s / max(peaks),
            "losses": losses[name],
            "peak_gpu_memory_gib": max(peak_mem[name]) if peak_mem[name] else None,
        }
    if args.eval:
        from omegaconf import OmegaConf

        from pipeline.config import EvalConfig
        from pipeline.evaluation.st_backend import evaluate

        eval_cfg = OmegaConf.structured(
            EvalConfig(dataset_id=str(args.eval), datasets=args.datasets.split(","), during_training=False)
        )
        for name, (model, _, _) in arms.items():
            model.eval()
            result = evaluate(model, eval_cfg, args.work / f"eval-{name}")
            report["arms"][name]["ndcg_at_10"] = result["ndcg_at_10"]
    return report


def model_shape(model) -> dict:
    """What `model_flops` needs: the encoder's linear weights (not the embedding tables, which do no matmul, nor BERT's
    pooler, which sees one token per row and whose output mean pooling does not use), layers, width."""
    import torch

    config = model[0].auto_model.config
    linear = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "pooler" not in name.split(".")
    )
    return {"linear_params": linear, "layers": config.num_hidden_layers, "hidden": config.hidden_size}


def model_flops(shape: dict, lengths: list[int]) -> float:
    """Training FLOPs of a forward and backward over sequences of these real lengths (padding and recomputation are
    not useful work): 6 per linear weight per token, and the attention matmuls (QKᵀ and AV, 4·L·d·s per token
    forward) three times."""
    tokens = sum(lengths)
    return 6 * shape["linear_params"] * tokens + 12 * shape["layers"] * shape["hidden"] * sum(n * n for n in lengths)


def rows_from(report: dict, load: tuple[float, float, float] | None = None) -> list[Row]:
    ref, ours = report["arms"]["reference"], report["arms"]["pipeline"]
    ratio = ours["samples_per_s"] / ref["samples_per_s"]
    cuda = report["peak_flops_per_s"] > 1e14
    goal = GOAL["cuda" if cuda else "cpu"]
    diffs = [abs(a - b) for a, b in zip(ref["losses"], ours["losses"], strict=True)]
    cfg = report["config"]
    setup = (
        f"{Path(cfg['model']).name}, batch {cfg['batch']}, reference CachedMNRL mini-batch {cfg['mini_batch']}, "
        f"max_seq_length {cfg['max_seq_length']}, {report['precision']}, {len(ref['step_s']) - 1} timed steps each, "
        f"alternated; auto embedded {report['plan']['recomputed_token_fraction']:.0%} of the tokens twice "
        f"(activation budget {report['plan']['budget_mb']:.0f} MB)"
        + (f"; load average {load[0]:.1f} on {report['torch_threads']} threads" if load else "")
    )
    memory = ""
    if ours["peak_gpu_memory_gib"] is not None:
        memory = f"; peak GPU memory {ours['peak_gpu_memory_gib']:.1f} vs {ref['peak_gpu_memory_gib']:.1f} GiB"
    rows = [
        Row(
            "speed",
            f"pipeline (mini_batch_size=auto) vs reference settings, training samples/s ({report['device']})",
            f"{ours['samples_per_s']:.2f} vs {ref['samples_per_s']:.2f} samples/s ({setup}); MFU {ours['mfu']:.3f} "
            f"vs {ref['mfu']:.3f}{memory}",
            ratio,
            f"≥ {goal}×",
            verdict(ratio, at_least=goal),
            "auto: each column sorted by length and cut into mini-batches of ~2k tokens on CPU (64k on a GPU), so "
            "little padding is computed and, on CPU, the mini-batches run at their fastest; the mini-batches whose "
            "activations fit in memory keep their graph from the first pass, so only the rest are embedded twice "
            "(the whole batch fits: plain MNRL's one pass); same gradients (tests/test_losses.py).",
        ),
        Row(
            "speed",
            "same loss curve: |loss pipeline − loss reference| per step",
            "reference "
            + ", ".join(f"{v:.4f}" for v in ref["losses"])
            + "; pipeline "
            + ", ".join(f"{v:.4f}" for v in ours["losses"])
            + f"; max |diff| {max(diffs):.4f}",
            None,
            "within dropout noise",
            "report",
            "dropout draws differ between the arms (different mini-batches), so losses agree in distribution; "
            "without dropout they agree within 1e-5 (tests/test_losses.py::test_auto_mini_batch_trains_as_mini_batch_32).",
        ),
    ]
    if "ndcg_at_10" in ours:
        delta = ours["ndcg_at_10"] - ref["ndcg_at_10"]
        rows.append(
            Row(
                "speed",
                "NanoBEIR NDCG@10 after training, pipeline − reference",
                f"{ours['ndcg_at_10']:.4f} vs {ref['ndcg_at_10']:.4f}",
                None,
                "±0.002",
                verdict(abs(delta), at_most=0.002),
            )
        )
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=MINILM)
    p.add_argument("--data", default=str(MEDQUAD), help="a question/answer dir")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--mini-batch", type=int, default=32, help="the reference's CachedMNRL mini-batch")
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="per arm; the first is a warm-up")
    p.add_argument("--precision", default="auto")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--eval", default=None, help="a NanoBEIR-layout dir: NDCG@10 of both arms after training")
    p.add_argument("--datasets", default="msmarco,scifact")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    return p


def run(model: str = MINILM, batch: int = 256, mini_batch: int = 32, max_seq_length: int = 256, steps: int = 4):
    """make bench's sizes: the issue's CPU comparison (MiniLM, batch 256, mini-batch 32, max_seq_length 256), 3 timed
    steps per arm after a warm-up each (about 8 minutes on 2 quiet cores)."""
    import os

    from bench.common import scratch_dir

    started = time.perf_counter()
    args = parser().parse_args(
        ["--model", model, "--batch", str(batch), "--mini-batch", str(mini_batch)]
        + ["--max-seq-length", str(max_seq_length), "--steps", str(steps)]
    )
    args.work = scratch_dir("bench-speed-")
    load_before = os.getloadavg()
    report = measure(args)
    load = tuple((a + b) / 2 for a, b in zip(load_before, os.getloadavg(), strict=True))
    report["load_average"] = load
    report["how"] = " ".join(__doc__.split("\n\n")[1].split())
    return BenchResult("speed", rows_from(report, load), report, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.work is None:
        from bench.common import scratch_dir

        args.work = scratch_dir("bench-speed-")
    report = measure(args)
    print(json.dumps(report), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows_from(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
