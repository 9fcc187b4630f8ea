"""Speed: the pipeline's loss (`train.mini_batch_size=auto`) against sentence-transformers' own ways, side by side.

Arms (`--arms`): `auto` (pipeline.losses.AutoCachedMNRL as the finetune stage builds it), `cached` (the same loss with
no activation budget: every mini-batch embedded twice, so `auto` over `cached` is what keeping graphs adds), `tokensN`
(CachedMultipleNegativesRankingLoss(mini_batch_num_tokens=N): the library's token packing),
`reference` (CachedMNRL, mini-batch 32: training_gooaq_lora.py) and `mnrl` (MultipleNegativesRankingLoss, one pass;
left out where the batch's activations do not fit in memory). One process, one copy of the model per arm from the
same weights (`--lora R`: a LoRA adapter r R, alpha 2R, dropout 0.1, as finetune=lora), the same batches (the pipeline's
prepare_data split of local question/answer pairs), alternated step by step (A B C, C B A, ...), so load that comes
and goes hits every arm; a step is tokenizing, the loss's forward and backward and AdamW (lr 2e-5), timed, the first
of each arm excluded (warm-up). Reports samples/s, model FLOPs utilisation (`model_flops` over this machine's fp32
GEMM peak on CPU, or `--peak-tflops` on a GPU), peak GPU memory, every step's loss and, with `--eval`, NanoBEIR
NDCG@10 of each trained model.

    python -m bench.speed [--batch 256] [--max-seq-length 256] [--steps 3] [--arms auto,cached,tokens2048,reference]
    bash bench/gpu_speed.sh    (GPU: bert-base's shapes, batch 1024, bf16, LoRA and full)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from bench.common import (
    MEDQUAD,
    MINILM,
    REPORT,
    BenchResult,
    Row,
    alternate,
    gemm_peak,
    markdown_table,
    median,
    scratch_dir,
    verdict,
)

ARMS = "auto,cached,tokens2048,reference,mnrl"
GOAL = {"cpu": 1.5, "cuda": 3.0}  # auto vs reference, samples/s


def batches(data: str, work: Path, batch: int, steps: int) -> list[tuple[list[str], list[str]]]:
    """`steps` batches of (questions, answers), in order, from the pipeline's own prepare_data split."""
    from datasets import load_from_disk
    from omegaconf import OmegaConf

    from pipeline.config import DataConfig
    from pipeline.stages.prepare_data import prepare_data

    prepare_data(OmegaConf.structured(DataConfig(path=data, eval_size=16, train_size=steps * batch)), work / "data")
    train = load_from_disk(str(work / "data" / "dataset"))["train"]
    return [(train["question"][i : i + batch], train["answer"][i : i + batch]) for i in range(0, steps * batch, batch)]


def make_loss(arm: str, model, mini_batch: int, dtype_bytes: int):
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    from pipeline.losses import AutoCachedMNRL

    if arm == "auto":
        return AutoCachedMNRL(model, dtype_bytes=dtype_bytes)
    if arm == "cached":
        return AutoCachedMNRL(model, budget_bytes=0, dtype_bytes=dtype_bytes)
    if arm.startswith("tokens"):  # mini_batch_size: the loss stage's chunk of score-matrix rows only
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=32, mini_batch_num_tokens=int(arm[6:]))
    if arm == "reference":
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch)
    if arm == "mnrl":
        return MultipleNegativesRankingLoss(model)
    raise ValueError(f"--arms: {arm!r} is not an arm; use auto, cached, tokensN, reference or mnrl")


def mnrl_fits(model, texts: list[tuple[list[str], list[str]]], dtype_bytes: int) -> bool:
    """Whether one pass over the largest batch keeps activations within the budget auto would be given."""
    from pipeline.losses import activation_bytes_per_token, memory_budget

    def need(column: list[str]) -> float:
        width = int(model.tokenize(column)["attention_mask"].sum(dim=1).max())
        return len(column) * width * activation_bytes_per_token(model, width, dtype_bytes)

    return max(need(q) + need(a) for q, a in texts) <= memory_budget(model)


def build_arms(args: argparse.Namespace, device: str, dtype_bytes: int, texts=None) -> dict:
    """{arm: (model, loss, optimizer)}: one copy of the same weights per arm."""
    import torch
    from peft import LoraConfig, TaskType
    from sentence_transformers import SentenceTransformer

    from pipeline.models import model_source

    arms = {}
    for arm in args.arms.split(","):
        torch.manual_seed(12)
        model = SentenceTransformer(model_source(args.model), device=device)
        model.max_seq_length = args.max_seq_length
        if args.lora:
            config = LoraConfig(
                task_type=TaskType.FEATURE_EXTRACTION, r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.1
            )
            model.add_adapter(config)
        model.train()
        if arm == "mnrl" and texts is not None and not mnrl_fits(model, texts, dtype_bytes):
            print("[speed] mnrl left out: the batch's activations do not fit in memory", file=sys.stderr)
            continue
        loss = make_loss(arm, model, args.mini_batch, dtype_bytes)
        params = [p for p in model.parameters() if p.requires_grad]
        arms[arm] = (model, loss, torch.optim.AdamW(params, lr=2e-5))
    return arms


def train_step(arm: tuple, texts: tuple[list[str], list[str]], device: str, amp) -> tuple[float, list[dict]]:
    """One optimizer step as the Trainer takes it (tokenizing included): the loss and the tokenized columns."""
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
    texts = batches(args.data, args.work, args.batch, args.steps)
    arms = build_arms(args, device, 4 if amp is None else 2, texts)
    shape = model_shape(next(iter(arms.values()))[0])
    peaks = [gemm_peak()["flops_per_s"]] if device == "cpu" else [args.peak_tflops * 1e12]
    steps = {name: {"s": [], "loss": [], "flops": [], "gpu_gib": []} for name in arms}

    def step(name: str) -> float:
        record = steps[name]
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        value, features = train_step(arms[name], texts[len(record["s"])], device, amp)
        if device == "cuda":
            torch.cuda.synchronize()
            record["gpu_gib"].append(torch.cuda.max_memory_allocated() / 2**30)
        record["s"].append(time.perf_counter() - start)
        record["loss"].append(value)
        record["flops"].append(sum(model_flops(shape, f["attention_mask"].sum(dim=1).tolist()) for f in features))
        print(f"[speed] step {len(record['s'])} {name}: {record['s'][-1]:.2f}s loss {value:.4f}", file=sys.stderr)
        return record["s"][-1]

    alternate({name: (lambda name=name: step(name)) for name in arms}, reps=args.steps)
    if device == "cpu":  # a GEMM timed when the machine was busier underrates the peak: the best of two
        peaks.append(gemm_peak()["flops_per_s"])
    report = {
        "device": device_name(device),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "config": {k: str(v) for k, v in vars(args).items()},
        "peak_flops_per_s": max(peaks),
        "arms": {},
    }
    for name, (model, loss, _) in arms.items():
        record = steps[name]
        timed = record["s"][args.warmup :]
        report["arms"][name] = {
            "step_s": record["s"],
            "samples_per_s": args.batch / median(timed),
            "mfu": sum(record["flops"][args.warmup :]) / sum(timed) / max(peaks),
            "losses": record["loss"],
            "peak_gpu_memory_gib": max(record["gpu_gib"]) if record["gpu_gib"] else None,
        }
        if hasattr(loss, "plan"):
            report["arms"][name]["recomputed_token_fraction"] = loss.plan.recomputed_fraction
            report["arms"][name]["budget_mb"] = loss.plan.budget_bytes / 1e6
        if args.eval:
            report["arms"][name]["ndcg_at_10"] = ndcg(model, args, name)
    return report


def ndcg(model, args: argparse.Namespace, name: str) -> float:
    from omegaconf import OmegaConf

    from pipeline.config import EvalConfig
    from pipeline.evaluation.st_backend import evaluate

    cfg = EvalConfig(dataset_id=str(args.eval), datasets=args.datasets.split(","), during_training=False)
    model.eval()
    return evaluate(model, OmegaConf.structured(cfg), args.work / f"eval-{name}")["ndcg_at_10"]


def model_shape(model) -> dict:
    """What `model_flops` needs: the encoder's linear weights (not the embedding tables, which do no matmul, nor BERT's
    pooler, which mean pooling does not use; a LoRA adapter's count too), layers, width."""
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


def rows_from(report: dict, load: tuple[float, ...] | None = None) -> list[Row]:
    arms, cfg = report["arms"], report["config"]
    ref = arms["reference"]
    auto = arms.get("auto", {})
    setup = (
        f"{Path(cfg['model']).name}{' + LoRA r ' + cfg['lora'] if cfg['lora'] != '0' else ''}, batch {cfg['batch']}, "
        f"max_seq_length {cfg['max_seq_length']}, {report['precision']}, {len(ref['step_s']) - int(cfg['warmup'])} timed steps each "
        f"({'first excluded' if cfg['warmup'] != '0' else 'none excluded: the first arm pays the first step'}), "
        f"alternated with {', '.join(arms)}"
        + (f"; load average {load[0]:.1f} on {report['torch_threads']} threads" if load else "")
    )
    what = {
        "auto": "auto (the library's ~2k-token mini-batches, graphs kept within the memory budget: "
        f"{auto.get('recomputed_token_fraction', 0):.0%} of tokens embedded twice, budget "
        f"{auto.get('budget_mb', 0):.0f} MB)",
        "cached": "auto's mini-batches, every one embedded twice (no graph kept)",
        "mnrl": "plain MNRL (one pass, the whole batch's graph)",
    }
    goal = GOAL["cuda" if report["peak_flops_per_s"] > 1e14 else "cpu"]
    rows = []
    for name, arm in arms.items():
        if name == "reference":
            continue
        label = what.get(name, f"library CachedMNRL(mini_batch_num_tokens={name[6:]})")
        memory = ""
        if arm["peak_gpu_memory_gib"] is not None:
            memory = f"; peak GPU memory {arm['peak_gpu_memory_gib']:.1f} vs {ref['peak_gpu_memory_gib']:.1f} GiB"
        rows.append(
            Row(
                "speed",
                f"{label} vs reference CachedMNRL mini-batch {cfg['mini_batch']}, training samples/s "
                f"({report['device']})",
                f"{arm['samples_per_s']:.2f} vs {ref['samples_per_s']:.2f} samples/s; MFU {arm['mfu']:.3f} vs "
                f"{ref['mfu']:.3f}{memory} ({setup})",
                ratio := arm["samples_per_s"] / ref["samples_per_s"],
                f"≥ {goal}×" if name == "auto" else REPORT,
                verdict(ratio, at_least=goal) if name == "auto" else REPORT,
                margins(arms) if name == "auto" else "",
            )
        )
    diffs = [abs(a - b) for name in arms for a, b in zip(arms[name]["losses"], ref["losses"], strict=True)]
    rows.append(
        Row(
            "speed",
            "same loss curve: |loss arm − loss reference| per step, every arm",
            "; ".join(f"{name} " + ", ".join(f"{v:.4f}" for v in arm["losses"]) for name, arm in arms.items())
            + f"; max |diff| {max(diffs):.4f}",
            None,
            "within dropout noise",
            REPORT,
            "dropout draws differ between mini-batchings, so losses agree in distribution; without dropout they "
            "agree within 1e-5 (tests/test_losses.py).",
        )
    )
    if "ndcg_at_10" in ref:
        for name, arm in arms.items():
            if name != "reference":
                rows.append(
                    Row(
                        "speed",
                        f"NanoBEIR NDCG@10 after training, {name} − reference",
                        f"{arm['ndcg_at_10']:.4f} vs {ref['ndcg_at_10']:.4f}",
                        None,
                        REPORT,
                        REPORT,
                    )
                )
    return rows


def margins(arms: dict) -> str:
    """What auto adds over the library's token packing (its best `tokensN` arm) and over its own mini-batches always
    embedded twice (keeping graphs), and how it compares with plain MNRL."""
    rate = {name: arm["samples_per_s"] for name, arm in arms.items()}
    tokens = [name for name in rate if name.startswith("tokens")]
    parts = [f"auto vs the library's token packing ({t}): {rate['auto'] / rate[t]:.2f}×" for t in tokens]
    if "cached" in rate:
        parts.append(f"keeping graphs (auto vs cached): {rate['auto'] / rate['cached']:.2f}×")
    if "mnrl" in rate:
        parts.append(f"auto vs plain MNRL: {rate['auto'] / rate['mnrl']:.2f}×")
    return "; ".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=MINILM)
    p.add_argument("--data", default=str(MEDQUAD), help="a question/answer dir")
    p.add_argument("--arms", default=ARMS, help="comma-separated: auto, cached, tokensN, reference, mnrl")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--mini-batch", type=int, default=32, help="the reference's CachedMNRL mini-batch")
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--lora", type=int, default=0, help="a LoRA adapter of this rank on every arm (0: full)")
    p.add_argument("--steps", type=int, default=3, help="per arm, the warm-up included")
    p.add_argument("--warmup", type=int, default=1, help="the first steps of each arm left out of the timing")
    p.add_argument("--precision", default="auto")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--eval", default=None, help="a NanoBEIR-layout dir: NDCG@10 of every arm after training")
    p.add_argument("--datasets", default="msmarco,scifact")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    return p


def run(model: str = MINILM, **sizes) -> BenchResult:
    """make bench's sizes: MiniLM, batch 256, max_seq_length 256, fp32, 2 timed steps per arm after a warm-up."""
    import os

    started = time.perf_counter()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
    args = parser().parse_args(["--model", model, *flags])
    args.work = scratch_dir("bench-speed-")
    load_before = os.getloadavg()
    report = measure(args)
    load = tuple((a + b) / 2 for a, b in zip(load_before, os.getloadavg(), strict=True))
    report["load_average"] = load
    report["how"] = " ".join(__doc__.split("\n\n")[1].split())
    return BenchResult("speed", rows_from(report, load), report, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.work = args.work or scratch_dir("bench-speed-")
    report = measure(args)
    print(json.dumps(report), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows_from(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
